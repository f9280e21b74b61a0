"""training.labels: every label rule on small hand-written FHIR exports, and what bad input costs.

Each case is a few resources built by the helpers below, written to tmp_path as ndjson (one file
per resource type, with a Bulk Data manifest when a transactionTime is given) and loaded with
`HospitalRecords.load`. Times are UTC and counted from day 0, the index discharge day:
`at(30, 23)` is 23:00 on the 30th calendar day after it. The index stay of the readmission
cases runs from noon on day -4 to noon on day 0.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lang1ops.settings.data import DataSettings
from training.labels import HospitalRecords, NoLabel, label_note, los_days

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
ADMIT_SOURCE = "http://terminology.hl7.org/CodeSystem/admit-source"
SERVICE_TYPE = "http://lang1-ops.org/fhir/CodeSystem/hospital-service"
C4BB_ADJ = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"

HP, DS, PROGRESS_NOTE = "34117-2", "18842-5", "11506-3"  # LOINC: H&P, discharge summary, progress note
HP_TASKS = {"mortality", "los", "cci", "denial"}
SECRET = "Zebulon Quackenbush MRN 99812345"

DAY0 = datetime(2024, 3, 1, tzinfo=UTC)


def at(day: int, hour: int = 12) -> str:
    """`hour` o'clock (UTC) on calendar day `day` after DAY0, as a FHIR instant."""
    return (DAY0 + timedelta(days=day, hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")


LATE = at(90)  # a data horizon long after every follow-up window


# --- resources ---------------------------------------------------------------------------------


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode("ascii")


def coded(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def patient(pid: str = "p1", *, deceased: str | None = None, birth: str = "1950-06-15", sex: str = "female") -> dict:
    r = {"resourceType": "Patient", "id": pid, "gender": sex, "birthDate": birth}
    if deceased:
        r["deceasedDateTime"] = deceased
    return r


def coverage(pid: str, payer: str) -> dict:
    return {"resourceType": "Coverage", "id": f"cov-{pid}", "status": "active",
            "beneficiary": {"reference": f"Patient/{pid}"}, "payor": [{"display": payer}]}


def stay(eid: str, start: str, end: str | None = None, *, pid: str = "p1", klass: str = "IMP",
         service: str = "medicine", disposition: str | None = "home", admit_source: str = "emd",
         status: str | None = None) -> dict:
    """An Encounter; finished when it has an end, in progress otherwise."""
    hospitalization = {"admitSource": coded(ADMIT_SOURCE, admit_source)}
    if disposition:
        hospitalization["dischargeDisposition"] = coded(DISPOSITION, disposition)
    return {
        "resourceType": "Encounter", "id": eid, "status": status or ("finished" if end else "in-progress"),
        "class": {"system": ACT_CODE, "code": klass},
        "serviceType": {**coded(SERVICE_TYPE, service), "text": service},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start} | ({"end": end} if end else {}),
        "hospitalization": hospitalization,
    }


def condition(cid: str, eid: str | None, code: str, *, system: str = ICD10CM, pid: str = "p1",
              verification: str = "confirmed") -> dict:
    r = {"resourceType": "Condition", "id": cid, "code": coded(system, code), "subject": {"reference": f"Patient/{pid}"},
         "verificationStatus": coded("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification)}
    if eid:
        r["encounter"] = {"reference": f"Encounter/{eid}"}
    return r


def note(nid: str, eid: str | None, loinc: str = HP, *, pid: str = "p1", text: str = "Admitted with pneumonia.",
         content_type: str = "text/plain; charset=utf-8", data: str | None = None, attachment: dict | None = None,
         date: str | None = None, **extra) -> dict:
    """A DocumentReference of LOINC type `loinc` holding `text` inline as base64."""
    attachment = attachment or {"contentType": content_type, "data": b64(text) if data is None else data}
    r = {"resourceType": "DocumentReference", "id": nid, "status": "current", "type": coded(LOINC, loinc),
         "subject": {"reference": f"Patient/{pid}"}, "content": [{"attachment": attachment}], **extra}
    if date:
        r["date"] = date
    if eid:
        r["context"] = {"encounter": [{"reference": f"Encounter/{eid}"}]}
    return r


def _billing(resource_type: str, rid: str, pid: str) -> dict:
    return {"resourceType": resource_type, "id": rid, "status": "active", "type": coded(ADJUDICATION, "institutional"),
            "use": "claim", "patient": {"reference": f"Patient/{pid}"}, "created": "2024-04-01",
            "insurer": {"display": "Acme Health"}, "provider": {"display": "General Hospital"}}


def claim(cid: str, eid: str, *, pid: str = "p1") -> dict:
    """An institutional Claim whose item names the stay."""
    return _billing("Claim", cid, pid) | {
        "priority": coded("http://terminology.hl7.org/CodeSystem/processpriority", "normal"),
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{pid}"}}],
        "item": [{"sequence": 1, "encounter": [{"reference": f"Encounter/{eid}"}], "productOrService": {"text": "Room"}}],
    }


def eob(xid: str, claim_id: str | None = None, *, eid: str | None = None, denied: bool = False,
        item_denied: bool = False, pid: str = "p1") -> dict:
    """An ExplanationOfBenefit for `claim_id` (and/or naming the stay `eid` on its item). A denial is a
    CARIN `denialreason` adjudication, on the EOB (`denied`) or on its item (`item_denied`)."""
    denial = {"category": coded(C4BB_ADJ, "denialreason"),
              "reason": coded("https://x12.org/codes/claim-adjustment-reason-codes", "50")}
    item = {"sequence": 1, "productOrService": {"text": "Room"},
            "adjudication": [{"category": coded(ADJUDICATION, "submitted")}] + ([denial] if item_denied else [])}
    if eid:
        item["encounter"] = [{"reference": f"Encounter/{eid}"}]
    r = _billing("ExplanationOfBenefit", xid, pid) | {
        "outcome": "complete", "item": [item],
        "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/cov-{pid}"}}],
    }
    if claim_id:
        r["claim"] = {"reference": f"Claim/{claim_id}"}
    if denied:
        r["adjudication"] = [denial]
    return r


# --- writing and loading -----------------------------------------------------------------------


def ndjson(path: Path, *lines: dict | str) -> Path:
    """Lines as written: dicts as JSON, strings verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def export(directory: Path, *resources: dict, transaction_time: str | None = None) -> Path:
    """One `<Type>.ndjson` per resource type, in the order given; with a transactionTime, a
    Bulk Data manifest listing them too."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in resources:
        by_type[r["resourceType"]].append(r)
    for kind, items in by_type.items():
        ndjson(directory / f"{kind}.ndjson", *items)
    if transaction_time:
        output = [{"type": kind, "url": f"{kind}.ndjson"} for kind in by_type]
        (directory / "manifest.json").write_text(json.dumps({
            "transactionTime": transaction_time, "request": "https://ehr.example/fhir/$export",
            "requiresAccessToken": True, "output": output, "error": []}))
    return directory


def instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def load(tmp_path: Path, *resources: dict, as_of: str | None = None,
         transaction_time: str | None = None, timezone: str = "UTC", data: DataSettings | None = None) -> HospitalRecords:
    return HospitalRecords.load(export(tmp_path / "fhir", *resources, transaction_time=transaction_time),
                                as_of=instant(as_of), data=data or DataSettings(timezone=timezone))


def labels_of(records: HospitalRecords, note_id: str) -> dict[str, int | str]:
    """label_note of the note `note_id`, each NoLabel replaced by its reason."""
    found = next(n for n in records.notes if n.resource_id == note_id)
    _, labels = label_note(found, records)
    return {task: value.reason if isinstance(value, NoLabel) else value for task, value in labels.items()}


# --- readmission -------------------------------------------------------------------------------


def readmission_of(tmp_path: Path, *others: dict, index: dict | None = None, person: dict | None = None,
                   as_of: str | None = LATE, transaction_time: str | None = None) -> int | str:
    """The readmission label of the discharge summary of `index` (by default a medicine stay from
    noon on day -4 to noon on day 0, discharged home) with `others` in the same export."""
    index = index or stay("index", at(-4), at(0))
    records = load(tmp_path, person or patient(), index, note("ds", index["id"], DS), *others,
                   as_of=as_of, transaction_time=transaction_time)
    labels = labels_of(records, "ds")
    assert set(labels) == {"readmission"}
    return labels["readmission"]


@pytest.mark.parametrize("later, expected", [
    pytest.param([stay("r", at(1, 9), at(3))], 1, id="day-1"),
    pytest.param([stay("r", at(30, 23), at(33))], 1, id="day-30-counts-late-evening"),
    pytest.param([stay("r", at(31, 0), at(33))], 0, id="day-31-just-after-midnight"),
    pytest.param([stay("r", at(0, 18), at(2))], 1, id="same-day-after-discharge"),
    pytest.param([stay("r", at(5), at(5, 20), klass="EMER")], 0, id="emergency-visit"),
    pytest.param([stay("r", at(5), at(5, 13), klass="AMB")], 0, id="clinic-visit"),
    pytest.param([stay("r", at(2), at(12), service="rehabilitation")], 0, id="rehab-stay"),
    pytest.param([stay("r", at(2), at(2, 16), service="dialysis")], 0, id="dialysis-stay"),
    pytest.param([stay("r", at(2), at(9), service="palliative care")], 0, id="palliative-stay"),
    pytest.param([stay("r", at(-2), at(1))], 0, id="overlapping-concurrent-stay"),
    pytest.param([stay("r", at(-10), at(-6))], 0, id="earlier-stay"),
    pytest.param([patient("p2"), stay("r", at(3), at(6), pid="p2")], 0, id="another-patients-stay"),
    pytest.param([stay("ed", at(4), at(4, 20), klass="EMER"), stay("rehab", at(5), at(15), service="rehabilitation"),
                  stay("r", at(20), at(25))], 1, id="inpatient-after-emer-and-rehab"),
    pytest.param([stay("r", at(1, 12), at(5), admit_source="hosp-trans")], "transferred-out",
                 id="from-another-hospital-exactly-24h-later"),
    pytest.param([stay("r", at(1, 13), at(5), admit_source="hosp-trans")], 1,
                 id="from-another-hospital-25h-later-is-a-readmission"),
    pytest.param([stay("r", at(0, 20), at(5), admit_source="hosp-trans", service="rehabilitation")], 0,
                 id="transfer-to-rehab-is-neither"),
])
def test_readmission_window(tmp_path, later, expected):
    assert readmission_of(tmp_path, *later) == expected


@pytest.mark.parametrize("service", ["rehabilitation", "dialysis", "palliative care", "hospice"])
def test_index_stay_of_excluded_service(tmp_path, service):
    index = stay("index", at(-4), at(0), service=service)
    assert readmission_of(tmp_path, stay("r", at(3), at(5)), index=index) == "excluded-service"


def test_excluded_service_found_in_encounter_type_text(tmp_path):
    index = stay("index", at(-4), at(0)) | {"type": [{"text": "Inpatient Rehab Facility stay"}]}
    assert readmission_of(tmp_path, index=index) == "excluded-service"


def test_death_in_hospital_by_disposition(tmp_path):
    index = stay("index", at(-4), at(0), disposition="exp")
    assert readmission_of(tmp_path, index=index) == "died-in-hospital"


def test_death_in_hospital_by_death_time_inside_the_stay(tmp_path):
    index = stay("index", at(-4), at(0), disposition=None)
    assert readmission_of(tmp_path, index=index, person=patient(deceased=at(-1))) == "died-in-hospital"


def test_transfer_out_by_disposition(tmp_path):
    index = stay("index", at(-4), at(0), disposition="other-hcf")
    assert readmission_of(tmp_path, stay("r", at(10), at(12)), index=index) == "transferred-out"


def test_transfer_out_by_receiving_stay_and_the_receiving_discharge_is_the_index(tmp_path):
    records = load(tmp_path, patient(),
                   stay("sending", at(-4), at(0)), note("ds-sending", "sending", DS),
                   stay("receiving", at(0, 15), at(6), admit_source="hosp-trans"), note("ds-receiving", "receiving", DS),
                   stay("again", at(20), at(23)),
                   as_of=LATE)
    assert labels_of(records, "ds-sending") == {"readmission": "transferred-out"}
    assert labels_of(records, "ds-receiving") == {"readmission": 1}  # "again" is 14 days after its discharge


def test_death_after_discharge_without_readmission_is_known_not_readmitted(tmp_path):
    # Only 15 days of data after discharge, but the patient died on day 10 at home.
    assert readmission_of(tmp_path, person=patient(deceased=at(10)), as_of=at(15)) == 0
    # Death on the discharge day, after leaving.
    assert readmission_of(tmp_path / "b", person=patient(deceased=at(0, 20)), as_of=at(5)) == 0


def test_death_after_a_readmission(tmp_path):
    later = stay("r", at(3), at(10), disposition="exp")
    assert readmission_of(tmp_path, later, person=patient(deceased=at(10)), as_of=at(15)) == 1


def test_death_after_the_30_days_does_not_complete_short_follow_up(tmp_path):
    assert readmission_of(tmp_path, person=patient(deceased=at(40)), as_of=at(15)) == "follow-up-incomplete"


def test_follow_up_shorter_than_30_days(tmp_path):
    assert readmission_of(tmp_path, as_of=at(15)) == "follow-up-incomplete"
    # A readmission already seen needs no more follow-up.
    assert readmission_of(tmp_path / "b", stay("r", at(3), at(5)), as_of=at(15)) == 1


@pytest.mark.parametrize("transaction_time, as_of, expected", [
    pytest.param(at(29), None, "follow-up-incomplete", id="manifest-29-days"),
    # the export ran a month later than its last data: when it ran says nothing about follow-up
    pytest.param(at(31), None, "follow-up-incomplete", id="manifest-time-is-not-the-horizon"),
    pytest.param(at(29), at(31), 0, id="as-of-overrides-manifest-later"),
    pytest.param(at(31), at(29), "follow-up-incomplete", id="as-of-overrides-manifest-earlier"),
    pytest.param(None, at(31), 0, id="as-of-without-manifest"),
])
def test_data_horizon(tmp_path, transaction_time, as_of, expected):
    assert readmission_of(tmp_path, as_of=as_of, transaction_time=transaction_time) == expected


def test_data_horizon_defaults_to_the_latest_time_in_the_data(tmp_path):
    # Without a manifest or as_of, the export ends with its latest encounter or note.
    assert readmission_of(tmp_path, as_of=None) == "follow-up-incomplete"
    other = [patient("p2"), stay("x", at(28), at(31), pid="p2")]
    assert readmission_of(tmp_path / "b", *other, as_of=None) == 0
    assert readmission_of(tmp_path / "c", *other[:1], stay("x", at(28), at(29), pid="p2"), as_of=None) == "follow-up-incomplete"


def test_data_ending_early_on_day_30_is_not_30_days_of_follow_up(tmp_path):
    # Discharged at noon on day 0; the export was taken at 00:00 on day 30: a readmission later
    # on day 30 would count but cannot be in the data.
    assert readmission_of(tmp_path, as_of=at(30, 0)) == "follow-up-incomplete"


def test_data_ending_after_day_30_is_complete(tmp_path):
    assert readmission_of(tmp_path, as_of=at(31, 0)) == 0


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_cancelled_later_stay_is_not_a_readmission(tmp_path, status):
    assert readmission_of(tmp_path, stay("r", at(5), at(8), status=status)) == 0


def test_readmission_of_an_unfinished_index_stay(tmp_path):
    assert readmission_of(tmp_path, index=stay("index", at(-4))) == "no-discharge"


# --- mortality ---------------------------------------------------------------------------------


def hp_labels(tmp_path: Path, *others: dict, index: dict | None = None, person: dict | None = None,
              data: DataSettings | None = None) -> dict:
    """label_note of an H&P on `index` (by default noon day -4 to noon day 0, discharged home)."""
    index = index or stay("e1", at(-4), at(0))
    records = load(tmp_path, person or patient(), index, note("hp", index["id"]), *others, as_of=LATE, data=data)
    labels = labels_of(records, "hp")
    assert set(labels) == HP_TASKS
    return labels


@pytest.mark.parametrize("disposition, deceased, expected", [
    pytest.param("exp", None, 1, id="disposition-expired"),
    pytest.param(None, at(-1), 1, id="no-disposition-death-inside-stay"),
    pytest.param(None, at(0), 1, id="death-at-the-discharge-time"),
    pytest.param("home", None, 0, id="alive"),
    pytest.param("home", at(5), 0, id="death-after-discharge"),
    pytest.param(None, at(0, 13), 0, id="death-an-hour-after-discharge"),
])
def test_mortality(tmp_path, disposition, deceased, expected):
    index = stay("e1", at(-4), at(0), disposition=disposition)
    assert hp_labels(tmp_path, index=index, person=patient(deceased=deceased))["mortality"] == expected


def test_death_date_without_time_on_the_day_of_discharge_home(tmp_path):
    # Discharged home at noon on day 0; the death is recorded as the date of day 0 only.
    person = patient(deceased=at(0)[:10])
    assert hp_labels(tmp_path, person=person)["mortality"] == 0
    assert readmission_of(tmp_path / "b", person=person, as_of=at(5)) == 0


def test_stay_without_discharge_has_no_hp_labels(tmp_path):
    in_progress = stay("e1", at(-4), disposition=None)
    assert hp_labels(tmp_path, index=in_progress) == dict.fromkeys(HP_TASKS, "no-discharge")
    # an end but still in progress is no discharge either
    unfinished = stay("e1", at(-4), at(0), status="in-progress")
    assert hp_labels(tmp_path / "b", index=unfinished) == dict.fromkeys(HP_TASKS, "no-discharge")


# --- length of stay ----------------------------------------------------------------------------


@pytest.mark.parametrize("start, end, days, los_bin, zone", [
    pytest.param("2024-03-01T08:00:00Z", "2024-03-01T20:00:00Z", 0, 0, "UTC", id="same-day"),
    pytest.param("2024-03-01T23:00:00Z", "2024-03-02T01:00:00Z", 1, 0, "UTC", id="across-midnight-2h"),
    pytest.param("2024-03-01T23:00:00-05:00", "2024-03-02T01:00:00-05:00", 1, 0, "America/New_York", id="local-midnight"),
    # the same stay written in UTC: still one of the hospital's midnights in between
    pytest.param("2024-03-02T04:00:00Z", "2024-03-02T06:00:00Z", 1, 0, "America/New_York", id="local-midnight-in-utc"),
    # one UTC day, but 23:30 and 00:30 in Paris: a night in the hospital's calendar
    pytest.param("2024-03-01T22:30:00Z", "2024-03-01T23:30:00Z", 1, 0, "Europe/Paris", id="paris-midnight-in-utc"),
    pytest.param("2024-03-01T00:30:00Z", "2024-03-03T23:30:00Z", 2, 0, "UTC", id="2-days"),
    pytest.param("2024-03-01T23:59:00Z", "2024-03-04T00:01:00Z", 3, 1, "UTC", id="3-days"),
    pytest.param("2024-03-01T10:00:00Z", "2024-03-05T10:00:00Z", 4, 2, "UTC", id="4-days"),
    pytest.param("2024-03-01T10:00:00Z", "2024-03-06T09:00:00Z", 5, 2, "UTC", id="5-days"),
    pytest.param("2024-03-01T10:00:00Z", "2024-03-07T09:00:00Z", 6, 3, "UTC", id="6-days"),
    pytest.param("2024-02-27T10:00:00Z", "2024-03-12T09:00:00Z", 14, 3, "UTC", id="across-leap-day"),
])
def test_length_of_stay_in_calendar_days(tmp_path, start, end, days, los_bin, zone):
    # midnights are counted in the hospital's time zone (settings data.timezone), whatever offset
    # each timestamp is written in
    records = load(tmp_path, patient(), stay("e1", start, end), note("hp", "e1"), timezone=zone)
    assert los_days(records.encounters["e1"]) == days
    assert labels_of(records, "hp")["los"] == los_bin




def test_discharge_before_admission_is_an_invalid_period(tmp_path):
    backwards = stay("e1", at(0), at(-1))
    assert hp_labels(tmp_path, claim("c1", "e1"), eob("x1", "c1"), condition("c", "e1", "I10"),
                     index=backwards) == dict.fromkeys(HP_TASKS, "invalid-period")
    assert readmission_of(tmp_path / "b", index=backwards) == "invalid-period"


# --- Charlson comorbidity index ----------------------------------------------------------------


def test_cci_uses_only_the_encounters_icd10_conditions(tmp_path):
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), note("hp", "e1"), stay("e2", at(-40), at(-35)),
                   condition("c1", "e1", "E11.9"),
                   condition("c2", "e1", "E11.22"),           # diabetes with complication: E11.9 not counted again
                   condition("c3", "e1", "44054006", system=SNOMED),  # not ICD-10
                   condition("c4", "e2", "C78.00"),            # another stay's metastatic cancer
                   condition("c5", None, "B20"),               # problem list, no encounter
                   condition("c6", "e1", "I50.9") | {"code": {"text": "heart failure"}})  # text, no coding
    assert sorted(records.encounters["e1"].icd10) == ["E11.22", "E11.9"]
    assert labels_of(records, "hp")["cci"] == 1  # score 2: bin 1-2


