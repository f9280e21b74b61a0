"""Settings of the drift checks, performance windows and the retraining loop.

A section for `lang1ops.settings.Settings` (pydantic and stdlib only, so the settings module
imports nothing heavy). Every field is read by monitoring/drift.py, performance.py or
retraining.py, which take this object as a parameter.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator


class DriftLoopSettings(BaseModel):
    """Drift checks, performance once outcomes arrive, and the retraining loop."""

    runs_dir: Path = Field(Path("var/monitoring"), description="Run outputs: drift references, Evidently reports, "
                                                               "performance reports, retraining candidates.")
    # --- drift
    drift_window_days: int = Field(7, ge=1, description="Current window of a scheduled drift check (days back from now).")
    drift_window_by: str = Field("scored_at", pattern="^(scored_at|note_date)$",
                                 description="Time axis of windows: when a note was scored, or the note's own date.")
    reference_max_notes: int = Field(2000, ge=50, description="Training-window notes sampled for a drift reference.")
    reference_splits: list[str] = Field(["val"], description="Dataset splits the reference is drawn from: held out "
                                        "from fitting (predictions on training notes are overconfident).")
    vocabulary_min_notes: int = Field(5, ge=2, description="A word enters the reference vocabulary (as a hash) only "
                                                           "when it occurs in at least this many notes: rare words "
                                                           "(names) stay out.")
    large_window: int = Field(1000, ge=10, description="Windows at least this large (both sides) use distances "
                                                       "(Wasserstein, Jensen-Shannon); smaller ones use tests (KS, chi-square).")
    distance_threshold: float = Field(0.1, gt=0, description="A column drifts when its distance reaches this.")
    p_value_threshold: float = Field(0.05, gt=0, lt=1, description="A column drifts when its test p-value is below this.")
    drift_share: float = Field(0.5, gt=0, le=1, description="A check (descriptors, predictions) detects drift when "
                                                            "at least this share of its columns drifted.")
    embedding_components: int = Field(20, ge=2, description="Principal components of the pooled encodings that the "
                                                            "domain classifier reads.")
    embedding_max_notes: int = Field(5000, ge=50, description="Notes per side sampled for the domain classifier.")
    embedding_auroc_threshold: float = Field(0.55, gt=0.5, lt=1, description="Domain-classifier AUROC at or above "
                                             "which the encodings drifted (also never below 3 null SDs above 0.5).")
    # --- performance
    performance_window_days: int = Field(30, ge=1, description="Width of a performance window.")
    performance_resamples: int = Field(1000, ge=10, description="Bootstrap resamples for AUROC intervals.")
    min_labels_per_task: int = Field(30, ge=2, description="A task's AUROC is reported from this many labeled notes.")
    auroc_alert_below: float = Field(0.65, gt=0, lt=1, description="A task whose window AUROC is below this triggers retraining.")
    ece_alert_above: float = Field(0.15, gt=0, lt=1, description="A task whose window ECE is above this triggers retraining.")
    # --- retraining loop
    cooldown_hours: float = Field(24.0, ge=0, description="No new training within this many hours of the last one.")
    min_labeled_notes: int = Field(200, ge=10, description="A fresh window needs this many labeled notes to train on.")
    fresh_window_days: int = Field(1461, ge=7, description="Days of discharges (ending at the export's data end) pulled "
                                   "as the fresh labeled window. Four years: the newest months alone are too few notes "
                                   "to beat a model trained on years (docs/monitoring.md).")
    evaluation_days: int = Field(90, ge=7, description="The newest days of the fresh window, held out to compare the "
                                                       "candidate with the champion (the rest trains the candidate).")
    bulk_source: Path | None = Field(None, description="FHIR Bulk export (directory) the fresh window is labeled from.")
    trainer: str = Field("auto", pattern="^(auto|heads|mc-sft)$",
                         description="auto: mc-sft (LoRA) when device is cuda, heads otherwise.")
    device: str = Field("cpu", description="cpu or cuda: where candidates are trained.")
    heads_layers: list[int] = Field([1, 2, 4], description="heads: candidate layers, chosen on validation.")
    heads_ngrams: bool = Field(True, description="heads: also read the note's word 1-2-grams: the best fast path on "
                               "both generated hospitals, and after a vocabulary shift the part a stale champion lacks "
                               "(docs/training.md, docs/monitoring.md).")
    heads_measurements: bool = Field(False, description="heads with n-grams: also read the note's measured values "
                                     "(vitals, labs, age) in bins, kept per task where validation gains 0.01 AUROC "
                                     "(docs/training.md, \"measurements\"); off until the temporal-shift scenario "
                                     "(docs/monitoring.md) has been rerun with it.")
    max_train_notes: int = Field(10000, ge=10, description="Cap on training notes of a candidate (validation: a quarter "
                                 "of it). Heads starved of notes lose to a bag of words (docs/training.md); encodings "
                                 "are cached, so only new notes cost time.")
    gate_resamples: int = Field(1000, ge=10, description="Paired bootstrap resamples of the promotion gate.")
    trigger_labels: dict[str, str] = Field({"action": "retrain"},
                                           description="A firing Alertmanager alert carrying all these labels triggers "
                                                       "retraining (monitoring/rules: `action: retrain`); no other does.")
    loop_interval_s: float = Field(3600.0, gt=0, description="`monitor loop`: seconds between passes.")
    actor: str = Field("retraining-loop", description="Actor name in the registry's audit log.")

    @model_validator(mode="after")
    def _measurements_sit_beside_the_ngrams(self) -> DriftLoopSettings:
        # the measurement bins are columns of the n-gram block: without it they would be dropped silently
        if self.heads_measurements and not self.heads_ngrams:
            raise ValueError("drift_loop.heads_measurements needs drift_loop.heads_ngrams: the measured values are "
                             "read beside the note's n-grams")
        return self
