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
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from lang1ops.artifact import Method, ModelKind, Pooling, weights_sha256
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.prompts import PromptEncoder
from lang1ops.tasks import TaskContract
from serving.scorer import NoteEncoder, choose_dtype
from training.artifacts import remove_partial, start_artifact
from training.dataset import Dataset
from training.metrics import auroc


@dataclass
class HeadsConfig:
    layer: int = 18  # see docs/training.md: the probe of each layer on the demo hospital
    max_note_tokens: int = 512
    c_grid: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    tasks: list[str] | None = None
    max_notes: dict[str, int] = field(default_factory=dict)  # per split cap (random, seeded), e.g. {"train": 2000}
    seed: int = 0
    batch_notes: int = 8
    dtype: str = "auto"


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


def encoder_fingerprint(base_sha: str, pooling: Pooling, max_note_tokens: int) -> str:
    return hashlib.sha256(f"{base_sha}:{pooling.layer}:{pooling.method}:{max_note_tokens}".encode()).hexdigest()[:24]


def encode_with_cache(encoder: NoteEncoder, frame: pd.DataFrame, cache: EncodingCache | None, fingerprint: str,
                      on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Encodings of `frame`'s notes (columns text, text_sha256), computing only the missing ones."""
    shas = frame["text_sha256"].tolist()
    known = cache.get(fingerprint, list(set(shas))) if cache else {}
    missing = frame.drop_duplicates("text_sha256")
    missing = missing[~missing["text_sha256"].isin(known)]
    if on_batch and len(known):
        on_batch(sum(1 for s in shas if s in known))
    if len(missing):
        vectors = encoder.encode(missing["text"].tolist(), on_batch)
        new = dict(zip(missing["text_sha256"], vectors, strict=True))
        if cache:
            cache.put(fingerprint, new)
        known.update(new)
    return np.stack([known[s] for s in shas])


def sample(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    return frame if not cap or len(frame) <= cap else frame.sample(cap, random_state=seed).sort_index()


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
    best: HeadFit | None = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_train, y_train)
        weight, bias = np.zeros((n_classes, x_train.shape[1])), np.full(n_classes, -30.0)  # unseen classes: ~0 probability
        if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: logit of the second
            weight[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
            bias[clf.classes_[0]] = 0.0
        else:
            weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
        probs = softmax(x_val @ weight.T + bias)
        score = auroc(y_val, probs) if len(np.unique(y_val)) > 1 else float("nan")
        if best is None or (np.isfinite(score) and not score <= best.val_auroc):
            best = HeadFit(weight, bias, c, score, len(y_train))
    return best


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_heads(dataset: Dataset, base_dir: Path, out_dir: Path, config: HeadsConfig, name: str = "lang1-ops",
                cache: EncodingCache | None = None, on_batch: Callable[[int], None] | None = None,
                on_total: Callable[[int], None] | None = None, lineage: dict | None = None) -> Path:
    started = time.perf_counter()
    contract: TaskContract = dataset.contract
    tasks = config.tasks or contract.names
    pooling = Pooling(layer=config.layer)
    model = load_causal_lm(base_dir, dtype=choose_dtype("cpu", config.dtype))
    if not 1 <= config.layer <= model.config.num_hidden_layers:
        raise ValueError(f"layer {config.layer} outside 1..{model.config.num_hidden_layers}")
    prompt = PromptEncoder(load_tokenizer(base_dir), contract, config.max_note_tokens)
    encoder = NoteEncoder(model, prompt, pooling, config.batch_notes)
    fingerprint = encoder_fingerprint(weights_sha256(base_dir), pooling, config.max_note_tokens)

    frames = {split: {t: sample(dataset.task_frame(t, split), config.max_notes.get(split), config.seed) for t in tasks}
              for split in ("train", "val")}
    # every note is encoded once, whichever tasks use it
    notes = pd.concat([f for per_task in frames.values() for f in per_task.values()]).drop_duplicates("note_id")
    if on_total:
        on_total(len(notes))
    vectors = encode_with_cache(encoder, notes, cache, fingerprint, on_batch)
    by_note = dict(zip(notes["note_id"], vectors, strict=True))

    train_all = np.stack([by_note[n] for n in pd.concat([f for f in frames["train"].values()])["note_id"].unique()])
    mean, scale = train_all.mean(0), train_all.std(0) + 1e-6
    tensors = {"mean": torch.tensor(mean, dtype=torch.float32), "scale": torch.tensor(scale, dtype=torch.float32)}
    fits = {}
    for t in tasks:
        x = {s: (np.stack([by_note[n] for n in frames[s][t]["note_id"]]) - mean) / scale for s in frames}
        y = {s: frames[s][t]["label"].to_numpy() for s in frames}
        fit = fit_head(x["train"], y["train"], x["val"], y["val"], contract.task(t).n_classes, config.c_grid, config.seed)
        tensors[f"{t}.weight"] = torch.tensor(fit.weight, dtype=torch.float32)
        tensors[f"{t}.bias"] = torch.tensor(fit.bias, dtype=torch.float32)
        fits[t] = {"C": fit.c, "val_auroc": fit.val_auroc, "n_train": fit.n_train, "n_val": int(len(y["val"]))}

    task_contract = contract.model_copy(update={"tasks": [contract.task(t) for t in tasks]})
    try:
        start_artifact(out_dir, name=name, kind=ModelKind.HEADS, method=Method.LOGREG, base_dir=base_dir,
                       contract=task_contract, max_note_tokens=config.max_note_tokens, pooling=pooling,
                       data=dataset_summary(dataset, frames), lineage=lineage,
                       hyperparameters={"layer": config.layer, "pooling": "mean", "c_grid": list(config.c_grid),
                                        "heads": fits, "seed": config.seed})
        save_file(tensors, str(Path(out_dir) / "heads.safetensors"))
    except BaseException:
        remove_partial(out_dir)
        raise
    from lang1ops.artifact import ArtifactManifest

    manifest = ArtifactManifest.load(out_dir)
    manifest.wall_time_s = round(time.perf_counter() - started, 1)
    manifest.save(out_dir)
    return Path(out_dir)


def dataset_summary(dataset: Dataset, frames: dict[str, dict[str, pd.DataFrame]]) -> dict:
    return {"dataset": str(dataset.path), "windows": dataset.info.get("windows"),
            "notes": {s: {t: int(len(f)) for t, f in per_task.items()} for s, per_task in frames.items()}}