@pytest.mark.parametrize("codes, cci_bin", [
    pytest.param(["I10"], 0, id="score-0-not-a-charlson-code"),
    pytest.param(["I21.4"], 1, id="score-1"),
    pytest.param(["E11.9", "E11.22"], 1, id="score-2-diabetes-hierarchy"),
    pytest.param(["I50.9", "N18.4"], 2, id="score-3"),
    pytest.param(["I50.9", "I21.4", "I70.0", "I63.9"], 2, id="score-4"),
    pytest.param(["C34.90", "C78.00"], 3, id="score-6-cancer-hierarchy"),
    pytest.param(["C78.00", "I50.9"], 3, id="score-7"),
    pytest.param(["C78.00", "N18.4"], 4, id="score-8"),
    pytest.param(["C78.00", "B20"], 4, id="score-12"),
])
def test_cci_bins(tmp_path, codes, cci_bin):
    conditions = [condition(f"c{i}", "e1", code) for i, code in enumerate(codes)]
    assert hp_labels(tmp_path, *conditions)["cci"] == cci_bin


def test_cci_accepts_who_icd10(tmp_path):
    assert hp_labels(tmp_path, condition("c1", "e1", "C78.0", system=ICD10_WHO))["cci"] == 3


def test_cci_without_icd10_codes(tmp_path):
    others = [condition("c1", "e1", "44054006", system=SNOMED), condition("c2", None, "C78.00"),
              stay("e2", at(-40), at(-35)), condition("c3", "e2", "C78.00")]
    assert hp_labels(tmp_path, *others)["cci"] == "no-diagnosis-codes"


