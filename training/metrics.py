"""Metrics as the paper computes them: sklearn AUROC (one-vs-rest, macro, for LOS and CCI), and
calibration with 15 equal-width bins and the expected calibration error."""

from __future__ import annotations

import math

import numpy as np
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
