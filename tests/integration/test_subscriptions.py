"""Subscriptions end to end against the real Node FHIR server: notification → durable queue →
worker reads the note, scores it (tiny model), writes RiskAssessments back exactly once."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhir.resources.R4B.subscription import Subscription
from typer.testing import CliRunner

from integration.cli import app as integration_cli
from integration.fhir_client import FhirClient
from integration.subscriptions import QUEUE, SubscriptionWorker, parse_notification, subscription_router
from integration.work_queue import WorkQueue
from integration.writeback import writeback_key
from lang1ops.settings.fhir_client import FhirClientSettings, SubscriptionSettings, WorkQueueSettings
from lang1ops.settings.serving import ApiSettings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.api import create_api
from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
from serving.backends import LocalBackend, ResolvedModel
from serving.service import ScoringService
from serving.store import Store
from tests.integration.fhir_server import fhir_server  # noqa: F401  (fixture)
from tests.postgres import postgres_url  # noqa: F401  (fixture)
from training.artifacts import zero_shot_artifact

SECRET = "ZEBRA-PHI-7731"
KEYS = {"scorer": "k-scorer-123", "reader": "k-reader-456"}
DOCS = Path(__file__).resolve().parents[2] / "docs"
SETTINGS = SubscriptionSettings(poll_interval_s=0.05, queue=WorkQueueSettings(
    lease_s=30, max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.2))
H_AND_P_TASKS = 4  # mortality, LOS, CCI, claim denial


@pytest.fixture(scope="module")
def backend(tiny_llama_dir, tmp_path_factory):
    artifact = zero_shot_artifact(tiny_llama_dir, tmp_path_factory.mktemp("sub") / "artifact", DEFAULT_CONTRACT,
                                  max_note_tokens=64)
    return LocalBackend(ResolvedModel("v0001", artifact), dtype="float32")


@pytest.fixture
def store_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture
def api(backend, store_url):
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name=n, key_sha256=hash_api_key(k), roles={Role(n)})
                                                for n, k in KEYS.items()]))
    store = Store(store_url)
    app = create_api(backend, store, auth, ApiSettings(), routers=[subscription_router(SETTINGS)])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    store.dispose()


def new_worker(backend, store_url: str, base_url: str, settings: SubscriptionSettings = SETTINGS):
    """A fresh worker process's view: its own Store, queue, service and FHIR client."""
    store = Store(store_url)
    return SubscriptionWorker(ScoringService(backend, store, ApiSettings()), WorkQueue(store, settings.queue),
                              FhirClient(base_url, retries=0), settings)


def drain(worker: SubscriptionWorker) -> int:
    return asyncio.run(worker.drain())


def document(text: str = f"CC: chest pain. HPI: 70 yo M {SECRET} with CHF.", patient: str = "p1") -> dict:
    return {"resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
            "subject": {"reference": f"Patient/{patient}"}, "context": {"encounter": [{"reference": "Encounter/e1"}]},
            "date": "2024-03-01T10:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain",
                                        "data": base64.b64encode(text.encode()).decode()}}]}


def doc_example(name: str) -> dict:
    """A JSON example from the docs (``<!-- example: name -->`` before a json fence)."""
    for path in (DOCS / "integration.md",):
        if path.exists():
            match = re.search(rf"<!-- example: {name} -->\s*```json\n(.*?)```", path.read_text(), re.S)
            if match:
                return json.loads(match.group(1))
    raise AssertionError(f"docs example {name!r} not found")


def notification(kind: str = "event-notification", focus: str | None = None, event_number: int = 1,
                 full_resource: dict | None = None) -> dict:
    """The docs' id-only notification, re-aimed at ``focus``."""
    bundle = copy.deepcopy(doc_example("notification-id-only"))
    status = bundle["entry"][0]["resource"]
    params = [p for p in status["parameter"] if p["name"] != "notification-event"]
    for p in params:
        if p["name"] == "type":
            p["valueCode"] = kind
    if kind == "event-notification":
        params.append({"name": "notification-event", "part": [
            {"name": "event-number", "valueString": str(event_number)},
            {"name": "focus", "valueReference": {"reference": focus}}]})
        bundle["entry"] = [bundle["entry"][0], {"fullUrl": focus, "request": {"method": "POST", "url": "DocumentReference"},
                                                "response": {"status": "201"}}]
        if full_resource is not None:
            bundle["entry"][1]["resource"] = full_resource
    else:
        bundle["entry"] = bundle["entry"][:1]
    status["parameter"] = params
    return bundle