def test_cci_ignores_entered_in_error_conditions(tmp_path):
    others = [condition("c1", "e1", "I21.4"), condition("c2", "e1", "C78.00", verification="entered-in-error")]
    assert hp_labels(tmp_path, *others)["cci"] == 1  # score 1, not 7


# --- claim denial ------------------------------------------------------------------------------


# expected label under the paper's definition (the default: denied, then decided on appeal)
# and under "any-denial"
@pytest.mark.parametrize("billing, appealed, any_denial", [
    pytest.param([], 0, "no-claim", id="no-claim"),
    pytest.param([claim("c1", "e-other")], 0, "no-claim", id="claim-for-another-stay"),
    pytest.param([claim("c1", "e1")], "claim-pending", "claim-pending", id="claim-without-eob"),
    pytest.param([claim("c1", "e1"), eob("x1", "c1")], 0, 0, id="paid"),
    pytest.param([claim("c1", "e1"), eob("x1", "c1", denied=True)], 0, 1, id="denied-not-appealed"),
    pytest.param([claim("c1", "e1"), eob("x1", "c1", item_denied=True)], 0, 1, id="denied-on-item"),
    pytest.param([claim("c1", "e1"), eob("x1", "c1", denied=True), eob("x2", "c1")], 1, 1,
                 id="denied-then-paid-on-appeal"),
    pytest.param([claim("c1", "e1"), eob("x1", "c1", denied=True), eob("x2", "c1", denied=True)], 1, 1,
                 id="denied-then-upheld-on-appeal"),
    pytest.param([eob("x1", "c1"), claim("c1", "e1")], 0, 0, id="eob-before-its-claim"),
    pytest.param([eob("x1", eid="e1", denied=True)], 0, 1, id="eob-without-claim-linked-by-item-encounter"),
    pytest.param([eob("x1", "not-exported", eid="e1")], 0, 0, id="eob-of-unexported-claim-linked-by-item-encounter"),
    pytest.param([claim("c1", "e1"), claim("c2", "e1"), eob("x2", "c2", denied=True), eob("x3", "c2")], 1, 1,
                 id="two-claims-one-denied-and-appealed"),
])
def test_denial(tmp_path, billing, appealed, any_denial):
    assert hp_labels(tmp_path / "default", *billing)["denial"] == appealed
    assert hp_labels(tmp_path / "any", *billing, data=DataSettings(denial_definition="any-denial"))["denial"] == any_denial


