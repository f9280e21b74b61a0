"""Settings of the CDS Hooks 2.0 service (a section the lead adds to IntegrationSettings).

Only pydantic and the standard library are imported here, so the settings model loads
without FastAPI, httpx or the scorer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# CDS Hooks 2.0 names RS384 and ES384 as the algorithms a CDS Client signs with.
CDS_ALGORITHMS = ("RS384", "ES384")


def _is_https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    return bool(parts.hostname) and (parts.scheme == "https" or (parts.scheme == "http" and loopback))


class CdsClient(BaseModel):
    """One EHR (CDS Client) allowed to call the services: its `iss` and where its keys are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, description="The exact `iss` the EHR puts in its JWT.")
    jwks: dict[str, Any] | None = Field(None, description="The EHR's public JWK Set, inline.")
    jwks_file: Path | None = Field(None, description="A file holding the EHR's public JWK Set (JSON).")
    jku_allow_list: list[str] = Field(
        default_factory=list,
        description="JWK Set URLs this issuer may name in the token's `jku` header (exact match; https, or "
        "http on loopback). A token whose jku is not listed here is refused.",
    )
    algorithms: list[str] = Field(default_factory=lambda: list(CDS_ALGORITHMS), min_length=1,
                                  description="Accepted `alg` values: RS384 and/or ES384.")
    fhir_servers: list[str] = Field(
        default_factory=list,
        description="FHIR base URLs this EHR may name as `fhirServer` (the URL itself or a path below it). The "
        "service sends the EHR's access token there, so any other URL is refused (403); empty: prefetch only.")

    @field_validator("algorithms")
    @classmethod
    def _cds_algorithms(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in CDS_ALGORITHMS]
        if bad:
            raise ValueError(f"CDS Hooks JWTs are signed with {' or '.join(CDS_ALGORITHMS)}; not {bad}")
        return list(dict.fromkeys(value))

    @field_validator("jku_allow_list")
    @classmethod
    def _secure_jku(cls, value: list[str]) -> list[str]:
        for url in value:
            if not _is_https_or_loopback(url):
                raise ValueError("jku URLs must be https (plain http only on loopback)")
        return value

    @model_validator(mode="after")
    def _some_keys(self) -> CdsClient:
        if self.jwks is not None and self.jwks_file is not None:
            raise ValueError(f"CDS client {self.issuer!r}: set jwks or jwks_file, not both")
        if self.jwks is None and self.jwks_file is None and not self.jku_allow_list:
            raise ValueError(f"CDS client {self.issuer!r}: give a jwks, a jwks_file or a jku_allow_list")
        return self

    def configured_jwks(self) -> dict[str, Any] | None:
        """The inline or file JWK Set (read when the verifier is built), or None."""
        if self.jwks_file is not None:
            return json.loads(Path(self.jwks_file).read_text())
        return self.jwks


class IndicatorThresholds(BaseModel):
    """When a card turns from info to warning to critical, on one task's event probability
    (binary tasks) or on the probability of its `upper_classes` (LOS, CCI)."""

    model_config = ConfigDict(extra="forbid")

    warning: float = Field(ge=0, le=1, description="At or above: indicator warning.")
    critical: float = Field(ge=0, le=1, description="At or above: indicator critical.")
    upper_classes: list[int] | None = Field(
        None, description="Multiclass tasks: indices of the classes whose summed probability is compared "
        "(e.g. LOS 'more than 5 days' = [3]). None for binary tasks.")

    @model_validator(mode="after")
    def _ordered(self) -> IndicatorThresholds:
        if self.critical < self.warning:
            raise ValueError("critical must be at or above warning")
        return self


def _default_thresholds() -> dict[str, IndicatorThresholds]:
    # Binary cut points follow lang1ops.settings.serving.DEFAULT_BANDS (moderate -> warning, high -> critical).
    return {
        "readmission": IndicatorThresholds(warning=0.15, critical=0.30),
        "mortality": IndicatorThresholds(warning=0.05, critical=0.15),
        "denial": IndicatorThresholds(warning=0.15, critical=0.30),
        "los": IndicatorThresholds(warning=0.50, critical=0.80, upper_classes=[3]),
        "cci": IndicatorThresholds(warning=0.50, critical=0.80, upper_classes=[3, 4]),
    }


