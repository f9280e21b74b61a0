"""Fitting the per-task calibration maps of `lang1ops.calibration` on validation predictions."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from lang1ops.calibration import PROBABILITY_FLOOR, TaskCalibration, calibrated
from lang1ops.metrics import expected_calibration_error

MIN_EXAMPLES = 30  # fewer validation notes than this: no map (the raw softmax is served)


def fit_calibration(probs: np.ndarray, labels: np.ndarray) -> TaskCalibration | None:
    """The map for one task from validation probabilities (n, k) and labels (n,); None when the
    validation sample cannot support one (too small, or a single class) or the fitted map would
    leave its ECE worse."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) < MIN_EXAMPLES or len(np.unique(labels)) < 2:
        return None
    logp = np.log(np.clip(probs, PROBABILITY_FLOOR, None))
    if probs.shape[1] == 2:
        z, y = logp[:, 1] - logp[:, 0], labels.astype(np.float64)

        def platt_nll(params: np.ndarray) -> float:
            s = params[0] * z + params[1]
            # log(1 + e^s) - y s, written to stay finite for large |s|
            return float(np.mean(np.logaddexp(0.0, s) - y * s))

        fit = minimize(platt_nll, x0=np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(0.01, 20.0), (-20.0, 20.0)])
        result = TaskCalibration(method="platt", slope=float(fit.x[0]), intercept=float(fit.x[1]), n=len(labels))
    else:
        rows = np.arange(len(labels))

        def temperature_nll(log_t: float) -> float:
            scaled = logp / np.exp(log_t)
            scaled -= scaled.max(axis=1, keepdims=True)
            return float(np.mean(np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, labels]))

        fit = minimize_scalar(temperature_nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        result = TaskCalibration(method="temperature", temperature=float(np.exp(fit.x)), n=len(labels))
    result.ece_before = float(expected_calibration_error(labels, probs))
    result.ece_after = float(expected_calibration_error(labels, calibrated(probs, result)))
    # the map minimises validation log-loss; on a small sample that can still leave the binned
    # calibration worse (top-label ECE over a few dozen notes is noisy): then serve the raw softmax
    return result if result.ece_after <= result.ece_before else None


def fit_calibrations(val_probs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, TaskCalibration]:
    """task -> map, from task -> (validation probabilities, labels); tasks that cannot be fitted are left out."""
    fitted = {task: fit_calibration(probs, labels) for task, (probs, labels) in val_probs.items()}
    return {task: cal for task, cal in fitted.items() if cal is not None}
