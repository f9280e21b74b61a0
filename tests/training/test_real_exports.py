"""Shapes real EHR exports and generators send, each reproduced small: the labels they must get
and the repairs or refusals counted on the way (issue: real EHR exports in)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from lang1ops.settings.data import DataSettings
from tests.training.test_labels import (
    DS,
    HP,
    LATE,
    at,
    claim,
    coded,
    condition,
    eob,
    export,
    labels_of,
    note,
    patient,
    stay,
)
from training.labels import HospitalRecords

NUBC = "https://www.nubc.org/CodeSystem/PatDischargeStatus"


def load(directory: Path, *resources: dict, data: DataSettings | None = None, as_of: str | None = LATE):
    from datetime import datetime

    return HospitalRecords.load(export(directory, *resources), as_of=datetime.fromisoformat(as_of) if as_of else None,
                                data=data)


# --- deaths, however they are recorded ------------------------------------------------------


def test_nubc_expired_disposition_is_an_in_hospital_death(tmp_path):
    index = stay("e1", at(-4), at(0), disposition=None)
    index["hospitalization"]["dischargeDisposition"] = coded(NUBC, "20")
    records = load(tmp_path, patient(), index, note("hp", "e1"))
    assert labels_of(records, "hp")["mortality"] == 1


def test_date_only_death_on_the_discharge_day_without_disposition(tmp_path):
    index = stay("e1", at(-4), at(0, 22), disposition=None)
    records = load(tmp_path, patient(deceased=at(0)[:10]), index, note("hp", "e1"),
                   data=DataSettings(timezone="America/New_York"))
    # 22:00Z is 17:00 in New York: the death day (a New York calendar day) is the discharge day
    assert labels_of(records, "hp")["mortality"] == 1


def test_deceased_boolean_on_the_last_stay_is_no_label_not_a_survivor(tmp_path):
    person = patient() | {"deceasedBoolean": True}
    records = load(tmp_path, person, stay("e1", at(-4), at(0), disposition=None), note("hp", "e1"))
    assert labels_of(records, "hp")["mortality"] == "death-time-unknown"
    # a disposition that says the patient left alive settles it
    records = load(tmp_path / "b", person, stay("e1", at(-4), at(0), disposition="home"), note("hp", "e1"))
    assert labels_of(records, "hp")["mortality"] == 0


# --- codes by OID and local codes -------------------------------------------------------------


def test_icd10_and_loinc_by_oid(tmp_path):
    hf = condition("c1", "e1", "I50.9", system="urn:oid:2.16.840.1.113883.6.90")
    ckd = condition("c2", "e1", "N18.4", system="urn:oid:2.16.840.1.113883.6.90")
    hp = note("hp", "e1")
    hp["type"] = coded("urn:oid:2.16.840.1.113883.6.1", HP)
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), hf, ckd, hp, claim("c", "e1"), eob("x", "c"))
    labels = labels_of(records, "hp")
    assert set(labels) == {"mortality", "los", "cci", "denial"} and labels["cci"] == 2  # 1+2: bin 3-4


def test_local_codes_are_mapped_from_settings_and_counted(tmp_path):
    index = stay("e1", at(-4), at(0), klass="1", disposition=None)  # an Epic-style local class code
    index["hospitalization"]["dischargeDisposition"] = coded("urn:oid:1.2.840.114350.1.13.99", "D20")
    hp = note("hp", "e1")
    hp["type"] = coded("urn:oid:1.2.840.114350.1.13.99.7", "HP-NOTE")
    settings = DataSettings(encounter_class_map={"1": "IMP"}, discharge_disposition_map={"D20": "exp"},
                            note_type_map={"HP-NOTE": HP})
    unmapped = load(tmp_path / "a", patient(), index, hp)
    assert unmapped.notes[0].note_type is None  # without the map: not a note type the tasks read
    records = load(tmp_path / "b", patient(), index, hp, data=settings)
    assert labels_of(records, "hp")["mortality"] == 1
    assert {k: records.problems.repairs[k] for k in ("local-encounter-class", "local-discharge-disposition",
                                                     "local-note-type")} == dict.fromkeys(
        ("local-encounter-class", "local-discharge-disposition", "local-note-type"), 1)


# --- lenient where the meaning is clear -------------------------------------------------------


def test_naive_period_and_empty_strings_are_repaired_and_counted(tmp_path):
    index = stay("e1", "2024-02-26T12:00:00", "2024-03-01T12:00:00")  # no offset: hospital time
    person = patient() | {"name": [{"family": "Doe", "given": [""]}]}
    records = load(tmp_path, person, index, note("hp", "e1"), data=DataSettings(timezone="America/Chicago"))
    assert labels_of(records, "hp")["los"] == 2  # Feb 26 to Mar 1 of a leap year: 4 days, the 4-5 bin
    assert records.problems.repairs["naive-timestamp"] == 2 and records.problems.repairs["empty-value"] >= 1
    assert records.encounters["e1"].start.utcoffset().total_seconds() == -6 * 3600
    assert "invalid-resource" not in records.problems.counts()


def test_missing_encounter_class_keeps_the_stay_and_says_why(tmp_path):
    index = stay("e1", at(-4), at(0))
    del index["class"]
    records = load(tmp_path / "a", patient(), index, note("hp", "e1"))
    assert "invalid-resource" not in records.problems.counts()  # the stay and its demographics are kept
    assert labels_of(records, "hp")["mortality"] == "no-encounter-class"
    assert records.problems.repairs["encounter-class-missing"] == 1
    records = load(tmp_path / "b", patient(), index, note("hp", "e1"), data=DataSettings(default_encounter_class="IMP"))
    assert labels_of(records, "hp")["mortality"] == 0 and records.problems.repairs["encounter-class-default"] == 1


MRN, VISIT = "urn:oid:1.2.840.114350.1.13.99.2.7.5.737384.14", "urn:oid:1.2.840.114350.1.13.99.2.7.3.698084.8"


def test_references_by_identifier_resolve_in_any_order(tmp_path):
    person = patient() | {"identifier": [{"system": MRN, "value": "MRN-001"}]}
    index = stay("e1", at(-4), at(0), disposition="exp") | {"identifier": [{"system": VISIT, "value": "V-77"}]}
    index["subject"] = {"type": "Patient", "identifier": {"system": MRN, "value": "MRN-001"}}
    hp = note("hp", None) | {"subject": {"identifier": {"system": MRN, "value": "MRN-001"}},  # no type: still unique
                             "context": {"encounter": [{"type": "Encounter", "identifier": {"system": VISIT, "value": "V-77"}}]}}
    # the note comes first in the export, before the encounter and patient it names
    records = load(tmp_path, hp, index, person)
    labels = labels_of(records, "hp")
    assert labels["mortality"] == 1 and records.encounters["e1"].patient_id == "p1"
    assert records.problems.repairs["identifier-reference"] == 3


def test_an_identifier_nobody_or_two_resources_carry_is_reported(tmp_path):
    twins = [patient(pid) | {"identifier": [{"system": MRN, "value": "MRN-dup"}]} for pid in ("p1", "p2")]
    index = stay("e1", at(-4), at(0))
    hp = note("hp", None) | {"context": {"encounter": [{"identifier": {"system": VISIT, "value": "V-404"}}]}}
    index["subject"] = {"identifier": {"system": MRN, "value": "MRN-dup"}}
    # an element that only carries an identifier among other fields is not a reference
    insured = claim("c", "e1") | {"insurance": [{"sequence": 1, "focal": True, "identifier": {"value": "POL-9"},
                                                  "coverage": {"reference": "Coverage/cov-p1"}}]}
    records = load(tmp_path, *twins, index, hp, insured)
    problems = records.problems.counts()
    assert problems["unresolved-identifier-reference"] == 2  # the ambiguous MRN and the unknown visit
    assert labels_of(records, "hp")["mortality"] == "no-encounter"
    assert records.encounters["e1"].patient_id is None  # never guessed between two patients


# --- one current note per document --------------------------------------------------------------


def test_superseded_and_replaced_notes_are_dropped(tmp_path):
    old = note("hp-old", "e1", status="superseded")
    replaced = note("hp-v1", "e1")
    newer = note("hp-v2", "e1", relatesTo=[{"code": "replaces", "target": {"reference": "DocumentReference/hp-v1"}}])
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), old, replaced, newer)
    assert [n.resource_id for n in records.notes] == ["hp-v2"]
    assert records.problems.counts()["superseded"] == 2


# --- Synthea-style transaction Bundles ----------------------------------------------------------


def test_transaction_bundles_with_urn_uuid_references_label_like_ndjson(tmp_path):
    ids = {name: str(uuid.uuid4()) for name in ("patient", "stay", "ds")}
    resources = [patient(ids["patient"]), stay(ids["stay"], at(-4), at(0), pid=ids["patient"]),
                 note(ids["ds"], ids["stay"], DS, pid=ids["patient"])]
    entries = []
    for resource in resources:
        text = json.dumps(resource)
        for key, value in ids.items():  # every reference through the entry's urn:uuid fullUrl
            kind = {"patient": "Patient", "stay": "Encounter", "ds": "DocumentReference"}[key]
            text = text.replace(f'"{kind}/{value}"', f'"urn:uuid:{value}"')
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": json.loads(text),
                        "request": {"method": "POST", "url": resource["resourceType"]}})
    (tmp_path / "fhir").mkdir()
    (tmp_path / "fhir" / "patient.json").write_text(json.dumps({"resourceType": "Bundle", "type": "transaction",
                                                                "entry": entries}))
    from datetime import datetime

    records = HospitalRecords.load(tmp_path / "fhir", as_of=datetime.fromisoformat(LATE))
    assert labels_of(records, ids["ds"]) == {"readmission": 0}
    assert records.problems.repairs["bundle-reference"] >= 3


@pytest.mark.parametrize("as_of, horizon", [(None, "latest encounter time in the data"), (LATE, "--as-of")])
def test_the_build_says_which_horizon_it_used(tmp_path, as_of, horizon):
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), note("hp", "e1"), as_of=as_of)
    assert records.horizon_source == horizon


# --- note shapes ---------------------------------------------------------------------------------

CCDA = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody>
<component><section><title>History of present illness</title><text>78 yo with <content>CHF</content> and CKD.</text>
<entry><observation><value code="I50.9"/></observation></entry></section></component>
<component><section><title>Plan</title><text><list><item>Diuresis</item><item>Daily weights</item></list></text>
</section></component></structuredBody></component></ClinicalDocument>"""


