"""The paper's five labels, derived from any hospital's FHIR data.

`HospitalRecords.load` reads an export (see integration.fhir_source), validates the
resources it needs against the R4B models, and indexes them. `label_note` then gives, for
one note, each task's label or the reason it has none. The rules (docs/data.md):

- readmission (discharge summary): a later acute inpatient encounter of the same patient
  starting 0-30 calendar days after discharge (day 30 counts). Index stays that are
  rehabilitation, dialysis or palliative/hospice care are excluded, as are deaths in
  hospital and transfers to another acute hospital (the receiving stay's discharge is the
  index). Those services never count as the readmission either. Without a readmission,
  the label is unknown when fewer than 30 days of follow-up exist in the data, except
  that a patient who died after discharge counts as not readmitted.
- mortality (H&P): discharge disposition "exp", or a recorded death time inside the stay.
- LOS (H&P): calendar days from admission to discharge, binned 0-2, 3, 4-5, >5.
- CCI (H&P): Charlson index (Quan ICD-10, Charlson weights) of the ICD-10 codes of the
  encounter's Conditions; encounters without ICD-10 codes are excluded.
- denial (H&P): the claim for the stay was denied at least once (a CARIN `denialreason`
  adjudication on any EOB), whatever an appeal later decided; unknown while no EOB exists.

Every stay without a finished discharge has no LOS, mortality, CCI or denial label.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from fhir.resources.R4B.claim import Claim
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from integration.fhir_source import Problem, ProblemLog, iter_resources, load_manifest
from integration.notes import ClinicalNote, NoteError, aware_datetime, note_from_resource, reference_id
from lang1ops.tasks import DEFAULT_CONTRACT, NoteType, TaskContract
from training.charlson import charlson_index

INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})
EXCLUDED_SERVICE_WORDS = ("rehab", "dialysis", "palliat", "hospice")
ICD10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10"})
DENIAL_CATEGORY = "denialreason"  # CARIN BB C4BBAdjudicationDiscriminator
TRANSFER_WINDOW = timedelta(hours=24)
READMISSION_DAYS = 30
NOT_A_STAY = frozenset({"planned", "cancelled", "entered-in-error"})  # encounters that did not (yet) happen
NOTE_RESOURCES = frozenset({"DocumentReference", "DiagnosticReport", "Composition"})
MODELS = {"Patient": Patient, "Encounter": Encounter, "Condition": Condition, "Claim": Claim,
          "ExplanationOfBenefit": ExplanationOfBenefit, "Coverage": Coverage}


class NoLabel(Exception):
    """The task has no label for this note; `reason` is counted in the dataset summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class PatientRecord:
    id: str
    birth_date: date | None
    sex: str | None
    deceased_at: datetime | None
    death_date_only: bool  # deceasedDateTime without a time: the day is known, not the moment
    race: str | None
    ethnicity: str | None
    payer: str | None = None


@dataclass
class EncounterRecord:
    id: str
    patient_id: str | None
    klass: str | None
    status: str | None
    start: datetime | None
    end: datetime | None
    disposition: str | None
    admit_source: str | None
    service_words: str  # lower-case codes and texts of serviceType and type, for exclusion rules
    service: str | None
    unit: str | None
    icd10: list[str] = field(default_factory=list)

    @property
    def inpatient(self) -> bool:
        return self.klass in INPATIENT_CLASSES

    @property
    def excluded_service(self) -> bool:
        return any(word in self.service_words for word in EXCLUDED_SERVICE_WORDS)

    @property
    def finished(self) -> bool:
        return self.end is not None and self.start is not None and self.status not in ("in-progress", "cancelled",
                                                                                          "entered-in-error")


@dataclass
class ClaimRecord:
    id: str
    encounter_ids: set[str]
    eob_count: int = 0
    denied: bool = False


def _codes(concept) -> list[tuple[str | None, str | None]]:
    return [(c.system, c.code) for c in (concept.coding or [])] if concept else []


def _words(concepts: Iterable) -> str:
    bits = []
    for concept in concepts:
        if concept is None:
            continue
        bits += [c.code or "" for c in concept.coding or []] + [c.display or "" for c in concept.coding or []] + [concept.text or ""]
    return " ".join(bits).lower()


def _us_core(patient: Patient, suffix: str) -> str | None:
    for ext in patient.extension or []:
        if ext.url.endswith(suffix):
            for sub in ext.extension or []:
                if sub.url == "text" and sub.valueString:
                    return sub.valueString
                if sub.url == "ombCategory" and sub.valueCoding:
                    return sub.valueCoding.display or sub.valueCoding.code
    return None


