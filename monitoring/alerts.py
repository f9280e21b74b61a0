"""Alerts from Alertmanager: the webhook receiver and the alert log the retraining loop reads.

Alertmanager posts its webhook payload (version 4) to `POST /alerts/alertmanager`; each alert
is stored as one row of `alert_events` (name, status, severity, task, labels, times,
fingerprint, and only the allow-listed, length-bounded annotations: no free text otherwise).
Alertmanager re-sends a firing alert every `repeat_interval`: a repeat of the same episode
(fingerprint, status, startsAt) is not a new event, it only moves `last_received_at`, so
`AlertLog.firing(since)` sees each episode once and knows it is still firing.

Authentication: an API key or JWT with the admin role, or the bearer token configured in
`AlertWebhookSettings.bearer_token_sha256` (what Alertmanager's `http_config.authorization`
sends), so Alertmanager needs no admin key.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import JSON, Index, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from starlette.concurrency import run_in_threadpool

from lang1ops.database import BigId, UTCDateTime, table_metadata, write_engine
from lang1ops.settings.monitoring import AlertWebhookSettings
from serving.auth import Principal, Role, hash_api_key, require_role
from serving.service import ApiError
from serving.store import Store

MAX_LABELS = 32
MAX_LABEL_CHARS = 256


# -- the payload (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config) ----


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime  # noqa: N815 (Alertmanager's field names)
    endsAt: AwareDatetime | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = Field(pattern=r"^[0-9a-fA-F]{1,64}$")

    @field_validator("labels")
    @classmethod
    def _bounded_and_named(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")
        if any(len(key) > 128 or len(text) > MAX_LABEL_CHARS for key, text in value.items()):
            raise ValueError(f"label names up to 128 and values up to {MAX_LABEL_CHARS} characters")
        if not value.get("alertname"):
            raise ValueError("every alert needs an alertname label")
        return value

    @field_validator("fingerprint")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = Field("", max_length=200)
    groupKey: str = ""  # noqa: N815
    truncatedAlerts: int = 0  # noqa: N815
    alerts: list[WebhookAlert] = Field(min_length=1)


# -- the table --------------------------------------------------------------------------------


class AlertBase(DeclarativeBase):
    metadata = table_metadata()


class AlertEventRow(AlertBase):
    __tablename__ = "alert_events"
    __table_args__ = (UniqueConstraint("fingerprint", "status", "starts_at"),
                      Index(None, "status", "last_received_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str | None] = mapped_column(String(32))
    task: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    receiver: Mapped[str] = mapped_column(String(200))
    labels: Mapped[dict] = mapped_column(JSON)
    annotations: Mapped[dict] = mapped_column(JSON)


@dataclass(frozen=True)
class AlertEvent:
    """One alert episode's firing or resolution, as Alertmanager reported it."""

    name: str
    status: str  # firing | resolved
    severity: str | None
    task: str | None  # the alert's `task` label (per-task AUROC/ECE alerts), else None
    starts_at: datetime
    received_at: datetime  # first receipt of this (fingerprint, status, starts_at)
    fingerprint: str
    labels: dict[str, str]
    last_received_at: datetime | None = None  # the latest (re-)notification
    ends_at: datetime | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    id: int | None = None


def _event(row: AlertEventRow) -> AlertEvent:
    return AlertEvent(name=row.name, status=row.status, severity=row.severity, task=row.task, starts_at=row.starts_at,
                      received_at=row.received_at, fingerprint=row.fingerprint, labels=dict(row.labels),
                      last_received_at=row.last_received_at, ends_at=row.ends_at, annotations=dict(row.annotations),
                      id=row.id)


