"""The retraining loop: from a drift or performance alert to a promoted (or refused) candidate.

One pass (`RetrainingLoop.run_once`), each step recorded in the history tables (and the
promotion or refusal in the registry's audit log with the gate's table):

1. trigger: the newest drift check detected drift, the newest performance window is below
   the AUROC or above the ECE limit, or an Alertmanager alert labelled `trigger_labels` (action: retrain) fired
   (monitoring.alerts' AlertLog, when that module is installed) since the last trigger;
2. cooldown: nothing is trained within `cooldown_hours` of the last training;
3. pull the fresh labeled window. Labels need note text, which the service never stores, so
   the window comes from the hospital's FHIR Bulk export (`BulkExportSource`: labeled by
   training.labels like any dataset, the newest `evaluation_days` held out) or from a dataset
   directory the hospital built (`DatasetSource`); it must hold `min_labeled_notes`;
4. train a candidate on it (heads on the frozen base by default, mc-sft LoRA when the device
   is a GPU), register it and make it the challenger;
5. evaluate it against the champion on the held-out newest window (`promotion_gate`: paired
   bootstrap per task, mean AUROC);
6. promote it with a compare-and-swap on the champion (serving's `watch_registry` hot-reloads
   it) and build its drift reference, or refuse it and say why.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

from lang1ops.settings.drift_loop import DriftLoopSettings
from monitoring.history import MonitoringHistory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trigger:
    kind: str  # drift | performance | alert | manual
    reason: str
    at: datetime | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "reason": self.reason, "at": self.at.isoformat() if self.at else None}


# --------------------------------------------------------------------------- where fresh labels come from

class LabeledWindowSource(Protocol):
    def pull(self, workdir: Path):
        """(training.dataset.Dataset, name of the held-out evaluation split)."""


@dataclass
class DatasetSource:
    """A dataset directory built by the hospital (`lang1ops data build`): train/val split the
    candidate learns from, `evaluation_split` (a later temporal window) the gate compares on."""

    path: Path
    evaluation_split: str

    def pull(self, workdir: Path):
        from training.dataset import Dataset

        return Dataset.load(self.path), self.evaluation_split


@dataclass
class BulkExportSource:
    """A FHIR Bulk export: the last `fresh_window_days` of discharges up to the export's data
    end, labeled; the newest `evaluation_days` become the held-out split "newest"."""

    fhir: Path
    settings: DriftLoopSettings

    def pull(self, workdir: Path):
        from training.dataset import Dataset, DatasetSpec, Window, build_dataset
        from training.labels import HospitalRecords

        records = HospitalRecords.load(self.fhir)
        if records.data_end is None:
            raise ValueError(f"{self.fhir}: no dated resources; nothing to label")
        end: date = records.data_end.date()
        split_day = end - timedelta(days=self.settings.evaluation_days)
        first = end - timedelta(days=self.settings.fresh_window_days)
        spec = DatasetSpec(Window("train", first, split_day), [Window("newest", split_day + timedelta(days=1), end)])
        out = Path(workdir) / "dataset"
        build_dataset(self.fhir, out, spec, records=records)
        return Dataset.load(out), "newest"


# --------------------------------------------------------------------------- training a candidate

Trainer = Callable[..., Path]  # (dataset, out_dir, lineage) -> artifact directory


def default_trainer(settings: DriftLoopSettings, base_dir: Path, max_note_tokens: int, name: str,
                    cache=None) -> Trainer:
    from lang1ops.progress import progress_bar

    kind = settings.trainer if settings.trainer != "auto" else ("mc-sft" if settings.device.startswith("cuda") else "heads")

    def heads(dataset, out_dir: Path, lineage: dict) -> Path:
        from training.heads import HeadsConfig, train_heads

        config = HeadsConfig(layers=tuple(settings.heads_layers), max_note_tokens=max_note_tokens, ngrams=settings.heads_ngrams,
                             measurements=settings.heads_measurements,
                             max_notes={"train": settings.max_train_notes, "val": max(50, settings.max_train_notes // 4)})
        with progress_bar() as progress:  # encoding thousands of uncached notes takes minutes
            bar = progress.add_task("heads candidate: encoding notes", total=None)
            return train_heads(dataset, base_dir, out_dir, config, name=name, cache=cache, lineage=lineage,
                               on_batch=lambda n: progress.advance(bar, n), on_total=lambda n: progress.update(bar, total=n))

    def mc_sft(dataset, out_dir: Path, lineage: dict) -> Path:
        from training.mc_sft import SftConfig, train_mc

        config = SftConfig(method="lora", lr=2e-4, max_note_tokens=max_note_tokens, device=settings.device,
                           max_examples={"train": settings.max_train_notes, "val": max(50, settings.max_train_notes // 4)})
        with progress_bar() as progress:
            bar = progress.add_task("mc-sft candidate: training steps", total=config.max_steps)
            path, _ = train_mc(dataset, base_dir, out_dir, config, name=name, lineage=lineage,
                               on_step=lambda step, loss: progress.update(bar, completed=step))
        return path

    trainer = heads if kind == "heads" else mc_sft
    trainer.kind = kind  # type: ignore[attr-defined]
    return trainer


# --------------------------------------------------------------------------- the loop

@dataclass
class CycleResult:
    cycle: str
    triggers: list[Trigger] = field(default_factory=list)
    outcome: str = "idle"  # idle | cooldown | too-few-labels | promoted | refused | error
    champion: str | None = None
    candidate: str | None = None
    decision: dict | None = None
    table: str | None = None


class RetrainingLoop:
    def __init__(self, settings: DriftLoopSettings, store, registry, model_name: str, source: LabeledWindowSource,
                 trainer: Trainer, base_fallback: Path | None = None, cache=None, history: MonitoringHistory | None = None):
        self.settings, self.store, self.registry, self.name = settings, store, registry, model_name
        self.source, self.trainer, self.base_fallback, self.cache = source, trainer, base_fallback, cache
        self.history = history or MonitoringHistory(store)

    # -- 1. triggers
    def triggers(self, now: datetime, manual: str | None = None) -> list[Trigger]:
        since = self.history.last_event_time("trigger")
        found: list[Trigger] = [Trigger("manual", manual, now)] if manual else []
        drift = self.history.latest_drift()
        if drift and drift["detected"] and (since is None or drift["checked_at"] > since):
            checks = [k for k, v in (drift["checks"] or {}).items() if v.get("detected")]
            found.append(Trigger("drift", f"drift run {drift['id']} detected drift ({', '.join(checks)}) in "
                                          f"{drift['n_current']} notes of {drift['model_version']}", drift["checked_at"]))
        for task, perf in self.history.latest_performance().items():
            if since is not None and perf.computed_at <= since:
                continue
            if perf.auroc is not None and perf.auroc < self.settings.auroc_alert_below:
                found.append(Trigger("performance", f"{task}: AUROC {perf.auroc:.3f} < {self.settings.auroc_alert_below} "
                                                    f"(n={perf.n}, {perf.model_version})", perf.computed_at))
            elif perf.ece is not None and perf.ece > self.settings.ece_alert_above:
                found.append(Trigger("performance", f"{task}: ECE {perf.ece:.3f} > {self.settings.ece_alert_above} "
                                                    f"(n={perf.n}, {perf.model_version})", perf.computed_at))
        found += self._alert_triggers(since or datetime.min.replace(tzinfo=UTC))
        return found

    def _alert_triggers(self, since: datetime) -> list[Trigger]:
        try:
            from monitoring.alerts import AlertLog  # written by the alerting area; optional
        except ImportError:
            return []
        try:
            firing = AlertLog(self.store).firing(since)
        except Exception as exc:  # alerting down must not stop drift-triggered retraining
            log.warning("alert log not readable: %s", type(exc).__name__)
            return []
        wanted = self.settings.trigger_labels.items()
        return [Trigger("alert", f"alert {a.name} ({a.severity or 'no severity'}"
                                 f"{', task ' + a.task if getattr(a, 'task', None) else ''}) firing since "
                                 f"{a.starts_at.isoformat() if a.starts_at else '?'}", a.received_at)
                for a in firing if wanted and all(a.labels.get(k) == v for k, v in wanted)]

    # -- one pass
    def run_once(self, now: datetime | None = None, manual: str | None = None) -> CycleResult:
        now = now or datetime.now(UTC)
        result = CycleResult(cycle=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}")
        result.triggers = self.triggers(now, manual)
        champion = self._champion()
        result.champion = champion.version if champion else None
        if not result.triggers:
            return result

        def event(step: str, outcome: str, **detail) -> None:
            self.history.record_event(result.cycle, step, outcome, champion=result.champion, candidate=result.candidate,
                                      detail=detail)

        event("trigger", "triggered", triggers=[t.to_dict() for t in result.triggers])
        last_training = self.history.last_event_time("train", "ok")
        cooldown = timedelta(hours=self.settings.cooldown_hours)
        if last_training is not None and now - last_training < cooldown and not manual:
            result.outcome = "cooldown"
            event("skip", "cooldown", last_training=last_training.isoformat(), cooldown_hours=self.settings.cooldown_hours)
            return result
        try:
            return self._retrain(result, champion, event)
        except Exception as exc:
            result.outcome = "error"
            # the type only: a message from deep inside training could quote data
            event("error", "error", error=type(exc).__name__)
            raise

    def _champion(self):
        try:
            return self.registry.get(self.name, "champion")
        except KeyError:
            return None

    def _retrain(self, result: CycleResult, champion, event) -> CycleResult:
        from lang1ops.promotion import promotion_gate

        run_dir = Path(self.settings.runs_dir) / "retraining" / result.cycle
        run_dir.mkdir(parents=True, exist_ok=True)
        # -- 3. the fresh labeled window
        dataset, evaluation_split = self.source.pull(run_dir)
        labels = dataset.labels
        train_notes = int(labels.loc[labels["split"].isin(["train", "val"]), "note_id"].nunique())
        eval_notes = int(labels.loc[labels["split"] == evaluation_split, "note_id"].nunique())
        counts = {"train_and_val_notes": train_notes, "evaluation_notes": eval_notes,
                  "windows": dataset.info.get("windows"), "evaluation_split": evaluation_split}
        if train_notes < self.settings.min_labeled_notes or eval_notes == 0:
            result.outcome = "too-few-labels"
            event("skip", "too-few-labels", min_labeled_notes=self.settings.min_labeled_notes, **counts)
            return result
        event("pull", "ok", dataset=str(dataset.path), **counts)
        # -- 4. train, register, challenger
        lineage = {"parent": result.champion, "trigger": [t.kind for t in result.triggers], "cycle": result.cycle,
                   "dataset_windows": dataset.info.get("windows")}
        out = run_dir / "candidate"
        shutil.rmtree(out, ignore_errors=True)
        artifact = self.trainer(dataset, out, lineage)
        version = self.registry.register(artifact, actor=self.settings.actor,
                                         reason=f"retraining cycle {result.cycle}: {result.triggers[0].reason}"[:300])
        result.candidate = version.version
        if champion is not None:
            self.registry.set_alias(self.name, "challenger", version.version, self.settings.actor,
                                    f"candidate of retraining cycle {result.cycle}")
        manifest = version.manifest
        event("train", "ok", kind=manifest.get("kind"), method=manifest.get("method"),
              examples=manifest.get("data", {}).get("examples"), wall_time_s=manifest.get("wall_time_s"),
              pooling=manifest.get("pooling"), trainer=getattr(self.trainer, "kind", "custom"))
        if champion is None:  # the first model: nothing to compare with (the gate's rule)
            self.registry.promote(self.name, version.version, self.settings.actor,
                                  f"first model, retraining cycle {result.cycle}", expected_champion="")
            result.outcome = "promoted"
            event("promote", "promoted", reason="no champion yet")
            self._reference(version, dataset, event)
            return result
        # -- 5. compare on the newest labeled window
        y, champion_probs, candidate_probs = self.compare(champion.path, version.path, dataset, evaluation_split)
        decision = promotion_gate(y, champion_probs, candidate_probs, n_resamples=self.settings.gate_resamples)
        result.decision, result.table = decision.to_dict(), decision.table()
        event("evaluate", "accept" if decision.accept else "refuse", split=evaluation_split, gate=decision.to_dict(),
              table=decision.table())
        details = {"cycle": result.cycle, "triggers": [t.to_dict() for t in result.triggers], "gate": decision.to_dict(),
                   "table": decision.table(), "evaluation_split": evaluation_split}
        # -- 6. promote (compare-and-swap) or refuse
        if decision.accept:
            self.registry.promote(self.name, version.version, self.settings.actor,
                                  f"retraining cycle {result.cycle}: passed the promotion gate", details=details,
                                  expected_champion=champion.version)
            result.outcome = "promoted"
            event("promote", "promoted", previous=champion.version, reasons=decision.reasons)
            self._reference(version, dataset, event)
        else:
            self.registry.refuse(self.name, version.version, self.settings.actor,
                                 f"retraining cycle {result.cycle}: refused by the promotion gate: "
                                 + "; ".join(decision.reasons)[:400], details=details)
            result.outcome = "refused"
            event("refuse", "refused", reasons=decision.reasons)
        return result

    def compare(self, champion_dir: Path, candidate_dir: Path, dataset, split: str):
        """Labels and both models' probabilities for every task both answer, on `split`'s notes."""
        return compare_on_split(champion_dir, candidate_dir, dataset, split, self.base_fallback, self.cache)

    def _reference(self, version, dataset, event) -> None:
        """The new champion's drift reference: its own training notes."""
        from monitoring.drift import build_reference

        path = Path(self.settings.runs_dir) / "references" / self.name / version.version
        if (path / "reference.json").exists():
            return
        reference = build_reference(version.path, dataset, path, self.settings, version.version, self.base_fallback,
                                    self.cache)
        event("reference", "ok", path=str(path), notes=reference.info["n"])


