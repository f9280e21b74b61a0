"""Settings of Bulk Data export, overnight batch scoring and the outcomes feed
(a section of lang1ops.settings.Settings: `integration.bulk` or a top-level `bulk`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

NOTE_TYPES = ["DocumentReference"]
OUTCOME_TYPES = ["Patient", "Encounter", "Condition", "Claim", "ExplanationOfBenefit"]


class BulkExportSettings(BaseModel):
    """How the Bulk Data client talks to the hospital's FHIR server."""

    base_url: str | None = Field(
        None, description="FHIR base URL of the hospital's server (the $export endpoints hang off it)."
    )
    output_format: str = Field("application/fhir+ndjson", description="_outputFormat asked for at kick-off.")
    poll_min_s: float = Field(
        1.0, ge=0, description="Wait between status polls when the server sends no Retry-After (doubles up to the cap)."
    )
    poll_max_s: float = Field(
        120.0, gt=0, description="Cap on one wait between polls, whatever Retry-After asks for."
    )
    timeout_s: float = Field(
        6 * 3600.0, gt=0, description="Give up (and cancel the export with DELETE) after this long in total."
    )
    request_timeout_s: float = Field(60.0, gt=0, description="Timeout of one HTTP request (connect/read).")
    delete_when_done: bool = Field(
        True, description="DELETE the status URL once the files are downloaded, so the server can free them."
    )


class BatchScoreSettings(BaseModel):
    """`lang1ops batch score`: an export of notes scored overnight."""

    note_types: list[str] = Field(
        default_factory=lambda: list(NOTE_TYPES), description="Resource types asked for in the export (_type)."
    )
    ray_threshold_notes: int = Field(
        2000, ge=0, description="With --workers unset, exports with more notes than this are scored over Ray."
    )
    worker_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves for each scoring worker (actor).")
    in_flight_per_worker: int = Field(
        2, ge=1, description="Notes sent ahead to each worker, so a worker never waits for the next note."
    )
    max_failure_examples: int = Field(
        1000, ge=0, description="Failed notes listed one by one in OperationOutcome.ndjson; all are counted."
    )


class OutcomesFeedSettings(BaseModel):
    """`lang1ops batch outcomes`: true outcomes recorded in the store as they arrive."""

    resource_types: list[str] = Field(
        default_factory=lambda: list(OUTCOME_TYPES),
        description="Resource types the label rules read (training.labels).",
    )
    readmission_maturity_days: int = Field(
        30, ge=0, description="A readmission label is recorded only this many days after discharge "
                              "(positives too, so early positives do not bias rolling AUROC).",
    )
    only_scored_encounters: bool = Field(
        True, description="Record outcomes only for encounters with a scored note in the store."
    )
    source: str = Field("fhir-export", description="Source name stored with each outcome (no spaces).")


class BulkSettings(BaseModel):
    """Bulk Data export, batch scoring and the outcomes feed."""

    export: BulkExportSettings = Field(default_factory=BulkExportSettings)
    batch: BatchScoreSettings = Field(default_factory=BatchScoreSettings)
    outcomes: OutcomesFeedSettings = Field(default_factory=OutcomesFeedSettings)
    work_dir: Path = Field(Path("var/bulk"), description="Where downloaded exports and batch outputs go by default.")