def test_note_shapes_real_systems_send(tmp_path):
    from tests.training.test_labels import b64

    ccda = note("cda", "e1", attachment={"contentType": "application/xml", "data": b64(CCDA)})
    cp1252 = note("cp", "e1", attachment={"contentType": "text/plain", "data": b64("Caf\u00e9 au lait \u2013 fine".encode("cp1252"))})
    by_url = note("url", "e1", attachment={"contentType": "text/plain",
                                           "url": "https://ehr.example/fhir/Binary/b1/_history/3"})
    binary = {"resourceType": "Binary", "id": "b1", "contentType": "text/plain", "data": b64("HPI: from a Binary.")}
    r5 = note("r5", "e1") | {"context": [{"reference": "Encounter/e1"}]}
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), ccda, cp1252, by_url, binary, r5)
    texts = {n.resource_id: n.text for n in records.notes}
    assert "History of present illness\n78 yo with CHF and CKD." in texts["cda"] and "Diuresis Daily weights" in texts["cda"]
    assert "I50.9" not in texts["cda"]  # coded entries are not the narrative
    assert texts["cp"] == "Café au lait – fine"
    assert texts["url"] == "HPI: from a Binary."
    assert "r5" not in texts and records.problems.counts()["fhir-r5"] == 1
    assert "R5" in records.problems.examples("fhir-r5")[0].detail


