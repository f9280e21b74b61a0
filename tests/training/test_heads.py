"""Heads: a frozen base encodes each note once; per-task logistic regressions read it."""

from __future__ import annotations

import numpy as np
import pytest

from lang1ops.artifact import ArtifactManifest, ModelKind
from lang1ops.scorer import MultitaskScorer, load_model
from lang1ops.tasks import DEFAULT_CONTRACT
from training.dataset import Dataset
from training.heads import EncodingCache, HeadsConfig, fit_head, train_heads


@pytest.fixture(scope="module")
def heads_artifact(small_dataset, tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "artifact"
    cache = EncodingCache(tmp_path_factory.mktemp("cache") / "enc.sqlite")
    config = HeadsConfig(layers=(1, 2), max_note_tokens=64, max_notes={"train": 300, "val": 80})
    train_heads(Dataset.load(small_dataset), tiny_llama_dir, out, config, cache=cache)
    return out, cache


def test_artifact_scores_all_tasks_with_one_encoding(heads_artifact, small_dataset):
    out, _ = heads_artifact
    manifest = ArtifactManifest.load(out)
    assert manifest.kind == ModelKind.HEADS and manifest.pooling.layer in (1, 2)
    assert set(manifest.hyperparameters["layer_val_auroc"]) == {"1", "2"}
    assert set(manifest.hyperparameters["heads"]) == {"readmission", "mortality", "los", "cci", "denial"}
    scorer = MultitaskScorer(load_model(out))
    notes = Dataset.load(small_dataset).notes["text"].head(5).tolist()
    results, pooled = scorer.score(notes)
    for r in results:
        assert {k: v.shape for k, v in r.items()} == {"readmission": (2,), "mortality": (2,), "los": (4,), "cci": (5,),
                                                      "denial": (2,)}
        assert all(abs(v.sum() - 1) < 1e-9 for v in r.values())
    assert pooled.shape[0] == 5


def test_retraining_reuses_cached_encodings(heads_artifact, small_dataset, tiny_llama_dir, tmp_path, monkeypatch):
    _, cache = heads_artifact

    def no_model_runs(*args, **kwargs):
        raise AssertionError("every note was cached: the model must not run")

    monkeypatch.setattr("lang1ops.scorer.NoteEncoder.encode", no_model_runs)
    config = HeadsConfig(layers=(1, 2), max_note_tokens=64, max_notes={"train": 300, "val": 80})
    out = train_heads(Dataset.load(small_dataset), tiny_llama_dir, tmp_path / "again", config, cache=cache)
    assert (out / "heads.safetensors").exists()


def test_fit_head_picks_c_on_validation_and_handles_a_class_missing_from_training():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = (x[:, 0] + 0.3 * rng.normal(size=400) > 0).astype(int) + (x[:, 1] > 1.2)  # classes 0, 1, 2
    fit = fit_head(x[:300], y[:300], x[300:], y[300:], n_classes=4, c_grid=(0.01, 1.0), seed=0)
    assert fit.weight.shape == (4, 8) and fit.val_auroc > 0.8
    logits = x[300:] @ fit.weight.T + fit.bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert probs[:, 3].max() < 1e-6  # class 3 never seen in training


def test_a_task_with_one_class_in_training_gets_a_constant_prior_head():
    x = np.random.default_rng(1).normal(size=(30, 4))
    fit = fit_head(x[:20], np.zeros(20, dtype=int), x[20:], np.array([0, 1] * 5), n_classes=2, c_grid=(1.0,), seed=0)
    logits = x[20:] @ fit.weight.T + fit.bias
    assert np.isnan(fit.val_auroc) and np.allclose(logits, logits[0]) and logits[0, 0] > logits[0, 1]


def test_the_gpu_profile_serves_heads_with_the_pytorch_scorer(heads_artifact, small_dataset, tiny_llama_dir):
    """`serving.backend: vllm` (the GPU profile) must load whatever the registry promotes: heads are
    not a vLLM model, so they run on the PyTorch scorer (here on the CPU; on the profile's CUDA
    device in the GPU image), while option-letter models go to vLLM."""
    from serving.backends import ActiveModel, ResolvedModel, engine_for
    from training.artifacts import zero_shot_artifact

    out, _ = heads_artifact
    assert engine_for(out, "vllm") == "hf" and engine_for(out, "hf") == "hf"
    mc = zero_shot_artifact(tiny_llama_dir, out.parent / "mc", DEFAULT_CONTRACT, 32)
    assert engine_for(mc, "vllm") == "vllm" and engine_for(mc, "hf") == "hf"
    active = ActiveModel()
    active.load(ResolvedModel("v0009", out), None, "cpu", "float32", 4, backend="vllm")
    model, scorer = active.snapshot()
    [score] = scorer.score_notes(Dataset.load(small_dataset).notes["text"].head(1).tolist())
    assert model.kind == ModelKind.HEADS and set(score.probabilities) == set(DEFAULT_CONTRACT.names)


def test_heads_with_ngrams_round_trip_and_every_reader_agrees(small_dataset, tiny_llama_dir, tmp_path):
    """Heads that also read the note's n-grams: the artifact holds the vocabulary as data, the
    service's scorer and the drift loop's scoring give the same (calibrated) probabilities, and
    the n-grams matter (zeroing their weights changes the answer)."""
    from lang1ops.ngrams import NGRAMS_FILE
    from monitoring.drift import score_texts

    dataset = Dataset.load(small_dataset)
    out = train_heads(dataset, tiny_llama_dir, tmp_path / "hybrid",
                      HeadsConfig(layers=(1, 2), max_note_tokens=48, max_notes={"train": 250, "val": 80}, ngrams=True))
    manifest = ArtifactManifest.load(out)
    assert (out / NGRAMS_FILE).exists() and manifest.hyperparameters["ngrams"]["terms"] > 100
    notes = dataset.notes.head(6)
    served, _ = MultitaskScorer(load_model(out)).score(notes["text"].tolist())
    scored = score_texts(out, notes["text"].tolist(), notes["text_sha256"].tolist())
    for task in manifest.hyperparameters["heads"]:
        np.testing.assert_allclose(np.stack([s[task] for s in served]), scored.probabilities[task], atol=1e-6)
    without = load_model(out)
    without.ngram_heads = {t: w * 0 for t, w in without.ngram_heads.items()}
    plain, _ = MultitaskScorer(without).score(notes["text"].tolist())
    assert any(not np.allclose(plain[i]["cci"], served[i]["cci"]) for i in range(6))


def test_the_pooled_blocks_weight_is_chosen_per_task_and_folded_into_the_artifact(small_dataset, tiny_llama_dir,
                                                                                  tmp_path):
    """Beside the n-grams the pooled block's weight is searched with C on validation; weight 0
    leaves the n-grams alone (the scorer's pooled coefficients all zero), and the weight chosen
    is folded into the stored coefficients so the scorer needs nothing new."""
    dataset = Dataset.load(small_dataset)
    caps = {"train": 250, "val": 80}
    searched = train_heads(dataset, tiny_llama_dir, tmp_path / "searched",
                           HeadsConfig(layers=(1,), max_note_tokens=48, max_notes=caps, ngrams=True))
    heads = ArtifactManifest.load(searched).hyperparameters["heads"]
    assert all(h["dense_weight"] in (1.0, 0.5, 0.25, 0.0) for h in heads.values())
    loaded = load_model(searched)
    for task, head in heads.items():
        assert (not loaded.heads[task][0].any()) == (head["dense_weight"] == 0.0)

    grams_only = train_heads(dataset, tiny_llama_dir, tmp_path / "grams-only",
                             HeadsConfig(layers=(1,), max_note_tokens=48, max_notes=caps, ngrams=True,
                                         dense_weights=(0.0,)))
    loaded = load_model(grams_only)
    assert all(not w.any() for w, _ in loaded.heads.values()) and all(w.any() for w in loaded.ngram_heads.values())
    full = train_heads(dataset, tiny_llama_dir, tmp_path / "full",
                       HeadsConfig(layers=(1,), max_note_tokens=48, max_notes=caps, ngrams=True, dense_weights=(1.0,)))
    assert all(w.any() for w, _ in load_model(full).heads.values())


def test_measurements_are_kept_per_task_and_the_scorer_reproduces_the_validation_auroc(small_dataset, tiny_llama_dir,
                                                                                   tmp_path):
    """With measurements the stored head reads the scorer's unweighted bins with the chosen weight
    folded in: the served probabilities on the validation notes give back the AUROC training saw;
    a task that did not gain enough keeps zero coefficients on them."""
    from lang1ops.metrics import auroc
    from training.heads import sample_notes

    dataset = Dataset.load(small_dataset)
    caps = {"train": 250, "val": 80}
    forced = train_heads(dataset, tiny_llama_dir, tmp_path / "forced",
                         HeadsConfig(layers=(1,), max_note_tokens=48, max_notes=caps, ngrams=True, measurements=True,
                                     measurement_min_gain=-1.0))
    heads = ArtifactManifest.load(forced).hyperparameters["heads"]
    assert all(h["measurement_weight"] in (0.1, 0.2) for h in heads.values())  # any fit qualifies at gain -1
    loaded = load_model(forced)
    assert loaded.ngrams.measurements is not None and loaded.ngrams.measurements.size > 0
    val = sample_notes(dataset, "val", dataset.contract.names, caps["val"], 0)
    served, _ = MultitaskScorer(loaded).score(val["text"].tolist())
    by_note = dict(zip(val["note_id"], served, strict=True))
    for task in ("mortality", "denial", "readmission"):  # binary: calibration keeps the ranking
        frame = dataset.task_frame(task, "val")
        frame = frame[frame["note_id"].isin(val["note_id"])]
        probs = np.stack([by_note[n][task] for n in frame["note_id"]])
        assert auroc(frame["label"].to_numpy(), probs) == pytest.approx(heads[task]["val_auroc"], abs=1e-6)
    terms = loaded.ngrams.terms
    assert any(float(w[:, terms:].abs().sum()) > 0 for w in loaded.ngram_heads.values())

    strict = train_heads(dataset, tiny_llama_dir, tmp_path / "strict",
                         HeadsConfig(layers=(1,), max_note_tokens=48, max_notes=caps, ngrams=True, measurements=True,
                                     measurement_min_gain=2.0))
    strict_model = load_model(strict)
    assert all(h["measurement_weight"] == 0.0 for h in ArtifactManifest.load(strict).hyperparameters["heads"].values())
    assert all(float(w[:, terms:].abs().sum()) == 0 for w in strict_model.ngram_heads.values())


def test_measurements_without_ngrams_are_refused_not_dropped():
    with pytest.raises(ValueError, match="needs ngrams=True"):
        HeadsConfig(measurements=True, ngrams=False)
    assert HeadsConfig(measurements=True, ngrams=True).measurements
