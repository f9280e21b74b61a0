"""One patient must never receive another's answer: every replay is keyed by patient,
encounter, note identity, text and tasks, on every way a note comes in over HTTP.
(CDS Hooks and Subscriptions: tests/integration/test_cds_hooks.py and test_subscriptions.py.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.security.helpers import KEYS, SECRET, note, post

SCORE = "/fhir/DocumentReference/$score"


def subjects(bundle: dict) -> set[str]:
    return {entry["resource"]["subject"]["reference"] for entry in bundle["entry"]}


def stored(api, **where) -> list[dict]:
    rows = api.store.scores_between(datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows.to_dict("records")


def via_score(api, resource, **kwargs):
    return post(api, SCORE, resource, **kwargs)


def via_parameters(api, resource, **kwargs):
    return post(api, SCORE, {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resource}]},
                **kwargs)


def via_batch(api, resource, **kwargs):
    r = post(api, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": resource}]}, **kwargs)
    assert r.status_code == 200, r.text
    [entry] = r.json()["entry"]
    status = int(entry["response"]["status"].split()[0])
    return status, entry["resource"]


@pytest.mark.parametrize("send", [via_score, via_parameters], ids=["$score", "Parameters"])
def test_two_patients_with_the_same_text_each_get_their_own_answer(api, send):
    tag = send.__name__.replace("_", "-")
    text = f"HPI: 77 yo M {SECRET} with pneumonia, same template ({tag})."
    for doc_id, version in ((None, None), (f"{tag}-a", "1")):
        a = send(api, note(text, doc_id=doc_id, version=version, patient=f"{tag}A"))
        b_id = None if doc_id is None else f"{tag}-b"
        b = send(api, note(text, doc_id=b_id, version=version, patient=f"{tag}B"))
        assert a.status_code == b.status_code == 200, b.text
        assert subjects(a.json()) == {f"Patient/{tag}A"} and subjects(b.json()) == {f"Patient/{tag}B"}
        assert b.headers["X-Idempotent-Replay"] == "false"
        # B was stored, so B reaches the worklist, outcomes and monitoring
        assert stored(api, patient_id=f"{tag}B")
        again = send(api, note(text, doc_id=b_id, version=version, patient=f"{tag}B"))
        assert again.headers["X-Idempotent-Replay"] == "true" and subjects(again.json()) == {f"Patient/{tag}B"}


def test_same_text_same_patient_other_encounter_is_scored_for_that_encounter(api):
    text = f"HPI: {SECRET} recurrent CHF."
    first = via_score(api, note(text, doc_id=None, version=None, patient="enc", encounter="e-old"))
    second = via_score(api, note(text, doc_id=None, version=None, patient="enc", encounter="e-new"))
    assert second.headers["X-Idempotent-Replay"] == "false"
    assert {e["resource"]["encounter"]["reference"] for e in second.json()["entry"]} == {"Encounter/e-new"}
    assert first.status_code == 200


def test_same_id_and_version_with_different_text_or_encounter_is_a_409(api):
    assert via_score(api, note("HPI: first text.", doc_id="c1", patient="C")).status_code == 200
    for changed in (note("HPI: other text.", doc_id="c1", patient="C"),
                    note("HPI: first text.", doc_id="c1", patient="C", encounter="e-other")):
        r = via_score(api, changed)
        assert r.status_code == 409, r.text
        issue = r.json()["issue"][0]
        assert r.json()["resourceType"] == "OperationOutcome" and issue["code"] == "conflict"
        assert "versionId" in issue["diagnostics"] and "first text" not in r.text
    # a new version of the document is a new note
    assert via_score(api, note("HPI: other text.", doc_id="c1", version="2", patient="C")).status_code == 200


@pytest.mark.parametrize("version", ["1", None], ids=["versioned", "unversioned"])
def test_same_id_about_another_patient_is_a_409_and_never_the_first_answer(api, version):
    doc_id = f"d-{version}"
    assert via_score(api, note(f"HPI: {SECRET}", doc_id=doc_id, version=version, patient="P1")).status_code == 200
    r = via_score(api, note(f"HPI: {SECRET}", doc_id=doc_id, version=version, patient="P2"))
    assert r.status_code == 409 and r.json()["issue"][0]["code"] == "conflict"
    assert "Patient/P1" not in r.text and SECRET not in r.text
    assert not stored(api, patient_id="P2")


def test_unversioned_note_with_amended_text_is_scored_afresh(api):
    first = via_score(api, note("HPI: draft.", doc_id="amend", version=None, patient="Q"))
    amended = via_score(api, note("HPI: draft, addendum: intubated.", doc_id="amend", version=None, patient="Q"))
    assert first.status_code == amended.status_code == 200
    assert amended.headers["X-Idempotent-Replay"] == "false"


def test_batch_entries_are_keyed_by_patient_too(api):
    text = f"HPI: {SECRET} batch template."
    status_a, bundle_a = via_batch(api, note(text, doc_id=None, version=None, patient="BA"))
    status_b, bundle_b = via_batch(api, note(text, doc_id=None, version=None, patient="BB"))
    assert status_a == status_b == 200
    assert subjects(bundle_a) == {"Patient/BA"} and subjects(bundle_b) == {"Patient/BB"}
    status, outcome = via_batch(api, note(text, doc_id="bx", patient="BA"))
    assert status == 200
    status, outcome = via_batch(api, note(text, doc_id="bx", patient="BB"))
    assert status == 409 and outcome["resourceType"] == "OperationOutcome"


def plain(api, **body):
    return api.post("/v1/score", json={"note_type": "admission_hp", **body},
                    headers={"Authorization": f"Bearer {KEYS['scorer']}"})


def test_plain_json_endpoint_keys_by_patient(api):
    text = f"HPI: {SECRET} plain template."
    a = plain(api, text=text, patient_id="JA")
    b = plain(api, text=text, patient_id="JB")
    assert a.status_code == b.status_code == 200 and b.json()["replayed"] is False
    assert stored(api, patient_id="JB")
    assert plain(api, text=text, patient_id="JB").json()["replayed"] is True
    assert plain(api, text=text, patient_id="JA", note_id="j1").status_code == 200
    refused = plain(api, text=text, patient_id="JB", note_id="j1")
    assert refused.status_code == 409 and refused.json()["resourceType"] == "OperationOutcome"


def test_replayed_task_subset_is_not_another_subset(api):
    resource = note(f"HPI: {SECRET} tasks.", doc_id="tk", patient="T")
    los = via_score(api, resource, params={"task": "los"})
    both = via_score(api, resource, params={"task": "los,mortality"})
    assert len(los.json()["entry"]) == 1 and len(both.json()["entry"]) == 2
    assert both.headers["X-Idempotent-Replay"] == "false"
    repeated = via_score(api, resource, params={"task": ",".join(["los"] * 30)})
    assert repeated.status_code == 200 and repeated.headers["X-Idempotent-Replay"] == "true"