def test_composition_with_only_a_document_narrative(tmp_path):
    composition = {"resourceType": "Composition", "id": "comp", "status": "final", "date": at(0),
                   "type": coded("http://loinc.org", DS), "title": "Discharge summary", "author": [{"display": "Dr X"}],
                   "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
                   "text": {"status": "generated",
                            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Discharged home, stable.</p></div>'}}
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), composition)
    assert [n.text for n in records.notes] == ["Discharged home, stable."]


def test_cci_reads_every_place_the_stays_codes_live(tmp_path):
    """Heart failure on the problem list named by Encounter.diagnosis, CKD billed on the claim,
    diabetes with complications on the EOB: all three count (1 + 2 + 2 = 5, the 5-7 bin)."""
    index = stay("e1", at(-4), at(0))
    index["diagnosis"] = [{"condition": {"reference": "Condition/hf"}}]
    problem_list = condition("hf", None, "I50.9")
    billed = claim("c1", "e1") | {"diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": coded(
        "http://hl7.org/fhir/sid/icd-10-cm", "N18.4")}]}
    explained = eob("x1", "c1") | {"diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": coded(
        "http://hl7.org/fhir/sid/icd-10-cm", "E11.21")}]}
    records = load(tmp_path, patient(), index, problem_list, billed, explained, note("hp", "e1"))
    assert sorted(records.encounters["e1"].icd10) == ["E11.21", "I50.9", "N18.4"]
    assert labels_of(records, "hp")["cci"] == 3
    assert records.code_sources == {"encounter-diagnosis": 1, "claim-diagnosis": 1}


