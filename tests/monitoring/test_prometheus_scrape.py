"""The real thing: the Ray Serve service with 2 scorer replicas (separate processes) and a real
Prometheus (Debian binary) scraping its /metrics on 127.0.0.1, queried over its HTTP API.

Proves the multiprocess metrics add up: the notes scored that Prometheus reports equal the
notes posted, though two replica processes scored them."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from lang1ops.registry import Registry
from lang1ops.tasks import DEFAULT_CONTRACT
from monitoring.prometheus import RULES_FILE, PrometheusServer, prometheus_config
from serving.cli import wait_until_ready
from tests.serving.test_serve_app import HEADERS, doc, free_port, make_settings
from tests.support import require_binary
from training.artifacts import zero_shot_artifact

SCORE_ROUTE = "/fhir/DocumentReference/$score"
ADMISSION_TASKS = ("mortality", "los", "cci", "denial")  # an H&P note's tasks


@pytest.fixture(scope="module")
def service(tiny_llama_dir, tmp_path_factory):
    require_binary("prometheus", "apt-get install -y prometheus")
    from ray import serve

    from app.service import run

    root = tmp_path_factory.mktemp("scrape")
    registry = Registry(root / "registry")
    v1 = registry.register(zero_shot_artifact(tiny_llama_dir, root / "a1", DEFAULT_CONTRACT, 64, name="lang1-ops"),
                           "test", "v1")
    registry.promote("lang1-ops", v1.version, "test", "first")
    port = free_port()
    settings = make_settings(root, tiny_llama_dir, f"sqlite:///{root / 'store.sqlite'}", port)
    assert settings.serving.scorer_replicas == 2
    run(settings, blocking=False)
    base = f"http://127.0.0.1:{port}"
    assert wait_until_ready(base, 180), "service not ready"
    prometheus = PrometheusServer(root / "prometheus",
                                  prometheus_config([f"127.0.0.1:{port}"], scrape_interval="1s", rule_files=[RULES_FILE]))
    prometheus.start()
    try:
        yield {"base": base, "settings": settings, "prometheus": prometheus}
    finally:
        prometheus.stop()
        serve.shutdown()
        import ray

        ray.shutdown()


def notes_per_process(directory) -> dict[int, float]:
    """lang1ops_notes_scored_total{task=mortality} of each process's own counter file."""
    out = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        for entry in MmapedDict.read_all_values_from_file(str(path)):
            key, value = entry[0], entry[1]
            _metric, name, labels, _help = json.loads(key)
            if name == "lang1ops_notes_scored_total" and labels.get("task") == "mortality":
                out[pid] = out.get(pid, 0) + value
    return out


def test_prometheus_scrapes_scorer_metrics_from_both_replicas(service):
    base, prom = service["base"], service["prometheus"]
    directory = (service["settings"].home / "prometheus-multiproc").resolve()
    posted = 0

    def post(i: int) -> int:
        r = httpx.post(f"{base}{SCORE_ROUTE}", content=json.dumps(doc(f"scrape-{i}")), headers=HEADERS, timeout=120)
        return r.status_code

    # concurrent waves until both replicas have scored (Serve spreads load over replicas)
    with ThreadPoolExecutor(6) as pool:
        for _wave in range(5):
            statuses = list(pool.map(post, range(posted, posted + 12)))
            assert statuses == [200] * 12
            posted += 12
            if len([n for n in notes_per_process(directory).values() if n > 0]) >= 2:
                break
    per_process = notes_per_process(directory)
    assert len([n for n in per_process.values() if n > 0]) == 2, per_process
    assert sum(per_process.values()) == posted
    bad = httpx.post(f"{base}{SCORE_ROUTE}", content=b"{oops", headers=HEADERS, timeout=30)
    assert bad.status_code == 400

    # Prometheus' view, over its HTTP API: the two replicas' counts add up to what was posted
    assert prom.wait_for_value('up{job="lang1-ops"}', 1) == 1
    assert [t["labels"]["job"] for t in prom.targets()] == ["lang1-ops"]
    for task in ADMISSION_TASKS:
        got = prom.wait_for_value(f'sum(lang1ops_notes_scored_total{{deployment="scorer",task="{task}"}})', posted)
        assert got == posted, (task, got, posted)
    assert prom.wait_for_value('sum(lang1ops_scorer_batch_size_sum{deployment="scorer"})', posted) == posted
    batches = prom.value('sum(lang1ops_scorer_batch_size_count{deployment="scorer"})')
    assert 1 <= batches <= posted
    assert prom.wait_for_value(f'sum(lang1ops_requests_total{{route="{SCORE_ROUTE}",status="200"}})', posted) == posted
    assert prom.wait_for_value(f'sum(lang1ops_request_errors_total{{route="{SCORE_ROUTE}",code="structure"}})', 1) == 1
    assert prom.wait_for_value('sum(lang1ops_scorer_replicas{deployment="scorer"})', 2) == 2
    assert prom.value('max(lang1ops_model_info{deployment="scorer",version="v0001"})') == 1
    probability_count = prom.value('sum(lang1ops_predicted_probability_count{task="mortality"})')
    assert probability_count == posted  # binary: one probability per note
    p95 = prom.value(f'histogram_quantile(0.95, sum by (le) (lang1ops_request_duration_seconds_bucket{{route="{SCORE_ROUTE}"}}))')
    assert p95 is not None and p95 > 0
    last = prom.value("max(lang1ops_last_note_scored_timestamp_seconds)")
    assert last is not None and time.time() - last < 300

    # the rules file is loaded and evaluated against the live service: nothing fires on a healthy one
    groups = {g["name"]: g for g in prom.rules()}
    assert {"lang1-ops-service", "lang1-ops-model"} <= set(groups)
    firing = [r["name"] for g in groups.values() for r in g["rules"] if r.get("state") == "firing"]
    assert firing == []

    # figures for docs/monitoring.md (Metrics and alerts)
    print(f"\nSCRAPE FIGURES posted={posted} per_process={sorted(per_process.values())} batches={batches} "
          f"p95={p95:.3f}s")