def post(api, body, role="scorer", content_type="application/fhir+json"):
    headers = {"Content-Type": content_type}
    if role:
        headers["Authorization"] = f"Bearer {KEYS[role]}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.post("/fhir/subscription-notification", content=data, headers=headers)


def risks_on(server, document_id: str | None = None) -> list[dict]:
    with FhirClient(server.base_url) as client:
        found = list(client.search("RiskAssessment", {"_count": 50}))
    return [r for r in found if document_id is None or r["basis"][0]["reference"].startswith(f"DocumentReference/{document_id}/")]


def no_phi_in(store_url: str) -> None:
    path = Path(store_url.removeprefix("sqlite:///"))
    for file in path.parent.glob(path.name + "*"):  # the database and its WAL
        assert SECRET.encode() not in file.read_bytes(), file.name


# ------------------------------------------------------------------------------------------ tests


def test_handshake_and_heartbeat_are_acknowledged_and_queue_nothing(api):
    for kind in ("handshake", "heartbeat"):
        r = post(api, notification(kind))
        assert r.status_code == 200, r.text
        assert r.json()["resourceType"] == "OperationOutcome" and kind in r.json()["issue"][0]["diagnostics"]
    assert WorkQueue(api.app.state.store).counts(QUEUE) == {}


@pytest.mark.parametrize("body", [
    {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": {"x": 1}}]}}]},
    {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "event-notification"},
                                                    {"name": "notification-event", "part": [
                                                        {"name": ["focus"], "valueReference": {}}]}]}}]},
], ids=["type-an-object", "part-name-a-list"])
def test_found_by_fuzzing_unhashable_values_are_a_400(api, body):
    r = post(api, body)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", r.text


