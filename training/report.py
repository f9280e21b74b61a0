"""Judge a model the way the paper judges one, beside its baselines, and write its report.

For each split: score the (optionally capped) notes with the model, the TF-IDF baseline
(fitted on the train split) and the base model zero-shot, evaluate every task (AUROC with
bootstrap CI, ECE, subgroups), draw ROC and calibration plots for the latest split, and
write `metrics.json`, `model_card.md`/`.json` and `plots/` into the report directory.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lang1ops.artifact import ArtifactManifest, resolve_base
from lang1ops.calibration import calibrated
from lang1ops.metrics import expected_calibration_error
from lang1ops.scorer import LoadedModel, MultitaskScorer, load_model
from training.artifacts import zero_shot_artifact
from training.baselines import TfidfBaseline
from training.dataset import Dataset
from training.evaluate import SUBGROUP_COLUMNS, evaluate_task, plot_calibration, plot_roc, write_model_card

THIS = "this model"


@dataclass
class SplitPredictions:
    """Probabilities of one model for every task of one split, on the same notes."""

    split: str
    frames: dict[str, pd.DataFrame]  # task -> rows (note_id, label, subgroups)
    probs: dict[str, np.ndarray]  # task -> (n, k)


def split_notes(dataset: Dataset, split: str, tasks: list[str], cap: int | None, seed: int) -> pd.DataFrame:
    labels = dataset.labels
    ids = labels.loc[(labels["split"] == split) & labels["task"].isin(tasks), "note_id"].unique()
    notes = dataset.notes[dataset.notes["note_id"].isin(ids)]
    return notes if not cap or len(notes) <= cap else notes.sample(cap, random_state=seed).sort_index()


def predict(model: LoadedModel, dataset: Dataset, split: str, notes: pd.DataFrame,
            on_batch: Callable[[int], None] | None = None, batch: int = 32) -> SplitPredictions:
    """Score `notes` once each, answering every task the note has a label for."""
    tasks = [t for t in model.contract.names]
    frames = {t: dataset.task_frame(t, split).merge(notes[["note_id"]], on="note_id") for t in tasks}
    asked: dict[str, list[str]] = {n: [] for n in notes["note_id"]}
    for task, frame in frames.items():
        for note_id in frame["note_id"]:
            asked[note_id].append(task)
    scorer = MultitaskScorer(model)
    texts = dict(zip(notes["note_id"], notes["text"], strict=True))
    ids = [n for n in notes["note_id"] if asked[n]]
    results: dict[str, dict] = {}
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        scored, _ = scorer.score([texts[n] for n in chunk], [asked[n] for n in chunk])
        results.update(zip(chunk, scored, strict=True))
        if on_batch:
            on_batch(len(chunk))
    probs = {t: np.stack([results[n][t] for n in f["note_id"]]) if len(f) else np.zeros((0, model.contract.task(t).n_classes))
             for t, f in frames.items()}
    return SplitPredictions(split, frames, probs)


def tfidf_predictions(dataset: Dataset, tasks: list[str], split: str, frames: dict[str, pd.DataFrame],
                      fitted: dict[str, TfidfBaseline]) -> dict[str, np.ndarray]:
    out = {}
    for task in tasks:
        if task not in fitted:
            train, val = dataset.task_frame(task, "train"), dataset.task_frame(task, "val")
            # the whole training split, C chosen on validation: the baseline at its best
            fitted[task] = TfidfBaseline.fit(train["text"].tolist(), train["label"].to_numpy(),
                                             dataset.contract.task(task).n_classes, val_texts=val["text"].tolist(),
                                             val_labels=val["label"].to_numpy())
        out[task] = fitted[task].predict_proba(frames[task]["text"].tolist()) if len(frames[task]) else np.zeros(
            (0, dataset.contract.task(task).n_classes))
    return out


def evaluate_model(artifact_dir: Path, dataset: Dataset, splits: list[str], out_dir: Path | None = None,
                   baselines: tuple[str, ...] = ("tfidf", "zero-shot"), max_notes: int | None = None,
                   n_resamples: int = 1000, seed: int = 0, base_fallback: Path | None = None,
                   on_total: Callable[[int], None] | None = None, on_batch: Callable[[int], None] | None = None,
                   model: LoadedModel | None = None, candidates: dict[str, Path] | None = None) -> dict:
    """`candidates`: the other models in the running (column name -> artifact directory), scored
    on the same notes with their own stored calibration, so the card shows every candidate."""
    started = time.perf_counter()
    artifact_dir = Path(artifact_dir)
    out_dir = Path(out_dir or artifact_dir)
    manifest = ArtifactManifest.load(artifact_dir)
    model = model or load_model(artifact_dir, base_fallback)
    tasks = model.contract.names
    others = {name: load_model(Path(path), base_fallback) for name, path in (candidates or {}).items()}
    zero_shot = None
    if "zero-shot" in baselines:
        tmp = Path(tempfile.mkdtemp(prefix="zero-shot-"))
        zero_shot = load_model(zero_shot_artifact(resolve_base(manifest.base, base_fallback), tmp / "a", model.contract,
                                                  manifest.max_note_tokens))
    notes = {s: split_notes(dataset, s, tasks, max_notes, seed) for s in splits}
    if on_total:
        on_total(sum(len(n) for n in notes.values()) * (1 + len(others) + (1 if zero_shot else 0)))
    rows, evaluations, fitted = [], [], {}
    plotted: dict[str, dict] = {}
    ours_name = f"{manifest.kind.value} ({THIS})"
    seconds: dict[str, float] = {}

    @contextmanager
    def timed(name: str):
        clock = time.perf_counter()
        yield
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - clock

    # scored without the artifact's calibration maps, which are then applied here: the same
    # probabilities the service answers with, and the ECE they would have without the maps
    raw_model = replace(model, manifest=model.manifest.model_copy(update={"calibration": {}})) if model.manifest else model
    maps = model.manifest.calibration if model.manifest else {}
    ece_uncalibrated: dict[str, dict[str, float]] = {}
    for split in splits:
        with timed(ours_name):
            ours = predict(raw_model, dataset, split, notes[split], on_batch)
        for task in set(maps) & set(ours.probs):
            if len(ours.frames[task]):
                ece_uncalibrated.setdefault(task, {})[split] = expected_calibration_error(
                    ours.frames[task]["label"].to_numpy(), ours.probs[task])
            ours.probs[task] = calibrated(ours.probs[task], maps[task])
        by_model = {ours_name: ours.probs}
        if "tfidf" in baselines:
            with timed("TF-IDF baseline"):  # includes fitting on the train split (once)
                by_model["TF-IDF baseline"] = tfidf_predictions(dataset, tasks, split, ours.frames, fitted)
        for name, other in others.items():
            with timed(name):
                scored = predict(other, dataset, split, notes[split], on_batch)
            for task in set(scored.probs) & set(tasks):  # the same notes in the same order, or the rows would lie
                if not scored.frames[task]["note_id"].equals(ours.frames[task]["note_id"]):
                    raise RuntimeError(f"{name} was scored on other {task} notes than {ours_name}")
            by_model[name] = {t: p for t, p in scored.probs.items() if t in tasks}
        if zero_shot is not None:
            with timed("zero-shot"):
                by_model["zero-shot"] = predict(zero_shot, dataset, split, notes[split], on_batch).probs
        for name, probs in by_model.items():
            for task in tasks:
                frame = ours.frames[task]
                if not len(frame) or task not in probs:
                    continue
                groups = frame[[c for c in SUBGROUP_COLUMNS if c in frame]]
                ev = evaluate_task(model.contract.task(task), split, frame["label"].to_numpy(), probs[task], groups,
                                   n_resamples=n_resamples, seed=seed)
                evaluations.append({"model": name, **ev.to_dict()})
                rows.append({"model": name, "task": task, "split": split, "n": ev.n, "auroc": ev.auroc.to_dict(),
                             "ece": ev.ece, "class_counts": ev.class_counts}
                            | ({"ece_uncalibrated": ece_uncalibrated[task][split]}
                               if name == ours_name and split in ece_uncalibrated.get(task, {}) else {}))
                if split == splits[-1]:
                    plotted.setdefault(task, {})[name] = (model.contract.task(task), frame["label"].to_numpy(), probs[task])
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for task, curves in plotted.items():
        plot_roc(curves, plots / f"roc_{task}_{splits[-1]}.png")
        plot_calibration(curves, plots / f"calibration_{task}_{splits[-1]}.png")
    about = {"version / name": manifest.name, "kind": manifest.kind.value, "method": manifest.method.value,
             "base model": manifest.base.name, "max note tokens": manifest.max_note_tokens,
             "pooled layer": manifest.pooling.layer if manifest.pooling else None, "data": manifest.data,
             "hyperparameters": manifest.hyperparameters, "training wall time (s)": manifest.wall_time_s,
             "calibration (fitted on validation)": _calibration_summary(maps, rows, ours_name) or "none",
             "evaluated notes per split": {s: int(len(n)) for s, n in notes.items()},
             "evaluation wall time (s)": round(time.perf_counter() - started, 1),
             "scoring wall time by model (s)": {k: round(v, 1) for k, v in seconds.items()}}
    write_model_card(out_dir, f"Model card: {manifest.name} ({manifest.kind.value}, {manifest.method.value})", about, rows)
    metrics = {"splits": splits, "rows": rows, "evaluations": evaluations, "about": about}
    (out_dir / "metrics.json").write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False) + "\n")
    return metrics


def _calibration_summary(maps: dict, rows: list[dict], model_name: str) -> dict[str, str]:
    """task -> "platt slope=.. intercept=..; ECE without -> with it: split a -> b, ..." for the card."""
    out = {}
    for task, cal in maps.items():
        how = f"T={cal.temperature:.2f}" if cal.method == "temperature" else f"slope={cal.slope:.2f} intercept={cal.intercept:.2f}"
        eces = [f"{r['split']} {r['ece_uncalibrated']:.3f} -> {r['ece']:.3f}" for r in rows
                if r["model"] == model_name and r["task"] == task and "ece_uncalibrated" in r]
        out[task] = f"{cal.method} {how}; ECE without -> with it: " + (", ".join(eces) or "no labeled notes")
    return out


def strict_json(value):
    """JSON-safe copy: numpy scalars to Python, nan and inf to None, paths to strings."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
