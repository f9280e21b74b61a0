"""Settings of monitoring and the retraining loop (a section of lang1ops.settings.Settings)."""

from __future__ import annotations

from pydantic import BaseModel


class MonitoringSettings(BaseModel):
    """Metrics, drift checks, performance windows, alerts and the retraining loop."""
