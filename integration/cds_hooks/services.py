"""The CDS services offered: each one's id, hook, title, the tasks it reports and the prefetch
template for the notes those tasks read (discovery lists them; a call names one by id)."""

from __future__ import annotations

from dataclasses import dataclass

from lang1ops.tasks import LOINC, TaskContract, TaskSpec

PATIENT_VIEW, ENCOUNTER_DISCHARGE = "patient-view", "encounter-discharge"


@dataclass(frozen=True)
class CdsService:
    """One CDS service; services are keyed by `id`, so several may share a hook."""

    id: str
    hook: str
    title: str
    description: str
    tasks: tuple[str, ...] | None  # None: every task of the served model
    encounter_in_search: bool  # the hook's context always names the encounter

    def tasks_of(self, contract: TaskContract) -> list[TaskSpec]:
        if self.tasks is None:
            return list(contract.tasks)
        return [contract.task(name) for name in self.tasks if name in contract.names]

    def notes_query(self, contract: TaskContract, max_notes: int) -> str:
        """The FHIR search for the notes the tasks read, as a CDS Hooks prefetch template.
        Only `patient`, `type` (token, comma = OR), `encounter`, `_sort` and `_count` are used:
        the DocumentReference search parameters US Core / Epic / Oracle Health servers support.
        A server that ignores `_sort` is still fine: notes are ordered by date here."""
        note_types = {t.note_type for t in self.tasks_of(contract)}
        codes = [f"{LOINC}|{code}" for spec in contract.note_types if spec.name in note_types for code in spec.loinc]
        query = "DocumentReference?patient={{context.patientId}}"
        if self.encounter_in_search:
            query += "&encounter={{context.encounterId}}"
        return query + f"&type={','.join(codes)}&_sort=-date&_count={max_notes}"


SERVICES: tuple[CdsService, ...] = (
    CdsService(
        id="lang1-patient-risk", hook=PATIENT_VIEW, title="Lang1 operational risk for this admission",
        description="Readmission, in-hospital mortality, length of stay, Charlson comorbidity index and claim denial "
                    "estimated by a finetuned clinical language model from the admission H&P and discharge summary "
                    "of the current admission.",
        tasks=None, encounter_in_search=False),
    CdsService(
        id="lang1-discharge-risk", hook=ENCOUNTER_DISCHARGE, title="Lang1 readmission risk at discharge",
        description="30-day readmission risk from the discharge summary and the length-of-stay outlook from the "
                    "admission H&P of the encounter being discharged.",
        tasks=("readmission", "los"), encounter_in_search=True),
)
REQUIRED_CONTEXT = {PATIENT_VIEW: ("userId", "patientId"), ENCOUNTER_DISCHARGE: ("userId", "patientId", "encounterId")}
USAGE = ("Authenticate with a JWT signed RS384 or ES384 by an allow-listed issuer (aud = the service URL). "
         "Prefetch `notes` or give fhirServer and fhirAuthorization (scope patient/DocumentReference.rs and "
         "patient/Binary.r, or the user/ equivalents).")