@pytest.mark.parametrize("body, code", [
    ({"resourceType": "Parameters"}, "structure"),
    ({"resourceType": "Bundle", "type": "batch", "entry": []}, "value"),
    ({"resourceType": "Bundle", "type": "history", "entry": []}, "required"),
    ({"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"resourceType": "Patient"}}]}, "structure"),
    ({"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "party"}]}}]}, "value"),
    ({"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "event-notification"}]}}]}, "required"),
    ({"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "event-notification"},
                                                    {"name": "notification-event", "part": [
                                                        {"name": "focus", "valueReference": {"reference": f"not a ref {SECRET}"}}]}]}}]},
     "value"),
])
def test_malformed_notifications_are_refused_with_an_operation_outcome(api, body, code):
    r = post(api, body)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == code
    assert SECRET not in r.text


def test_not_json_wrong_type_and_wrong_role_are_refused(api):
    assert post(api, b"{not json").status_code == 400
    assert post(api, notification("heartbeat"), content_type="text/plain").status_code == 415
    assert post(api, notification("heartbeat"), role=None).status_code == 401
    assert post(api, notification("heartbeat"), role="reader").status_code == 403


def test_a_notified_document_ends_as_risk_assessments_exactly_once(api, backend, store_url, fhir_server):  # noqa: F811
    with FhirClient(fhir_server.base_url) as client:
        doc = client.create(document())
    focus = f"{fhir_server.base_url}/DocumentReference/{doc['id']}"  # id-only: an absolute reference
    r = post(api, notification(focus=focus))
    assert r.status_code == 200 and "1 queued" in r.json()["issue"][0]["diagnostics"], r.text
    assert post(api, notification(focus=focus)).status_code == 200  # the EHR resends: same job
    worker = new_worker(backend, store_url, fhir_server.base_url)
    assert drain(worker) == 1
    written = risks_on(fhir_server, doc["id"])
    assert len(written) == H_AND_P_TASKS
    version = doc["meta"]["versionId"]
    for risk in written:
        RiskAssessment.model_validate(risk)
        assert risk["basis"][0]["reference"] == f"DocumentReference/{doc['id']}/_history/{version}"
        task = next(t.name for t in DEFAULT_CONTRACT.tasks if t.outcome.code == risk["code"]["coding"][0]["code"])
        assert risk["identifier"] == [{"system": "urn:lang1-ops:risk-assessment",
                                       "value": writeback_key(f"DocumentReference/{doc['id']}", version, task, "v0001")}]
    # a later event about the same note (new event number: a new job) finds them and writes nothing
    assert post(api, notification(focus=focus, event_number=2)).status_code == 200
    assert drain(worker) == 1
    assert len(risks_on(fhir_server, doc["id"])) == H_AND_P_TASKS
    jobs = worker.queue.jobs(QUEUE)
    assert [j.status for j in jobs] == ["done", "done"]
    assert len(jobs[0].result["created"]) == H_AND_P_TASKS and len(jobs[1].result["existing"]) == H_AND_P_TASKS
    no_phi_in(store_url)


def test_two_patients_notes_with_the_same_text_are_written_to_their_own_charts(api, backend, store_url,
                                                                             fhir_server):  # noqa: F811
    template = f"CC: fall. HPI: {SECRET} the same templated text for both patients."
    with FhirClient(fhir_server.base_url) as client:
        docs = [client.create(document(template, patient=patient)) for patient in ("pa", "pb")]
    for doc in docs:
        assert post(api, notification(focus=f"DocumentReference/{doc['id']}")).status_code == 200
    assert drain(new_worker(backend, store_url, fhir_server.base_url)) == 2
    for doc, patient in zip(docs, ("pa", "pb"), strict=True):
        written = risks_on(fhir_server, doc["id"])
        assert len(written) == H_AND_P_TASKS
        assert {r["subject"]["reference"] for r in written} == {f"Patient/{patient}"}
    assert set(Store(store_url).scores_between(datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
               ["patient_id"]) == {"pa", "pb"}


def test_full_resource_payload_is_reread_by_version_and_never_stored(api, backend, store_url, fhir_server):  # noqa: F811
    with FhirClient(fhir_server.base_url) as client:
        doc = client.create(document())
    r = post(api, notification(focus=f"DocumentReference/{doc['id']}", full_resource=doc))
    assert r.status_code == 200, r.text
    job = WorkQueue(api.app.state.store).jobs(QUEUE)[0]
    assert job.key == f"DocumentReference/{doc['id']}/_history/{doc['meta']['versionId']}"
    assert SECRET not in json.dumps(job.payload)
    assert drain(new_worker(backend, store_url, fhir_server.base_url)) == 1
    assert len(risks_on(fhir_server, doc["id"])) == H_AND_P_TASKS
    no_phi_in(store_url)


def test_server_down_and_worker_restarted_still_writes_exactly_once(api, backend, store_url, fhir_server):  # noqa: F811
    with FhirClient(fhir_server.base_url) as client:
        doc = client.create(document())
    fhir_server.stop()  # the EHR still notifies; lang1-ops accepts without the FHIR server
    assert post(api, notification(focus=f"DocumentReference/{doc['id']}")).status_code == 200
    first = new_worker(backend, store_url, fhir_server.base_url)
    assert drain(first) == 1
    job = first.queue.jobs(QUEUE)[0]
    assert job.status == "pending" and job.attempts == 1 and "FhirUnavailable" in job.last_error
    assert job.available_at > datetime.now(UTC) - timedelta(seconds=1)  # backed off
    fhir_server.start()  # same port, same data
    time.sleep(0.1)  # past the backoff
    # a worker claims it and dies mid-job (lease held, never completed)
    dying = new_worker(backend, store_url, fhir_server.base_url,
                       SubscriptionSettings(queue=SETTINGS.queue.model_copy(update={"lease_s": 1.0})))
    assert [j.id for j in dying.queue.claim(QUEUE, "dying-worker")] == [job.id]
    restarted = new_worker(backend, store_url, fhir_server.base_url)
    assert drain(restarted) == 0  # leased to the dead worker
    time.sleep(1.1)
    assert drain(restarted) == 1  # lease expired: claimed again
    assert len(risks_on(fhir_server, doc["id"])) == H_AND_P_TASKS
    assert restarted.queue.get(job.id).status == "done"
    assert dying.queue.complete(job.id, "dying-worker") is False  # the dead worker lost it


def test_dead_letter_then_replay_from_the_cli(api, backend, store_url, fhir_server):  # noqa: F811
    with FhirClient(fhir_server.base_url) as client:
        doc = client.create(document())
    fhir_server.stop()
    assert post(api, notification(focus=f"DocumentReference/{doc['id']}")).status_code == 200
    worker = new_worker(backend, store_url, fhir_server.base_url)
    for _ in range(SETTINGS.queue.max_attempts):
        time.sleep(0.25)  # past the backoff
        drain(worker)
    [dead] = worker.queue.dead_letters(QUEUE)
    assert dead.attempts == SETTINGS.queue.max_attempts
    runner = CliRunner()
    listed = runner.invoke(integration_cli, ["dead-letters", "--store-url", store_url, "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert row["id"] == dead.id and row["key"] == f"DocumentReference/{doc['id']}#event-1"
    assert "FhirUnavailable" in row["last_error"] and SECRET not in listed.output
    table = runner.invoke(integration_cli, ["dead-letters", "--store-url", store_url])
    assert table.exit_code == 0 and str(dead.id) in table.output
    fhir_server.start()
    replayed = runner.invoke(integration_cli, ["replay", str(dead.id), "--store-url", store_url])
    assert replayed.exit_code == 0 and "replayed 1" in replayed.output, replayed.output
    assert drain(worker) == 1
    assert len(risks_on(fhir_server, doc["id"])) == H_AND_P_TASKS
    assert runner.invoke(integration_cli, ["dead-letters", "--store-url", store_url]).output.strip() == "no dead letters"


def test_unscorable_note_types_are_skipped_and_other_types_ignored(api, backend, store_url, fhir_server):  # noqa: F811
    progress = document()
    progress["type"] = {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]}  # progress note
    with FhirClient(fhir_server.base_url) as client:
        doc = client.create(progress)
    body = notification(focus=f"DocumentReference/{doc['id']}")
    body["entry"][0]["resource"]["parameter"].append({"name": "notification-event", "part": [
        {"name": "event-number", "valueString": "2"}, {"name": "focus", "valueReference": {"reference": "Patient/p1"}}]})
    r = post(api, body)
    assert "1 queued" in r.json()["issue"][0]["diagnostics"] and "1 ignored" in r.json()["issue"][0]["diagnostics"]
    worker = new_worker(backend, store_url, fhir_server.base_url)
    assert drain(worker) == 1
    assert worker.queue.jobs(QUEUE)[0].result["skipped"] == "not-supported"
    assert risks_on(fhir_server) == []


def test_the_service_runs_the_worker_in_its_lifespan(backend, store_url, fhir_server):  # noqa: F811
    with FhirClient(fhir_server.base_url) as client:
        doc = client.create(document())
    settings = SETTINGS.model_copy(update={"enabled": True, "client": FhirClientSettings(base_url=fhir_server.base_url)})
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name="scorer", key_sha256=hash_api_key(KEYS["scorer"]),
                                                       roles={Role.SCORER})]))
    app = create_api(backend, Store(store_url), auth, ApiSettings(), routers=[subscription_router(settings)])
    with TestClient(app) as api:
        assert post(api, notification(focus=f"DocumentReference/{doc['id']}")).status_code == 200
        deadline = time.monotonic() + 30
        while len(risks_on(fhir_server, doc["id"])) < H_AND_P_TASKS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert isinstance(app.state.subscription_worker, SubscriptionWorker)
    assert len(risks_on(fhir_server, doc["id"])) == H_AND_P_TASKS
    assert WorkQueue(Store(store_url)).counts(QUEUE) == {"done": 1}


