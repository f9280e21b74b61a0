"""Performance once outcomes arrive: the service's scores joined with the true labels.

For a window of scored notes (by note date, or by when they were scored), each task's
predictions are joined with the outcomes the integration recorded (`Store.record_outcome`, by
encounter and task) and evaluated exactly as training evaluates a model
(`training.evaluate.evaluate_task`: AUROC with a percentile-bootstrap 95% CI, ECE, AUROC by
subgroup). A report per window is written like the model card (Markdown + JSON), and the
numbers go into the history tables that the status collector exports.

One encounter counts once per task: its newest scored note that answered the task, by the
model version under evaluation (default: the version that scored the window's newest note).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from lang1ops.settings.drift_loop import DriftLoopSettings
from lang1ops.tasks import TaskContract
from training.evaluate import SUBGROUP_COLUMNS, TaskEvaluation, evaluate_task, model_card


@dataclass
class WindowPerformance:
    start: datetime
    end: datetime
    by: str
    model_version: str | None
    evaluations: dict[str, TaskEvaluation]  # tasks with enough labels
    labeled: dict[str, int]  # task -> labeled notes in the window (also those too few to evaluate)
    report_dir: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m-%d}..{self.end:%Y-%m-%d}"


def labeled_predictions(store, start: datetime, end: datetime, by: str = "note_date",
                        model_version: str | None = None) -> tuple[str | None, dict[str, pd.DataFrame]]:
    """(model version, task -> rows with encounter_id, label and p_<task>_<k> columns)."""
    scores = store.scores_between(start, end, by=by)
    if scores.empty:
        return model_version, {}
    if model_version is None:
        model_version = scores.sort_values("scored_at")["model_version"].iloc[-1]
    scores = scores[scores["model_version"] == model_version]
    outcomes = store.outcomes()
    out: dict[str, pd.DataFrame] = {}
    for task, labels in outcomes.groupby("task"):
        columns = sorted((c for c in scores.columns if c.startswith(f"p_{task}_")), key=lambda c: int(c.rsplit("_", 1)[1]))
        if not columns:
            continue
        answered = scores[scores[columns[0]].notna() & scores["encounter_id"].notna()]
        answered = answered.sort_values(["note_date", "scored_at"]).drop_duplicates("encounter_id", keep="last")
        joined = answered[["encounter_id", "patient_id", "note_type", "note_date", *columns]].merge(
            labels[["encounter_id", "label"]], on="encounter_id", how="inner")
        if len(joined):
            out[str(task)] = joined.reset_index(drop=True)
    return model_version, out


def evaluate_window(store, start: datetime, end: datetime, contract: TaskContract, settings: DriftLoopSettings,
                    by: str = "note_date", model_version: str | None = None, groups: pd.DataFrame | None = None,
                    out_dir: Path | None = None, history=None) -> WindowPerformance:
    """Evaluate every task with at least `min_labels_per_task` labeled notes in the window.

    `groups`: subgroup attributes by encounter_id (columns among training.evaluate.SUBGROUP_COLUMNS,
    e.g. from `groups_from_dataset`), for AUROC by subgroup.
    """
    version, frames = labeled_predictions(store, start, end, by, model_version)
    evaluations: dict[str, TaskEvaluation] = {}
    labeled = {task: len(frame) for task, frame in frames.items()}
    window = f"{start:%Y-%m-%d}..{end:%Y-%m-%d}"
    for task, frame in frames.items():
        if task not in contract.names or len(frame) < settings.min_labels_per_task:
            continue
        spec = contract.task(task)
        probs = frame[[f"p_{task}_{k}" for k in range(spec.n_classes)]].to_numpy()
        attributes = None
        if groups is not None:
            attributes = frame[["encounter_id"]].merge(groups, on="encounter_id", how="left")
        evaluations[task] = evaluate_task(spec, window, frame["label"].to_numpy(), probs, attributes,
                                          n_resamples=settings.performance_resamples)
    result = WindowPerformance(start, end, by, version, evaluations, labeled)
    if out_dir is not None:
        result.report_dir = write_performance_report(result, Path(out_dir))
    if history is not None:
        computed = datetime.now(UTC)
        for task, ev in evaluations.items():
            history.record_performance(computed_at=computed, window_start=start, window_end=end, model_version=version,
                                       task=task, n=ev.n, auroc=ev.auroc.estimate, auroc_low=ev.auroc.low,
                                       auroc_high=ev.auroc.high, ece=ev.ece,
                                       report_dir=str(result.report_dir) if result.report_dir else None)
    return result


def monthly_auroc(store, contract: TaskContract, now: datetime, months: int = 12) -> list[dict]:
    """Per binary task and calendar month of scoring: n labeled encounters, prevalence, AUROC (None
    with one class) and the model version, with the same selection as every performance window
    (`labeled_predictions`: one model version per window, each encounter once)."""
    from sklearn.metrics import roc_auc_score

    first = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - pd.DateOffset(months=months - 1))
    out = []
    for start in pd.date_range(first, now, freq="MS", tz=now.tzinfo):
        start = start.to_pydatetime()
        end = min((pd.Timestamp(start) + pd.DateOffset(months=1)).to_pydatetime(), now + timedelta(seconds=1))
        version, frames = labeled_predictions(store, start, end, by="scored_at")
        for task, frame in frames.items():
            if task not in contract.names or not contract.task(task).binary:
                continue
            spec = contract.task(task)
            y = (frame["label"].to_numpy() == spec.positive_option).astype(int)  # labels are class indices
            p = frame[f"p_{task}_{spec.positive_option}"].to_numpy()
            auroc = float(roc_auc_score(y, p)) if len(set(y)) == 2 else None
            out.append({"task": task, "month": f"{start:%Y-%m}", "n": len(frame), "prevalence": round(float(y.mean()), 4),
                        "auroc": None if auroc is None else round(auroc, 4), "model_version": version})
    return sorted(out, key=lambda r: (r["task"], r["month"]))


def write_performance_report(result: WindowPerformance, out_dir: Path) -> Path:
    """performance.md and performance.json in `<out_dir>/performance-<window>/`, the model card's layout."""
    directory = out_dir / f"performance-{result.start:%Y%m%d}-{result.end:%Y%m%d}-{result.model_version}"
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"model": f"{result.model_version} (this model)", "split": result.label, "task": task, "n": ev.n,
             "auroc": ev.auroc.to_dict(), "ece": ev.ece} for task, ev in result.evaluations.items()]
    about = {"model version": result.model_version, "window": result.label, "window by": result.by,
             "labeled notes per task": result.labeled,
             "tasks not evaluated (too few labels)": sorted(set(result.labeled) - set(result.evaluations))}
    markdown, data = model_card(f"Performance {result.label}: {result.model_version}", about, rows)
    subgroup_lines = []
    for task, ev in result.evaluations.items():
        for attribute, values in ev.subgroups.items():
            cells = [f"{v} (n={d['n']}): " + (f"{d['auroc']['estimate']:.3f}" if d["auroc"] else "n/a")
                     for v, d in values.items()]
            subgroup_lines.append(f"| {task} | {attribute} | {'; '.join(cells)} |")
    if subgroup_lines:
        markdown = markdown.replace("## Intended use", "## AUROC by subgroup\n\n| task | attribute | AUROC by value |\n"
                                    "|---|---|---|\n" + "\n".join(subgroup_lines) + "\n\n## Intended use", 1)
    data["evaluations"] = {task: ev.to_dict() for task, ev in result.evaluations.items()}
    (directory / "performance.md").write_text(markdown)
    (directory / "performance.json").write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    return directory


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def rolling_windows(start: datetime, end: datetime, window_days: int) -> list[tuple[datetime, datetime]]:
    """Consecutive windows of `window_days` from `start`; the last one ends at `end`."""
    out, cursor = [], start
    while cursor < end:
        out.append((cursor, min(end, cursor + timedelta(days=window_days))))
        cursor += timedelta(days=window_days)
    return out


def performance_alerts(result: WindowPerformance, settings: DriftLoopSettings) -> list[str]:
    """Reasons to retrain: a task's AUROC below, or its ECE above, the configured limits."""
    reasons = []
    for task, ev in result.evaluations.items():
        if ev.auroc.estimate == ev.auroc.estimate and ev.auroc.estimate < settings.auroc_alert_below:
            reasons.append(f"{task}: AUROC {ev.auroc.estimate:.3f} below {settings.auroc_alert_below}")
        if ev.ece == ev.ece and ev.ece > settings.ece_alert_above:
            reasons.append(f"{task}: ECE {ev.ece:.3f} above {settings.ece_alert_above}")
    return reasons


def groups_from_dataset(dataset_dir: Path) -> pd.DataFrame:
    """Subgroup attributes by encounter from a dataset built from the same export."""
    notes = pd.read_parquet(Path(dataset_dir) / "notes.parquet")
    columns = [c for c in SUBGROUP_COLUMNS if c in notes.columns]
    return notes[["encounter_id", *columns]].drop_duplicates("encounter_id")
