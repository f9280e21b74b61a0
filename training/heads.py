"""Cheap heads: a frozen base encodes each note once; a logistic regression per task reads
its pooled encoding. Retraining only refits the heads, and encodings are cached by note
hash, so a drift alert can be answered the same day on two CPU cores.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from lang1ops.artifact import ArtifactManifest, Method, ModelKind, Pooling, weights_sha256
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.metrics import auroc
from lang1ops.ngrams import NgramFeatures
from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import NoteEncoder, choose_dtype, softmax
from lang1ops.tasks import TaskContract
from training.artifacts import remove_partial, start_artifact
from training.calibration import fit_calibrations
from training.dataset import Dataset


@dataclass
class HeadsConfig:
    # Candidate layers to pool, chosen on validation like C. One forward pass captures them
    # all and stops at the deepest; on the SmolLM2 base early layers probe as well as deep
    # ones (docs/training.md) at a fraction of the cost (layer 4: 0.13 s/note on 2 cores,
    # all 30 layers: 0.97 s/note).
    layers: tuple[int, ...] = (1, 2, 4)
    max_note_tokens: int = 512
    c_grid: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    tasks: list[str] | None = None
    max_notes: dict[str, int] = field(default_factory=dict)  # cap on distinct notes per split, e.g. {"train": 2000}
    seed: int = 0
    batch_notes: int = 8
    dtype: str = "auto"
    # Also read the whole note's word 1-2-grams (TF-IDF, fitted on the training notes) beside the
    # pooled state: one logistic regression over both (lang1ops.ngrams; docs/training.md measures it).
    ngrams: bool = False
    ngram_c_grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    # With n-grams: the pooled block's weight beside them, chosen per task on validation with C
    # (a smaller weight is a stronger penalty on the pooled block alone; 0 leaves the n-grams).
    # One C for 576 dense and 50,000 sparse columns let the dense block cost more in variance
    # than it added (docs/training.md, "dense weight").
    dense_weights: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)
    # With n-grams: also the note's measured values in bins (lang1ops.measurements), kept for a
    # task only where they raise its validation AUROC by `measurement_min_gain` at one of these
    # weights. Why the margin: on the demo hospital they add 0.04 to mortality, while the 0.004
    # they add to denial on validation turns into -0.03 after the template shift (minutes of
    # counselling, times: numbers whose meaning moves); a simpler model wins ties.
    measurements: bool = False
    measurement_weights: tuple[float, ...] = (0.1, 0.2)
    measurement_min_gain: float = 0.01

    def __post_init__(self) -> None:
        if self.measurements and not self.ngrams:  # the bins are columns of the n-gram block
            raise ValueError("HeadsConfig(measurements=True) needs ngrams=True: the measured values are read beside "
                             "the note's n-grams")


class EncodingCache:
    """Pooled encodings by (encoder fingerprint, note sha256) in SQLite: safe for several
    processes, and the note text itself is never stored."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS encodings (fingerprint TEXT, sha TEXT, vec BLOB, "
                        "PRIMARY KEY (fingerprint, sha))")

    def get(self, fingerprint: str, shas: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(shas), 500):
            chunk = shas[start : start + 500]
            query = f"SELECT sha, vec FROM encodings WHERE fingerprint = ? AND sha IN ({','.join('?' * len(chunk))})"
            for sha, blob in self.db.execute(query, [fingerprint, *chunk]):
                found[sha] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, fingerprint: str, items: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO encodings VALUES (?, ?, ?)",
                                [(fingerprint, sha, np.asarray(v, dtype=np.float32).tobytes()) for sha, v in items.items()])


def encoder_fingerprint(base_sha: str, layer: int, max_note_tokens: int, dtype: torch.dtype) -> str:
    # the dtype is part of the key: bf16 and fp32 encodings of one note differ by more than
    # drift checks and heads tolerate, so a cache filled in one must not answer the other
    return hashlib.sha256(f"{base_sha}:{layer}:mean:{max_note_tokens}:{dtype}".encode()).hexdigest()[:24]


