"""The paper's five labels, derived from any hospital's FHIR data.

`HospitalRecords.load` reads an export (see lang1ops.fhir_source), validates the
resources it needs against the R4B models, and indexes them. `label_note` then gives, for
one note, each task's label or the reason it has none. The rules (docs/data.md):

- readmission (discharge summary): a later acute inpatient encounter of the same patient
  starting 0-30 calendar days after discharge (day 30 counts). Index stays that are
  rehabilitation, dialysis or palliative/hospice care are excluded, as are deaths in
  hospital and transfers to another acute hospital (the receiving stay's discharge is the
  index). Those services never count as the readmission either. Without a readmission,
  the label is unknown when fewer than 30 days of follow-up exist in the data, except
  that a patient who died after discharge counts as not readmitted.
- mortality (H&P): discharge disposition "exp" (or NUBC 20/41), or a recorded death time
  inside the stay; deceasedBoolean alone on the last stay, with no disposition, is no label.
- LOS (H&P): calendar days from admission to discharge in the hospital's time zone
  (settings data.timezone), binned 0-2, 3, 4-5, >5.
- CCI (H&P): Charlson index (Quan ICD-10, Charlson weights) of the ICD-10 codes of the
  encounter's Conditions; encounters without ICD-10 codes are excluded.
- denial (H&P), by settings data.denial_definition: "appealed" (the paper's, the default),
  denied and then decided on appeal, adverse or favourable, else negative; "any-denial", the
  claim for the stay was denied at least once (a CARIN `denialreason` adjudication on any EOB),
  whatever an appeal later decided, unknown while no EOB exists or without a claim.

Every stay without a finished discharge has no LOS, mortality, CCI or denial label.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from fhir.resources.R4B.claim import Claim
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from lang1ops.fhir_source import IdentifierIndex, Problem, ProblemLog, iter_resources
from lang1ops.notes import ClinicalNote, NoteError, aware_datetime, note_from_resource, reference_id
from lang1ops.settings.data import DataSettings
from lang1ops.tasks import DEFAULT_CONTRACT, LOINC, NoteType, TaskContract
from training.charlson import charlson_index

INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})
EXCLUDED_SERVICE_WORDS = ("rehab", "dialysis", "palliat", "hospice")
ICD10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10",
                           "urn:oid:2.16.840.1.113883.6.90", "urn:oid:2.16.840.1.113883.6.3"})  # and by their OIDs
# Discharge dispositions that say the patient died in the hospital: HL7's "exp", and NUBC UB-04
# patient discharge status 20 (expired) and 41 (expired in a medical facility).
EXPIRED_DISPOSITIONS = frozenset({"exp", "20", "41"})
SNOMED = "http://snomed.info/sct"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
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
    deceased_unknown_time: bool = False  # deceasedBoolean true: dead, neither day nor moment recorded
    race: str | None = None
    ethnicity: str | None = None
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
    zone: ZoneInfo = field(default=ZoneInfo("UTC"), repr=False)  # the hospital's: its calendar days count

    def day(self, when: datetime) -> date:
        """The hospital's calendar day of `when` (midnights are counted where the bed is)."""
        return when.astimezone(self.zone).date()

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
    appealed: bool = False  # an appeal decision (adverse or favourable) is on record


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

    def __init__(self, contract: TaskContract = DEFAULT_CONTRACT, data: DataSettings | None = None):
        self.contract = contract
        self.data = data or DataSettings()
        self.zone = ZoneInfo(self.data.timezone)
        self.horizon_source = "latest encounter time in the data"
        self.problems = ProblemLog()
        self.patients: dict[str, PatientRecord] = {}
        self.encounters: dict[str, EncounterRecord] = {}
        self.by_patient: dict[str, list[EncounterRecord]] = defaultdict(list)
        self.claims: dict[str, ClaimRecord] = {}
        self.claims_by_encounter: dict[str, list[ClaimRecord]] = defaultdict(list)
        self.notes: list[ClinicalNote] = []
        self.data_end: datetime | None = None
        self._conditions: dict[str, list[str]] = defaultdict(list)  # encounter -> ICD-10 codes, by Condition.encounter
        self._condition_codes: dict[str, list[str]] = {}  # Condition id -> its ICD-10 codes (any Condition)
        self._diagnosis_refs: dict[str, list[str]] = defaultdict(list)  # encounter -> Condition ids (Encounter.diagnosis)
        self._billed_codes: dict[str, list[str]] = defaultdict(list)  # claim key -> ICD-10 codes (Claim/EOB.diagnosis)
        self.code_sources: Counter[str] = Counter()  # stays whose CCI codes came from each source
        self._problem_list: dict[str, list[tuple[list[str], datetime | None, datetime | None]]] = defaultdict(list)
        self.snomed_only_conditions = 0  # Conditions coded in SNOMED CT alone: invisible to the Charlson index
        self._eobs: list[ExplanationOfBenefit] = []
        self._note_resources: list[tuple[dict, str]] = []
        self._binaries: dict[str, dict] = {}
        self._coverage_payer: dict[str, str] = {}
        self._latest_seen: datetime | None = None
        self._identifiers = IdentifierIndex()
        self._awaiting_identifier: list[tuple[dict, str]] = []  # references by identifier not read yet

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path, contract: TaskContract = DEFAULT_CONTRACT, as_of: datetime | None = None,
             on_resource=None, data: DataSettings | None = None) -> HospitalRecords:
        """The data horizon (censoring of the 30-day follow-up) is `as_of` when given, else the
        latest encounter time the data holds (a stay's start or end: readmissions are stays, and
        notes may be dated after the last stay they document): never the manifest's
        transactionTime, which says when the export ran, not how far its data reaches."""
        records = cls(contract, data)
        for resource, location in iter_resources(path, records.problems):
            records.add(resource, location)
            if on_resource:
                on_resource()
        records.finish(as_of)
        return records

    def add(self, resource: dict, location: str) -> None:
        self._identifiers.learn(resource)
        if not self._identifiers.resolve(resource, location, self.problems, final=False):
            self._awaiting_identifier.append((resource, location))  # its target may come later in the export
            return
        self._add_resolved(resource, location)

    def _add_resolved(self, resource: dict, location: str) -> None:
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
        if kind == "Encounter" and (isinstance(resource.get("class"), list) or "actualPeriod" in resource):
            self.problems.add(Problem("fhir-r5", location, kind, resource.get("id") if isinstance(resource.get("id"), str)
                                      else None, detail="looks like FHIR R5 (class is a list, actualPeriod); "
                                                        "lang1-ops reads FHIR R4: export R4 resources"))
            return
        resource = self._lenient(resource)
        try:
            parsed = model.model_validate(resource)
        except (ValidationError, ValueError, KeyError) as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in getattr(exc, "errors", lambda: [])()})
            self.problems.add(Problem("invalid-resource", location, kind, resource.get("id") if isinstance(resource.get("id"), str) else None,
                                      detail="invalid fields: " + ", ".join(fields[:8]) if fields else "failed validation"))
            return
        getattr(self, f"_add_{kind[0].lower()}{kind[1:]}")(parsed, location)

    def _lenient(self, resource: dict) -> dict:
        """Repairs where the meaning is clear, each counted: empty strings (FHIR has none: the
        element is absent) dropped; an Encounter period timestamp without an offset read in the
        hospital's time zone. Anything else invalid is refused by validation, as before."""
        cleaned = _without_empty_strings(resource, self.problems)
        if cleaned.get("resourceType") == "Encounter" and not isinstance(cleaned.get("class"), dict):
            # required in R4, yet some exports leave it out: the site's default when it has one
            # (an export of inpatient stays only), else the stay is kept, its notes dropped as
            # "no-encounter-class" rather than the whole resource refused
            default = self.data.default_encounter_class
            cleaned = {**cleaned, "class": {"system": ACT_CODE, "code": default} if default
                       else {"system": NULL_FLAVOR, "code": "UNK"}}
            self.problems.repaired("encounter-class-default" if default else "encounter-class-missing")
        if cleaned.get("resourceType") == "Encounter" and isinstance(cleaned.get("period"), dict):
            period = dict(cleaned["period"])
            for end in ("start", "end"):
                value = period.get(end)
                if isinstance(value, str) and _NAIVE_TIME.fullmatch(value):
                    local = datetime.fromisoformat(value).replace(tzinfo=self.zone)
                    period[end] = local.isoformat()
                    self.problems.repaired("naive-timestamp")
            cleaned = {**cleaned, "period": period}
        return cleaned

    def _seen(self, when: datetime | None) -> None:
        if when and (self._latest_seen is None or when > self._latest_seen):
            self._latest_seen = when

    def _add_patient(self, p: Patient, location: str) -> None:
        deceased = aware_datetime(p.deceasedDateTime) if p.deceasedDateTime else None
        date_only = isinstance(p.deceasedDateTime, date) and not isinstance(p.deceasedDateTime, datetime)
        if date_only:  # the day in the hospital's calendar, not midnight UTC
            deceased = datetime.combine(p.deceasedDateTime, time(12), tzinfo=self.zone)
        self.patients[p.id] = PatientRecord(p.id, p.birthDate, p.gender, deceased, date_only,
                                            race=_us_core(p, "us-core-race"), ethnicity=_us_core(p, "us-core-ethnicity"),
                                            deceased_unknown_time=bool(p.deceasedBoolean) and deceased is None)

    def _add_encounter(self, e: Encounter, location: str) -> None:
        hosp = e.hospitalization
        disposition = next((code for _, code in _codes(hosp.dischargeDisposition)), None) if hosp else None
        if disposition in self.data.discharge_disposition_map:
            disposition = self.data.discharge_disposition_map[disposition]
            self.problems.repaired("local-discharge-disposition")
        source = next((code for _, code in _codes(hosp.admitSource)), None) if hosp else None
        start = aware_datetime(e.period.start) if e.period else None
        end = aware_datetime(e.period.end) if e.period and e.period.end else None
        service_concepts = [e.serviceType, *(e.type or [])]
        service = e.serviceType.text or next((c for _, c in _codes(e.serviceType)), None) if e.serviceType else None
        unit = next((loc.location.display for loc in e.location or [] if loc.location and loc.location.display), None)
        klass = e.class_fhir.code if e.class_fhir.system != NULL_FLAVOR else None
        if klass in self.data.encounter_class_map:
            klass = self.data.encounter_class_map[klass]
            self.problems.repaired("local-encounter-class")
        for diagnosis in e.diagnosis or []:
            condition = reference_id(diagnosis.condition.reference if diagnosis.condition else None, "Condition")
            if condition:
                self._diagnosis_refs[e.id].append(condition)
        rec = EncounterRecord(e.id, reference_id(e.subject.reference if e.subject else None, "Patient"), klass,
                              e.status, start, end, disposition, source, _words(service_concepts), service, unit,
                              zone=self.zone)
        if e.id in self.encounters:
            self.problems.add(Problem("duplicate-resource", location, "Encounter", e.id, "later copy kept"))
            self.by_patient[rec.patient_id] = [x for x in self.by_patient[rec.patient_id] if x.id != e.id]
        self.encounters[e.id] = rec
        self.by_patient[rec.patient_id].append(rec)
        self._seen(end or start)

    def _add_condition(self, c: Condition, location: str) -> None:
        if any(code in ("entered-in-error", "refuted") for _, code in _codes(c.verificationStatus)):
            return  # a diagnosis withdrawn by the coder is not a comorbidity
        codes = [code for system, code in _codes(c.code) if system in ICD10_SYSTEMS and code]
        if not codes and any(system == SNOMED for system, _ in _codes(c.code)):
            self.snomed_only_conditions += 1  # CCI needs ICD-10: no maintained SNOMED map is used
        if c.id:
            self._condition_codes[c.id] = codes  # an Encounter.diagnosis may name it
        encounter = reference_id(c.encounter.reference if c.encounter else None, "Encounter")
        if encounter:  # problem-list entries without an encounter count only when a stay names them
            self._conditions[encounter] += codes
        elif codes:  # or, with data.cci_problem_list, when active at a stay's admission
            patient = reference_id(c.subject.reference if c.subject else None, "Patient")
            onset = aware_datetime(c.onsetDateTime) if c.onsetDateTime else None
            abated = aware_datetime(c.abatementDateTime) if c.abatementDateTime else None
            if patient:
                self._problem_list[patient].append((codes, onset, abated))

    def _add_claim(self, c: Claim, location: str) -> None:
        encounters = {reference_id(ref.reference, "Encounter") for item in c.item or [] for ref in item.encounter or []}
        rec = self.claims.setdefault(c.id, ClaimRecord(c.id, set()))
        rec.encounter_ids |= {e for e in encounters if e}
        self._billed_codes[c.id] += _diagnosis_codes(c.diagnosis)

    def _add_explanationOfBenefit(self, eob: ExplanationOfBenefit, location: str) -> None:
        self._eobs.append(eob)

    def _add_coverage(self, c: Coverage, location: str) -> None:
        patient = reference_id(c.beneficiary.reference if c.beneficiary else None, "Patient")
        payer = next((p.display for p in c.payor or [] if p.display), None) or (c.type.text if c.type else None)
        if patient and payer:
            self._coverage_payer[patient] = payer

    def finish(self, as_of: datetime | None) -> None:
        for resource, location in self._awaiting_identifier:
            self._identifiers.resolve(resource, location, self.problems, final=True)
            self._add_resolved(resource, location)
        self._awaiting_identifier.clear()
        self._link_diagnosis_codes()
        for eob in self._eobs:
            claim_id = reference_id(eob.claim.reference if eob.claim else None, "Claim")
            encounters = {reference_id(ref.reference, "Encounter") for item in eob.item or [] for ref in item.encounter or []}
            rec = self.claims.setdefault(claim_id or f"eob:{eob.id}", ClaimRecord(claim_id or eob.id, set()))
            rec.encounter_ids |= {e for e in encounters if e}
            rec.eob_count += 1
            rec.appealed |= _is_appeal_decision(eob) or (rec.denied and rec.eob_count > 1)
            rec.denied |= _denied(eob)
            self._billed_codes[rec.id] += _diagnosis_codes(eob.diagnosis)
        for claim in self.claims.values():
            for encounter_id in claim.encounter_ids:
                self.claims_by_encounter[encounter_id].append(claim)
                if encounter_id in self.encounters and self._billed_codes.get(claim.id):
                    self._add_stay_codes(encounter_id, self._billed_codes[claim.id], "claim-diagnosis")
        for patient_id, payer in self._coverage_payer.items():
            if patient_id in self.patients:
                self.patients[patient_id].payer = payer
        for stays in self.by_patient.values():
            stays.sort(key=lambda e: (e.start is None, e.start or datetime.min.replace(tzinfo=UTC), e.id))
        def resolve(url: str) -> dict | None:  # "Binary/1", an absolute or a versioned URL of a Binary in the export
            binary_id = reference_id(url, "Binary")
            return self._binaries.get(f"Binary/{binary_id}") if binary_id else None

        seen: dict[tuple[str, str | None], int] = {}
        replaced = _replaced_documents(self._note_resources)
        for resource, location in self._note_resources:
            if resource.get("status") == "entered-in-error" or resource.get("docStatus") == "entered-in-error":
                self.problems.add(Problem("entered-in-error", location, resource.get("resourceType"), resource.get("id")))
                continue
            if resource.get("status") == "superseded" or (resource.get("resourceType"), resource.get("id")) in replaced:
                # a newer document replaces this one: one current note per document is labeled
                self.problems.add(Problem("superseded", location, resource.get("resourceType"), resource.get("id")))
                continue
            if resource.get("resourceType") == "DocumentReference" and self.data.note_type_map:
                resource = self._mapped_note_type(resource)
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
        self._note_resources.clear()
        self.data_end = as_of or self._latest_seen
        self.horizon_source = "--as-of" if as_of else "latest encounter time in the data"

    def _link_diagnosis_codes(self) -> None:
        """The paper's CCI reads the ICD codes associated with the encounter: Conditions that name
        it, Conditions it names (Encounter.diagnosis), and (once claims are read) the diagnoses
        billed for it (Claim/ExplanationOfBenefit.diagnosis). `code_sources` counts the stays
        each source contributed codes to."""
        for encounter_id, codes in self._conditions.items():
            if encounter_id in self.encounters:
                self._add_stay_codes(encounter_id, codes, "condition-encounter")
        for encounter_id, condition_ids in self._diagnosis_refs.items():
            codes = [code for cid in condition_ids for code in self._condition_codes.get(cid, [])]
            if encounter_id in self.encounters:
                self._add_stay_codes(encounter_id, codes, "encounter-diagnosis")
        if self.data.cci_problem_list:
            for stay in self.encounters.values():
                if stay.start is None or not stay.inpatient:
                    continue
                codes = [code for codes, onset, abated in self._problem_list.get(stay.patient_id or "", [])
                         if (onset is None or onset <= stay.start) and (abated is None or abated > stay.start)
                         for code in codes]
                self._add_stay_codes(stay.id, codes, "problem-list")

    def _add_stay_codes(self, encounter_id: str, codes: list[str], source: str) -> None:
        stay = self.encounters[encounter_id]
        new = [code for code in codes if code not in stay.icd10]
        if new:
            stay.icd10 = stay.icd10 + new
            self.code_sources[source] += 1

    def _mapped_note_type(self, resource: dict) -> dict:
        """A DocumentReference whose local type code is mapped (settings data.note_type_map) gets
        the LOINC coding added beside its own."""
        codings = ((resource.get("type") or {}).get("coding") or []) if isinstance(resource.get("type"), dict) else []
        added = [{"system": LOINC, "code": self.data.note_type_map[c["code"]]} for c in codings
                 if isinstance(c, dict) and c.get("code") in self.data.note_type_map]
        if not added:
            return resource
        self.problems.repaired("local-note-type")
        return {**resource, "type": {**resource["type"], "coding": [*codings, *added]}}


