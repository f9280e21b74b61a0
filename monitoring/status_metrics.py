"""The monitoring status as Prometheus metrics, read from the database at scrape time.

`MonitoringStatusCollector(store)` is a prometheus_client custom collector: it reads the newest
drift run, the newest performance window per task and the label counts at most once per
`refresh_s` (60 s; these change hourly at most), so a scrape, or many scrapers, never load the
database; any process that can reach the database (the ingress replica, an exporter sidecar)
exports the same numbers, with no multiprocess bookkeeping. Label values are check names, column names
and task names: never PHI.

    lang1ops_drift_detected{check}                      1 if the newest check detected drift
    lang1ops_drift_score{check,feature}                 per-column drift score (higher = more drift)
    lang1ops_drift_last_check_timestamp_seconds         when the newest check ran
    lang1ops_rolling_auroc{task}                        AUROC of the newest performance window
    lang1ops_rolling_ece{task}                          its expected calibration error
    lang1ops_labels_total{task}                         outcomes recorded so far
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from lang1ops.store_schema import Outcome
from monitoring.history import MonitoringHistory

log = logging.getLogger(__name__)


class MonitoringStatusCollector(Collector):
    def __init__(self, store, history: MonitoringHistory | None = None, refresh_s: float = 60.0,
                 clock=time.monotonic):
        self.store = store
        self.history = history or MonitoringHistory(store)
        self.refresh_s, self.clock = refresh_s, clock
        self._cached: tuple[float, tuple] | None = None
        self._lock = threading.Lock()
        self.reads = 0  # database reads so far (the cache's test counts them)

    def describe(self):
        # metric names without reading the database at registration
        return [GaugeMetricFamily("lang1ops_drift_detected", "", labels=["check"]),
                GaugeMetricFamily("lang1ops_drift_score", "", labels=["check", "feature"]),
                GaugeMetricFamily("lang1ops_drift_last_check_timestamp_seconds", ""),
                GaugeMetricFamily("lang1ops_rolling_auroc", "", labels=["task"]),
                GaugeMetricFamily("lang1ops_rolling_ece", "", labels=["task"]),
                CounterMetricFamily("lang1ops_labels", "", labels=["task"])]

    def collect(self):
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.refresh_s:
                self._cached = (now, self._read())
            families = self._cached[1]
        yield from families

    def _read(self) -> tuple:
        self.reads += 1
        detected = GaugeMetricFamily("lang1ops_drift_detected", "1 if the newest drift check detected drift, by check "
                                     "(descriptors, embeddings, predictions, overall).", labels=["check"])
        score = GaugeMetricFamily("lang1ops_drift_score", "Drift score of each column in the newest drift check "
                                  "(distance, or 1 - p-value on small windows; the domain classifier's AUROC for "
                                  "embeddings).", labels=["check", "feature"])
        last = GaugeMetricFamily("lang1ops_drift_last_check_timestamp_seconds",
                                 "Unix time of the newest drift check.")
        auroc = GaugeMetricFamily("lang1ops_rolling_auroc", "AUROC of the newest performance window, by task.",
                                  labels=["task"])
        ece = GaugeMetricFamily("lang1ops_rolling_ece", "Expected calibration error (15 bins) of the newest "
                                "performance window, by task.", labels=["task"])
        labels = CounterMetricFamily("lang1ops_labels", "True outcomes recorded, by task.", labels=["task"])
        try:
            run = self.history.latest_drift()
            if run is not None:
                for check, result in (run["checks"] or {}).items():
                    detected.add_metric([check], 1.0 if result.get("detected") else 0.0)
                detected.add_metric(["overall"], 1.0 if run["detected"] else 0.0)
                for check, features in (run["features"] or {}).items():
                    for feature, value in features.items():
                        if value is not None:
                            score.add_metric([check, feature], float(value))
                last.add_metric([], run["checked_at"].timestamp())
            for task, perf in self.history.latest_performance().items():
                if perf.auroc is not None:
                    auroc.add_metric([task], perf.auroc)
                if perf.ece is not None:
                    ece.add_metric([task], perf.ece)
            with self.store.engine.connect() as connection:
                for task, count in connection.execute(select(Outcome.task, func.count()).group_by(Outcome.task)):
                    labels.add_metric([task], float(count))
        except Exception as exc:  # a scrape must not fail because the database is briefly unavailable
            log.warning("monitoring status not readable: %s", type(exc).__name__)
        return detected, score, last, auroc, ece, labels
