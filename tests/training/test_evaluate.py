"""Evaluation: bootstrap AUROC intervals, calibration, subgroups, plots and model cards."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lang1ops.metrics import _resampled_auroc, auroc, micro_auroc, paired_bootstrap_difference
from lang1ops.tasks import DEFAULT_CONTRACT
from training.evaluate import (
    Interval,
    bootstrap_auroc,
    calibration_bins,
    evaluate_task,
    expected_calibration_error,
    model_card,
    plot_calibration,
    plot_roc,
    write_model_card,
)

LOS = DEFAULT_CONTRACT.task("los")
MORTALITY = DEFAULT_CONTRACT.task("mortality")


def binary_sample(n: int, seed: int = 0, shift: float = 1.0, prevalence: float = 0.3):
    """Labels and a score whose positives sit `shift` standard deviations higher (AUROC ~0.76 at 1)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(size=n) + shift * y
    return y, 1 / (1 + np.exp(-z))


def multiclass_sample(n: int, k: int = 4, seed: int = 0, signal: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + signal * (y[:, None] == np.arange(k))
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_interval_contains_estimate_and_shrinks_with_more_data():
    small = bootstrap_auroc(*binary_sample(200), n_resamples=500)
    large = bootstrap_auroc(*binary_sample(5000), n_resamples=500)
    for ci in (small, large):
        assert ci.low <= ci.estimate <= ci.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    assert bootstrap_auroc(*binary_sample(200), n_resamples=500) == small  # seeded


def test_estimate_is_the_project_auroc_and_resamples_match_it():
    y, p = multiclass_sample(60, k=5, seed=3)
    y[y == 4] = 0
    y[0] = 4  # a rare class, absent from about a third of the resamples
    p = np.round(p, 1) + 0.05  # ties
    p /= p.sum(axis=1, keepdims=True)
    assert bootstrap_auroc(y, p, n_resamples=50).estimate == auroc(y, p)
    idx = np.random.default_rng(0).integers(0, len(y), (200, len(y)))
    weights = np.stack([np.bincount(i, minlength=len(y)) for i in idx]).astype(float)
    expected = [auroc(y[i], p[i]) for i in idx]
    np.testing.assert_allclose(_resampled_auroc(y, p, weights), expected, atol=1e-12)


def test_perfectly_separable_gives_one_with_degenerate_interval():
    y = np.array([0] * 50 + [1] * 50)
    ci = bootstrap_auroc(y, np.linspace(0.01, 0.99, 100), n_resamples=200)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_rare_class_bootstrap_does_not_crash():
    rng = np.random.default_rng(1)
    y = np.zeros(150, dtype=int)
    y[[10, 70, 120]] = 1  # 2% mortality on 150 notes: ~5% of resamples have no death
    probs = np.column_stack([np.zeros(150), rng.random(150)])
    probs[:, 1] += 0.4 * y
    probs[:, 0] = 1 - probs[:, 1].clip(0, 1)
    ci = bootstrap_auroc(y, probs, n_resamples=1000)
    assert math.isfinite(ci.low) and math.isfinite(ci.high) and ci.low <= ci.estimate <= ci.high
    one = bootstrap_auroc(y[:5] * 0, probs[:5], n_resamples=100)  # no positive at all
    assert math.isnan(one.estimate) and one.to_dict() == {"estimate": None, "low": None, "high": None}
    single = np.zeros(150, dtype=int)
    single[3] = 1  # one positive: most resamples lack it or are all it
    assert math.isfinite(bootstrap_auroc(single, probs, n_resamples=300).low)


def test_micro_auroc_matches_sklearn():
    y, p = multiclass_sample(300, k=3, seed=2)
    onehot = np.eye(3)[y]
    assert micro_auroc(y, p) == pytest.approx(roc_auc_score(onehot, p, average="micro"))
    yb, pb = binary_sample(300)
    assert micro_auroc(yb, pb) == pytest.approx(roc_auc_score(yb, pb))


def test_ece_of_calibrated_sample_is_small():
    rng = np.random.default_rng(4)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.03
    assert expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.1


def test_binary_ece_hand_case():
    p, y = np.array([0.2, 0.4, 0.6, 0.9]), np.array([0, 1, 1, 1])
    # bin [0, .5): mean .3, observed .5 -> .2; bin [.5, 1]: mean .75, observed 1 -> .25; each half the notes
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.25)
    bins = calibration_bins(y, p, n_bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0] == {"low": 0.0, "high": 0.5, "count": 2, "mean_predicted": pytest.approx(0.3), "observed": 0.5}
    four = calibration_bins(y, p, n_bins=4)  # [0,.25) .2 | [.25,.5) .4 | [.5,.75) .6 | [.75,1] .9
    assert [b["count"] for b in four] == [1, 1, 1, 1]
    empty = calibration_bins(y, p, n_bins=15)[0]
    assert empty["count"] == 0 and empty["mean_predicted"] is None and empty["observed"] is None