_NAIVE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")  # a dateTime with a time and no offset


def _without_empty_strings(value, problems: ProblemLog):
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            if child == "":
                problems.repaired("empty-value")
                continue
            out[key] = _without_empty_strings(child, problems)
        return out
    if isinstance(value, list):
        kept = [v for v in value if v != ""]
        if len(kept) != len(value):
            problems.repaired("empty-value")
        return [_without_empty_strings(v, problems) for v in kept]
    return value


def _replaced_documents(resources: list[tuple[dict, str]]) -> set[tuple[str, str]]:
    """(type, id) of notes another note says it replaces (relatesTo code "replaces" on a
    DocumentReference or Composition)."""
    out = set()
    for resource, _ in resources:
        relations = resource.get("relatesTo")
        for relation in relations if isinstance(relations, list) else []:
            if not isinstance(relation, dict) or relation.get("code") != "replaces":
                continue
            target = relation.get("target") if isinstance(relation.get("target"), dict) else {}
            reference = target.get("reference") or (relation.get("targetReference") or {}).get("reference")
            kind = resource.get("resourceType")
            target_id = reference_id(reference, kind) if isinstance(reference, str) else None
            if target_id:
                out.add((kind, target_id))
    return out


def _diagnosis_codes(diagnoses) -> list[str]:
    """ICD-10 codes of Claim.diagnosis / ExplanationOfBenefit.diagnosis entries."""
    return [code for d in diagnoses or [] for system, code in _codes(d.diagnosisCodeableConcept)
            if system in ICD10_SYSTEMS and code]


