"""The Alertmanager webhook on the service's API (create_api + LocalBackend, tiny model) and the
alert log the retraining loop reads, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from monitoring.alerts import AlertLog, AlertWebhookSettings, alertmanager_router
from serving.auth import hash_api_key
from serving.store import Store
from tests.postgres import postgres_url  # noqa: F401  (fixture)
from tests.support import api_client

KEYS = {"admin": "k-admin-alerts", "scorer": "k-scorer-alerts"}
ALERTMANAGER_TOKEN = "am-token-0451"
URL = "/alerts/alertmanager"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def alert(name: str, fingerprint: str, status: str = "firing", starts: datetime = T0, **labels: str) -> dict:
    return {"status": status, "labels": {"alertname": name, **labels},
            "annotations": {"summary": f"{name} summary", "description": "long text " * 50,
                            "runbook_url": f"docs/monitoring.md#{name.lower()}"},
            "startsAt": starts.isoformat().replace("+00:00", "Z"),
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else (starts + timedelta(hours=1)).isoformat(),
            "generatorURL": "http://prometheus:9090/graph?g0.expr=x", "fingerprint": fingerprint}


def payload(*alerts: dict, status: str = "firing") -> dict:
    return {"version": "4", "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0, "status": status,
            "receiver": "lang1-ops", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


@pytest.fixture(scope="module")
def client(tiny_llama_dir, tmp_path_factory):
    router = alertmanager_router(AlertWebhookSettings(bearer_token_sha256=hash_api_key(ALERTMANAGER_TOKEN)))
    with api_client(tiny_llama_dir, tmp_path_factory.mktemp("alerts"), KEYS, routers=[router]) as c:
        yield c


def send(client, body, token: str | None = KEYS["admin"]):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(URL, content=body if isinstance(body, bytes) else json.dumps(body), headers=headers)


def test_valid_payload_is_stored_and_read_back_by_the_retraining_loop(client):
    since = datetime.now(UTC) - timedelta(seconds=1)
    r = send(client, payload(alert("Lang1OpsAurocBelowThreshold", "a1b2c3d4e5f60718", severity="critical",
                                   action="retrain", task="mortality"),
                             alert("Lang1OpsDriftDetected", "0f0e0d0c0b0a0908", severity="warning", check="embedding")))
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 2, "new": 2}
    log = AlertLog(client.store)
    firing = {e.name: e for e in log.firing(since)}
    assert set(firing) == {"Lang1OpsAurocBelowThreshold", "Lang1OpsDriftDetected"}
    auroc = firing["Lang1OpsAurocBelowThreshold"]
    assert (auroc.status, auroc.severity, auroc.task, auroc.fingerprint) == ("firing", "critical", "mortality",
                                                                            "a1b2c3d4e5f60718")
    assert auroc.starts_at == T0 and auroc.ends_at is None and auroc.received_at.tzinfo is not None
    assert auroc.labels["action"] == "retrain" and firing["Lang1OpsDriftDetected"].task is None
    # only bounded, allow-listed annotations are kept: no free-text description
    assert set(auroc.annotations) == {"summary", "runbook_url"}
    audit = client.store.audit_records(limit=5, action="alert-webhook")
    assert audit and audit[0]["actor"] == "admin" and "2 alerts" in audit[0]["detail"]


def test_repeat_notification_is_not_a_new_event_and_resolution_ends_it(client):
    fp = "1111222233334444"
    first = send(client, payload(alert("Lang1OpsCalibrationDegraded", fp, severity="warning", task="readmission")))
    assert first.json()["new"] == 1
    mark = datetime.now(UTC)
    again = send(client, payload(alert("Lang1OpsCalibrationDegraded", fp, severity="warning", task="readmission")))
    assert again.json() == {"received": 1, "new": 0}
    log = AlertLog(client.store)
    still = [e for e in log.firing(mark) if e.fingerprint == fp]
    assert len(still) == 1 and still[0].last_received_at >= mark > still[0].received_at
    resolved = send(client, payload(alert("Lang1OpsCalibrationDegraded", fp, status="resolved", severity="warning",
                                          task="readmission"), status="resolved"))
    assert resolved.json()["new"] == 1
    assert not [e for e in log.firing(mark) if e.fingerprint == fp]
    newest = log.recent(1)[0]
    assert (newest.fingerprint, newest.status, newest.ends_at) == (fp, "resolved", T0 + timedelta(hours=1))
    # a new episode of the same alert (a later startsAt) is a new event again
    later = send(client, payload(alert("Lang1OpsCalibrationDegraded", fp, starts=T0 + timedelta(days=1),
                                       severity="warning", task="readmission")))
    assert later.json()["new"] == 1
    assert [e.starts_at for e in log.firing(mark) if e.fingerprint == fp] == [T0 + timedelta(days=1)]


@pytest.mark.parametrize("body", [
    b"{not json",
    json.dumps(payload(alert("X", "abcd")) | {"version": "3"}).encode(),
    json.dumps(payload()).encode(),  # no alerts
    json.dumps(payload(alert("X", "not-hex-QUOKKA"))).encode(),
    json.dumps(payload({**alert("X", "abcd"), "labels": {"severity": "warning"}})).encode(),  # no alertname
    json.dumps(payload({**alert("X", "abcd"), "startsAt": "yesterday QUOKKA"})).encode(),
    json.dumps(payload({**alert("X", "abcd"), "status": "pending"})).encode(),
])
def test_bad_payload_is_a_400_operation_outcome_that_echoes_nothing(client, body):
    before = len(AlertLog(client.store).recent(1000))
    r = send(client, body)
    assert r.status_code == 400, r.text
    outcome = OperationOutcome.model_validate(r.json())
    assert outcome.issue[0].code == "invalid" or outcome.issue[0].code == "structure"
    assert "QUOKKA" not in r.text
    assert len(AlertLog(client.store).recent(1000)) == before


def test_oversized_payload_is_refused(client):
    huge = payload(*[alert("X", f"{i:016x}") for i in range(3000)])
    assert send(client, huge).status_code == 413


def test_authentication_admin_key_or_the_alertmanager_token(client):
    body = payload(alert("Lang1OpsNoScoring", "9999888877776666", severity="warning"))
    assert send(client, body, token=None).status_code == 401
    assert send(client, body, token="wrong-token").status_code == 401
    forbidden = send(client, body, token=KEYS["scorer"])
    assert forbidden.status_code == 403 and forbidden.json()["resourceType"] == "OperationOutcome"
    ok = send(client, body, token=ALERTMANAGER_TOKEN)
    assert ok.status_code == 200
    assert client.store.audit_records(limit=1, action="alert-webhook")[0]["actor"] == "alertmanager"
    # reading the log is for admins
    assert client.get("/alerts", headers={"Authorization": f"Bearer {ALERTMANAGER_TOKEN}"}).status_code in (401, 403)
    listed = client.get("/alerts?limit=1", headers={"Authorization": f"Bearer {KEYS['admin']}"})
    assert listed.status_code == 200 and listed.json()[0]["name"] == "Lang1OpsNoScoring"


def test_alert_log_on_postgres(postgres_url):  # noqa: F811
    store = Store(postgres_url)
    log = AlertLog(store)
    since = datetime.now(UTC) - timedelta(seconds=1)
    body = payload(alert("Lang1OpsDriftDetected", "abcdef0123456789", severity="warning", check="prediction"))
    assert log.record(body) == 1 and log.record(body) == 0
    [event] = [e for e in log.firing(since) if e.fingerprint == "abcdef0123456789"]
    assert event.starts_at == T0 and event.labels["check"] == "prediction"
    with pytest.raises(ValueError):
        log.firing(datetime(2025, 1, 1))  # naive: refused
