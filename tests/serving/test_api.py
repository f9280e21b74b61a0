"""The FHIR/JSON API in process (FastAPI TestClient, tiny model): shapes, bad input, auth, audit."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from lang1ops.settings.serving import ApiSettings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.api import create_api
from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
from serving.backends import LocalBackend, ResolvedModel
from serving.store import Store
from tests.support import api_client, stored_score_of
from training.artifacts import zero_shot_artifact

SECRET = "ZEBRA-PHI-7731"  # a marker in note text that must never come back out
KEYS = {"scorer": "k-scorer-123", "reader": "k-reader-456", "admin": "k-admin-789"}


def doc(text: str = f"CC: chest pain. HPI: 70 yo M {SECRET} with CHF.", loinc: str = "34117-2", doc_id: str = "d1",
        version: str | None = "1", **extra) -> dict:
    resource = {"resourceType": "DocumentReference", "id": doc_id, "status": "current",
                "type": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                "subject": {"reference": "Patient/p1"}, "context": {"encounter": [{"reference": "Encounter/e1"}]},
                "date": "2024-03-01T10:00:00Z",
                "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}]}
    if version:
        resource["meta"] = {"versionId": version}
    resource.update(extra)
    return resource


@pytest.fixture(scope="module")
def client(tiny_llama_dir, tmp_path_factory):
    with api_client(tiny_llama_dir, tmp_path_factory.mktemp("api"), KEYS,
                    api_settings=ApiSettings(max_body_bytes=200_000, max_note_bytes=50_000)) as c:
        yield c


def post(client, path, body, role="scorer", content_type="application/fhir+json", **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if role:
        headers["Authorization"] = f"Bearer {KEYS[role]}"
    return client.post(path, content=data, headers=headers, **kwargs)


def risk_assessments(bundle: dict) -> list[dict]:
    Bundle.model_validate(bundle)
    return [e["resource"] for e in bundle["entry"]]


def test_admission_note_gets_its_four_tasks_as_valid_risk_assessments(client):
    r = post(client, "/fhir/DocumentReference/$score", doc(doc_id="hp1"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json") and r.headers["X-Model-Version"] == "v0001"
    out = risk_assessments(r.json())
    by_task = {ra["code"]["coding"][0]["code"]: ra for ra in out}
    assert set(by_task) == {"in-hospital-death", "length-of-stay", "charlson-index", "claim-denial"}
    for ra in out:
        RiskAssessment.model_validate(ra)
        assert ra["status"] == "final" and ra["subject"]["reference"] == "Patient/p1"
        assert ra["encounter"]["reference"] == "Encounter/e1" and ra["basis"][0]["reference"] == "DocumentReference/hp1"
        assert ra["method"]["coding"][0]["version"] == "v0001"
    mortality = by_task["in-hospital-death"]["prediction"]
    assert len(mortality) == 1 and 0 <= mortality[0]["probabilityDecimal"] <= 1
    assert mortality[0]["qualitativeRisk"]["coding"][0]["code"] in ("negligible", "low", "moderate", "high")
    los = by_task["length-of-stay"]["prediction"]
    assert len(los) == 4 and sum(p["probabilityDecimal"] for p in los) == pytest.approx(1, abs=1e-5)
    assert SECRET not in r.text


def test_discharge_summary_gets_readmission_with_a_30_day_window_and_tasks_can_be_asked(client):
    r = post(client, "/fhir/DocumentReference/$score", doc(loinc="18842-5", doc_id="ds1"))
    [ra] = risk_assessments(r.json())
    period = ra["prediction"][0]["whenPeriod"]
    assert ra["code"]["coding"][0]["code"] == "readmission-30d" and period["start"].startswith("2024-03-01")
    assert period["end"].startswith("2024-03-31")
    r = post(client, "/fhir/DocumentReference/$score?task=los,readmission", doc(loinc="18842-5", doc_id="ds2"))
    assert len(risk_assessments(r.json())) == 2


def test_parameters_form_and_a_progress_note_with_explicit_tasks(client):
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": doc(loinc="11506-3", doc_id="pn1")},
                                                         {"name": "task", "valueCode": "mortality"}]}
    r = post(client, "/fhir/DocumentReference/$score", body)
    assert r.status_code == 200 and len(risk_assessments(r.json())) == 1
    # without tasks a progress note is not scored: the caller is told what to do
    r = post(client, "/fhir/DocumentReference/$score", doc(loinc="11506-3", doc_id="pn2"))
    assert r.status_code == 422 and "task" in r.json()["issue"][0]["diagnostics"]


def test_repost_returns_the_stored_result_without_scoring_again(client):
    first = post(client, "/fhir/DocumentReference/$score", doc(doc_id="idem", version="3"))
    again = post(client, "/fhir/DocumentReference/$score", doc(doc_id="idem", version="3"))
    assert first.status_code == again.status_code == 200
    assert again.headers["X-Idempotent-Replay"] == "true" and first.json() == again.json()
    scored = client.store.scores_between(*_all_time())
    assert scored["idempotency_key"].str.startswith("DocumentReference/idem/_history/3#").sum() == 1
    new_version = post(client, "/fhir/DocumentReference/$score", doc(doc_id="idem", version="4"))
    assert new_version.headers["X-Idempotent-Replay"] == "false"


def test_batch_bundle_answers_each_entry_alone(client):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": doc(doc_id="b1"), "request": {"method": "POST", "url": "DocumentReference/$score"}},
        {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "POST", "url": "DocumentReference/$score"}},
        {"resource": doc(loinc="18842-5", doc_id="b3")}]}
    r = post(client, "/fhir", bundle)
    assert r.status_code == 200
    Bundle.model_validate(r.json())
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["200 OK", "422", "200 OK"]
    assert r.json()["entry"][2]["resource"]["entry"][0]["resource"]["code"]["coding"][0]["code"] == "readmission-30d"


@pytest.mark.parametrize("body, content_type, status, code", [
    pytest.param(b'{"resourceType": "DocumentReference", ', "application/fhir+json", 400, "structure", id="malformed-json"),
    pytest.param({"resourceType": "Patient", "id": "p"}, "application/fhir+json", 422, "not-supported", id="wrong-type"),
    pytest.param(doc(content=[{"attachment": {"contentType": "text/plain"}}]), "application/fhir+json", 422, "required",
                 id="no-text"),
    pytest.param(doc(content=[{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQ="}}]),
                 "application/fhir+json", 415, "not-supported", id="unsupported-attachment-type"),
    pytest.param(b"just text", "text/plain", 415, "not-supported", id="not-json"),
    pytest.param(b'{"resourceType": "DocumentReference", "x": "\xff\xfe"}', "application/fhir+json", 400, "structure",
                 id="not-utf8"),
    pytest.param(doc(text="word " * 20_000), "application/fhir+json", 413, "too-long", id="oversized-note"),
    pytest.param(b"{" + b" " * 300_000 + b"}", "application/fhir+json", 413, "too-long", id="oversized-body"),
    pytest.param(doc(subject=None), "application/fhir+json", 422, "required", id="no-subject"),
])
def test_bad_input_gets_an_operation_outcome_with_the_right_4xx(client, body, content_type, status, code):
    if isinstance(body, dict) and body.get("subject", "") is None:
        del body["subject"]
    r = post(client, "/fhir/DocumentReference/$score", body, content_type=content_type)
    assert r.status_code == status, r.text
    outcome = r.json()
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["code"] == code and SECRET not in r.text


def test_unknown_task_is_a_400(client):
    r = post(client, "/fhir/DocumentReference/$score?task=sepsis", doc(doc_id="t1"))
    assert r.status_code == 400 and "sepsis" in r.json()["issue"][0]["diagnostics"]


def test_auth_refuses_missing_wrong_and_underprivileged_credentials(client):
    r = post(client, "/fhir/DocumentReference/$score", doc(), role=None)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["issue"][0]["code"] == "security"
    r = client.post("/fhir/DocumentReference/$score", content=json.dumps(doc()),
                    headers={"Authorization": "Bearer not-a-key", "Content-Type": "application/fhir+json"})
    assert r.status_code == 401
    assert post(client, "/fhir/DocumentReference/$score", doc(), role="reader").status_code == 403
    assert post(client, "/fhir/DocumentReference/$score", doc(doc_id="adm"), role="admin").status_code == 200


def test_open_endpoints_and_capability_statement(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["model"]["version"] == "v0001"
    metadata = client.get("/fhir/metadata")
    assert metadata.status_code == 200
    CapabilityStatement.model_validate(metadata.json())
    assert client.get("/metrics").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/fhir/DocumentReference/$score" in spec["paths"] and "examples" in json.dumps(spec["components"])


def test_plain_json_endpoint(client):
    body = {"text": f"HPI: 80 yo F {SECRET} with sepsis.", "note_type": "admission_hp", "patient_id": "p9", "note_id": "n9"}
    r = client.post("/v1/score", json=body, headers={"Authorization": f"Bearer {KEYS['scorer']}"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data["scores"]) == {"mortality", "los", "cci", "denial"} and data["model"]["version"] == "v0001"
    assert sum(data["scores"]["cci"]["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert client.post("/v1/score", json={"text": "x"}, headers={"Authorization": f"Bearer {KEYS['scorer']}"}).status_code == 400


def test_audit_has_every_request_and_no_note_text(client):
    records = client.store.audit_records(limit=1000)
    assert any(r["action"] == "score" and r["actor"] == "scorer" and r["http_status"] == 200 for r in records)
    assert any(r["http_status"] == 401 for r in records) and any(r["http_status"] == 415 for r in records)
    assert SECRET not in json.dumps(records, default=str)


def _all_time():
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def test_shadow_challenger_is_stored_but_never_returned(tiny_llama_dir, tmp_path):
    import time as _time

    champion = zero_shot_artifact(tiny_llama_dir, tmp_path / "champion", DEFAULT_CONTRACT, max_note_tokens=64)
    challenger = zero_shot_artifact(tiny_llama_dir, tmp_path / "challenger", DEFAULT_CONTRACT, max_note_tokens=32)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name="scorer", key_sha256=hash_api_key(KEYS["scorer"]),
                                                       roles={Role.SCORER})]))
    app = create_api(LocalBackend(ResolvedModel("v0001", champion), dtype="float32"), store, auth,
                     shadow=LocalBackend(ResolvedModel("v0002", challenger), dtype="float32"))
    with TestClient(app) as c:
        r = post(c, "/fhir/DocumentReference/$score", doc(doc_id="sh1"))
        assert r.status_code == 200 and r.headers["X-Model-Version"] == "v0001"
        assert {ra["method"]["coding"][0]["version"] for ra in risk_assessments(r.json())} == {"v0001"}
        deadline = _time.time() + 30
        while _time.time() < deadline:
            rows = store.scores_between(*_all_time(), include_shadow=True)
            if len(rows) == 2:
                break
            _time.sleep(0.2)
    assert sorted(zip(rows["model_version"], rows["shadow"], strict=True)) == [("v0001", False), ("v0002", True)]
    assert stored_score_of(store, "DocumentReference/sh1/_history/1").model_version == "v0001"
