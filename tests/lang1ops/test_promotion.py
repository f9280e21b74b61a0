"""lang1ops.promotion: the promotion gate (paired bootstrap AUROC differences, candidate vs champion)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lang1ops.metrics import auroc
from lang1ops.promotion import GateDecision, promotion_gate

TASKS = {"readmission": 2, "mortality": 2, "los": 4}


def _informative_probs(rng: np.random.Generator, y: np.ndarray, k: int, signal: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += signal
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def gate_data(n: int = 400, worse_task: str | None = None, seed: int = 1):
    """Labels and champion probabilities (informative) for TASKS, and a candidate identical to the
    champion except on `worse_task`, where it is noise."""
    rng = np.random.default_rng(seed)
    labels, champion, candidate = {}, {}, {}
    for task, k in TASKS.items():
        y = rng.integers(0, k, size=n)
        labels[task] = y
        champion[task] = _informative_probs(rng, y, k, signal=1.5)
        candidate[task] = champion[task].copy()
        if task == worse_task:
            candidate[task] = rng.dirichlet(np.ones(k), size=n)
    return labels, champion, candidate


def test_gate_refuses_a_clearly_worse_task_and_names_it() -> None:
    labels, champion, candidate = gate_data(worse_task="mortality")
    decision = promotion_gate(labels, champion, candidate, n_resamples=100)
    assert isinstance(decision, GateDecision) and not decision.accept
    by_task = {c.task: c for c in decision.comparisons}
    assert list(by_task) == list(TASKS)
    mortality = by_task["mortality"]
    assert mortality.worse_beyond_ci and mortality.difference[2] < 0
    assert mortality.champion_auroc > 0.75 and abs(mortality.candidate_auroc - 0.5) < 0.1
    assert mortality.difference[1] <= mortality.difference[0] <= mortality.difference[2]
    assert not by_task["readmission"].worse_beyond_ci and not by_task["los"].worse_beyond_ci
    mortality_reasons = [r for r in decision.reasons if r.startswith("mortality:")]
    assert len(mortality_reasons) == 1
    assert "entirely below 0" in mortality_reasons[0] and f"{mortality.champion_auroc:.3f}" in mortality_reasons[0]
    assert not any(r.startswith(("readmission", "los")) for r in decision.reasons)
    assert "| mortality | 400 |" in decision.table() and "| yes |" in decision.table()
    json.dumps(decision.to_dict(), allow_nan=False)


def test_gate_accepts_a_better_candidate() -> None:
    labels, champion, _ = gate_data()
    rng = np.random.default_rng(7)
    candidate = {t: _informative_probs(rng, labels[t], TASKS[t], signal=3.0) for t in TASKS}
    decision = promotion_gate(labels, champion, candidate, n_resamples=100)
    assert decision.accept, decision.reasons
    assert decision.candidate_mean > decision.champion_mean
    assert all(c.difference[1] > 0 for c in decision.comparisons)  # better beyond the CI, even
    assert len(decision.reasons) == 1 and "not lower" in decision.reasons[0]


def test_gate_accepts_an_identical_candidate() -> None:
    labels, champion, candidate = gate_data()
    decision = promotion_gate(labels, champion, candidate, n_resamples=100)
    assert decision.accept, decision.reasons
    assert decision.candidate_mean == decision.champion_mean
    for c in decision.comparisons:
        estimate, low, high = c.difference
        assert low <= 0 <= high and estimate == 0 and not c.worse_beyond_ci


def test_gate_refuses_a_lower_mean_without_any_task_worse_beyond_ci() -> None:
    """The candidate equals the champion except that, on each task, one positive note gets the
    lowest score. Each AUROC drops a little, but a resample without that note (about 37% of them)
    has a difference of exactly 0, so no CI lies entirely below 0; the mean is lower."""
    labels, champion, candidate = gate_data()
    for task in TASKS:
        y, p = labels[task], candidate[task]
        note = int(np.flatnonzero(y == 1)[0])
        p[note] = 0.0
        p[note, 0] = 1.0  # all probability on class 0: ranked last for every other class
    decision = promotion_gate(labels, champion, candidate, n_resamples=100)
    assert not decision.accept
    assert not any(c.worse_beyond_ci for c in decision.comparisons)
    assert all(c.candidate_auroc < c.champion_auroc and c.difference[2] >= 0 for c in decision.comparisons)
    assert decision.candidate_mean < decision.champion_mean
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("mean AUROC over 3 tasks")


def test_gate_uses_training_metrics_auroc_and_is_reproducible() -> None:
    labels, champion, candidate = gate_data(worse_task="los")
    d1 = promotion_gate(labels, champion, candidate, n_resamples=50, seed=3)
    d2 = promotion_gate(labels, champion, candidate, n_resamples=50, seed=3)
    assert d1.to_dict() == d2.to_dict()
    for c in d1.comparisons:
        assert c.champion_auroc == auroc(labels[c.task], champion[c.task])
        assert c.candidate_auroc == auroc(labels[c.task], candidate[c.task])
    # A task's interval does not depend on which other tasks are compared.
    only_los = promotion_gate({"los": labels["los"]}, {"los": champion["los"]}, {"los": candidate["los"]},
                              n_resamples=50, seed=3)
    assert only_los.comparisons[0].difference == d1.comparisons[2].difference


def test_gate_input_errors() -> None:
    labels, champion, candidate = gate_data()
    with pytest.raises(ValueError, match="champion_probs.*missing \\['los'\\]"):
        promotion_gate(labels, {t: champion[t] for t in ("readmission", "mortality")}, candidate)
    with pytest.raises(ValueError, match="candidate_probs.*not labeled \\['denial'\\]"):
        promotion_gate(labels, champion, {**candidate, "denial": candidate["mortality"]})
    with pytest.raises(ValueError, match="shape"):
        promotion_gate(labels, champion, {**candidate, "mortality": candidate["mortality"][:10]})


def test_gate_refuses_a_single_class_window() -> None:
    y = np.zeros(50, dtype=int)
    p = np.tile([0.7, 0.3], (50, 1))
    decision = promotion_gate({"mortality": y}, {"mortality": p}, {"mortality": p}, n_resamples=20)
    assert not decision.accept and "single class" in decision.reasons[0]
    json.dumps(decision.to_dict(), allow_nan=False)
    assert "n/a" in decision.table()