class OverrideReason(BaseModel):
    """A reason a clinician may pick when dismissing a card; offered on every card and the only
    reasons the feedback endpoint stores (codes, never free text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    display: str = Field(min_length=1, max_length=120)


def _default_override_reasons() -> list[OverrideReason]:
    return [
        OverrideReason(code="already-addressed", display="Already addressed in the care plan"),
        OverrideReason(code="not-clinically-relevant", display="Not relevant for this patient"),
        OverrideReason(code="disagree-with-estimate", display="I disagree with the estimate"),
    ]


class CdsHooksSettings(BaseModel):
    """The CDS Hooks 2.0 services (discovery, patient-view and encounter-discharge, feedback)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Mount the CDS Hooks router on the service.")
    base_path: str = Field("", description="Path before /cds-services ('' = at the app root, or e.g. '/cds').")
    public_base_url: str | None = Field(
        None, description="The service's URL as the EHR calls it (e.g. https://lang1.hospital.example), used "
        "for the JWT `aud` check behind a proxy. None: the origin of serving.api.base_url (never the "
        "request's Host header, which the caller chooses).")
    clients: list[CdsClient] = Field(default_factory=list, description="Allow-listed EHRs (by `iss`).")
    require_jwt: bool = Field(True, description="Refuse calls without a valid EHR JWT. False only for a local "
                                                "sandbox; never in production.")
    sandbox_fhir_servers: list[str] = Field(default_factory=list,
                                            description="fhirServer URLs allowed on calls without a JWT (sandbox).")
    leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/iat.")
    max_token_lifetime_s: int = Field(300, ge=1, le=3600,
                                      description="exp - iat above this is refused (CDS Hooks JWTs are short lived).")
    max_remembered_jtis: int = Field(100_000, ge=100,
                                     description="Replay cache size; when full, new tokens are refused (fail closed).")
    jku_ttl_s: int = Field(3600, ge=1, description="How long a JWK Set fetched from an allowed jku is cached.")
    fhir_timeout_s: float = Field(4.0, gt=0, le=60, description="Timeout of each call to the EHR's fhirServer.")
    max_notes: int = Field(10, ge=1, le=100, description="Notes asked for in prefetch and in the fallback search.")
    max_response_bytes: int = Field(20_000_000, ge=1000, description="Larger FHIR responses are refused.")
    model_card_url: str = Field(
        "https://lang1-ops.hospital.example/models/{model_name}/{model_version}",
        description="Card source link; {model_name} and {model_version} are filled in.")
    source_label: str = Field("Lang1 operational risk", max_length=80, description="Card source label.")
    thresholds: dict[str, IndicatorThresholds] = Field(default_factory=_default_thresholds,
                                                       description="Per-task card indicator cut points.")
    override_reasons: list[OverrideReason] = Field(default_factory=_default_override_reasons,
                                                   description="Override reasons offered on cards.")
    card_when_no_note: bool = Field(True, description="Answer with an info card saying no note was found "
                                                      "(instead of no card), so 'no data' never reads as 'no risk'.")

    @field_validator("base_path")
    @classmethod
    def _path(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("base_path must be empty or start with '/'")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def fhir_server_allowed(self, fhir_server: str, issuer: str | None) -> bool:
        """Whether `fhir_server` is one the caller (`issuer`; None: an unauthenticated sandbox call)
        may name: equal to an allowed base URL or below it."""
        if issuer is None:
            allowed = self.sandbox_fhir_servers
        else:
            allowed = next((c.fhir_servers for c in self.clients if c.issuer == issuer), [])
        url = fhir_server.rstrip("/")
        return any(url == base.rstrip("/") or url.startswith(base.rstrip("/") + "/") for base in allowed)

    @model_validator(mode="after")
    def _unique_clients(self) -> CdsHooksSettings:
        issuers = [c.issuer for c in self.clients]
        if len(issuers) != len(set(issuers)):
            raise ValueError("duplicate CDS client issuer")
        return self
