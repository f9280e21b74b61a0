"""Metrics as the paper computes them: sklearn AUROC (one-vs-rest, macro, for LOS and CCI)."""

from __future__ import annotations

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
