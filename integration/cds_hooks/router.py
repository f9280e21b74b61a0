"""CDS Hooks 2.0: Lang1 risk as cards inside the chart (patient-view, encounter-discharge).

`cds_hooks_router(settings)` serves, under `{base_path}/cds-services`:
* `GET` discovery: every service with its hook, prefetch templates and usage requirements;
* `POST /{id}`: verify the EHR's JWT (integration.cds_auth), validate the request, take the
  patient's notes from `prefetch` or search the EHR's `fhirServer` with its access token, pick the
  latest note of each type a task reads (admission H&P, discharge summary), answer from the
  stored score of that note or score it now (ScoringService.score_note: the same idempotency
  key as the FHIR API, so a note scored by any path is not scored twice), and answer one card;
* `POST /{id}/feedback`: store accepted/overridden outcomes of cards this service issued.

A failure (FHIR server down, scorer down, bad request) is an HTTP error with an
OperationOutcome body, never `{"cards": []}`, which an EHR would show as "no risk". Cards and
stored rows hold ids, probabilities and codes only: note text never leaves the scorer.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import JSON, BigInteger, Engine, Integer, String, UniqueConstraint, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.concurrency import run_in_threadpool

from integration.cds_auth import CdsCaller, CdsJwtVerifier
from lang1ops.identifiers import FHIR_ID
from lang1ops.notes import aware_datetime, reference_id
from lang1ops.settings.cds_hooks import CdsHooksSettings, IndicatorThresholds
from lang1ops.tasks import LOINC, NoteType, TaskContract, TaskSpec
from serving.api import read_json_body
from serving.auth import AuthError, Principal, Role, TokenReplayLog
from serving.service import ApiError
from serving.store import Store, UTCDateTime, table_metadata

log = logging.getLogger("lang1ops.cds_hooks")

PATIENT_VIEW, ENCOUNTER_DISCHARGE = "patient-view", "encounter-discharge"
OVERRIDE_REASON_SYSTEM = "http://lang1-ops.org/fhir/CodeSystem/cds-override-reason"
INDICATOR_ORDER = {"info": 0, "warning": 1, "critical": 2}
SUMMARY_MAX = 139  # CDS Hooks: summary under 140 characters
MAX_PAGES = 3  # of a fallback search; the notes wanted are the newest


# --------------------------------------------------------------------------------------------- services


@dataclass(frozen=True)
class CdsService:
    """One CDS service; services are keyed by `id`, so several may share a hook."""

    id: str
    hook: str
    title: str
    description: str
    tasks: tuple[str, ...] | None  # None: every task of the served model
    encounter_in_search: bool  # the hook's context always names the encounter

    def tasks_of(self, contract: TaskContract) -> list[TaskSpec]:
        if self.tasks is None:
            return list(contract.tasks)
        return [contract.task(name) for name in self.tasks if name in contract.names]

    def notes_query(self, contract: TaskContract, max_notes: int) -> str:
        """The FHIR search for the notes the tasks read, as a CDS Hooks prefetch template.
        Only `patient`, `type` (token, comma = OR), `encounter`, `_sort` and `_count` are used:
        the DocumentReference search parameters US Core / Epic / Oracle Health servers support.
        A server that ignores `_sort` is still fine: notes are ordered by date here."""
        note_types = {t.note_type for t in self.tasks_of(contract)}
        codes = [f"{LOINC}|{code}" for spec in contract.note_types if spec.name in note_types for code in spec.loinc]
        query = "DocumentReference?patient={{context.patientId}}"
        if self.encounter_in_search:
            query += "&encounter={{context.encounterId}}"
        return query + f"&type={','.join(codes)}&_sort=-date&_count={max_notes}"


SERVICES: tuple[CdsService, ...] = (
    CdsService(
        id="lang1-patient-risk", hook=PATIENT_VIEW, title="Lang1 operational risk for this admission",
        description="Readmission, in-hospital mortality, length of stay, Charlson comorbidity index and claim denial "
                    "estimated by a finetuned clinical language model from the admission H&P and discharge summary "
                    "of the current admission.",
        tasks=None, encounter_in_search=False),
    CdsService(
        id="lang1-discharge-risk", hook=ENCOUNTER_DISCHARGE, title="Lang1 readmission risk at discharge",
        description="30-day readmission risk from the discharge summary and the length-of-stay outlook from the "
                    "admission H&P of the encounter being discharged.",
        tasks=("readmission", "los"), encounter_in_search=True),
)
REQUIRED_CONTEXT = {PATIENT_VIEW: ("userId", "patientId"), ENCOUNTER_DISCHARGE: ("userId", "patientId", "encounterId")}
USAGE = ("Authenticate with a JWT signed RS384 or ES384 by an allow-listed issuer (aud = the service URL). "
         "Prefetch `notes` or give fhirServer and fhirAuthorization (scope patient/DocumentReference.rs and "
         "patient/Binary.r, or the user/ equivalents).")


# --------------------------------------------------------------------------------------------- request models


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


# --------------------------------------------------------------------------------------------- tables


class _CdsBase(DeclarativeBase):
    metadata = table_metadata()


class CdsCard(_CdsBase):
    """A card this service answered with (ids only), so feedback can be tied to it."""

    __tablename__ = "cds_cards"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(64), index=True)
    hook_instance: Mapped[str] = mapped_column(String(36))
    patient_id: Mapped[str] = mapped_column(String(64))
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    indicator: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64))
    basis: Mapped[list] = mapped_column(JSON)  # "DocumentReference/<id>" of the notes read
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class CdsFeedback(_CdsBase):
    """What the clinician did with a card: accepted or overridden, with a reason code."""

    __tablename__ = "cds_feedback"
    __table_args__ = (UniqueConstraint("card_uuid", "outcome", "outcome_at"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(36), index=True)
    service_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    override_reason_code: Mapped[str | None] = mapped_column(String(64))
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    client: Mapped[str | None] = mapped_column(String(256))  # the EHR's iss


class CdsTables:
    """The CDS tables on the Store's engine (made by the store's migrations, SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine):
        self.engine = engine  # the tables come from the store's migrations (serving/migrations)

    def record_card(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(CdsCard).values(**values))

    def card_service(self, card_uuid: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(select(CdsCard.service_id).where(CdsCard.uuid == card_uuid))

    def record_feedback(self, rows: list[dict]) -> int:
        """Stores the rows not stored before (an EHR may resend feedback); returns how many were new."""
        new = 0
        with self.engine.begin() as conn:
            for row in rows:
                seen = conn.scalar(select(CdsFeedback.id).where(
                    CdsFeedback.card_uuid == row["card_uuid"], CdsFeedback.outcome == row["outcome"],
                    CdsFeedback.outcome_at == row["outcome_at"]))
                if seen is None:
                    conn.execute(insert(CdsFeedback).values(**row))
                    new += 1
        return new

    def feedback(self, card_uuid: str | None = None) -> list[dict]:
        query = select(CdsFeedback).order_by(CdsFeedback.id)
        if card_uuid:
            query = query.where(CdsFeedback.card_uuid == card_uuid)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def cards(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(CdsCard).order_by(CdsCard.issued_at))]


