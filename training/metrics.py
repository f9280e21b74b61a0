"""Metrics as the paper computes them: sklearn AUROC (one-vs-rest, macro, for LOS and CCI)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC of class probabilities `probs` (n, k) against integer labels (n,).

    Binary tasks use the positive column; multi-class tasks the macro one-vs-rest AUROC over
    the classes present in `labels` (a class absent from a test set has no AUROC, and
    sklearn's OVR needs every column to be a present class, so probabilities are restricted
    to the present classes and renormalised, which leaves each one-vs-rest ranking intact).
    Returns nan when fewer than two classes are present.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) == 2:
        return float(roc_auc_score(labels == present[1], probs[:, present[1]]))
    sub = probs[:, present]
    sub = sub / sub.sum(axis=1, keepdims=True)
    return float(roc_auc_score(labels, sub, multi_class="ovr", average="macro", labels=present))
