"""Settings of the EHR integration (a section of lang1ops.settings.Settings)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lang1ops.settings.bulk import BulkSettings
from lang1ops.settings.cds_hooks import CdsHooksSettings
from lang1ops.settings.fhir_client import SubscriptionSettings


class IntegrationSettings(BaseModel):
    """CDS Hooks, Subscriptions, the outbound FHIR client and Bulk Data."""

    cds_hooks: CdsHooksSettings = Field(default_factory=CdsHooksSettings, description="CDS Hooks 2.0 services.")
    bulk: BulkSettings = Field(default_factory=BulkSettings, description="Bulk Data export, batch scoring, outcomes feed.")
    subscriptions: SubscriptionSettings = Field(
        default_factory=SubscriptionSettings,
        description="FHIR Subscriptions, RiskAssessment write-back, the outbound FHIR client and the durable queue.")