# --- notes and their stays ---------------------------------------------------------------------


def test_complete_hp_and_discharge_summary(tmp_path):
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), note("hp", "e1"), note("ds", "e1", DS),
                   condition("c1", "e1", "I21.4"), claim("c1", "e1"), eob("x1", "c1"), as_of=LATE)
    hp = next(n for n in records.notes if n.resource_id == "hp")
    enc, labels = label_note(hp, records)
    assert enc is records.encounters["e1"]
    assert labels == {"mortality": 0, "los": 2, "cci": 1, "denial": 0}  # 4 days: bin 4-5
    assert labels_of(records, "ds") == {"readmission": 0}


@pytest.mark.parametrize("hp, reason", [
    pytest.param(note("hp", None), "no-encounter", id="no-encounter"),
    pytest.param(note("hp", "nowhere"), "unknown-encounter", id="unknown-encounter"),
    pytest.param(note("hp", "clinic"), "not-inpatient", id="outpatient-encounter"),
    pytest.param(note("hp", "ed"), "not-inpatient", id="emergency-encounter"),
])
def test_note_without_an_inpatient_stay(tmp_path, hp, reason):
    records = load(tmp_path, patient(), stay("clinic", at(0, 9), at(0, 10), klass="AMB"),
                   stay("ed", at(0, 9), at(0, 15), klass="EMER"), hp)
    enc, labels = label_note(records.notes[0], records)
    assert enc is None
    assert {task: why.reason for task, why in labels.items()} == dict.fromkeys(HP_TASKS, reason)


