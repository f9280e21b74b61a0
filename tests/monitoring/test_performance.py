"""Performance from the store's scores and outcomes equals training.evaluate on the same data."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from lang1ops.settings.drift_loop import DriftLoopSettings
from lang1ops.tasks import DEFAULT_CONTRACT
from monitoring.history import MonitoringHistory
from monitoring.performance import evaluate_window, labeled_predictions, performance_alerts
from serving.store import Store
from tests.monitoring.helpers import add_scores
from training.evaluate import evaluate_task

FEB, MAR = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture()
def labeled(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    rng = np.random.default_rng(5)
    n = 300
    labels = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.25 + 0.35 * labels + rng.normal(0, 0.2, n), 0.01, 0.99)  # informative, imperfect
    encounters = add_scores(store, n, FEB, rng, prefix="perf", readmission=p)
    for i, (encounter, label) in enumerate(zip(encounters, labels, strict=True)):
        if i % 10 == 9:
            continue  # outcomes not arrived yet for every tenth encounter
        store.record_outcome(f"p-perf{i}", encounter, "readmission", int(label), FEB, "test")
    keep = np.arange(n) % 10 != 9
    sex = np.where(np.arange(n) % 2 == 0, "female", "male")
    groups = pd.DataFrame({"encounter_id": encounters, "sex": sex})
    return store, labels[keep], p[keep], sex[keep], groups


def test_window_performance_matches_training_evaluate(labeled, tmp_path):
    store, y, p, sex, groups = labeled
    settings = DriftLoopSettings(performance_resamples=200)
    history = MonitoringHistory(store)
    result = evaluate_window(store, FEB, MAR, DEFAULT_CONTRACT, settings, groups=groups, out_dir=tmp_path, history=history)
    assert result.model_version == "v0001" and result.labeled == {"readmission": len(y)}
    got = result.evaluations["readmission"]
    want = evaluate_task(DEFAULT_CONTRACT.task("readmission"), result.label, y, np.column_stack([1 - p, p]),
                         pd.DataFrame({"sex": sex}), n_resamples=200)
    assert got.n == want.n == 270
    assert got.auroc.estimate == pytest.approx(want.auroc.estimate)
    assert (got.auroc.low, got.auroc.high) == pytest.approx((want.auroc.low, want.auroc.high))
    assert got.ece == pytest.approx(want.ece)
    assert got.subgroups["sex"]["female"]["auroc"] == want.subgroups["sex"]["female"]["auroc"]
    assert 0.7 < got.auroc.estimate < 0.95
    card = json.loads((result.report_dir / "performance.json").read_text())
    assert card["rows"][0]["auroc"]["estimate"] == pytest.approx(want.auroc.estimate)
    assert "AUROC by subgroup" in (result.report_dir / "performance.md").read_text()
    latest = history.latest_performance()["readmission"]
    assert latest.n == 270 and latest.auroc == pytest.approx(want.auroc.estimate)


def test_too_few_labels_are_counted_not_evaluated_and_limits_raise_alerts(labeled):
    store, *_ = labeled
    settings = DriftLoopSettings(min_labels_per_task=1000, performance_resamples=50)
    result = evaluate_window(store, FEB, MAR, DEFAULT_CONTRACT, settings)
    assert result.evaluations == {} and result.labeled["readmission"] == 270
    strict = DriftLoopSettings(auroc_alert_below=0.99, performance_resamples=50)
    reasons = performance_alerts(evaluate_window(store, FEB, MAR, DEFAULT_CONTRACT, strict), strict)
    assert reasons and reasons[0].startswith("readmission: AUROC")


def test_one_encounter_counts_once_with_the_newest_note(labeled):
    store, *_ = labeled
    version, frames = labeled_predictions(store, FEB, MAR)
    assert version == "v0001" and frames["readmission"]["encounter_id"].is_unique


def test_monthly_auroc_counts_each_encounter_once_for_one_model_version(labeled):
    """The MLOps page's monthly AUROC goes through the same selection as every window."""
    from sklearn.metrics import roc_auc_score

    from monitoring.performance import monthly_auroc

    store, y, p, *_ = labeled
    now = datetime.now(UTC)
    [row] = [r for r in monthly_auroc(store, DEFAULT_CONTRACT, now, months=2) if r["task"] == "readmission"]
    assert row["month"] == f"{now:%Y-%m}" and row["n"] == 270 and row["model_version"] == "v0001"
    assert row["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    # the same encounters scored again by a new version: still each encounter once, one version
    add_scores(store, 300, FEB, np.random.default_rng(9), prefix="perf", version="v0002",
               readmission=np.full(300, 0.5))
    now = datetime.now(UTC)  # the new scores were written after the first `now`
    [row] = [r for r in monthly_auroc(store, DEFAULT_CONTRACT, now, months=2) if r["task"] == "readmission"]
    assert row["n"] == 270 and row["model_version"] == "v0002" and row["auroc"] == pytest.approx(0.5)
