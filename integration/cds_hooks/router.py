"""The CDS Hooks HTTP endpoints, `cds_hooks_router`, under `{base_path}/cds-services`: discovery,
a service call (the EHR's JWT verified, the request validated, the notes gathered and scored, one
card answered, stored and audited) and feedback on the cards issued."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from integration.cds_auth import CdsCaller, CdsJwtVerifier
from integration.cds_hooks.cards import OVERRIDE_REASON_SYSTEM, build_card
from integration.cds_hooks.gather import gather
from integration.cds_hooks.models import CdsRequest, FeedbackRequest, _validated
from integration.cds_hooks.services import REQUIRED_CONTEXT, SERVICES, USAGE, CdsService
from integration.cds_hooks.tables import CdsTables
from lang1ops.identifiers import FHIR_ID
from lang1ops.settings.cds_hooks import CdsHooksSettings
from serving.api import read_json_body
from serving.auth import AuthError, Principal, Role, TokenReplayLog
from serving.service import ApiError
from serving.store import Store

log = logging.getLogger("lang1ops.cds_hooks")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


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
        gathered = await gather(service, body, principal, contract, scoring, request.state.request_id,
                                settings)
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