class HospitalRecords:
    """Everything the label rules need from one export, validated and indexed."""

    def __init__(self, contract: TaskContract = DEFAULT_CONTRACT):
        self.contract = contract
        self.problems = ProblemLog()
        self.patients: dict[str, PatientRecord] = {}
        self.encounters: dict[str, EncounterRecord] = {}
        self.by_patient: dict[str, list[EncounterRecord]] = defaultdict(list)
        self.claims: dict[str, ClaimRecord] = {}
        self.claims_by_encounter: dict[str, list[ClaimRecord]] = defaultdict(list)
        self.notes: list[ClinicalNote] = []
        self.data_end: datetime | None = None
        self._conditions: dict[str, list[str]] = defaultdict(list)
        self._eobs: list[ExplanationOfBenefit] = []
        self._note_resources: list[tuple[dict, str]] = []
        self._binaries: dict[str, dict] = {}
        self._coverage_payer: dict[str, str] = {}
        self._latest_seen: datetime | None = None

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path, contract: TaskContract = DEFAULT_CONTRACT, as_of: datetime | None = None,
             on_resource=None) -> HospitalRecords:
        records = cls(contract)
        for resource, location in iter_resources(path, records.problems):
            records.add(resource, location)
            if on_resource:
                on_resource()
        manifest_time = None
        try:
            manifest = load_manifest(path)
            manifest_time = aware_datetime(manifest.get("transactionTime")) if manifest else None
        except (ValueError, OSError):
            manifest_time = None  # a broken manifest is already recorded by iter_resources
        records.finish(as_of or manifest_time)
        return records

    def add(self, resource: dict, location: str) -> None:
        kind = resource.get("resourceType")
        if kind in NOTE_RESOURCES:
            self._note_resources.append((resource, location))
            return
        if kind == "Binary":
            if resource.get("id"):
                self._binaries[f"Binary/{resource['id']}"] = resource
            return
        model = MODELS.get(kind)
        if model is None:
            return  # types the labels do not use (Organization, Location, ...) are fine to skip
        try:
            parsed = model.model_validate(resource)
        except (ValidationError, ValueError, KeyError) as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in getattr(exc, "errors", lambda: [])()})
            self.problems.add(Problem("invalid-resource", location, kind, resource.get("id") if isinstance(resource.get("id"), str) else None,
                                      detail="invalid fields: " + ", ".join(fields[:8]) if fields else "failed validation"))
            return
        getattr(self, f"_add_{kind[0].lower()}{kind[1:]}")(parsed, location)

    def _seen(self, when: datetime | None) -> None:
        if when and (self._latest_seen is None or when > self._latest_seen):
            self._latest_seen = when

    def _add_patient(self, p: Patient, location: str) -> None:
        deceased = aware_datetime(p.deceasedDateTime) if p.deceasedDateTime else None
        date_only = isinstance(p.deceasedDateTime, date) and not isinstance(p.deceasedDateTime, datetime)
        self.patients[p.id] = PatientRecord(p.id, p.birthDate, p.gender, deceased, date_only, _us_core(p, "us-core-race"),
                                            _us_core(p, "us-core-ethnicity"))

    def _add_encounter(self, e: Encounter, location: str) -> None:
        hosp = e.hospitalization
        disposition = next((code for _, code in _codes(hosp.dischargeDisposition)), None) if hosp else None
        source = next((code for _, code in _codes(hosp.admitSource)), None) if hosp else None
        start = aware_datetime(e.period.start) if e.period else None
        end = aware_datetime(e.period.end) if e.period and e.period.end else None
        service_concepts = [e.serviceType, *(e.type or [])]
        service = e.serviceType.text or next((c for _, c in _codes(e.serviceType)), None) if e.serviceType else None
        unit = next((loc.location.display for loc in e.location or [] if loc.location and loc.location.display), None)
        rec = EncounterRecord(e.id, reference_id(e.subject.reference if e.subject else None, "Patient"), e.class_fhir.code,
                              e.status, start, end, disposition, source, _words(service_concepts), service, unit)
        if e.id in self.encounters:
            self.problems.add(Problem("duplicate-resource", location, "Encounter", e.id, "later copy kept"))
            self.by_patient[rec.patient_id] = [x for x in self.by_patient[rec.patient_id] if x.id != e.id]
        self.encounters[e.id] = rec
        self.by_patient[rec.patient_id].append(rec)
        self._seen(end or start)

    def _add_condition(self, c: Condition, location: str) -> None:
        encounter = reference_id(c.encounter.reference if c.encounter else None, "Encounter")
        if not encounter:
            return  # problem-list entries without an encounter do not define the encounter's CCI
        if any(code in ("entered-in-error", "refuted") for _, code in _codes(c.verificationStatus)):
            return  # a diagnosis withdrawn by the coder is not a comorbidity
        for system, code in _codes(c.code):
            if system in ICD10_SYSTEMS and code:
                self._conditions[encounter].append(code)

    def _add_claim(self, c: Claim, location: str) -> None:
        encounters = {reference_id(ref.reference, "Encounter") for item in c.item or [] for ref in item.encounter or []}
        rec = self.claims.setdefault(c.id, ClaimRecord(c.id, set()))
        rec.encounter_ids |= {e for e in encounters if e}

    def _add_explanationOfBenefit(self, eob: ExplanationOfBenefit, location: str) -> None:
        self._eobs.append(eob)

    def _add_coverage(self, c: Coverage, location: str) -> None:
        patient = reference_id(c.beneficiary.reference if c.beneficiary else None, "Patient")
        payer = next((p.display for p in c.payor or [] if p.display), None) or (c.type.text if c.type else None)
        if patient and payer:
            self._coverage_payer[patient] = payer

    def finish(self, as_of: datetime | None) -> None:
        for encounter_id, codes in self._conditions.items():
            if encounter_id in self.encounters:
                self.encounters[encounter_id].icd10 = codes
        for eob in self._eobs:
            claim_id = reference_id(eob.claim.reference if eob.claim else None, "Claim")
            encounters = {reference_id(ref.reference, "Encounter") for item in eob.item or [] for ref in item.encounter or []}
            rec = self.claims.setdefault(claim_id or f"eob:{eob.id}", ClaimRecord(claim_id or eob.id, set()))
            rec.encounter_ids |= {e for e in encounters if e}
            rec.eob_count += 1
            rec.denied |= _denied(eob)
        for claim in self.claims.values():
            for encounter_id in claim.encounter_ids:
                self.claims_by_encounter[encounter_id].append(claim)
        for patient_id, payer in self._coverage_payer.items():
            if patient_id in self.patients:
                self.patients[patient_id].payer = payer
        for stays in self.by_patient.values():
            stays.sort(key=lambda e: (e.start is None, e.start or datetime.min.replace(tzinfo=UTC), e.id))
        resolve = self._binaries.get
        seen: dict[tuple[str, str | None], int] = {}
        for resource, location in self._note_resources:
            if resource.get("status") == "entered-in-error" or resource.get("docStatus") == "entered-in-error":
                self.problems.add(Problem("entered-in-error", location, resource.get("resourceType"), resource.get("id")))
                continue
            try:
                note = note_from_resource(resource, contract=self.contract, resolve=resolve)
            except NoteError as err:
                self.problems.add(Problem(err.reason, location, resource.get("resourceType"),
                                          resource.get("id") if isinstance(resource.get("id"), str) else None, err.message))
                continue
            key = (note.resource_type, note.resource_id)
            if note.resource_id and key in seen:
                # a later copy (a new version in an incremental export) replaces the earlier one
                self.problems.add(Problem("duplicate-resource", location, note.resource_type, note.resource_id, "later copy kept"))
                self.notes[seen[key]] = note
            else:
                seen[key] = len(self.notes)
                self.notes.append(note)
            self._seen(note.date)
        self._note_resources.clear()
        self.data_end = as_of or self._latest_seen