def _is_appeal_decision(eob: ExplanationOfBenefit) -> bool:
    """An EOB that decides on a prior claim (CARIN/X12: `related` with relationship "prior")."""
    return any(code == "prior" for related in eob.related or [] for _, code in _codes(related.relationship))


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
    if enc.klass is None:
        raise NoLabel("no-encounter-class")
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
    if enc.disposition in EXPIRED_DISPOSITIONS:
        return True
    patient = records.patients.get(enc.patient_id or "")
    if patient and patient.deceased_unknown_time:
        # deceasedBoolean: dead, but when? A stay that was the patient's last, with no
        # disposition saying they left alive, cannot be labeled either way
        last = records.by_patient.get(enc.patient_id or "", [])[-1:]
        if enc.disposition is None and last and last[0].id == enc.id:
            raise NoLabel("death-time-unknown")
        return False
    if not (patient and patient.deceased_at):
        return False
    if patient.death_date_only:
        # only the day is known (in the hospital's calendar): a death on the discharge day is in
        # hospital unless a disposition says the patient left alive
        day = patient.deceased_at.date()
        return enc.day(enc.start) <= day < enc.day(enc.end) or (day == enc.day(enc.end) and enc.disposition is None)
    return enc.start <= patient.deceased_at <= enc.end


def died_after_discharge(enc: EncounterRecord, patient: PatientRecord) -> bool:
    """Called for stays already known not to end in death (see died_in_hospital)."""
    if patient.death_date_only:
        return patient.deceased_at.date() >= enc.day(enc.end)
    return patient.deceased_at > enc.end


