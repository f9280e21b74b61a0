"""The bodies a CDS Client sends (a service call, feedback on cards) as pydantic models, and their
validation into a 400 that names where the body is wrong, never what it holds."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.service import ApiError


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1, max_length=16_384, description="Bearer token for fhirServer.")
    token_type: str = Field("Bearer", description="Always Bearer.")
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None


class CdsRequest(BaseModel):
    """A CDS Hooks 2.0 service request (the fields this service reads)."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1, max_length=128)
    hookInstance: uuid.UUID
    fhirServer: str | None = Field(None, max_length=2048)
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class OverrideCoding(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(min_length=1, max_length=64)
    system: str | None = Field(None, max_length=256)


class OverrideReasonIn(BaseModel):
    # `userComment` (free text, possibly PHI) is accepted and never stored
    model_config = ConfigDict(extra="allow")
    reason: OverrideCoding | None = None


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    card: uuid.UUID
    outcome: str = Field(pattern="^(accepted|overridden)$")
    overrideReason: OverrideReasonIn | None = None
    outcomeTimestamp: datetime


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


def _validated(model: type[BaseModel], body: Any, what: str) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # places and kinds only: values could be anything the caller sent
        where = "; ".join(".".join(str(p) for p in e["loc"]) + f" ({e['type']})"
                          for e in exc.errors(include_url=False, include_input=False)[:8])
        raise ApiError(400, "invalid", f"invalid {what}: {where}") from None