def test_docs_examples_are_valid():
    Subscription.model_validate(doc_example("subscription"))
    parsed = parse_notification(doc_example("notification-id-only"))
    assert parsed.type == "event-notification" and parsed.events[0].resource_type == "DocumentReference"
    parsed = parse_notification(doc_example("notification-full-resource"))
    assert parsed.events[0].version == "2"
    assert parse_notification(doc_example("notification-handshake")).type == "handshake"


# ------------------------------------------------------------------------------- the queue itself

class FakeClock:
    def __init__(self):
        self.now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def check_queue_semantics(url: str) -> None:
    clock = FakeClock()
    settings = WorkQueueSettings(lease_s=60, max_attempts=3, backoff_base_s=10, backoff_max_s=25)
    queue = WorkQueue(Store(url), settings, clock=clock)
    job, created = queue.enqueue("q", "DocumentReference/a/_history/1", {"id": "a"})
    again, created_again = queue.enqueue("q", "DocumentReference/a/_history/1", {"id": "a"})
    assert created and not created_again and again.id == job.id
    [claimed] = queue.claim("q", "w1")
    assert claimed.attempts == 1 and queue.claim("q", "w2") == []
    assert queue.fail(job.id, "w1", "FhirUnavailable") == "pending"
    assert queue.claim("q", "w2") == []  # backing off 10 s
    clock.advance(10)
    assert queue.claim("q", "w2")[0].attempts == 2
    assert queue.fail(job.id, "w1", "x") is None  # w1 no longer holds it
    assert queue.fail(job.id, "w2", "FhirUnavailable") == "pending"
    clock.advance(20)  # 2nd backoff 20 s
    assert queue.claim("q", "w3")[0].attempts == 3
    clock.advance(61)  # w3 died holding the last attempt: dead letter, not claimed again
    assert queue.claim("q", "w4") == [] and queue.get(job.id).status == "dead"
    assert [j.id for j in queue.dead_letters("q")] == [job.id]
    assert queue.replay([job.id]) == 1 and queue.counts("q") == {"pending": 1}
    [replayed] = queue.claim("q", "w5")
    assert replayed.attempts == 1 and queue.complete(job.id, "w5", {"ok": True})
    assert queue.enqueue("q", "DocumentReference/a/_history/1", {"id": "a"})[1] is False  # done stays done
    assert queue.fail(queue.enqueue("q", "bad", {})[0].id, "w5", "ApiError", retryable=False) is None  # not claimed
    [bad] = queue.claim("q", "w5")
    assert queue.fail(bad.id, "w5", "ApiError 422 invalid", retryable=False) == "dead"
    queue.store.dispose()


