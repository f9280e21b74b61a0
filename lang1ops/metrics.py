"""Metrics as the paper computes them: sklearn AUROC (one-vs-rest, macro, for LOS and CCI), and
calibration with 15 equal-width bins and the expected calibration error.

Bootstrap CIs (the paper: "95% confidence intervals by resampling each test set 1000 times
using the quantile (percentile) bootstrap method from scipy"): the AUROC of every resample is
exactly `auroc` of the resampled notes, but calling it 1000 times costs 3-25 ms a call
(sklearn's input checks), so the resamples are scored all at once from how often each note was
drawn (a weighted Mann-Whitney statistic, which is what sklearn's trapezoidal AUROC equals, ties
counting one half). `scipy.stats.bootstrap` still draws the resamples and takes the percentiles.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC of class probabilities `probs` (n, k) against integer labels (n,).

    Binary tasks (k = 2) use the positive column. Multi-class tasks use the macro one-vs-rest
    AUROC: the mean over classes of the binary AUROC of "this class" vs "the rest" scored by
    that class's column, which is what sklearn's `multi_class="ovr"` computes. Classes absent
    from `labels` have no AUROC and are left out of the mean (sklearn would refuse instead).
    Returns nan when fewer than two classes are present.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


def as_arrays(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels (n,) and probabilities (n, k); a 1-D `probs` is P(class 1) of a binary task."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.column_stack([1 - probs, probs])
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {probs.shape[0]} probability rows")
    return labels, probs


def calibration_bins(labels, probs, n_bins: int = 15) -> list[dict]:
    """Equal-width bins on [0, 1] ([low, high), the last one closed).

    Binary: the predicted P(positive) against the observed positive rate. Multiclass: top-label
    confidence against accuracy (Guo et al. 2017). Empty bins have count 0 and None values.
    """
    labels, probs = as_arrays(labels, probs)
    if probs.shape[1] == 2:
        predicted, observed = probs[:, 1], labels == 1
    else:
        predicted, observed = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.clip(np.floor(predicted * n_bins).astype(int), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = index == b
        count = int(m.sum())
        bins.append({"low": b / n_bins, "high": (b + 1) / n_bins, "count": count,
                     "mean_predicted": float(predicted[m].mean()) if count else None,
                     "observed": float(observed[m].mean()) if count else None})
    return bins


def expected_calibration_error(labels, probs, n_bins: int = 15) -> float:
    """Sum over bins of |mean predicted - observed| weighted by the bin's share of notes."""
    bins = [b for b in calibration_bins(labels, probs, n_bins) if b["count"]]
    n = sum(b["count"] for b in bins)
    return sum(b["count"] / n * abs(b["mean_predicted"] - b["observed"]) for b in bins) if n else math.nan


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        # nan (no AUROC: one class only) becomes None so that the JSON stays strict
        return {k: _finite(v) for k, v in (("estimate", self.estimate), ("low", self.low), ("high", self.high))}


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------- AUROC of many resamples at once

def _weighted_auroc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of `score` for each row of `weights` (B, n): note i counted weights[b, i] times.

    Mann-Whitney over tie groups of the sorted scores: each positive earns the weight of the
    negatives scored below it plus half of those tied with it. nan where a class is absent.
    """
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    y = positive[order]
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def _resampled_auroc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`lang1ops.metrics.auroc` of each resample, following its rules for the classes present."""
    if probs.shape[1] == 2:
        return _weighted_auroc(labels == 1, probs[:, 1], weights)
    onehot = labels[:, None] == np.arange(probs.shape[1])
    present = (weights @ onehot) > 0
    out = np.full(len(weights), np.nan)
    # resamples that lack a rare class use a different set of columns: score each set apart
    patterns, which = np.unique(present, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        rows, cls = which.ravel() == p, np.flatnonzero(pattern)
        if len(cls) >= 2:
            out[rows] = np.mean([_weighted_auroc(labels == c, probs[:, c], weights[rows]) for c in cls], axis=0)
    return out


def _bootstrap(point: float, n: int, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int, seed: int,
               confidence: float) -> Interval:
    """Percentile bootstrap of notes (rows resampled jointly); statistic maps counts (B, n) to (B,)."""
    if not math.isfinite(point) or n < 2:
        return Interval(point, math.nan, math.nan)

    def on_indices(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.atleast_2d(idx)
        flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
        return statistic(np.bincount(flat, minlength=idx.size).reshape(idx.shape).astype(np.float64))

    rng_arg = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"  # scipy < 1.15
    with warnings.catch_warnings():
        # resamples with one class only have no AUROC (nan): scipy then warns and returns nan
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((np.arange(n),), on_indices, n_resamples=n_resamples, vectorized=True,
                              batch=max(1, min(n_resamples, 4_000_000 // n)), confidence_level=confidence,
                              method="percentile", **{rng_arg: np.random.default_rng(seed)})
    low, high = res.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        # The usual choice for a rare class: percentiles of the resamples that have both classes
        # (conditional on both being drawn); same 'linear' quantile rule as scipy's.
        dist = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
        alpha = (1 - confidence) / 2
        low, high = np.quantile(dist, [alpha, 1 - alpha]) if len(dist) else (math.nan, math.nan)
    return Interval(float(point), float(low), float(high))


def bootstrap_auroc(labels, probs, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """AUROC (`lang1ops.metrics.auroc`) with a percentile bootstrap CI over notes."""
    labels, probs = as_arrays(labels, probs)
    return _bootstrap(auroc(labels, probs), len(labels), lambda w: _resampled_auroc(labels, probs, w),
                      n_resamples, seed, confidence)


def paired_bootstrap_difference(labels, probs_a, probs_b, n_resamples: int = 1000, seed: int = 0,
                                confidence: float = 0.95) -> Interval:
    """AUROC(b) - AUROC(a) on the same notes; both models see the same resamples (paired)."""
    labels, probs_a = as_arrays(labels, probs_a)
    _, probs_b = as_arrays(labels, probs_b)
    return _bootstrap(auroc(labels, probs_b) - auroc(labels, probs_a), len(labels),
                      lambda w: _resampled_auroc(labels, probs_b, w) - _resampled_auroc(labels, probs_a, w),
                      n_resamples, seed, confidence)


def micro_auroc(labels, probs) -> float:
    """Binary: `auroc`. Multiclass: micro-averaged one-vs-rest AUROC (pools all classes; early stopping)."""
    labels, probs = as_arrays(labels, probs)
    if probs.shape[1] == 2 or len(labels) == 0:
        return auroc(labels, probs) if len(labels) else math.nan
    onehot = (labels[:, None] == np.arange(probs.shape[1])).astype(int)
    return float(roc_auc_score(onehot, probs, average="micro"))