def test_r5_encounters_and_snomed_only_conditions_are_reported(tmp_path):
    r5 = stay("e2", at(-4), at(0)) | {"class": [coded("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP")]}
    snomed = condition("s1", "e1", "84114007", system="http://snomed.info/sct")
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), r5, snomed, note("hp", "e1"))
    assert records.problems.counts()["fhir-r5"] == 1 and "R5" in records.problems.examples("fhir-r5")[0].detail
    assert records.snomed_only_conditions == 1 and labels_of(records, "hp")["cci"] == "no-diagnosis-codes"


@pytest.mark.parametrize("definition, denied_only, appealed, no_claim", [
    ("any-denial", 1, 1, "no-claim"),
    ("appealed", 0, 1, 0),  # the paper: final determination after appeal, adverse or favourable
])
def test_both_denial_definitions(tmp_path, definition, denied_only, appealed, no_claim):
    settings = DataSettings(denial_definition=definition)
    first = eob("x1", "c1", denied=True)
    appeal = eob("x2", "c1") | {"related": [{"claim": {"reference": "Claim/c1"},
                                            "relationship": coded("http://terminology.hl7.org/CodeSystem/"
                                                                  "related-claim-relationship", "prior")}]}
    base = [patient(), stay("e1", at(-4), at(0)), note("hp", "e1")]
    assert labels_of(load(tmp_path / "a", *base, claim("c1", "e1"), first, data=settings), "hp")["denial"] == denied_only
    assert labels_of(load(tmp_path / "b", *base, claim("c1", "e1"), first, appeal, data=settings),
                     "hp")["denial"] == appealed
    assert labels_of(load(tmp_path / "c", *base, data=settings), "hp")["denial"] == no_claim


def test_problem_list_conditions_active_at_admission_count_only_when_asked(tmp_path):
    chronic = condition("ckd", None, "N18.4") | {"onsetDateTime": at(-400)}
    resolved = condition("old", None, "I21.9") | {"onsetDateTime": at(-900), "abatementDateTime": at(-800)}
    later = condition("new", None, "C34.90") | {"onsetDateTime": at(5)}
    resources = [patient(), stay("e1", at(-4), at(0)), chronic, resolved, later, note("hp", "e1")]
    assert labels_of(load(tmp_path / "a", *resources), "hp")["cci"] == "no-diagnosis-codes"  # the paper's default
    records = load(tmp_path / "b", *resources, data=DataSettings(cci_problem_list=True))
    assert records.encounters["e1"].icd10 == ["N18.4"] and labels_of(records, "hp")["cci"] == 1
    assert records.code_sources == {"problem-list": 1}