def test_multiclass_top_label_ece_hand_case():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.4, 0.35, 0.25]])
    labels = np.array([0, 0, 2, 1, 0])
    # confidences .6 .7 .8 .5 | .4; correct 1 0 1 0 | 1
    # bin [.5, 1]: conf .65, accuracy .5 -> .15 (4 notes); bin [0, .5): conf .4, accuracy 1 -> .6 (1 note)
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(4 / 5 * 0.15 + 1 / 5 * 0.6)


def test_paired_difference():
    y, p = binary_sample(400, seed=5, shift=0.5)
    same = paired_bootstrap_difference(y, p, p, n_resamples=300)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(6)
    better = 1 / (1 + np.exp(-(rng.normal(size=len(y)) * 0.5 + 2.0 * y)))
    diff = paired_bootstrap_difference(y, p, better, n_resamples=300)
    assert diff.low > 0 and diff.estimate == pytest.approx(auroc(y, np.c_[1 - better, better]) - auroc(y, np.c_[1 - p, p]))
    ym, pm = multiclass_sample(300, seed=7, signal=0.5)
    _, qm = multiclass_sample(300, seed=7, signal=2.5)  # same labels, stronger signal
    assert paired_bootstrap_difference(ym, pm, qm, n_resamples=200).low > 0


def test_evaluate_task_los_fills_per_class_and_subgroups():
    y, p = multiclass_sample(400, seed=8)
    groups = pd.DataFrame({
        "note_id": [f"DocumentReference/{i}" for i in range(400)],
        "sex": ["female"] * 200 + ["male"] * 180 + ["unknown"] * 20,
        "payer": ["medicare"] * 250 + [None] * 150,
        "text": "note",
    })
    ev = evaluate_task(LOS, "test", y, p, groups=groups, n_resamples=200)
    assert ev.n == 400 and sum(ev.class_counts) == 400 and len(ev.class_counts) == 4
    assert len(ev.auroc_per_class) == 4 and all(isinstance(i, Interval) for i in ev.auroc_per_class)
    assert ev.auroc.low <= ev.auroc.estimate <= ev.auroc.high
    assert set(ev.subgroups) == {"sex", "payer"}
    assert ev.subgroups["sex"]["female"]["n"] == 200 and ev.subgroups["sex"]["female"]["auroc"]["low"] is not None
    assert ev.subgroups["sex"]["unknown"] == {"n": 20, "auroc": None}  # under min_group
    assert ev.subgroups["payer"]["unknown"]["n"] == 150
    assert len(ev.calibration) == 15 and 0 <= ev.ece < 1
    json.loads(json.dumps(ev.to_dict(), allow_nan=False))

    y[y == 3] = 0  # a class absent from the split
    absent = evaluate_task(LOS, "temporal_2024", y, p, n_resamples=100)
    assert absent.auroc_per_class[3] is None and absent.class_counts[3] == 0 and absent.subgroups == {}


def test_evaluate_binary_task():
    y, p = binary_sample(300, prevalence=0.1)
    ev = evaluate_task(MORTALITY, "val", y, np.c_[1 - p, p], n_resamples=100)
    assert ev.auroc_per_class is None and ev.class_counts == [int((y == 0).sum()), int(y.sum())]
    with pytest.raises(ValueError):
        evaluate_task(LOS, "val", y, np.c_[1 - p, p])


