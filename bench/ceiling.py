"""How high can any model score on the synthetic hospital? The generator's own probabilities.

The synthetic hospital draws every outcome from a latent formula (lang1ops/synthetic/hospital.py,
`draw_outcomes`): a logit for death, readmission and denial, a log-normal for LOS, each with a
hidden severity and noise that no note shows. Rerunning the simulation of the dataset's spec with
`HospitalSimulation(on_outcome=...)` recovers those latents per stay without writing anything,
and scoring the dataset's own labels with them gives two ceilings on the same notes:

- **all latents** (`*_full`): the probability the outcome was drawn from, the hidden severity and
  the stay's noise included; only the final coin flip is left. No predictor can expect more.
- **without the hidden severity** (`*_seen`): every input of the formula except the hidden
  severity and the noise (acuity, frailty, social risk, conditions, age, payer exactly): the most
  a reader of the whole record could know, and still more than one note shows.

Beside them, TF-IDF + logistic regression fit on the whole training split (C on validation: the
baseline at its best) on the same notes, with AUROC [95% CI] and events per class. CCI has no
ceiling here: it is a function of the stay's coded conditions, not of a drawn probability.

Before scoring, every drawn outcome is checked against the dataset's label (death, LOS bin,
denial), so the latents are those of the same hospital, not of a look-alike.
Writes docs/benchmarks.md section "ceiling" (or `section`) and prints it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from scipy.special import expit
from scipy.stats import norm

from bench.report import machine, write_section
from lang1ops.metrics import bootstrap_auroc
from lang1ops.synthetic.generate import HospitalSimulation, HospitalSpec
from lang1ops.synthetic.hospital import (
    LOS_LOG_OFFSET,
    LOS_SEEN_SIGMA,
    LOS_SIGMA,
    OutcomeDraw,
    OutcomeLatents,
    Stay,
)
from lang1ops.tasks import TaskSpec
from training.baselines import TfidfBaseline
from training.dataset import Dataset

COMMAND = "python -m bench ceiling"
CEILING_TASKS = ("readmission", "mortality", "los", "denial")  # CCI: a function of the coded conditions


@dataclass(frozen=True)
class DrawnStay:
    died: bool
    los_days: int
    denied: bool
    latents: OutcomeLatents


def drawn_outcomes(spec: HospitalSpec) -> dict[str, DrawnStay]:
    """Encounter id -> the outcome draw of that stay, from a rerun of the simulation (nothing written)."""
    drawn: dict[str, DrawnStay] = {}

    def keep(stay: Stay, outcome: OutcomeDraw) -> None:
        drawn[stay.id] = DrawnStay(outcome.died, outcome.los_days, outcome.denied, outcome.latents)

    HospitalSimulation(spec, emit=lambda _resource: None, on_outcome=keep).run()
    return drawn


def los_bin_probs(task: TaskSpec, mean: np.ndarray, sd: float) -> np.ndarray:
    """P(LOS bin) when log-LOS ~ N(mean, sd): the generator keeps int(exp(log_los - LOS_LOG_OFFSET)) days,
    so `days >= k` exactly when `log_los >= ln k + LOS_LOG_OFFSET`."""

    def at_least(days: float) -> np.ndarray:
        return np.ones_like(mean) if days <= 0 else norm.sf((math.log(days) + LOS_LOG_OFFSET - mean) / sd)

    columns = [at_least(o.low) - (at_least(o.high + 1) if o.high is not None else 0.0) for o in task.options]
    return np.column_stack(columns)


def ceiling_probs(task: TaskSpec, stays: list[DrawnStay], which: str) -> np.ndarray:
    """(n, k) class probabilities from the latents `which` ("full" or "seen")."""
    if task.name == "los":
        mean = np.array([getattr(s.latents, f"log_los_{which}") for s in stays])
        return los_bin_probs(task, mean, LOS_SIGMA if which == "full" else LOS_SEEN_SIGMA)
    # For "seen", the probability integrates the hidden severity out; that is a monotone function
    # of the seen logit, so ranking by sigmoid(seen logit) gives the same AUROC.
    positive = expit(np.array([getattr(s.latents, f"{task.name}_{which}") for s in stays]))
    return np.column_stack([1 - positive, positive])


def check_same_hospital(task: TaskSpec, labels: np.ndarray, stays: list[DrawnStay]) -> float:
    """Share of notes whose drawn outcome gives the dataset's label (readmission is realised later
    by a whole encounter, so it is not checked)."""
    if task.name == "mortality":
        drawn = np.array([s.died for s in stays], dtype=int)
    elif task.name == "denial":
        drawn = np.array([s.denied for s in stays], dtype=int)
    elif task.name == "los":
        drawn = np.array([task.bin_index(s.los_days) for s in stays])
    else:
        return math.nan
    return float((drawn == labels).mean())


def _cell(interval) -> str:
    if math.isnan(interval.estimate):
        return "n/a (one class)"
    return f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def run(fhir_dir: Path = Path("var/demo/fhir"), dataset_dir: Path = Path("var/demo/dataset"), split: str | None = None,
        n_resamples: int = 1000, seed: int = 0, doc: Path | None = None, section: str = "ceiling",
        tfidf: bool = True) -> str:
    if not (Path(fhir_dir) / "generation.json").exists():
        raise SystemExit(f"{fhir_dir} holds no generated hospital (generation.json): run `make demo` first, "
                         "or pass the export and dataset of another generated hospital")
    generation = json.loads((Path(fhir_dir) / "generation.json").read_text())["spec"]
    spec = HospitalSpec(name=generation["name"], start=date.fromisoformat(generation["start"]),
                        end=date.fromisoformat(generation["end"]), patients=generation["patients"], seed=generation["seed"],
                        shift_from=date.fromisoformat(generation["shift_from"]) if generation["shift_from"] else None)
    dataset = Dataset.load(Path(dataset_dir))
    split = split or [s for s in dataset.splits if s.startswith("temporal")][-1]
    started = time.perf_counter()
    drawn = drawn_outcomes(spec)
    simulate_s = time.perf_counter() - started

    rows, agreement = [], []
    for task in dataset.contract.tasks:
        frame = dataset.task_frame(task.name, split)
        labels = frame["label"].to_numpy(dtype=int)
        counts = "/".join(str(int((labels == c).sum())) for c in range(len(task.options)))
        cells = {"task": task.name, "notes": len(frame), "events": counts if len(task.options) > 2 else str(int(labels.sum()))}
        if tfidf:
            train, val = dataset.task_frame(task.name, "train"), dataset.task_frame(task.name, "val")
            model = TfidfBaseline.fit(train["text"].tolist(), train["label"].to_numpy(dtype=int), len(task.options), seed=seed,
                                      val_texts=val["text"].tolist(), val_labels=val["label"].to_numpy(dtype=int))
            cells["tfidf"] = _cell(bootstrap_auroc(labels, model.predict_proba(frame["text"].tolist()),
                                                   n_resamples=n_resamples, seed=seed))
        if task.name in CEILING_TASKS:
            missing = set(frame["encounter_id"]) - drawn.keys()
            if missing:
                raise RuntimeError(f"{len(missing)} {task.name} encounters of the dataset were never drawn: "
                                   f"{fhir_dir} is not the hospital {dataset_dir} was built from")
            stays = [drawn[e] for e in frame["encounter_id"]]
            same = check_same_hospital(task, labels, stays)
            if not math.isnan(same):
                agreement.append(f"{task.name} {same:.1%}")
                if same < 0.95:
                    raise RuntimeError(f"only {same:.1%} of {task.name} labels match the rerun's draws: another hospital")
            for which in ("seen", "full"):
                cells[which] = _cell(bootstrap_auroc(labels, ceiling_probs(task, stays, which), n_resamples=n_resamples,
                                                     seed=seed))
        rows.append(cells)

    header = "| task | notes | events | TF-IDF, full train split | ceiling without the hidden severity | ceiling, all latents |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['notes']:,} | {r['events']} | {r.get('tfidf', 'not run')} | "
                     f"{r.get('seen', 'n/a (coded conditions)')} | {r.get('full', 'n/a (coded conditions)')} |")
    body = f"""## Ceilings: the generator's own probabilities on {spec.name}'s {split}

Command: `{COMMAND}` (hospital {spec.name}, {spec.patients:,} patients, seed {spec.seed}, shift from {spec.shift_from};
dataset `{dataset_dir}`, every labeled note of `{split}`). Machine: {machine()}.
The simulation was rerun without writing anything ({simulate_s:.0f} s) and each stay's outcome draw kept;
drawn outcomes match the dataset's labels for {', '.join(agreement)} of the notes (the rest are decided
after the draw: a denial overturned on appeal is not a denial in the paper's label).
AUROC [95% CI, {n_resamples:,} resamples] of the dataset's labels; one-vs-rest macro for LOS.

{chr(10).join(lines)}

"All latents" scores each stay by the probability its outcome was drawn from (hidden severity and
noise included): no predictor can expect more on these labels. "Without the hidden severity" keeps
every other input of the formula, exactly (acuity, frailty, social risk, conditions, age, payer,
prior stays): the most a reader of the whole record could know; a note shows these only through
noisy vitals, labs and phrases, so a note-based model's own ceiling is lower still. CCI is a function
of the stay's coded conditions (no probability is drawn), so it has no ceiling here.
"""
    write_section(section, body, doc)
    return body
