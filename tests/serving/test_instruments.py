"""The service's Prometheus metrics in process (create_api + LocalBackend), the scorer's batch
metrics, and the multiprocess merge across separate processes (as Ray replicas are)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from lang1ops.tasks import DEFAULT_CONTRACT
from serving import instruments as prom
from serving.api import create_api
from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
from serving.backends import LocalBackend, ResolvedModel
from serving.store import Store
from training.artifacts import zero_shot_artifact

SECRET = "QUOKKA-PHI-5521"  # in note text; must never appear in /metrics
PATIENT = "patient-8812"
KEY = "metrics-test-key"
SCORE_ROUTE = "/fhir/DocumentReference/$score"


def doc(doc_id: str, text: str = f"CC: dyspnea. HPI: 80 yo F {SECRET} with CHF.") -> dict:
    return {"resourceType": "DocumentReference", "id": doc_id, "meta": {"versionId": "1"}, "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
            "subject": {"reference": f"Patient/{PATIENT}"},
            "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}]}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, metric: str, **labels: str) -> float:
    return samples(text).get((metric, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def client(tiny_llama_dir, tmp_path_factory):
    assert prom.multiprocess_dir() is None  # in-process: the default registry
    root = tmp_path_factory.mktemp("metrics")
    artifact = zero_shot_artifact(tiny_llama_dir, root / "artifact", DEFAULT_CONTRACT, max_note_tokens=64)
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name="ehr", key_sha256=hash_api_key(KEY), roles={Role.SCORER})]))
    app = create_api(LocalBackend(ResolvedModel("v0001", artifact), dtype="float32"),
                     Store(f"sqlite:///{root / 'store.sqlite'}"), auth)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client, path: str, body, auth: bool = True):
    headers = {"Content-Type": "application/fhir+json"}
    if auth:
        headers["Authorization"] = f"Bearer {KEY}"
    return client.post(path, content=body if isinstance(body, bytes) else json.dumps(body), headers=headers)


def test_requests_errors_and_latency_by_route_template_and_outcome_code(client):
    before = client.get("/metrics").text
    for i in range(3):
        assert post(client, SCORE_ROUTE, doc(f"m{i}")).status_code == 200
    assert post(client, SCORE_ROUTE, b"{not json").status_code == 400
    assert post(client, SCORE_ROUTE, doc("m9"), auth=False).status_code == 401
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": doc("b1")}, {"resource": {"x": 1}}]}
    assert post(client, "/fhir", bundle).status_code == 200
    assert client.get("/fhir/DocumentReference/some-id-123").status_code in (404, 405)
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(metric: str, **labels: str) -> float:
        return value(text, metric, **labels) - value(before, metric, **labels)

    assert delta("lang1ops_requests_total", route=SCORE_ROUTE, method="POST", status="200") == 3
    assert delta("lang1ops_requests_total", route=SCORE_ROUTE, method="POST", status="400") == 1
    assert delta("lang1ops_requests_total", route=SCORE_ROUTE, method="POST", status="401") == 1
    assert delta("lang1ops_request_errors_total", route=SCORE_ROUTE, code="structure") == 1
    assert delta("lang1ops_request_errors_total", route=SCORE_ROUTE, code="security") == 1
    # the failing entry of a batch counts as an error of its route; the Bundle itself is a 200
    assert delta("lang1ops_request_errors_total", route="/fhir", code="invalid") == 1
    assert delta("lang1ops_requests_total", route="/fhir", method="POST", status="200") == 1
    assert delta("lang1ops_request_duration_seconds_count", route=SCORE_ROUTE, method="POST") == 5
    assert value(text, "lang1ops_request_duration_seconds_sum", route=SCORE_ROUTE, method="POST") > 0
    # a path with an id in it is not a label value: unmatched routes share one label
    assert "some-id-123" not in text
    assert delta("lang1ops_requests_total", route=prom.UNMATCHED_ROUTE, method="GET", status="404") in (0, 1)


def test_no_phi_or_ids_in_metrics(client):
    assert post(client, SCORE_ROUTE, doc("phi-doc-77")).status_code == 200
    text = client.get("/metrics").text
    for leaked in (SECRET, PATIENT, "phi-doc-77", "Patient/"):
        assert leaked not in text


def test_scorer_batch_metrics_per_task_and_probability_histograms():
    before = prom.exposition().decode()
    replies = [{"probabilities": {"mortality": [0.9, 0.1], "los": [0.1, 0.2, 0.3, 0.4]}},
               {"probabilities": {"mortality": [0.4, 0.6]}}]
    prom.observe_batch("scorer", DEFAULT_CONTRACT, [["mortality", "los"], ["mortality"]], replies, 0.25)
    text = prom.exposition().decode()

    def delta(metric: str, **labels: str) -> float:
        return value(text, metric, **labels) - value(before, metric, **labels)

    assert delta("lang1ops_notes_scored_total", deployment="scorer", task="mortality") == 2
    assert delta("lang1ops_notes_scored_total", deployment="scorer", task="los") == 1
    assert delta("lang1ops_scorer_batch_size_sum", deployment="scorer") == 2
    assert delta("lang1ops_scorer_batch_size_count", deployment="scorer") == 1
    assert delta("lang1ops_scorer_batch_duration_seconds_sum", deployment="scorer") == pytest.approx(0.25)
    # binary task: the positive option (B, "yes") only; 0.1 and 0.6 fall in the <=0.1 and <=0.6 buckets
    assert delta("lang1ops_predicted_probability_count", deployment="scorer", task="mortality", option="B") == 2
    assert delta("lang1ops_predicted_probability_bucket", deployment="scorer", task="mortality", option="B", le="0.1") == 1
    assert delta("lang1ops_predicted_probability_sum", deployment="scorer", task="mortality", option="B") == pytest.approx(0.7)
    assert delta("lang1ops_predicted_probability_count", deployment="scorer", task="mortality", option="A") == 0
    # binned task: every option
    for letter, p in zip("ABCD", (0.1, 0.2, 0.3, 0.4), strict=True):
        assert delta("lang1ops_predicted_probability_sum", deployment="scorer", task="los", option=letter) == pytest.approx(p)
    assert value(text, "lang1ops_last_note_scored_timestamp_seconds") > 1.7e9


def test_model_version_info_moves_with_a_hot_swap():
    prom.set_serving_model("scorer", "lang1-ops", "v0007", "mc", None)
    prom.set_serving_model("scorer", "lang1-ops", "v0008", "mc", ("lang1-ops", "v0007", "mc"))
    text = prom.exposition().decode()
    assert value(text, "lang1ops_model_info", deployment="scorer", name="lang1-ops", version="v0008", kind="mc") == 1
    assert value(text, "lang1ops_model_info", deployment="scorer", name="lang1-ops", version="v0007", kind="mc") == 0


class StatusCollector:
    def collect(self):
        gauge = GaugeMetricFamily("lang1ops_rolling_auroc", "Rolling AUROC per task.", labels=["task"])
        gauge.add_metric(["readmission"], 0.71)
        yield gauge


class BrokenCollector:
    def collect(self):
        raise ConnectionError("store down")


def test_registered_collectors_join_metrics_and_a_broken_one_loses_only_itself(client):
    good, broken = StatusCollector(), BrokenCollector()
    prom.register_collector(broken)
    prom.register_collector(good)
    try:
        r = client.get("/metrics")
        assert r.status_code == 200
        assert value(r.text, "lang1ops_rolling_auroc", task="readmission") == pytest.approx(0.71)
        assert "lang1ops_requests_total" in r.text
    finally:
        prom.unregister_collector(good)
        prom.unregister_collector(broken)
    assert "lang1ops_rolling_auroc" not in client.get("/metrics").text


RECORDER = """
import sys
from lang1ops.tasks import DEFAULT_CONTRACT
from serving import instruments as prom
n = int(sys.argv[1])
replies = [{"probabilities": {"mortality": [0.5, 0.5]}} for _ in range(n)]
prom.observe_batch("scorer", DEFAULT_CONTRACT, [["mortality"]] * n, replies, 0.01)
prom.set_serving_model("scorer", "lang1-ops", "v0001", "mc", None)
prom.observe_request("/fhir/DocumentReference/$score", "POST", 200, 0.1)
"""


def test_multiprocess_counts_from_separate_processes_add_up(tmp_path):
    """Two recorder processes (as two scorer replicas) write 3 and 4 notes: the merged view says 7;
    once they have exited, their live gauges (replicas, model info) are pruned."""
    env = {**os.environ, **prom.prepare_multiprocess_dir(tmp_path / "mp", clear=True)}
    root = Path(__file__).resolve().parents[2]
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", RECORDER, str(n)], env=env, cwd=root, check=True, timeout=120)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path / "mp"))
    from prometheus_client import generate_latest

    merged = generate_latest(registry).decode()
    assert value(merged, "lang1ops_notes_scored_total", deployment="scorer", task="mortality") == 7
    assert value(merged, "lang1ops_scorer_batch_size_sum", deployment="scorer") == 7
    assert value(merged, "lang1ops_requests_total", route=SCORE_ROUTE, method="POST", status="200") == 2
    assert len(list((tmp_path / "mp").glob("counter_*.db"))) == 2
    # the recorders have exited: their live gauges go, the counters stay
    assert len(prom.prune_dead_processes(tmp_path / "mp")) == 2
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path / "mp"))
    pruned = generate_latest(registry).decode()
    assert value(pruned, "lang1ops_scorer_replicas", deployment="scorer") == 0
    assert value(pruned, "lang1ops_notes_scored_total", deployment="scorer", task="mortality") == 7
    # a fresh start clears an earlier run's files
    prom.prepare_multiprocess_dir(tmp_path / "mp", clear=True)
    assert not list((tmp_path / "mp").iterdir())
