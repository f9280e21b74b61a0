"""Per-task probability calibration, fitted on validation and stored in the artifact.

Care managers read a score as a risk, so "0.30" must mean about 30 in 100. A finetuned or
probed model ranks well yet is often over- or under-confident (a rare outcome, class-weighted
training, a prompt prior). Each task gets one small post-hoc map, fitted on the validation
split after training and applied by the scorer after the softmax:

- binary tasks: Platt scaling on the model's log-odds, p' = sigmoid(slope * log(p1/p0) + intercept);
- multi-class tasks (LOS, CCI): temperature scaling, p' = softmax(log p / T) (Guo et al. 2017),
  one parameter for k classes; it keeps each note's order of classes but can reorder notes within
  one class's one-vs-rest ranking, so AUROC is always measured on the calibrated probabilities.

Both read the probabilities alone (the softmax's logits up to a constant), so one map fits every
kind of model: heads, mc-sft, zero-shot. Fitting lives in `training.calibration`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

PROBABILITY_FLOOR = 1e-12  # log of a zero probability (a class never seen in training)


class TaskCalibration(BaseModel):
    method: Literal["platt", "temperature"]
    slope: float = Field(1.0, description="platt: multiplies the log-odds")
    intercept: float = Field(0.0, description="platt: added to the log-odds")
    temperature: float = Field(1.0, description="temperature: divides the log-probabilities")
    n: int = Field(0, description="validation examples it was fitted on")
    ece_before: float | None = Field(None, description="validation ECE (15 bins) without it")
    ece_after: float | None = Field(None, description="validation ECE (15 bins) with it (in-sample)")


def calibrated(probs: np.ndarray, calibration: TaskCalibration | None) -> np.ndarray:
    """`probs` (n, k) mapped by `calibration` (unchanged when None)."""
    if calibration is None:
        return probs
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), PROBABILITY_FLOOR, None))
    if calibration.method == "platt":
        z = calibration.slope * (logp[:, 1] - logp[:, 0]) + calibration.intercept
        positive = 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))
        return np.stack([1.0 - positive, positive], axis=1)
    scaled = logp / calibration.temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)