def compare_on_split(champion_dir: Path, candidate_dir: Path, dataset, split: str, base_fallback: Path | None = None,
                     cache=None):
    """Labels and both models' probabilities (as the service computes them) for every task both
    answer, on `split`'s notes: what `lang1ops.promotion.promotion_gate` judges."""
    from lang1ops.artifact import load_artifact_contract
    from monitoring.drift import score_texts

    notes = dataset.notes[dataset.notes["split"] == split].reset_index(drop=True)
    texts, shas = notes["text"].tolist(), notes["text_sha256"].tolist()
    row = {n: i for i, n in enumerate(notes["note_id"])}
    scored = {which: score_texts(path, texts, shas, base_fallback, cache)
              for which, path in (("champion", champion_dir), ("candidate", candidate_dir))}
    tasks = [t for t in load_artifact_contract(candidate_dir).names
             if t in load_artifact_contract(champion_dir).names]
    y, a, b = {}, {}, {}
    for task in tasks:
        frame = dataset.task_frame(task, split)
        if frame.empty:
            continue
        rows = np.array([row[n] for n in frame["note_id"]])
        y[task] = frame["label"].to_numpy()
        a[task] = scored["champion"].probabilities[task][rows]
        b[task] = scored["candidate"].probabilities[task][rows]
    return y, a, b