def encode_with_cache(encoder: NoteEncoder, notes: pd.DataFrame, cache: EncodingCache | None,
                      fingerprints: dict[int, str], on_batch: Callable[[int], None] | None = None) -> dict[int, np.ndarray]:
    """layer -> encodings of `notes` (columns text, text_sha256); only notes missing from the
    cache for some layer are run through the model."""
    shas = notes["text_sha256"].tolist()
    known = {layer: cache.get(fp, list(set(shas))) if cache else {} for layer, fp in fingerprints.items()}
    complete = set.intersection(*(set(k) for k in known.values()))
    missing = notes.drop_duplicates("text_sha256")
    missing = missing[~missing["text_sha256"].isin(complete)]
    if on_batch and len(notes) > len(missing):
        on_batch(len(notes) - len(missing))
    if len(missing):
        vectors = encoder.encode(missing["text"].tolist(), on_batch)
        for layer, fp in fingerprints.items():
            new = dict(zip(missing["text_sha256"], vectors[layer], strict=True))
            if cache:
                cache.put(fp, new)
            known[layer].update(new)
    return {layer: np.stack([known[layer][s] for s in shas]) for layer in fingerprints}


def sample_notes(dataset: Dataset, split: str, tasks: list[str], cap: int | None, seed: int) -> pd.DataFrame:
    """Distinct labeled notes of a split (capped at random, seeded): every task reads the same
    encodings, so capping notes rather than task rows keeps the encoding bill down."""
    labels = dataset.labels
    ids = labels.loc[(labels["split"] == split) & labels["task"].isin(tasks), "note_id"].unique()
    notes = dataset.notes[dataset.notes["note_id"].isin(ids)]
    return notes if not cap or len(notes) <= cap else notes.sample(cap, random_state=seed).sort_index()