def _denied(eob: ExplanationOfBenefit) -> bool:
    adjudications = list(eob.adjudication or []) + [a for item in eob.item or [] for a in item.adjudication or []]
    return any(code == DENIAL_CATEGORY for a in adjudications for _, code in _codes(a.category))


# --- the rules -------------------------------------------------------------------------------
def _stay_for(note: ClinicalNote, records: HospitalRecords) -> EncounterRecord:
    if not note.encounter_id:
        raise NoLabel("no-encounter")
    enc = records.encounters.get(note.encounter_id)
    if enc is None:
        raise NoLabel("unknown-encounter")
    if not enc.inpatient:
        raise NoLabel("not-inpatient")
    return enc


def _finished(enc: EncounterRecord) -> EncounterRecord:
    if not enc.finished:
        raise NoLabel("no-discharge")
    if enc.end < enc.start:
        raise NoLabel("invalid-period")
    return enc


def died_in_hospital(enc: EncounterRecord, records: HospitalRecords) -> bool:
    if enc.disposition == "exp":
        return True
    patient = records.patients.get(enc.patient_id or "")
    if not (patient and patient.deceased_at):
        return False
    if patient.death_date_only:
        # only the day is known: a death on the discharge day is in hospital only when no
        # disposition says the patient left alive
        day = patient.deceased_at.date()
        return enc.start.date() <= day < enc.end.date() or (day == enc.end.date() and enc.disposition is None)
    return enc.start <= patient.deceased_at <= enc.end


