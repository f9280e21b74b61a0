"""Drift checks on windows with known distributions (no model): detected when shifted, not otherwise."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lang1ops.settings.drift_loop import DriftLoopSettings
from monitoring.descriptors import Vocabulary, describe_texts
from monitoring.drift import DriftReference, run_drift_check
from monitoring.history import MonitoringHistory
from serving.store import Store
from tests.monitoring.helpers import add_scores, bulk_scores

JAN, FEB, MAR = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3))


def reference(tmp_path: Path, n: int = 400, dim: int = 16) -> DriftReference:
    rng = np.random.default_rng(1)
    p = np.clip(rng.beta(2, 5, n), 0, 1)
    descriptors = pd.DataFrame({"note_tokens": rng.normal(300, 40, n).astype(int), "truncated": 0,
                                "note_type": np.where(rng.random(n) < 0.5, "discharge_summary", "history_and_physical")})
    return DriftReference(tmp_path / "ref", {"version": "v0001", "n": n}, descriptors,
                          pd.DataFrame({"p_readmission_0": 1 - p, "p_readmission_1": p}),
                          rng.normal(0, 1, (n, dim)).astype(np.float32), Vocabulary([]))


@pytest.fixture()
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    rng = np.random.default_rng(2)
    add_scores(store, 200, JAN, rng, shift=0.0, prefix="jan")
    add_scores(store, 200, FEB, rng, shift=1.0, prefix="feb")
    return store


def test_shifted_window_drifts_and_unshifted_does_not(store, tmp_path):
    settings = DriftLoopSettings()
    history = MonitoringHistory(store)
    ref = reference(tmp_path)
    calm = run_drift_check(store, ref, JAN, FEB, settings, by="note_date", out_dir=tmp_path / "runs", history=history)
    shifted = run_drift_check(store, ref, FEB, MAR, settings, by="note_date", out_dir=tmp_path / "runs", history=history)
    assert not calm.detected, calm.summary()
    assert shifted.detected
    assert {name for name, c in shifted.checks.items() if c.detected} == {"descriptors", "embeddings", "predictions"}
    assert shifted.checks["embeddings"].score > 0.8 > calm.checks["embeddings"].score
    # small windows use tests: 1 - p close to 1 for the shifted length
    assert shifted.checks["descriptors"].features["note_tokens"] > 0.99
    for run in (calm, shifted):
        assert (run.report_dir / "report.html").stat().st_size > 10_000
        assert json.loads((run.report_dir / "report.json").read_text())["metrics"]
    rows = history.drift_runs()
    assert [r["detected"] for r in rows] == [True, False]
    assert rows[0]["features"]["embeddings"]["domain_classifier_auroc"] == pytest.approx(shifted.checks["embeddings"].score)


def test_window_without_notes_of_the_version_is_an_error(store, tmp_path):
    with pytest.raises(ValueError, match="no scored notes"):
        run_drift_check(store, reference(tmp_path), MAR, datetime(2024, 4, 1, tzinfo=UTC), DriftLoopSettings(),
                        by="note_date")


def test_text_descriptors_see_a_renamed_template_and_new_words():
    old = ["CC: chest pain\nHPI: pain since morning\nPMH: diabetes\nA/P: admit to telemetry"] * 10
    new = ["Reason for Admission: chest pain\nSubjective / History of Present Illness: ambient tool draft\n"
           "Clinical Impression and Plan: admit"] * 10
    vocabulary = Vocabulary.build(old, min_notes=5)
    before, after = describe_texts(old, vocabulary), describe_texts(new, vocabulary)
    assert before["section_chief_complaint"].eq(1).all() and after["section_chief_complaint"].eq(0).all()
    assert before["oov_rate"].eq(0).all() and (after["oov_rate"] > 0.3).all() and (after["new_terms"] > 3).all()
    assert set(before.columns) == set(after.columns)
    assert not any(isinstance(v, str) for v in after.to_numpy().ravel())  # numbers only, never text


def test_large_windows_use_distances_and_run_fast(tmp_path):
    """Tens of thousands of notes in the store: the check stays well under a minute."""
    store = Store(f"sqlite:///{tmp_path / 'big.sqlite'}")
    rng = np.random.default_rng(3)
    bulk_scores(store, 30_000, FEB, rng, shift=0.5, dim=576)  # SmolLM2's hidden size
    started = time.perf_counter()
    result = run_drift_check(store, reference(tmp_path, n=2000, dim=576), FEB, MAR, DriftLoopSettings(), by="note_date",
                             out_dir=tmp_path / "runs")
    elapsed = time.perf_counter() - started
    print(f"drift check on {result.n_current} notes: {elapsed:.1f} s")
    assert result.n_current == 30_000 and result.detected
    assert result.checks["descriptors"].method == "wasserstein/jensenshannon"
    assert elapsed < 60, elapsed