# --------------------------------------------------------------------------------------------- notes


@dataclass
class Candidate:
    resource: dict
    note_type: NoteType
    date: datetime | None
    encounter_id: str | None


@dataclass
class CardNote:
    """A note as a CDS card reports it: its scores and where they came from (not the store's row)."""

    note_type: NoteType
    reference: str
    date: datetime | None
    model_name: str
    model_version: str
    replayed: bool
    probabilities: dict[str, list[float]]  # task -> class probabilities


@dataclass
class Gathered:
    scored: dict[NoteType, CardNote] = field(default_factory=dict)
    missing: dict[NoteType, str] = field(default_factory=dict)  # note type -> why it is not there


def _render(template: str, context: dict[str, Any]) -> str:
    def value(match: re.Match) -> str:
        raw = context.get(match[1])
        if not isinstance(raw, str):
            raise ApiError(400, "required", f"context.{match[1]} is needed by this service")
        return quote(raw, safe="")

    return re.sub(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}", value, template)


def _note_type_of(resource: dict, contract: TaskContract) -> NoteType | None:
    codings = _object(resource.get("type")).get("coding")
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and coding.get("system") == LOINC and isinstance(coding.get("code"), str):
            if kind := contract.note_type_of_loinc(coding["code"]):
                return kind
    return None