class AlertLog:
    """The alert_events table on the store's database (SQLite or PostgreSQL)."""

    def __init__(self, store: Store, settings: AlertWebhookSettings | None = None):
        self.settings = settings or AlertWebhookSettings()
        self._read = sessionmaker(store.engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine(store.engine), expire_on_commit=False)

    def record(self, payload: WebhookPayload | dict, now: datetime | None = None) -> int:
        """Store the payload's alerts; returns how many were new events (repeats only update
        last_received_at). Raises pydantic.ValidationError on a payload that is not version 4."""
        if not isinstance(payload, WebhookPayload):
            payload = WebhookPayload.model_validate(payload)
        now = now or datetime.now(UTC)
        for attempt in range(3):  # a concurrent identical notification can win the insert: retry
            try:
                return self._record(payload, now)
            except IntegrityError:
                if attempt == 2:
                    raise
        return 0

    def _record(self, payload: WebhookPayload, now: datetime) -> int:
        created = 0
        with self._write.begin() as session:
            for alert in payload.alerts[: self.settings.max_alerts]:
                starts_at = alert.startsAt.astimezone(UTC)
                existing = session.scalars(select(AlertEventRow).where(
                    AlertEventRow.fingerprint == alert.fingerprint, AlertEventRow.status == alert.status,
                    AlertEventRow.starts_at == starts_at)).first()
                if existing is not None:
                    existing.last_received_at = now
                    continue
                # Alertmanager sends endsAt 0001-01-01 for an alert with no end yet
                ends_at = alert.endsAt.astimezone(UTC) if alert.endsAt and alert.endsAt.year > 1 else None
                session.add(AlertEventRow(
                    name=alert.labels["alertname"][:200], status=alert.status,
                    severity=(alert.labels.get("severity") or None) and alert.labels["severity"][:32],
                    task=(alert.labels.get("task") or None) and alert.labels["task"][:64],
                    fingerprint=alert.fingerprint, starts_at=starts_at, ends_at=ends_at, received_at=now,
                    last_received_at=now, receiver=payload.receiver, labels=dict(alert.labels),
                    annotations={k: v[: self.settings.max_annotation_chars] for k, v in alert.annotations.items()
                                 if k in self.settings.kept_annotations}))
                session.flush()
                created += 1
        return created

    def firing(self, since: datetime) -> list[AlertEvent]:
        """Alert episodes notified as firing at or after `since` (first or repeated notification)
        and not resolved since: what the retraining loop reacts to. Oldest first."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware (UTC)")
        with self._read() as session:
            rows = list(session.scalars(select(AlertEventRow).where(
                AlertEventRow.status == "firing", AlertEventRow.last_received_at >= since)
                .order_by(AlertEventRow.starts_at, AlertEventRow.id)))
            resolved = {(r.fingerprint, r.starts_at) for r in session.scalars(select(AlertEventRow).where(
                AlertEventRow.status == "resolved", AlertEventRow.fingerprint.in_({r.fingerprint for r in rows})))}
        return [_event(r) for r in rows if (r.fingerprint, r.starts_at) not in resolved]

    def recent(self, limit: int = 50) -> list[AlertEvent]:
        """The newest events first."""
        with self._read() as session:
            rows = session.scalars(select(AlertEventRow).order_by(AlertEventRow.received_at.desc(),
                                                                  AlertEventRow.id.desc()).limit(int(limit)))
            return [_event(r) for r in rows]


# -- the endpoint -----------------------------------------------------------------------------


def alertmanager_router(settings: AlertWebhookSettings | None = None) -> APIRouter:
    """`POST /alerts/alertmanager` (Alertmanager webhook_config url) and `GET /alerts` (admin)."""
    settings = settings or AlertWebhookSettings()
    router = APIRouter(tags=["monitoring"])
    admin = require_role(Role.ADMIN)

    def caller(request: Request) -> Principal:
        scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
        if settings.bearer_token_sha256 and scheme.lower() == "bearer" and token.strip() and hmac.compare_digest(
                hash_api_key(token.strip()), settings.bearer_token_sha256.lower()):
            return Principal("alertmanager", frozenset(), "alert-webhook-token")
        return admin(request, None)  # an admin API key or JWT, or 401/403

    def alert_log(request: Request) -> AlertLog:
        log = getattr(request.app.state, "alert_log", None)
        if log is None:
            log = request.app.state.alert_log = AlertLog(request.app.state.store, settings)
        return log

    @router.post("/alerts/alertmanager", summary="Alertmanager webhook receiver (payload version 4)")
    async def receive(request: Request) -> dict[str, Any]:
        principal = caller(request)
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise ApiError(413, "too-long", f"payload over {settings.max_body_bytes} bytes")
        try:
            payload = WebhookPayload.model_validate_json(body)
        except ValidationError as err:
            # locations and error types only: never the values received
            where = "; ".join(".".join(str(p) for p in e["loc"]) + f" ({e['type']})" for e in err.errors()[:8])
            raise ApiError(400, "invalid", f"not an Alertmanager webhook payload (version 4): {where}") from None
        log = alert_log(request)
        started = time.perf_counter()
        created = await run_in_threadpool(log.record, payload)
        store: Store = request.app.state.store
        await run_in_threadpool(
            store.audit, request_id=getattr(request.state, "request_id", None), actor=principal.subject,
            role=",".join(sorted(principal.roles)) or None, action="alert-webhook", endpoint="POST /alerts/alertmanager",
            resource_ids=[], outcome="ok", http_status=200, latency_ms=(time.perf_counter() - started) * 1000,
            detail=f"{len(payload.alerts)} alerts ({payload.status}), {created} new")
        return {"received": len(payload.alerts), "new": created}

    @router.get("/alerts", summary="The newest alert events (admin)")
    async def recent(request: Request, limit: int = 50) -> list[dict[str, Any]]:
        admin(request, None)
        events = await run_in_threadpool(alert_log(request).recent, max(1, min(limit, 500)))
        return [{**e.__dict__, "starts_at": e.starts_at.isoformat(), "received_at": e.received_at.isoformat(),
                 "last_received_at": e.last_received_at.isoformat() if e.last_received_at else None,
                 "ends_at": e.ends_at.isoformat() if e.ends_at else None} for e in events]

    return router
