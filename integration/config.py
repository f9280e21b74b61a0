"""Settings of the EHR integration (a section of lang1ops.settings.Settings)."""

from __future__ import annotations

from pydantic import BaseModel


class IntegrationSettings(BaseModel):
    """CDS Hooks, Subscriptions, the outbound FHIR client and Bulk Data."""