def _candidates(resources: list[Any], patient_id: str, contract: TaskContract, where: str) -> list[Candidate]:
    """The notes among `resources`, newest first. A note about another patient means the EHR
    answered the wrong query: refused rather than scored."""
    out = []
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != "DocumentReference":
            continue
        reference = _object(resource.get("subject")).get("reference")
        subject = reference_id(reference if isinstance(reference, str) else None, "Patient")
        if subject != patient_id:
            raise ApiError(422 if where == "prefetch" else 502, "invalid",
                           f"{where}: a DocumentReference is not about context.patientId")
        if resource.get("status") in ("entered-in-error", "superseded") or resource.get("docStatus") == "entered-in-error":
            continue
        kind = _note_type_of(resource, contract)
        if kind is None:
            continue
        context = _object(resource.get("context"))
        encounters = context.get("encounter")
        first = _object(encounters[0]) if isinstance(encounters, list) and encounters else {}
        encounter = reference_id(first.get("reference"), "Encounter") if isinstance(first.get("reference"), str) else None
        when = resource.get("date") or _object(context.get("period")).get("start")
        out.append(Candidate(resource, kind, aware_datetime(when) if isinstance(when, str) else None, encounter))
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda c: c.date or oldest, reverse=True)


def _bundle_resources(bundle: Any, where: str) -> list[Any]:
    if not isinstance(bundle, dict):
        raise ApiError(422 if where == "prefetch" else 502, "structure", f"{where}: expected a FHIR Bundle")
    if bundle.get("resourceType") == "DocumentReference":
        return [bundle]
    if bundle.get("resourceType") != "Bundle":
        raise ApiError(422 if where == "prefetch" else 502, "structure",
                       f"{where}: expected a Bundle, got {str(bundle.get('resourceType'))[:40]}")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise ApiError(422 if where == "prefetch" else 502, "structure", f"{where}: Bundle.entry must be a list")
    return [e.get("resource") for e in entries
            if isinstance(e, dict) and _object(e.get("search")).get("mode", "match") == "match"]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _object(value: Any) -> dict:
    """`value` if it is a JSON object, else an empty one: a field of the wrong shape reads as absent."""
    return value if isinstance(value, dict) else {}