@dataclass
class HeadFit:
    weight: np.ndarray  # (k, H) on standardized features
    bias: np.ndarray  # (k,)
    c: float
    val_auroc: float
    n_train: int


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
             c_grid: tuple[float, ...], seed: int) -> HeadFit:
    """Logistic regression with C chosen on validation AUROC; weights as (k, H) logits."""
    present = np.unique(y_train)
    if len(present) < 2:
        # nothing to discriminate: predict the training prior (the card shows the task as untrained)
        bias = np.full(n_classes, -30.0)
        bias[present] = 0.0
        return HeadFit(np.zeros((n_classes, x_train.shape[1])), bias, float("nan"), float("nan"), len(y_train))
    best: HeadFit | None = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_train, y_train)
        weight, bias = np.zeros((n_classes, x_train.shape[1])), np.full(n_classes, -30.0)  # unseen classes: ~0 probability
        if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: the logit of the second
            weight[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
            bias[clf.classes_[0]] = 0.0
        else:
            weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
        score = auroc(y_val, softmax(x_val @ weight.T + bias)) if len(np.unique(y_val)) > 1 else float("nan")
        if best is None or (np.isfinite(score) and not score <= best.val_auroc):
            best = HeadFit(weight, bias, c, score, len(y_train))
    return best


def choose_measurement_weights(ngrams: NgramFeatures, every: pd.DataFrame, x_of: dict, fits: dict, rows: dict,
                               contract: TaskContract, config: HeadsConfig) -> dict[str, float]:
    """Per task, the measurement weight whose head beats the head without them on validation
    AUROC by `config.measurement_min_gain` (0 where none does); `fits` and `x_of` take the winner."""
    if ngrams.measurements is None:
        return {}
    bins = ngrams.measurements.transform(every["text"].tolist())
    chosen = {}
    for t, without in list(fits.items()):
        (tr, ytr), (va, yva) = rows[("train", t)], rows[("val", t)]
        best: tuple[float, HeadFit, sp.csr_matrix] | None = None
        for weight in config.measurement_weights:
            x = sp.hstack([x_of[t], bins * weight]).tocsr()
            fit = fit_head(x[tr], ytr, x[va], yva, contract.task(t).n_classes, config.ngram_c_grid, config.seed)
            if (np.isfinite(fit.val_auroc) and fit.val_auroc >= without.val_auroc + config.measurement_min_gain
                    and (best is None or fit.val_auroc > best[1].val_auroc)):
                best = (weight, fit, x)
        if best is not None:
            chosen[t], fits[t], x_of[t] = best
        else:  # the head's columns stay aligned with the scorer's: zeros on the bins
            chosen[t] = 0.0
            fits[t] = HeadFit(np.hstack([without.weight, np.zeros((without.weight.shape[0], bins.shape[1]))]),
                              without.bias, without.c, without.val_auroc, without.n_train)
            x_of[t] = sp.hstack([x_of[t], bins * 0.0]).tocsr()
    return chosen


def train_heads(dataset: Dataset, base_dir: Path, out_dir: Path, config: HeadsConfig, name: str = "lang1-ops",
                cache: EncodingCache | None = None, on_batch: Callable[[int], None] | None = None,
                on_total: Callable[[int], None] | None = None, lineage: dict | None = None) -> Path:
    started = time.perf_counter()
    contract: TaskContract = dataset.contract
    tasks = config.tasks or contract.names
    model = load_causal_lm(base_dir, dtype=choose_dtype("cpu", config.dtype))
    if not all(1 <= layer <= model.config.num_hidden_layers for layer in config.layers):
        raise ValueError(f"layers {config.layers} outside 1..{model.config.num_hidden_layers}")
    prompt = PromptEncoder(load_tokenizer(base_dir), contract, config.max_note_tokens)
    encoder = NoteEncoder(model, prompt, list(config.layers), config.batch_notes)
    base_sha = weights_sha256(base_dir)
    fingerprints = {layer: encoder_fingerprint(base_sha, layer, config.max_note_tokens, model.dtype)
                    for layer in encoder.layers}

    notes = {s: sample_notes(dataset, s, tasks, config.max_notes.get(s), config.seed) for s in ("train", "val")}
    every = pd.concat(notes.values())
    if on_total:
        on_total(len(every))
    vectors = encode_with_cache(encoder, every, cache, fingerprints, on_batch)
    row_of = {note_id: i for i, note_id in enumerate(every["note_id"])}

    def task_rows(split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
        frame = dataset.task_frame(task, split)
        frame = frame[frame["note_id"].isin(notes[split]["note_id"])]
        return np.array([row_of[n] for n in frame["note_id"]], dtype=int), frame["label"].to_numpy()

    rows = {(s, t): task_rows(s, t) for s in notes for t in tasks}
    train_rows = np.array([row_of[n] for n in notes["train"]["note_id"]], dtype=int)
    ngrams = NgramFeatures.fit(notes["train"]["text"].tolist(), measurements=config.measurements) if config.ngrams else None
    grams = ngrams.vectorizer.transform(every["text"].tolist()).tocsr() if ngrams else None
    hidden = next(iter(vectors.values())).shape[1]
    dense_weights = tuple(config.dense_weights) if ngrams else (1.0,)
    per_layer = {}
    for layer, x_all in vectors.items():
        mean, scale = x_all[train_rows].mean(0), x_all[train_rows].std(0) + 1e-6
        if ngrams:
            scale = scale * np.sqrt(hidden)  # the pooled part's rows about unit length, like the TF-IDF rows beside it
        z = (x_all - mean) / scale
        fits, weight_of, x_of = {}, {}, {}
        for weight in dense_weights:
            x = sp.hstack([sp.csr_matrix(z * weight), grams]).tocsr() if ngrams else z
            for t in tasks:
                (tr, ytr), (va, yva) = rows[("train", t)], rows[("val", t)]
                fit = fit_head(x[tr], ytr, x[va], yva, contract.task(t).n_classes,
                               config.ngram_c_grid if ngrams else config.c_grid, config.seed)
                if t not in fits or (np.isfinite(fit.val_auroc) and not fit.val_auroc <= fits[t].val_auroc):
                    fits[t], weight_of[t], x_of[t] = fit, weight, x
        scores = [f.val_auroc for f in fits.values() if np.isfinite(f.val_auroc)]
        per_layer[layer] = (float(np.mean(scores)) if scores else float("nan"), mean, scale, fits, weight_of, x_of)
    layer = max(per_layer, key=lambda k: np.nan_to_num(per_layer[k][0], nan=-1.0))
    _, mean, scale, fits, weight_of, x_of = per_layer[layer]
    measure_of = choose_measurement_weights(ngrams, every, x_of, fits, rows, contract, config) if ngrams else {}
    calibration = fit_calibrations({t: (softmax(x_of[t][rows[("val", t)][0]] @ fit.weight.T + fit.bias),
                                        rows[("val", t)][1]) for t, fit in fits.items()})

    tensors = {"mean": torch.tensor(mean, dtype=torch.float32), "scale": torch.tensor(scale, dtype=torch.float32)}
    for t, fit in fits.items():
        # the task's dense weight folded into its pooled-block coefficients: the scorer stays (x - mean) / scale
        tensors[f"{t}.weight"] = torch.tensor(fit.weight[:, :hidden] * weight_of[t], dtype=torch.float32)
        tensors[f"{t}.bias"] = torch.tensor(fit.bias, dtype=torch.float32)
        if ngrams:
            on_words = fit.weight[:, hidden:hidden + ngrams.terms]
            if ngrams.measurements is not None:  # their chosen weight folded in, as the dense weight above
                on_words = np.hstack([on_words, fit.weight[:, hidden + ngrams.terms:] * measure_of.get(t, 0.0)])
            tensors[f"{t}.ngram_weight"] = torch.tensor(on_words, dtype=torch.float32)
    if ngrams:
        tensors["ngram_idf"] = torch.tensor(ngrams.idf, dtype=torch.float32)
    task_contract = contract.model_copy(update={"tasks": [contract.task(t) for t in tasks]})
    sizes = {s: {t: int(len(rows[(s, t)][1])) for t in tasks} for s in notes}
    hyper = {"layer": layer, "pooling": "mean", "candidate_layers": list(config.layers),
             "c_grid": list(config.ngram_c_grid if ngrams else config.c_grid),
             "ngrams": {"terms": ngrams.terms, "fitted_on_notes": len(notes["train"]),
                        "measurement_bins": ngrams.measurements.size if ngrams.measurements else None,
                        "measurement_keys": len(ngrams.measurements.edges) if ngrams.measurements else None}
             if ngrams else None,
             "layer_val_auroc": {str(k): v[0] for k, v in per_layer.items()}, "seed": config.seed,
             "dense_weights": list(dense_weights) if ngrams else None,
             "heads": {t: {"C": f.c, "val_auroc": f.val_auroc, "n_train": f.n_train,
                           **({"dense_weight": weight_of[t]} if ngrams else {}),
                           **({"measurement_weight": measure_of.get(t, 0.0)} if ngrams and ngrams.measurements else {})}
                       for t, f in fits.items()}}
    try:
        start_artifact(out_dir, name=name, kind=ModelKind.HEADS, method=Method.LOGREG, base_dir=base_dir,
                       contract=task_contract, max_note_tokens=config.max_note_tokens, pooling=Pooling(layer=layer),
                       data={"dataset": str(dataset.path), "windows": dataset.info.get("windows"), "examples": sizes},
                       hyperparameters=hyper, lineage=lineage)
        save_file(tensors, str(Path(out_dir) / "heads.safetensors"))
        if ngrams:
            ngrams.save(out_dir)
        manifest = ArtifactManifest.load(out_dir)
        manifest.wall_time_s = round(time.perf_counter() - started, 1)
        manifest.calibration = calibration
        manifest.save(out_dir)
    except BaseException:
        remove_partial(out_dir)
        raise
    return Path(out_dir)
