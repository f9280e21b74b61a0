"""The monitoring status collector: exact metric names, values read from the database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.history import MonitoringHistory
from monitoring.status_metrics import MonitoringStatusCollector
from serving.store import Store
from tests.postgres import postgres_url  # noqa: F401  (fixture)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    url = request.getfixturevalue("postgres_url")
    store = Store(url)
    with store.engine.begin() as connection:  # the session's server is shared: start from empty tables
        for table in ("monitoring_drift_runs", "monitoring_performance", "monitoring_loop_events", "outcomes"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
    return Store(url)


def test_collector_exports_the_newest_drift_performance_and_label_counts(store):
    registry = CollectorRegistry()
    now = [0.0]
    collector = MonitoringStatusCollector(store, refresh_s=60, clock=lambda: now[0])
    registry.register(collector)
    assert samples(registry) == {}  # nothing checked yet: no made-up values

    history = MonitoringHistory(store)
    when = datetime(2024, 5, 1, 12, tzinfo=UTC)
    for detected, at in ((False, datetime(2024, 4, 1, tzinfo=UTC)), (True, when)):
        history.record_drift(checked_at=at, window_start=at, window_end=at, window_by="scored_at", model_version="v0001",
                             n_current=10, n_reference=20, detected=detected,
                             checks={"descriptors": {"detected": detected}, "embeddings": {"detected": False}},
                             features={"descriptors": {"oov_rate": 0.4 if detected else 0.01},
                                       "embeddings": {"domain_classifier_auroc": 0.52}},
                             report_dir=None, duration_s=1.0)
    history.record_performance(computed_at=when, window_start=when, window_end=when, model_version="v0001",
                               task="mortality", n=100, auroc=0.81, auroc_low=0.7, auroc_high=0.9, ece=0.04, report_dir=None)
    history.record_performance(computed_at=when, window_start=when, window_end=when, model_version="v0001",
                               task="los", n=100, auroc=float("nan"), auroc_low=None, auroc_high=None, ece=0.1,
                               report_dir=None)
    for i in range(3):
        store.record_outcome("p1", f"e{i}", "mortality", i % 2, when, "test")
    store.record_outcome("p1", "e0", "los", 2, when, "test")

    reads = collector.reads
    assert samples(registry) == {} and collector.reads == reads  # scrapes within refresh_s: no database read
    now[0] += 60
    got = samples(registry)
    assert collector.reads == reads + 1
    assert got[("lang1ops_drift_detected", (("check", "descriptors"),))] == 1.0
    assert got[("lang1ops_drift_detected", (("check", "embeddings"),))] == 0.0
    assert got[("lang1ops_drift_detected", (("check", "overall"),))] == 1.0
    assert got[("lang1ops_drift_score", (("check", "descriptors"), ("feature", "oov_rate")))] == 0.4
    assert got[("lang1ops_drift_score", (("check", "embeddings"), ("feature", "domain_classifier_auroc")))] == 0.52
    assert got[("lang1ops_drift_last_check_timestamp_seconds", ())] == when.timestamp()
    assert got[("lang1ops_rolling_auroc", (("task", "mortality"),))] == 0.81
    assert ("lang1ops_rolling_auroc", (("task", "los"),)) not in got  # undefined AUROC is absent, not 0
    assert got[("lang1ops_rolling_ece", (("task", "los"),))] == 0.1
    assert got[("lang1ops_labels_total", (("task", "mortality"),))] == 3.0
    assert got[("lang1ops_labels_total", (("task", "los"),))] == 1.0
    names = {name for name, _ in got}
    assert names == {"lang1ops_drift_detected", "lang1ops_drift_score", "lang1ops_drift_last_check_timestamp_seconds",
                     "lang1ops_rolling_auroc", "lang1ops_rolling_ece", "lang1ops_labels_total"}


def test_loop_events_round_trip(store):
    history = MonitoringHistory(store)
    history.record_event("c1", "evaluate", "refuse", champion="v0001", candidate="v0002",
                         detail={"gate": {"champion_mean": float("nan"), "candidate_mean": 0.5}})
    (event,) = history.events("c1")
    assert event["detail"]["gate"] == {"champion_mean": None, "candidate_mean": 0.5}  # strict JSON
    assert event["time"].tzinfo is not None
    assert history.last_event_time("evaluate") == event["time"]