def test_discharge_summary_without_a_stay(tmp_path):
    records = load(tmp_path, patient(), note("ds", None, DS))
    assert labels_of(records, "ds") == {"readmission": "no-encounter"}


def test_other_note_types_are_no_task_notes(tmp_path):
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), note("progress", "e1", PROGRESS_NOTE))
    with pytest.raises(NoLabel) as raised:
        label_note(records.notes[0], records)
    assert raised.value.reason == "not-a-task-note-type"


@pytest.mark.parametrize("loinc", ["34117-2", "47039-3", "11492-6"])
def test_every_hp_loinc_code_scores_the_four_admission_tasks(tmp_path, loinc):
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), note("n", "e1", loinc))
    assert set(labels_of(records, "n")) == HP_TASKS


def test_bundle_gives_the_same_labels(tmp_path):
    resources = [patient(), stay("e1", at(-4), at(0)), note("hp", "e1"), note("ds", "e1", DS),
                 condition("c1", "e1", "C78.00"), claim("c1", "e1"), eob("x1", "c1", denied=True),
                 stay("e2", at(12), at(14))]
    path = tmp_path / "bundles" / "everything.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]}))
    records = HospitalRecords.load(tmp_path / "bundles", as_of=instant(LATE))
    assert len(records.problems) == 0
    assert labels_of(records, "hp") == {"mortality": 0, "los": 2, "cci": 3, "denial": 0}  # denied, never appealed
    assert labels_of(records, "ds") == {"readmission": 1}