def test_plots_write_pngs(tmp_path):
    yb, pb = binary_sample(300)
    ym, pm = multiclass_sample(300)
    _, pm2 = multiclass_sample(300, signal=0.3)
    binary = {"heads (this model)": (MORTALITY, yb, np.c_[1 - pb, pb]), "TF-IDF baseline": (MORTALITY, yb, np.c_[pb, 1 - pb])}
    multi = {"heads (this model)": (LOS, ym, pm), "zero-shot": (LOS, ym, pm2)}
    for name, models in (("mortality", binary), ("los", multi)):
        for plot in (plot_roc, plot_calibration):
            path = plot(models, tmp_path / "plots" / f"{name}_{plot.__name__}.png")
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_model_card(tmp_path):
    about = {"kind": "heads", "base model": "lang1-1b", "data window": "2019-01-01:2022-12-31",
             "sizes": {"train": np.int64(8000), "val": 1000}, "hyperparameters": {"lr": 1e-4, "epochs": 3},
             "wall time (s)": 812.5, "version": "2025.06.1"}
    rows = []
    for split in ("test", "temporal_2024"):
        for task in ("readmission", "los"):
            for model, shift in (("TF-IDF baseline", 0.3), ("heads (this model)", 1.0), ("zero-shot", 0.1)):
                y, p = binary_sample(200, shift=shift)
                rows.append({"model": model, "task": task, "split": split, "n": 200,
                             "auroc": bootstrap_auroc(y, p, n_resamples=50).to_dict(),
                             "ece": np.float64(expected_calibration_error(y, p))})
    rows[-1]["auroc"] = {"estimate": float("nan"), "low": float("nan"), "high": float("nan")}
    markdown, data = model_card("Lang1 heads v3", about, rows)
    for word in ("readmission", "los", "TF-IDF baseline", "heads (this model)", "zero-shot", "lang1-1b",
                 "temporal_2024", "Intended use", "not clinical diagnoses"):
        assert word in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| Task"))
    assert header.index("heads (this model)") < header.index("TF-IDF baseline") < header.index("zero-shot")
    assert "n/a" in markdown
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert set(data) == {"title", "about", "rows"} and data["rows"][-1]["auroc"]["estimate"] is None
    md, js = write_model_card(tmp_path / "card", "Lang1 heads v3", about, rows)
    assert md.read_text() == markdown and json.loads(js.read_text()) == data


def test_model_card_shows_events_and_says_when_a_class_is_absent_or_rare():
    rows = [{"model": "heads (this model)", "task": "mortality", "split": "temporal_2024", "n": 600,
             "class_counts": [593, 7], "auroc": {"estimate": 0.8, "low": 0.6, "high": 0.9}, "ece": 0.01},
            {"model": "heads (this model)", "task": "cci", "split": "temporal_2024", "n": 600,
             "class_counts": [400, 150, 40, 10, 0], "auroc": {"estimate": 0.9, "low": 0.88, "high": 0.92}, "ece": 0.02}]
    markdown, _ = model_card("card", {}, rows)
    lines = markdown.splitlines()
    assert next(line for line in lines if line.startswith("| mortality")).split(" | ")[2] == "7"
    assert next(line for line in lines if line.startswith("| cci")).split(" | ")[2] == "400/150/40/10/0"
    assert "- mortality: class 1 (7) has under 10 notes" in markdown
    assert "- cci: class 4 absent from this sample" in markdown


def test_tfidf_baseline_chooses_c_on_validation():
    from training.baselines import TfidfBaseline

    rng = np.random.default_rng(0)
    words = ["pain", "stable", "admitted", "history", "fever", "cough", "walks", "home"]

    def notes(n):
        y = (rng.random(n) < 0.3).astype(int)
        texts = [" ".join(rng.choice(words, 12)) + (" sepsis shock" if label and rng.random() < 0.8 else " routine")
                 for label in y]
        return texts, y

    (train_x, train_y), (val_x, val_y) = notes(300), notes(150)
    tuned = TfidfBaseline.fit(train_x, train_y, 2, val_texts=val_x, val_labels=val_y, c_grid=(0.001, 10.0))
    assert tuned.classifier.C == 10.0  # C=0.001 flattens every score: the grid's other value wins on validation
    assert auroc(val_y, tuned.predict_proba(val_x)) > 0.8
    assert TfidfBaseline.fit(train_x, train_y, 2).classifier.C == 1.0  # without validation notes: the given C
