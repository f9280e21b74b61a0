"""The real thing: a local Ray Serve application (ingress + scorer replicas) with a tiny model
from a registry, over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from lang1ops.registry import Registry
from lang1ops.settings import Settings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.auth import ApiKey, AuthSettings, Role, hash_api_key
from serving.cli import wait_until_ready
from serving.store import Store
from tests.postgres import postgres_url  # noqa: F401  (fixture)
from tests.support import stored_score_of
from training.artifacts import zero_shot_artifact

KEY = "serve-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/fhir+json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc(doc_id: str, loinc: str = "34117-2", text: str = "CC: dyspnea. HPI: 81 yo F with CHF and CKD.") -> dict:
    return {"resourceType": "DocumentReference", "id": doc_id, "meta": {"versionId": "1"}, "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": loinc}]}, "subject": {"reference": "Patient/p1"},
            "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}]}


def make_settings(root: Path, base: Path, store_url: str, port: int) -> Settings:
    return Settings(home=root / "home", registry_dir=root / "registry", model={"base_model_dir": base, "max_note_tokens": 64},
                    serving={"port": port, "store_url": store_url, "replica_cpus": 0.5, "scorer_replicas": 2,
                             "max_batch_size": 4, "watch_interval_s": 0.5, "dtype": "float32",
                             "api": {"base_url": f"http://127.0.0.1:{port}/fhir"},
                             "auth": AuthSettings(api_keys=[ApiKey(name="ehr", key_sha256=hash_api_key(KEY),
                                                                   roles={Role.SCORER})])})


@pytest.fixture(scope="module")
def service(tiny_llama_dir, tmp_path_factory):
    from ray import serve

    from app.service import run

    root = tmp_path_factory.mktemp("serve")
    registry = Registry(root / "registry")
    v1 = registry.register(zero_shot_artifact(tiny_llama_dir, root / "a1", DEFAULT_CONTRACT, 64, name="lang1-ops"), "test", "v1")
    registry.promote("lang1-ops", v1.version, "test", "first")
    port = free_port()
    settings = make_settings(root, tiny_llama_dir, f"sqlite:///{root / 'store.sqlite'}", port)
    run(settings, blocking=False)
    base = f"http://127.0.0.1:{port}"
    assert wait_until_ready(base, 120), "service not ready"
    yield {"base": base, "settings": settings, "registry": registry, "root": root}
    serve.shutdown()
    import ray

    ray.shutdown()


def test_document_reference_in_valid_risk_assessments_out(service):
    r = httpx.post(f"{service['base']}/fhir/DocumentReference/$score?task=readmission,mortality,los,cci,denial",
                   content=json.dumps(doc("s1")), headers=HEADERS, timeout=60)
    assert r.status_code == 200, r.text
    resources = [e["resource"] for e in r.json()["entry"]]
    assert len(resources) == 5
    for ra in resources:
        RiskAssessment.model_validate(ra)
        assert ra["method"]["coding"][0]["version"] == r.headers["X-Model-Version"] == "v0001"


def test_batch_bundle_bad_input_and_idempotent_repost_over_http(service):
    base = service["base"]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": doc("b1")}, {"resource": doc("b2", "18842-5")}]}
    r = httpx.post(f"{base}/fhir", content=json.dumps(bundle), headers=HEADERS, timeout=60)
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "200 OK"]
    again = httpx.post(f"{base}/fhir/DocumentReference/$score", content=json.dumps(doc("b1")), headers=HEADERS, timeout=60)
    assert again.headers["X-Idempotent-Replay"] == "true"
    bad = httpx.post(f"{base}/fhir/DocumentReference/$score", content=b"{not json", headers=HEADERS, timeout=30)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert httpx.post(f"{base}/fhir/DocumentReference/$score", content=json.dumps(doc("x")),
                      headers={"Content-Type": "application/fhir+json"}, timeout=30).status_code == 401


def test_scores_are_persisted_before_the_answer(service):
    r = httpx.post(f"{service['base']}/fhir/DocumentReference/$score", content=json.dumps(doc("p1")), headers=HEADERS,
                   timeout=60)
    assert r.status_code == 200
    store = Store(service["settings"].serving.store_url)
    stored = stored_score_of(store, "DocumentReference/p1/_history/1")
    assert stored is not None and stored.model_version == "v0001" and set(stored.probabilities) == {"mortality", "los",
                                                                                                    "cci", "denial"}


def test_hot_reload_under_concurrent_requests_has_no_errors_and_one_version_per_answer(service, tiny_llama_dir):
    from serving.app import watch_registry

    registry, root, base = service["registry"], service["root"], service["base"]
    v2 = registry.register(zero_shot_artifact(tiny_llama_dir, root / "a2", DEFAULT_CONTRACT, 48, name="lang1-ops"), "test", "v2")
    stop = threading.Event()
    answers: list[tuple[int, str, set]] = []

    def fire(i: int) -> None:
        while not stop.is_set():
            r = httpx.post(f"{base}/fhir/DocumentReference/$score", content=json.dumps(doc(f"load-{i}-{len(answers)}")),
                           headers=HEADERS, timeout=60)
            versions = {e["resource"]["method"]["coding"][0]["version"] for e in r.json().get("entry", [])}
            answers.append((r.status_code, r.headers.get("X-Model-Version", ""), versions))

    watcher = threading.Thread(target=watch_registry, args=(service["settings"], ("v0001", None)),
                               kwargs={"should_stop": stop.is_set}, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        for i in range(4):
            pool.submit(fire, i)
        time.sleep(3)
        registry.promote("lang1-ops", v2.version, "test", "hot reload test")
        deadline = time.time() + 90
        while time.time() < deadline and not any(a[1] == "v0002" for a in answers[-4:]):
            time.sleep(0.5)
        time.sleep(2)
        stop.set()
    assert answers and all(status == 200 for status, _, _ in answers), {s for s, _, _ in answers}
    assert all(header in ("v0001", "v0002") and versions == {header} for _, header, versions in answers)
    assert any(h == "v0001" for _, h, _ in answers) and answers[-1][1] == "v0002"


def test_postgres_store_through_the_same_url_setting(service, postgres_url):  # noqa: F811
    from ray import serve

    from serving.app import build_app

    settings = service["settings"].model_copy(deep=True)
    settings.serving.store_url = postgres_url
    serve.run(build_app(settings, "champion"), name="lang1ops", route_prefix="/")
    r = httpx.post(f"{service['base']}/fhir/DocumentReference/$score", content=json.dumps(doc("pg1")), headers=HEADERS,
                   timeout=60)
    assert r.status_code == 200, r.text
    stored = stored_score_of(Store(postgres_url), "DocumentReference/pg1/_history/1")
    assert stored is not None and stored.response == [e["resource"] for e in r.json()["entry"]]


def test_the_watcher_pins_new_champion_and_challenger_versions_in_the_deployments(tiny_llama_dir, tmp_path, monkeypatch):
    """Without Ray: what watch_registry asks Serve to deploy when the registry changes. The shadow
    replica gets the challenger's version in its user_config (an alias there never changes, so a
    new challenger would never reach it)."""
    import serving.app as app_module

    registry = Registry(tmp_path / "registry")
    for tag in ("a", "b", "c"):
        registry.register(zero_shot_artifact(tiny_llama_dir, tmp_path / tag, DEFAULT_CONTRACT, 32, name="lang1-ops"),
                          "test", tag)
    registry.promote("lang1-ops", "v0001", "test", "first")
    settings = make_settings(tmp_path, tiny_llama_dir, f"sqlite:///{tmp_path / 's.sqlite'}", 1)
    settings.serving.shadow, settings.serving.watch_interval_s = True, 0
    deployed = []
    monkeypatch.setattr(app_module, "build_app",
                        lambda s, model_ref=None, shadow_ref=None, extensions=None: (model_ref, shadow_ref, extensions))
    monkeypatch.setattr(app_module.serve, "run", lambda application, **_: deployed.append(application))
    steps = iter([lambda: None,
                  lambda: registry.set_alias("lang1-ops", "challenger", "v0002", "test", "shadow it"),
                  lambda: registry.set_alias("lang1-ops", "challenger", "v0003", "test", "a newer candidate"),
                  lambda: registry.promote("lang1-ops", "v0003", "test", "promoted")])

    def should_stop():
        step = next(steps, None)
        if step is None:
            return True
        step()
        return False

    assert app_module.resolved_versions(settings) == ("v0001", None)
    def routers(_settings):  # the other areas' endpoints: every redeploy must keep them
        return []

    app_module.watch_registry(settings, ("v0001", None), should_stop, extensions=routers)
    # promotion clears the challenger
    assert deployed == [("v0001", "v0002", routers), ("v0001", "v0003", routers), ("v0003", None, routers)]