def check_concurrent_claims(url: str) -> None:
    """Several workers, each with its own Store (own connections, as in separate processes):
    every job is claimed by exactly one."""
    queue = WorkQueue(Store(url))
    for i in range(40):
        queue.enqueue("c", f"job-{i}", {"i": i})
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        mine = WorkQueue(Store(url))
        while jobs := mine.claim("c", name, limit=3):
            with lock:
                claimed.extend(j.id for j in jobs)
            for j in jobs:
                assert mine.complete(j.id, name)
        mine.store.dispose()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
    assert queue.counts("c") == {"done": 40}
    queue.store.dispose()


def test_queue_on_sqlite(tmp_path):
    check_queue_semantics(f"sqlite:///{tmp_path / 'a.sqlite'}")
    check_concurrent_claims(f"sqlite:///{tmp_path / 'b.sqlite'}")


def test_queue_on_postgresql(postgres_url):  # noqa: F811
    from sqlalchemy import text

    with Store(postgres_url).engine.begin() as connection:  # a clean table: the server is shared by the session
        connection.execute(text("DELETE FROM work_jobs"))
    check_queue_semantics(postgres_url)
    with Store(postgres_url).engine.begin() as connection:
        connection.execute(text("DELETE FROM work_jobs"))
    check_concurrent_claims(postgres_url)