# --- malformed input ---------------------------------------------------------------------------


def test_malformed_input_is_counted_and_valid_resources_still_load(tmp_path):
    ndjson(tmp_path / "Patient.ndjson", patient(), "[1, 2]")
    ndjson(tmp_path / "Encounter.ndjson",
           stay("e1", at(-4), at(0)),
           '{"resourceType": "Encounter", "id": "cut-off", ',
           {"id": "typeless", "status": "finished"},
           stay("bad", at(-4), at(0)) | {"period": "yesterday"},
           stay("e2", at(10), at(12)))
    ndjson(tmp_path / "DocumentReference.ndjson",
           note("hp", "e1"),
           note("no-text", "e1", attachment={"contentType": "text/plain"}),
           note("bad-base64", "e1", data="@@@ not base64 @@@"),
           note("pdf", "e1", content_type="application/pdf", text="%PDF-1.7"),
           note("ds", "e1", DS, text="First version."),
           note("ds", "e1", DS, text="Amended discharge summary."))
    records = HospitalRecords.load(tmp_path, as_of=instant(LATE))

    assert records.problems.counts() == {
        "duplicate-resource": 1, "invalid-resource": 1, "malformed-json": 1, "no-content": 1,
        "no-resource-type": 1, "not-a-resource": 1, "undecodable-text": 1, "unsupported-content-type": 1,
    }
    where = {reason: [(p.location, p.resource_type, p.resource_id) for p in records.problems.examples(reason)]
             for reason in records.problems.counts()}
    assert where == {
        "duplicate-resource": [("DocumentReference.ndjson:6", "DocumentReference", "ds")],
        "invalid-resource": [("Encounter.ndjson:4", "Encounter", "bad")],
        "malformed-json": [("Encounter.ndjson:2", None, None)],
        "no-content": [("DocumentReference.ndjson:2", "DocumentReference", "no-text")],
        "no-resource-type": [("Encounter.ndjson:3", None, "typeless")],
        "not-a-resource": [("Patient.ndjson:2", None, None)],
        "undecodable-text": [("DocumentReference.ndjson:3", "DocumentReference", "bad-base64")],
        "unsupported-content-type": [("DocumentReference.ndjson:4", "DocumentReference", "pdf")],
    }
    assert records.problems.examples("invalid-resource")[0].detail == "invalid fields: period"

    assert set(records.encounters) == {"e1", "e2"}
    assert set(records.patients) == {"p1"}
    assert [n.resource_id for n in records.notes] == ["hp", "ds"]
    assert records.notes[1].text == "Amended discharge summary."  # the later copy
    # no claim: negative under the paper's denial definition (the default)
    assert labels_of(records, "hp") == {"mortality": 0, "los": 2, "cci": "no-diagnosis-codes", "denial": 0}
    assert labels_of(records, "ds") == {"readmission": 1}