def died_after_discharge(enc: EncounterRecord, patient: PatientRecord) -> bool:
    """Called for stays already known not to end in death (see died_in_hospital)."""
    if patient.death_date_only:
        return patient.deceased_at.date() >= enc.end.date()
    return patient.deceased_at > enc.end


def readmission(enc: EncounterRecord, records: HospitalRecords) -> int:
    _finished(enc)
    if enc.excluded_service:
        raise NoLabel("excluded-service")
    if died_in_hospital(enc, records):
        raise NoLabel("died-in-hospital")
    if enc.disposition == "other-hcf":
        raise NoLabel("transferred-out")
    horizon = enc.end.date() + timedelta(days=READMISSION_DAYS)
    for later in records.by_patient.get(enc.patient_id or "", []):  # sorted by start
        # stays that overlap this one (concurrent records) are neither transfers nor readmissions
        if later.id == enc.id or later.start is None or later.start < enc.end:
            continue
        if later.start.date() > horizon:
            break
        if not later.inpatient or later.excluded_service or later.status in NOT_A_STAY:
            continue
        if later.admit_source == "hosp-trans" and later.start - enc.end <= TRANSFER_WINDOW:
            raise NoLabel("transferred-out")
        return 1
    patient = records.patients.get(enc.patient_id or "")
    if patient and patient.deceased_at and patient.deceased_at.date() <= horizon and died_after_discharge(enc, patient):
        return 0  # died at home or in hospice before any readmission: known not readmitted
    # follow-up is complete once the data covers the whole 30th day
    if records.data_end is None or records.data_end < datetime.combine(horizon, time(23, 59, 59), tzinfo=enc.end.tzinfo):
        raise NoLabel("follow-up-incomplete")
    return 0


def mortality(enc: EncounterRecord, records: HospitalRecords) -> int:
    return int(died_in_hospital(_finished(enc), records))


def los_days(enc: EncounterRecord) -> int:
    _finished(enc)
    return (enc.end.date() - enc.start.date()).days


def charlson(enc: EncounterRecord) -> int:
    _finished(enc)
    if not enc.icd10:
        raise NoLabel("no-diagnosis-codes")
    return charlson_index(enc.icd10)


def denial(enc: EncounterRecord, records: HospitalRecords) -> int:
    _finished(enc)
    claims = records.claims_by_encounter.get(enc.id, [])
    if not claims:
        raise NoLabel("no-claim")
    if not any(c.eob_count for c in claims):
        raise NoLabel("claim-pending")
    return int(any(c.denied for c in claims))


def task_label(task: str, enc: EncounterRecord, records: HospitalRecords) -> int:
    """Class index of `task` for the stay (raises NoLabel). The five tasks of the default
    contract have rules; a contract with other tasks needs rules added here."""
    spec = records.contract.task(task)
    if task == "readmission":
        return readmission(enc, records)
    if task == "mortality":
        return mortality(enc, records)
    if task == "los":
        return spec.bin_index(los_days(enc))
    if task == "cci":
        return spec.bin_index(charlson(enc))
    if task == "denial":
        return denial(enc, records)
    raise NoLabel("no-rule-for-task")


def label_note(note: ClinicalNote, records: HospitalRecords) -> tuple[EncounterRecord | None, dict[str, int | NoLabel]]:
    """The stay a note belongs to and, for each task its note type scores, a label or the
    reason there is none."""
    if note.note_type is None:
        raise NoLabel("not-a-task-note-type")
    tasks = [t.name for t in records.contract.tasks_for(note.note_type)]
    try:
        enc = _stay_for(note, records)
    except NoLabel as why:
        return None, {t: why for t in tasks}
    out: dict[str, int | NoLabel] = {}
    for task in tasks:
        try:
            out[task] = task_label(task, enc, records)
        except NoLabel as why:
            out[task] = why
    return enc, out


__all__ = ["HospitalRecords", "EncounterRecord", "PatientRecord", "NoLabel", "label_note", "task_label", "NoteType"]
