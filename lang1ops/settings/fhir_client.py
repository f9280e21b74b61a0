"""Settings of the outbound FHIR client, its auth, Subscriptions and the work queue."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class FhirClientSettings(BaseModel):
    """How lang1-ops reaches the hospital FHIR server (reads notes, writes RiskAssessments)."""

    base_url: str = Field("", description="FHIR R4 base URL, e.g. https://ehr.example.org/fhir; empty = not configured.")
    auth: Literal["none", "static", "smart"] = Field(
        "none", description="Outbound auth: none, a static bearer token, or SMART Backend Services."
    )
    bearer_token: SecretStr | None = Field(None, description="Token for auth='static' (local servers only).")
    token_url: str = Field("", description="SMART token endpoint (auth='smart').")
    client_id: str = Field("", description="Client id registered with the EHR's authorization server.")
    private_key_path: str = Field("", description="PEM private key that signs the client assertion (auth='smart').")
    kid: str = Field("", description="Key id of that key in the JWKS registered with the EHR.")
    alg: Literal["RS384", "ES384"] = Field("RS384", description="Client assertion signing algorithm.")
    scopes: str = Field(
        "system/DocumentReference.rs system/RiskAssessment.c",
        description="Space-separated SMART system scopes requested.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of each HTTP call to the FHIR or token server.")
    retries: int = Field(2, ge=0, description="Retries of safe calls (reads, searches, conditional creates) on 5xx/network errors.")
    retry_backoff_s: float = Field(0.2, ge=0, description="First retry delay; doubles on each retry.")


class WorkQueueSettings(BaseModel):
    """The durable job queue in the store."""

    lease_s: float = Field(120.0, gt=0, description="How long a claimed job is reserved before another worker may take it.")
    max_attempts: int = Field(6, ge=1, description="Failed attempts before a job moves to the dead-letter list.")
    backoff_base_s: float = Field(5.0, ge=0, description="Delay after the first failure; doubles each attempt.")
    backoff_max_s: float = Field(900.0, ge=0, description="Upper bound of the retry delay.")


class SubscriptionSettings(BaseModel):
    """FHIR Subscriptions (R4 Backport IG) ingestion and RiskAssessment write-back."""

    enabled: bool = Field(False, description="Mount POST /fhir/subscription-notification and run the worker.")
    poll_interval_s: float = Field(1.0, gt=0, description="How often an idle worker looks for due jobs.")
    writeback: bool = Field(True, description="Write RiskAssessments back to the FHIR server.")
    identifier_system: str = Field(
        "urn:lang1-ops:risk-assessment",
        description="Identifier system of written RiskAssessments (conditional-create key).",
    )
    client: FhirClientSettings = Field(default_factory=FhirClientSettings, description="The FHIR server notes come from.")
    queue: WorkQueueSettings = Field(default_factory=WorkQueueSettings, description="Durable queue behaviour.")