def test_duplicate_encounter_keeps_the_later_copy(tmp_path):
    ndjson(tmp_path / "Encounter.ndjson", stay("e1", at(-4)), stay("e1", at(-4), at(0), disposition="exp"))
    ndjson(tmp_path / "DocumentReference.ndjson", note("hp", "e1"))
    records = HospitalRecords.load(tmp_path, as_of=instant(LATE))
    assert records.problems.counts() == {"duplicate-resource": 1}
    assert [e.id for e in records.by_patient["p1"]] == ["e1"]
    assert labels_of(records, "hp")["mortality"] == 1


def test_entered_in_error_note_is_counted_not_labeled(tmp_path):
    records = load(tmp_path, patient(), stay("e1", at(-4), at(0)), note("hp", "e1", status="entered-in-error"))
    assert records.notes == []
    assert records.problems.counts() == {"entered-in-error": 1}


def test_problems_never_carry_note_text(tmp_path):
    secret_b64 = b64(SECRET)
    ndjson(tmp_path / "Encounter.ndjson",
           stay("e1", at(-4), at(0)),
           stay("bad", at(-4), at(0)) | {"period": SECRET},
           '{"resourceType": "Encounter", "id": "e9", "text": "' + SECRET)
    ndjson(tmp_path / "DocumentReference.ndjson",
           note("pdf", "e1", content_type="application/pdf", text=SECRET),
           note("ascii", "e1", content_type="text/plain; charset=us-ascii", data=b64(SECRET + " caf\u00e9")),
           note("bad-base64", "e1", data=SECRET),
           note("bad-date", "e1", text=SECRET, date=SECRET),
           note("blank", "e1", text="   \n  "),
           note("erroneous", "e1", text=SECRET, status="entered-in-error"),
           note("dup", "e1", text=SECRET), note("dup", "e1", text=SECRET + " amended"),
           {"id": "typeless", "text": SECRET})
    records = HospitalRecords.load(tmp_path, as_of=instant(LATE))
    assert records.problems.counts() == {
        "duplicate-resource": 1, "empty-text": 1, "entered-in-error": 1, "invalid-resource": 2, "malformed-json": 1,
        "no-resource-type": 1, "undecodable-text": 2, "unsupported-content-type": 1,
    }
    dumped = json.dumps(records.problems.to_dict())
    for fragment in [*SECRET.split(), secret_b64[:12]]:
        assert fragment not in dumped
