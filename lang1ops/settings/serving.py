"""Settings of the scoring service (a section of lang1ops.settings.Settings)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from lang1ops.settings.auth import AuthSettings


class RiskBands(BaseModel):
    """Probability cut points of a binary task: below `low` is negligible, then low,
    moderate, high. Set per task from the hospital's prevalence and workload."""

    low: float = Field(0.05, ge=0, le=1)
    moderate: float = Field(0.15, ge=0, le=1)
    high: float = Field(0.30, ge=0, le=1)

    def band(self, p: float) -> str:
        if p >= self.high:
            return "high"
        if p >= self.moderate:
            return "moderate"
        if p >= self.low:
            return "low"
        return "negligible"


DEFAULT_BANDS = {
    "readmission": RiskBands(low=0.05, moderate=0.15, high=0.30),
    "mortality": RiskBands(low=0.01, moderate=0.05, high=0.15),
    "denial": RiskBands(low=0.05, moderate=0.15, high=0.30),
}


class ApiSettings(BaseModel):
    base_url: str = "http://127.0.0.1:8000/fhir"
    max_body_bytes: int = Field(5_000_000, description="Larger request bodies are refused with 413.")
    max_note_bytes: int = Field(2_000_000, description="Larger notes are refused with 413.")
    max_batch_entries: int = 100
    earliest_note_date: datetime = Field(datetime(1900, 1, 1, tzinfo=UTC),
                                         description="Notes dated earlier are refused (422): a typo, not history.")
    max_note_days_ahead: int = Field(2, description="Notes dated more than this many days ahead are refused (422).")
    risk_bands: dict[str, RiskBands] = Field(default_factory=lambda: dict(DEFAULT_BANDS),
                                            description="Per-task qualitativeRisk cut points.")


class Autoscaling(BaseModel):
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0


class ServingSettings(BaseModel):
    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy.")
    port: int = 8000
    store_url: str = Field("sqlite:///var/lang1ops.sqlite", description="SQLAlchemy URL: SQLite or PostgreSQL.")
    model_ref: str = Field("champion", description="Registry alias or version the service scores with. `lang1ops "
                           "serve` follows an alias; on a cluster it must be a pinned version (vNNNN), rolled to "
                           "every replica at once by changing it.")
    backend: str = Field("hf", description="hf (PyTorch, CPU or GPU) or vllm (GPU image only).")
    device: str = "cpu"
    dtype: str = Field("auto", description="auto: bf16 where the hardware runs it natively, else fp32.")
    scorer_replicas: int = 1
    autoscaling: Autoscaling | None = Field(None, description="Autoscale scorer replicas instead of a fixed count.")
    replica_cpus: float = Field(1.0, description="CPUs Ray reserves per scorer replica.")
    torch_threads: int | None = Field(None, description="Torch threads per scorer replica (default: replica_cpus).")
    max_batch_size: int = Field(8, description="Most notes per scorer batch (serving.batching.DynamicBatcher).")
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = Field(32, description="Per scorer replica; at least max_batch_size.")
    shadow: bool = Field(False, description="Also score with the challenger; store, never return, its results.")
    shadow_ref: str = Field("challenger", description="Registry alias or version the shadow replica scores with "
                                                      "(on a cluster: a pinned version, like model_ref).")
    watch_interval_s: float = Field(5.0, description="How often `lang1ops serve` checks the registry for a new champion.")
    retention_days: int | None = Field(
        None, ge=60, description="`lang1ops retention` deletes scores (their probabilities and encodings) scored more "
        "than this many days ago; None keeps them. At least 60: performance windows wait for 30-day outcomes. "
        "The audit log is kept (its own, longer, legal retention).")
    api: ApiSettings = Field(default_factory=ApiSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