def readmission(enc: EncounterRecord, records: HospitalRecords) -> int:
    _finished(enc)
    if enc.excluded_service:
        raise NoLabel("excluded-service")
    if died_in_hospital(enc, records):
        raise NoLabel("died-in-hospital")
    if enc.disposition == "other-hcf":
        raise NoLabel("transferred-out")
    horizon = enc.day(enc.end) + timedelta(days=READMISSION_DAYS)
    for later in records.by_patient.get(enc.patient_id or "", []):  # sorted by start
        # stays that overlap this one (concurrent records) are neither transfers nor readmissions
        if later.id == enc.id or later.start is None or later.start < enc.end:
            continue
        if enc.day(later.start) > horizon:
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
    if records.data_end is None or records.data_end < datetime.combine(horizon, time(23, 59, 59), tzinfo=enc.zone):
        raise NoLabel("follow-up-incomplete")
    return 0


def mortality(enc: EncounterRecord, records: HospitalRecords) -> int:
    return int(died_in_hospital(_finished(enc), records))


def los_days(enc: EncounterRecord) -> int:
    _finished(enc)
    return (enc.day(enc.end) - enc.day(enc.start)).days  # midnights in the hospital's time zone


def charlson(enc: EncounterRecord) -> int:
    _finished(enc)
    if not enc.icd10:
        # a stay coded in SNOMED CT only lands here too: the Charlson index is defined on ICD-10
        raise NoLabel("no-diagnosis-codes")
    return charlson_index(enc.icd10)


def denial(enc: EncounterRecord, records: HospitalRecords) -> int:
    """The label of `records.data.denial_definition` (see lang1ops.settings.data.DataSettings)."""
    _finished(enc)
    claims = records.claims_by_encounter.get(enc.id, [])
    appealed_definition = records.data.denial_definition == "appealed"
    if not claims:
        if appealed_definition:
            return 0  # the paper: everything that is not a final determination after appeal is negative
        raise NoLabel("no-claim")
    if not any(c.eob_count for c in claims):
        raise NoLabel("claim-pending")
    if appealed_definition:
        return int(any(c.denied and c.appealed for c in claims))
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
