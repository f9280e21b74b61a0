"""Evaluation as the paper reports it: AUROC with 95% bootstrap CIs, calibration, subgroups, model cards.

Paper, methods: "AUROC using sklearn; one-vs-rest for multiclass; 95% confidence intervals by
resampling each test set 1000 times using the quantile (percentile) bootstrap method from scipy;
calibration with 15 bins and expected calibration error".

The AUROC intervals (percentile bootstrap, all resamples scored at once) come from
`lang1ops.metrics`, which the registry's promotion gate uses too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from lang1ops.metrics import (
    Interval,
    _finite,
    as_arrays,
    auroc,
    bootstrap_auroc,
    calibration_bins,
    expected_calibration_error,
)
from lang1ops.tasks import TaskSpec

SUBGROUP_COLUMNS = ("age_band", "sex", "race", "ethnicity", "payer", "unit", "service")
UNDER_REVIEW = "(this model)"  # a model-card row whose model name holds this comes first


# ---------------------------------------------------------------- one task on one split

@dataclass
class TaskEvaluation:
    task: str
    split: str
    n: int
    class_counts: list[int]
    auroc: Interval  # macro one-vs-rest for multiclass
    auroc_per_class: list[Interval | None] | None  # multiclass only; None for a class absent (or the only one)
    ece: float
    calibration: list[dict]
    subgroups: dict[str, dict[str, dict]]  # attribute -> value -> {"n", "auroc": Interval dict or None}

    def to_dict(self) -> dict:
        return {
            "task": self.task, "split": self.split, "n": self.n, "class_counts": self.class_counts,
            "auroc": self.auroc.to_dict(),
            "auroc_per_class": None if self.auroc_per_class is None
            else [i.to_dict() if i else None for i in self.auroc_per_class],
            "ece": _finite(self.ece), "calibration": self.calibration, "subgroups": self.subgroups,
        }


def _task_arrays(task: TaskSpec, labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = as_arrays(labels, probs)
    if probs.shape[1] != task.n_classes:
        raise ValueError(f"task {task.name}: {task.n_classes} classes but probabilities have {probs.shape[1]} columns")
    if task.binary:  # column 1 / label 1 = the event, whichever option the contract lists it as
        pos = task.positive_option
        return (labels == pos).astype(np.int64), probs[:, [1 - pos, pos]]
    return labels, probs


def evaluate_task(task: TaskSpec, split: str, labels, probs, groups: pd.DataFrame | None = None,
                  n_resamples: int = 1000, seed: int = 0, min_group: int = 30) -> TaskEvaluation:
    """AUROC [CI], per-class AUROC, ECE, calibration bins and subgroup AUROCs of one task on one split.

    `groups` has one row per note in the order of `labels` (e.g. `Dataset.task_frame`); the
    subgroup attributes found among its columns are reported, a missing value as "unknown".
    """
    raw = np.asarray(labels).astype(np.int64).ravel()
    y, p = _task_arrays(task, labels, probs)
    counts = np.bincount(raw, minlength=task.n_classes).tolist()
    per_class = None
    if not task.binary:
        per_class = [bootstrap_auroc(raw == k, p[:, k], n_resamples, seed) if 0 < counts[k] < len(raw) else None
                     for k in range(task.n_classes)]
    subgroups: dict[str, dict[str, dict]] = {}
    if groups is not None:
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} rows for {len(y)} notes")
        for column in [c for c in SUBGROUP_COLUMNS if c in groups.columns]:
            values = groups[column].astype(object).where(groups[column].notna(), "unknown").astype(str).to_numpy()
            subgroups[column] = {}
            for value in sorted(set(values)):
                m = values == value
                enough = m.sum() >= min_group and len(np.unique(y[m])) > 1
                subgroups[column][value] = {
                    "n": int(m.sum()),
                    "auroc": bootstrap_auroc(y[m], p[m], n_resamples, seed).to_dict() if enough else None,
                }
    return TaskEvaluation(
        task=task.name, split=split, n=len(y), class_counts=counts,
        auroc=bootstrap_auroc(y, p, n_resamples, seed), auroc_per_class=per_class,
        ece=expected_calibration_error(y, p), calibration=calibration_bins(y, p), subgroups=subgroups,
    )


# ---------------------------------------------------------------- plots

def _figure(n_axes: int, height: float = 4.2):
    # matplotlib is imported here, not at module import: serving and training import this
    # module for the metrics; the Figure/Agg canvas pair draws without pyplot's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * n_axes, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_axes, squeeze=False)[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def plot_roc(evaluations_by_model: dict[str, tuple[TaskSpec, object, object]], path) -> Path:
    """ROC curves, one per model. Binary: the event. Multiclass: one panel per class (one-vs-rest),
    the per-class AUROC in each legend and the macro AUROC in the panel-row title."""
    first = next(iter(evaluations_by_model.values()))[0]
    classes = [None] if first.binary else list(range(first.n_classes))
    fig, axes = _figure(len(classes))
    macro = []
    for model, (task, labels, probs) in evaluations_by_model.items():
        y, p = _task_arrays(task, labels, probs)
        macro.append(f"{model} {auroc(y, p):.3f}")
        for ax, k in zip(axes, classes, strict=True):
            positive, score = (y == 1, p[:, 1]) if k is None else (y == k, p[:, k])
            if positive.all() or not positive.any():
                continue  # no curve without both classes
            fpr, tpr, _ = roc_curve(positive, score)
            ax.plot(fpr, tpr, label=f"{model} (AUROC {roc_auc_score(positive, score):.3f})")
    for ax, k in zip(axes, classes, strict=True):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01),
               title=first.title if k is None else f"{first.options[k].text} vs rest")
        ax.legend(loc="lower right", fontsize="small")
    if not first.binary:
        fig.suptitle(f"{first.title}: macro AUROC " + ", ".join(macro), fontsize="medium")
    return _save(fig, path)


def plot_calibration(evaluations_by_model: dict[str, tuple[TaskSpec, object, object]], path, n_bins: int = 15) -> Path:
    """Reliability diagram: binary P(event) vs observed rate, multiclass top-label confidence vs accuracy."""
    first = next(iter(evaluations_by_model.values()))[0]
    fig, (ax,) = _figure(1, height=4.4)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    for model, (task, labels, probs) in evaluations_by_model.items():
        y, p = _task_arrays(task, labels, probs)
        bins = [b for b in calibration_bins(y, p, n_bins) if b["count"]]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], marker="o", ms=3,
                label=f"{model} (ECE {expected_calibration_error(y, p, n_bins):.3f})")
    xlabel, ylabel, kind = (("Predicted probability", "Observed rate", "") if first.binary
                            else ("Confidence (top label)", "Accuracy", " (top label)"))
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(-0.01, 1.01), title=f"{first.title}: calibration{kind}")
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


# ---------------------------------------------------------------- model card

def _jsonable(x):
    """Plain JSON types: numpy scalars to Python, nan to None, paths to str, Intervals to dicts."""
    if isinstance(x, Interval | TaskEvaluation):
        return _jsonable(x.to_dict())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return _finite(x)
    if x is None or isinstance(x, bool | int | str):
        return x
    return str(x)


def _cell(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": ")).replace("|", "\\|")
    return str(value).replace("|", "\\|")


def _auroc_cell(interval: dict | None) -> str:
    if not interval or interval.get("estimate") is None:
        return "n/a"
    if interval.get("low") is None:
        return f"{interval['estimate']:.3f}"
    return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


LIMITATIONS = (
    "These are operational predictions (readmission, mortality, length of stay, comorbidity burden, "
    "claim denial) made from a single note to support planning and resource allocation; they are not "
    "clinical diagnoses and must not by themselves drive care for an individual patient. Performance was "
    "measured on this hospital's retrospective data and can drift with time, documentation practice, "
    "case mix and coding; validate on recent local data before use and monitor after deployment. "
    "AUROC is reported with 95% percentile-bootstrap intervals over notes (1000 resamples); calibration "
    "as 15-bin expected calibration error (top-label for multiclass tasks). Performance by subgroup "
    "(age, sex, race, ethnicity, payer, unit, service) is in the JSON card and may be lower than overall."
)


def model_card(title: str, about: dict, rows: list[dict]) -> tuple[str, dict]:
    """Markdown and JSON of a model card: what the model is (`about`) and its metric rows."""
    data = {"title": title, "about": _jsonable(about), "rows": _jsonable(rows)}
    rows = data["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    models.sort(key=lambda m: UNDER_REVIEW not in m)  # stable: the model under review first
    lines = [f"# {title}", "", "## About", "", "| | |", "|---|---|"]
    lines += [f"| **{_cell(k)}** | {_cell(v)} |" for k, v in data["about"].items()]
    for split in dict.fromkeys(r["split"] for r in rows):
        in_split = [r for r in rows if r["split"] == split]
        header = ["Task", "n", "events"] + [f"{m} {col}" for m in models for col in ("AUROC [95% CI]", "ECE")]
        lines += ["", f"## Performance: {split}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        notes = []
        for task in dict.fromkeys(r["task"] for r in in_split):
            by_model = {r["model"]: r for r in in_split if r["task"] == task}
            n = next((by_model[m].get("n") for m in models if m in by_model), None)
            counts = next((by_model[m].get("class_counts") for m in models if by_model.get(m, {}).get("class_counts")), None)
            cells = [task, "" if n is None else str(n), _events_cell(counts)]
            notes += _sparse_class_notes(task, counts)
            for m in models:
                r = by_model.get(m)
                ece = None if r is None else r.get("ece")
                cells += [_auroc_cell(r and r.get("auroc")), "n/a" if ece is None else f"{ece:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        if notes:
            lines += [""] + [f"- {note}" for note in notes]
    lines += ["", "## Intended use and limitations", "", LIMITATIONS, ""]
    return "\n".join(lines), data


def _events_cell(counts: list[int] | None) -> str:
    """Binary: the positives; multiclass: the notes in each class (LOS 0-2/3/4-5/>5, CCI 0/1-2/...)."""
    if not counts:
        return ""
    return str(counts[1]) if len(counts) == 2 else "/".join(str(c) for c in counts)


def _sparse_class_notes(task: str, counts: list[int] | None) -> list[str]:
    """What a reader must know before trusting a row: a class absent from the sample leaves the
    macro AUROC averaging over fewer classes; a class with under 10 notes is missing from many
    bootstrap resamples, so its interval is wide and partly averaged over fewer classes."""
    if not counts:
        return []
    absent = [str(i) for i, c in enumerate(counts) if c == 0]
    rare = [f"{i} ({c})" for i, c in enumerate(counts) if 0 < c < 10]
    notes = []
    if absent:
        notes.append(f"{task}: class {', '.join(absent)} absent from this sample; the AUROC averages over the "
                     "classes present")
    if rare:
        notes.append(f"{task}: class {', '.join(rare)} has under 10 notes; resamples without it average over "
                     "fewer classes and its interval is wide")
    return notes


def write_model_card(directory, title: str, about: dict, rows: list[dict]) -> tuple[Path, Path]:
    markdown, data = model_card(title, about, rows)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / "model_card.md", directory / "model_card.json"
    md.write_text(markdown)
    js.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return md, js
