"""Calibration: maps fitted on validation lower the ECE without changing the ranking, travel in
the artifact, and the scorer serves them."""

from __future__ import annotations

import numpy as np

from lang1ops.artifact import ArtifactManifest
from lang1ops.calibration import calibrated
from lang1ops.metrics import auroc, expected_calibration_error
from lang1ops.scorer import MultitaskScorer, load_model
from training.calibration import fit_calibration
from training.dataset import Dataset


def _binary(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true risks, reported overconfident and shifted (as a class-weighted model would)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.0, 1.2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    reported = 1 / (1 + np.exp(-(2.5 * logit + 2.0)))
    return np.column_stack([1 - reported, reported]), labels


def test_platt_repairs_an_overconfident_binary_model_and_keeps_its_ranking():
    probs, labels = _binary(4000)
    cal = fit_calibration(probs, labels)
    assert cal is not None and cal.method == "platt"
    assert cal.ece_before > 0.08 and cal.ece_after < 0.03
    assert abs(cal.slope - 1 / 2.5) < 0.05 and abs(cal.intercept + 2.0 / 2.5) < 0.15  # the distortion undone
    test_probs, test_labels = _binary(4000, seed=1)  # fitted on one sample, judged on another
    after = calibrated(test_probs, cal)
    assert expected_calibration_error(test_labels, after) < 0.03
    assert auroc(test_labels, after) == auroc(test_labels, test_probs)


def test_temperature_for_multiclass_keeps_the_argmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1, (3000, 4))
    labels = np.array([rng.choice(4, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # three times too confident
    cal = fit_calibration(sharp, labels)
    assert cal.method == "temperature" and 2.4 < cal.temperature < 3.6
    assert cal.ece_after < cal.ece_before / 3
    after = calibrated(sharp, cal)
    assert (after.argmax(1) == sharp.argmax(1)).all() and np.allclose(after.sum(1), 1)


def test_too_little_or_one_class_validation_fits_nothing():
    probs, labels = _binary(20)
    assert fit_calibration(probs, labels) is None
    probs, _ = _binary(500)
    assert fit_calibration(probs, np.zeros(500, dtype=int)) is None


def test_the_artifact_carries_the_maps_and_the_scorer_applies_them(small_dataset, tiny_llama_dir, tmp_path):
    from training.heads import HeadsConfig, train_heads

    out = train_heads(Dataset.load(small_dataset), tiny_llama_dir, tmp_path / "heads",
                      HeadsConfig(layers=(1,), max_note_tokens=48, max_notes={"train": 200, "val": 120}))
    manifest = ArtifactManifest.load(out)
    assert manifest.calibration, "no task was calibrated"
    for cal in manifest.calibration.values():
        assert cal.n >= 30 and cal.ece_after is not None and cal.ece_after <= cal.ece_before + 1e-9
    notes = Dataset.load(small_dataset).notes["text"].head(6).tolist()
    served, _ = MultitaskScorer(load_model(out)).score(notes)
    raw_model = load_model(out)
    raw_model.manifest.calibration = {}
    raw, _ = MultitaskScorer(raw_model).score(notes)
    for task, cal in manifest.calibration.items():
        expected = calibrated(np.stack([r[task] for r in raw]), cal)
        assert np.allclose(np.stack([s[task] for s in served]), expected, atol=1e-9)
    # the JSON round trip keeps every field
    assert ArtifactManifest.model_validate_json(manifest.model_dump_json()).calibration == manifest.calibration