class FhirReader:
    """Reads the EHR's FHIR server with the access token the EHR gave for this call."""

    def __init__(self, base: str, authorization: FhirAuthorization | None, settings: CdsHooksSettings):
        parts = urlsplit(base)
        loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            # the access token is a credential: never sent in the clear
            raise ApiError(400, "value", "fhirServer must be an https URL (plain http only on loopback)")
        self.base = base.rstrip("/") + "/"
        self.origin = (parts.scheme, parts.netloc)
        self.headers = {"Accept": "application/fhir+json"}
        if authorization is not None:
            self.headers["Authorization"] = f"Bearer {authorization.access_token}"
        self.settings = settings
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(settings.fhir_timeout_s), follow_redirects=False)

    async def __aenter__(self) -> FhirReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, url: str, what: str) -> dict:
        absolute = urljoin(self.base, url)
        parts = urlsplit(absolute)
        if (parts.scheme, parts.netloc) != self.origin:
            raise ApiError(502, "security", f"{what}: the FHIR server pointed outside fhirServer; not followed")
        try:
            response = await self.client.get(absolute, headers=self.headers)
        except httpx.TimeoutException:
            raise ApiError(504, "timeout", f"{what}: the EHR's FHIR server did not answer within "
                                           f"{self.settings.fhir_timeout_s} s; no risk was computed") from None
        except httpx.HTTPError as exc:
            raise ApiError(502, "transient", f"{what}: the EHR's FHIR server could not be reached "
                                             f"({type(exc).__name__}); no risk was computed") from None
        if response.status_code in (401, 403):
            raise ApiError(502, "security", f"{what}: the EHR's FHIR server refused fhirAuthorization "
                                            f"(HTTP {response.status_code}); no risk was computed")
        if response.status_code != 200:
            raise ApiError(502, "transient", f"{what}: the EHR's FHIR server answered HTTP {response.status_code}; "
                                             "no risk was computed")
        if len(response.content) > self.settings.max_response_bytes:
            raise ApiError(502, "too-long", f"{what}: the FHIR server's answer is over "
                                            f"{self.settings.max_response_bytes} bytes")
        try:
            body = response.json()
        except ValueError:
            raise ApiError(502, "structure", f"{what}: the FHIR server's answer is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(502, "structure", f"{what}: the FHIR server's answer is not a FHIR resource")
        return body

    async def search(self, query: str) -> list[Any]:
        resources, url = [], query
        for _ in range(MAX_PAGES):
            bundle = await self.get(url, "DocumentReference search")
            resources += _bundle_resources(bundle, "fhirServer search")
            url = next((link.get("url") for link in bundle.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not url or len(resources) >= self.settings.max_notes:
                break
        return resources

    async def inline_attachments(self, resource: dict) -> dict:
        """A copy of the DocumentReference with `attachment.url` Binaries fetched into `data`
        (the note parser reads inline data; `#contained` references are left to it)."""
        contents = resource.get("content") or []
        if not any(isinstance(c, dict) and isinstance(c.get("attachment"), dict) and "data" not in c["attachment"]
                   and str(c["attachment"].get("url") or "")[:1] not in ("", "#") for c in contents):
            return resource
        copied = {**resource, "content": []}
        for content in contents:
            attachment = content.get("attachment") if isinstance(content, dict) else None
            if isinstance(attachment, dict) and "data" not in attachment and str(attachment.get("url") or "")[:1] not in ("", "#"):
                binary = await self.get(attachment["url"], "attachment")
                if binary.get("resourceType") != "Binary" or not isinstance(binary.get("data"), str):
                    raise ApiError(502, "structure", "attachment: the FHIR server did not answer with a Binary")
                attachment = {**{k: v for k, v in attachment.items() if k != "url"}, "data": binary["data"],
                              "contentType": attachment.get("contentType") or binary.get("contentType")}
                content = {**content, "attachment": attachment}
            copied["content"].append(content)
        return copied


# --------------------------------------------------------------------------------------------- cards


def _event_probability(task: TaskSpec, probs: list[float], thresholds: IndicatorThresholds | None) -> float:
    if task.binary:
        return float(probs[task.positive_option])
    upper = thresholds.upper_classes if thresholds and thresholds.upper_classes else [task.n_classes - 1]
    return float(sum(probs[i] for i in upper if i < len(probs)))


def _indicator(p: float, thresholds: IndicatorThresholds | None) -> str:
    if thresholds is None:
        return "info"
    return "critical" if p >= thresholds.critical else "warning" if p >= thresholds.warning else "info"


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p < 0.1 else f"{100 * p:.0f}%"


@dataclass
class TaskResult:
    task: TaskSpec
    probs: list[float]
    event_p: float
    indicator: str
    note: CardNote

    def phrase(self) -> str:
        if self.task.binary:
            return f"{self.task.title} {_pct(self.event_p)}"
        top = max(range(len(self.probs)), key=lambda i: self.probs[i])
        return f"{self.task.title}: {self.task.options[top].text} ({_pct(self.probs[top])})"


def build_card(service: CdsService, contract: TaskContract, gathered: Gathered, settings: CdsHooksSettings) -> dict:
    results = []
    for task in service.tasks_of(contract):
        note = gathered.scored.get(task.note_type)
        if note is None or task.name not in note.probabilities:
            continue
        probs = note.probabilities[task.name]
        thresholds = settings.thresholds.get(task.name)
        p = _event_probability(task, probs, thresholds)
        results.append(TaskResult(task, probs, p, _indicator(p, thresholds), note))
    missing_tasks = [t for t in service.tasks_of(contract) if t.name not in {r.task.name for r in results}]
    # most urgent first, so a cut summary drops the least important
    results.sort(key=lambda r: (-INDICATOR_ORDER[r.indicator], -r.event_p))
    indicator = max((r.indicator for r in results), key=INDICATOR_ORDER.__getitem__, default="info")
    summary = _summary([r.phrase() for r in results])
    models = sorted({(r.note.model_name, r.note.model_version) for r in results})
    name, version = models[0] if models else ("lang1-ops", "unknown")
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator,
        "detail": _detail(results, missing_tasks, gathered, settings, models, contract),
        "source": {"label": settings.source_label,
                   "url": settings.model_card_url.format(model_name=quote(name, safe=""),
                                                         model_version=quote(version, safe="")),
                   "topic": {"system": "http://lang1-ops.org/fhir/CodeSystem/cds-topic", "code": service.id,
                             "display": service.title}},
        "overrideReasons": [{"system": OVERRIDE_REASON_SYSTEM, "code": r.code, "display": r.display}
                            for r in settings.override_reasons],
        "links": [{"label": "Model card: what the scores mean and how they were validated", "type": "absolute",
                   "url": settings.model_card_url.format(model_name=quote(name, safe=""),
                                                         model_version=quote(version, safe=""))}],
    }
    return card


def _summary(phrases: list[str]) -> str:
    if not phrases:
        return "Lang1 risk not available: no admission H&P or discharge summary found"
    summary = "Lang1 risk: " + phrases[0]
    for phrase in phrases[1:]:
        if len(summary) + 2 + len(phrase) > SUMMARY_MAX:
            break
        summary += "; " + phrase
    return summary[:SUMMARY_MAX]


def _kind_name(contract: TaskContract, kind: NoteType) -> str:
    return next((s.display for s in contract.note_types if s.name == kind), kind.value).lower()


def _detail(results: list[TaskResult], missing: list[TaskSpec], gathered: Gathered, settings: CdsHooksSettings,
            models: list[tuple[str, str]], contract: TaskContract) -> str:
    lines = []
    binary = [r for r in results if r.task.binary]
    if binary:
        lines += ["| Prediction | Horizon | Probability | Level |", "|---|---|---|---|"]
        for r in binary:
            t = settings.thresholds.get(r.task.name)
            level = r.indicator + (f" (warning ≥ {_pct(t.warning)}, critical ≥ {_pct(t.critical)})" if t else "")
            lines.append(f"| {r.task.title} | {r.task.horizon} | **{_pct(r.event_p)}** | {level} |")
        lines.append("")
    for r in (r for r in results if not r.task.binary):
        classes = " · ".join(f"{o.text}: {_pct(p)}" for o, p in zip(r.task.options, r.probs, strict=False))
        lines.append(f"**{r.task.title}** ({r.task.horizon}): {classes} — level {r.indicator}")
        lines.append("")
    for kind, note in gathered.scored.items():
        origin = "stored score" if note.replayed else "scored now"
        when = note.date.date().isoformat() if note.date else "undated"
        lines.append(f"- Read from the {_kind_name(contract, kind)} {note.reference} ({when}); {origin}.")
    for task in missing:
        why = gathered.missing.get(task.note_type, f"no {_kind_name(contract, task.note_type)} found")
        lines.append(f"- {task.title}: not available ({why}).")
    if models:
        lines.append("- Model: " + ", ".join(f"{n} version {v}" for n, v in models) + ".")
    lines += ["", "Each figure is the model's probability of the outcome over the stated horizon, estimated from the "
              "text of one note by a clinical language model. It is an operational estimate for planning "
              "(discharge planning, case management, utilisation review), not a diagnosis; the model card says how "
              "the model was trained and how well it is calibrated on this hospital's patients."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- router


def _ra_probabilities(resources: list[dict], contract: TaskContract) -> dict[str, list[float]]:
    """Task -> class probabilities from RiskAssessments (binary tasks carry the event only)."""
    out = {}
    for ra in resources:
        task_name = ra["identifier"][0]["value"].split("|")[-2]
        if task_name not in contract.names:
            continue
        task = contract.task(task_name)
        values = [float(p["probabilityDecimal"]) for p in ra.get("prediction") or []]
        if task.binary and len(values) == 1:
            probs = [0.0, 0.0]
            probs[task.positive_option] = values[0]
            probs[1 - task.positive_option] = 1 - values[0]
            values = probs
        out[task_name] = values
    return out


def cds_hooks_router(settings: CdsHooksSettings, verifier: CdsJwtVerifier | None = None,
                     services: Sequence[CdsService] = SERVICES) -> APIRouter:
    """The CDS Hooks endpoints; shared pieces come from `request.app.state` (service, store)."""
    verifier = verifier or CdsJwtVerifier(settings)
    by_id = {s.id: s for s in services}
    if len(by_id) != len(services):
        raise ValueError("CDS service ids must be unique")
    router = APIRouter(prefix=f"{settings.base_path}/cds-services", tags=["CDS Hooks"])

    async def authenticate(request: Request, feedback_of: str | None = None) -> CdsCaller | None:
        headers = request.headers.getlist("authorization")
        if not headers and not settings.require_jwt:
            return None
        # the audience comes from configuration only: a Host header is the caller's to choose
        base = settings.public_base_url or _origin(request.app.state.api_settings.base_url)
        called = base + request.url.path
        audiences = [called, called.rstrip("/")]
        if feedback_of:  # CDS Clients differ on the feedback aud: the feedback URL or the service URL
            audiences.append(called.rsplit("/feedback", 1)[0])
        if not isinstance(verifier.replays, TokenReplayLog):  # jtis in the store: one memory for every replica
            verifier.replays = TokenReplayLog(request.app.state.store)
        try:
            # in a thread: a first call with a new jku fetches its JWK Set (blocking httpx)
            return await run_in_threadpool(verifier.verify, headers, audiences)
        except AuthError as exc:
            raise HTTPException(exc.status_code, exc.message, headers={"WWW-Authenticate": exc.www_authenticate}) from None

    def tables(request: Request) -> CdsTables:
        store: Store = request.app.state.store
        return CdsTables(store.engine)

    @router.get("", summary="CDS Hooks discovery")
    async def discovery(request: Request):
        contract = (await request.app.state.service.backend.model_info()).contract
        return {"services": [{
            "hook": s.hook, "id": s.id, "title": s.title, "description": s.description,
            "prefetch": {"notes": s.notes_query(contract, settings.max_notes)},
            "usageRequirements": USAGE} for s in services]}

    @router.post("/{service_id}", summary="Call a CDS service")
    async def call(service_id: str, request: Request):
        service = by_id.get(service_id)
        if service is None:
            raise ApiError(404, "not-found", f"no CDS service {service_id[:64]!r}; see GET /cds-services")
        caller = await authenticate(request)
        body = _validated(CdsRequest, await read_json_body(request), "CDS request")
        if body.hook != service.hook:
            raise ApiError(400, "invalid", f"service {service.id} answers the {service.hook} hook, not {body.hook[:64]}")
        for name in REQUIRED_CONTEXT[service.hook]:
            if not isinstance(body.context.get(name), str) or not body.context[name]:
                raise ApiError(400, "required", f"context.{name} is required for {service.hook}")
        for name in ("patientId", "encounterId"):
            value = body.context.get(name)
            if value is not None and not (isinstance(value, str) and FHIR_ID.fullmatch(value)):
                raise ApiError(400, "value", f"context.{name} is not a FHIR id")
        if body.fhirAuthorization is not None and not body.fhirServer:
            raise ApiError(400, "required", "fhirAuthorization was given without fhirServer")
        if body.fhirServer and not settings.fhir_server_allowed(str(body.fhirServer), caller.issuer if caller else None):
            # the EHR's access token would be sent there: only to servers configured for this EHR
            raise ApiError(403, "security", "fhirServer is not a FHIR server this EHR is allowed to name "
                                            "(cds_hooks.clients[].fhir_servers)")
        principal = caller.principal if caller else Principal("anonymous", frozenset({Role.SCORER}), "unauthenticated")
        scoring = request.app.state.service
        contract = (await scoring.backend.model_info()).contract
        gathered = await gather(service, body, principal, contract, scoring, request.state.request_id)
        if not gathered.scored and not settings.card_when_no_note:
            cards = []
        else:
            cards = [build_card(service, contract, gathered, settings)]
        cds_tables = tables(request)
        versions = sorted({n.model_version for n in gathered.scored.values()})
        for card in cards:
            await run_in_threadpool(
                cds_tables.record_card, uuid=card["uuid"], service_id=service.id, hook_instance=str(body.hookInstance),
                patient_id=body.context["patientId"], encounter_id=body.context.get("encounterId"),
                indicator=card["indicator"], model_version=",".join(versions) or None,
                basis=[n.reference for n in gathered.scored.values()], issued_at=datetime.now(UTC))
        await _audit(request, caller, f"cds:{service.id}", 200, [n.reference for n in gathered.scored.values()],
                     "replayed" if gathered.scored and all(n.replayed for n in gathered.scored.values()) else "")
        return JSONResponse({"cards": cards})

    async def gather(service: CdsService, body: CdsRequest, principal: Principal, contract: TaskContract,
                     scoring: Any, request_id: str) -> Gathered:
        patient = body.context["patientId"]
        prefetched = (body.prefetch or {}).get("notes")
        if isinstance(prefetched, dict) and prefetched.get("resourceType") == "OperationOutcome":
            prefetched = None  # the EHR could not run the prefetch: search ourselves
        reader = None
        if prefetched is None:
            if not body.fhirServer:
                raise ApiError(412, "required", "no `notes` prefetch and no fhirServer: the notes cannot be read")
            reader = FhirReader(body.fhirServer, body.fhirAuthorization, settings)
            query = _render(service.notes_query(contract, settings.max_notes), body.context)
            async with reader:
                candidates = _candidates(await reader.search(query), patient, contract, "fhirServer search")
                return await score_latest(service, body, candidates, principal, contract, scoring, request_id, reader)
        candidates = _candidates(_bundle_resources(prefetched, "prefetch"), patient, contract, "prefetch")
        if body.fhirServer:  # attachments given by url are read from the EHR's server
            reader = FhirReader(body.fhirServer, body.fhirAuthorization, settings)
            async with reader:
                return await score_latest(service, body, candidates, principal, contract, scoring, request_id, reader)
        return await score_latest(service, body, candidates, principal, contract, scoring, request_id, None)

    async def score_latest(service: CdsService, body: CdsRequest, candidates: list[Candidate], principal: Principal,
                           contract: TaskContract, scoring: Any, request_id: str, reader: FhirReader | None) -> Gathered:
        gathered = Gathered()
        wanted = list(dict.fromkeys(t.note_type for t in service.tasks_of(contract)))
        # the admission: the hook's encounter, else the encounter of the newest relevant note
        encounter = body.context.get("encounterId") or next((c.encounter_id for c in candidates), None)
        for kind in wanted:
            of_kind = [c for c in candidates if c.note_type == kind and (encounter is None or c.encounter_id == encounter)]
            if not of_kind:
                gathered.missing[kind] = f"no {_kind_name(contract, kind)} for this admission yet"
                continue
            for candidate in of_kind:
                resource = candidate.resource
                if reader is not None:
                    resource = await reader.inline_attachments(resource)
                try:
                    resources, version, replayed = await scoring.score_note(resource, principal, None, "cds", request_id)
                except ApiError as err:
                    if err.status >= 500:
                        raise ApiError(503, "transient", f"scoring failed ({err.code}); no risk was computed, "
                                                         f"retry later (request {request_id})") from None
                    # this note cannot be read (no text, bad encoding...): the next newest one may
                    gathered.missing[kind] = f"the latest {_kind_name(contract, kind)} could not be read: {err.code}"
                    continue
                except Exception as exc:
                    log.error("CDS scoring failed: %s (request %s)", type(exc).__name__, request_id)
                    raise ApiError(503, "transient", "the scorer failed; no risk was computed, retry later "
                                                     f"(request {request_id})") from None
                gathered.scored[kind] = CardNote(
                    note_type=kind, reference=f"DocumentReference/{resource.get('id')}", date=candidate.date,
                    model_name=resources[0]["method"]["coding"][0]["code"] if resources else "lang1-ops",
                    model_version=version, replayed=replayed, probabilities=_ra_probabilities(resources, contract))
                gathered.missing.pop(kind, None)
                break
        return gathered

    @router.post("/{service_id}/feedback", summary="Feedback on this service's cards")
    async def feedback(service_id: str, request: Request):
        service = by_id.get(service_id)
        if service is None:
            raise ApiError(404, "not-found", f"no CDS service {service_id[:64]!r}")
        caller = await authenticate(request, feedback_of=service_id)
        body = _validated(FeedbackRequest, await read_json_body(request), "feedback")
        allowed = {r.code for r in settings.override_reasons}
        cds_tables = tables(request)
        rows, received = [], datetime.now(UTC)
        for item in body.feedback:
            card_uuid = str(item.card)
            if await run_in_threadpool(cds_tables.card_service, card_uuid) != service.id:
                raise ApiError(404, "not-found", f"card {card_uuid} was not issued by {service.id}")
            reason = item.overrideReason.reason if item.overrideReason else None
            if reason is not None and (reason.code not in allowed or reason.system not in (None, OVERRIDE_REASON_SYSTEM)):
                raise ApiError(400, "value", "overrideReason.reason is not one of the card's overrideReasons")
            if item.outcome == "accepted" and reason is not None:
                raise ApiError(400, "invalid", "an accepted card has no overrideReason")
            when = item.outcomeTimestamp if item.outcomeTimestamp.tzinfo else item.outcomeTimestamp.replace(tzinfo=UTC)
            rows.append({"card_uuid": card_uuid, "service_id": service.id, "outcome": item.outcome,
                         "override_reason_code": reason.code if reason else None, "outcome_at": when.astimezone(UTC),
                         "received_at": received, "client": caller.issuer[:256] if caller else None})
        new = await run_in_threadpool(cds_tables.record_feedback, rows)
        await _audit(request, caller, f"cds-feedback:{service.id}", 200, [r["card_uuid"] for r in rows],
                     f"{new} new of {len(rows)}")
        return JSONResponse({})

    return router


async def _audit(request: Request, caller: CdsCaller | None, action: str, status: int, ids: list[str], detail: str) -> None:
    store: Store = request.app.state.store
    try:
        await run_in_threadpool(
            store.audit, request_id=request.state.request_id, actor=caller.subject if caller else None,
            role="scorer", action=action, endpoint=f"{request.method} {request.url.path}", resource_type=None,
            resource_ids=ids, outcome="ok", http_status=status, detail=detail[:300])
    except Exception as exc:  # an audit failure must not turn an answer into an error
        log.error("audit write failed: %s", type(exc).__name__)
