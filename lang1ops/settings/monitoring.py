"""Settings of monitoring and the retraining loop (a section of lang1ops.settings.Settings)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lang1ops.settings.drift_loop import DriftLoopSettings


class AlertWebhookSettings(BaseModel):
    """The Alertmanager webhook receiver (`POST /alerts/alertmanager`)."""

    bearer_token_sha256: str | None = Field(
        None, description="sha256 hex of a bearer token Alertmanager may send instead of an admin API key "
                          "(`lang1ops` hashes keys with serving.auth.hash_api_key).")
    max_body_bytes: int = Field(1_000_000, description="Larger payloads are refused with 413.")
    max_alerts: int = Field(500, description="At most this many alerts per payload (Alertmanager's max_alerts).")
    kept_annotations: list[str] = Field(
        default_factory=lambda: ["summary", "runbook_url"],
        description="Annotations stored with each alert; every other annotation is dropped.")
    max_annotation_chars: int = Field(300, description="Stored annotations are cut to this length.")


class MonitoringSettings(BaseModel):
    """Metrics, drift checks, performance windows, alerts and the retraining loop."""

    alerts: AlertWebhookSettings = Field(default_factory=AlertWebhookSettings,
                                         description="The Alertmanager webhook receiver.")
    loop: DriftLoopSettings = Field(default_factory=DriftLoopSettings,
                                    description="Drift checks, performance windows and the retraining loop.")
