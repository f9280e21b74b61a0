"""FHIR Subscriptions (R4 with the R5 Backport IG): notification endpoint and worker.

``POST /fhir/subscription-notification`` takes the EHR's notification Bundle (type
``history``; first entry a ``Parameters`` SubscriptionStatus whose ``type`` is handshake,
heartbeat or event-notification). Handshakes and heartbeats are acknowledged. Each
``notification-event`` whose focus is a DocumentReference becomes one job in the durable
queue, and the endpoint answers 200 only after that commit, so an accepted note is never
lost. The job holds the reference and version only: with a ``full-resource`` payload the
resource is read for its version and then dropped; the worker always re-reads the note
from the FHIR server by id and version, so no note text is ever stored.

``SubscriptionWorker`` claims the jobs: reads the DocumentReference, scores it through
``ScoringService.score_note(..., source="subscription")`` and writes the RiskAssessments
back with conditional creates (see integration.writeback). FHIR server down → retry
with backoff; after ``max_attempts`` → dead letter (``lang1ops integration dead-letters``,
``replay``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from integration.fhir_client import FhirClient, FhirError, FhirNotFound
from integration.work_queue import Job, WorkQueue
from integration.writeback import write_risk_assessments
from lang1ops.identifiers import FHIR_ID_CHARS
from lang1ops.notes import reference_id
from lang1ops.settings.fhir_client import SubscriptionSettings
from serving.api import read_json_body
from serving.auth import Principal, Role, require_role
from serving.fhir_output import operation_outcome
from serving.service import ApiError, ScoringService

log = logging.getLogger("lang1ops.subscriptions")

QUEUE = "subscription"
NOTIFICATION_PATH = "/fhir/subscription-notification"
NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")
SCORED_TYPES = ("DocumentReference",)
# "DocumentReference/123", "DocumentReference/123/_history/2", or an absolute URL ending so.
REFERENCE = re.compile(rf"(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>{FHIR_ID_CHARS})(?:/_history/(?P<version>{FHIR_ID_CHARS}))?")


class NotificationError(ValueError):
    """A notification Bundle that does not follow the Backport IG (→ 400 OperationOutcome)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class NotificationEvent:
    resource_type: str
    resource_id: str
    version: str | None
    event_number: str | None


@dataclass
class Notification:
    type: str
    subscription: str | None
    topic: str | None
    events: list[NotificationEvent] = field(default_factory=list)


def _value(parameter: dict, *names: str) -> Any:
    for name in names:
        if name in parameter:
            return parameter[name]
    return None


def _parse_reference(raw: Any, what: str) -> tuple[str, str, str | None]:
    if not isinstance(raw, str) or len(raw) > 512:
        raise NotificationError("invalid", f"{what} must be a reference string")
    match = REFERENCE.fullmatch(raw)
    if not match:
        raise NotificationError("value", f"{what} is not a [type]/[id] reference")
    return match["type"], match["id"], match["version"]


def parse_notification(bundle: Any) -> Notification:
    """The notification's type and events; raises NotificationError. Never keeps resources."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise NotificationError("structure", "a subscription notification must be a Bundle")
    if bundle.get("type") != "history":
        raise NotificationError("value", "a subscription notification Bundle must have type 'history' (R4 Backport IG)")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise NotificationError("required", "the notification Bundle has no entries")
    status = entries[0].get("resource")
    if not isinstance(status, dict) or status.get("resourceType") != "Parameters":
        raise NotificationError("structure", "the first entry must be a Parameters SubscriptionStatus")
    parameters = status.get("parameter")
    if not isinstance(parameters, list):
        raise NotificationError("required", "the SubscriptionStatus has no parameters")
    kind = subscription = topic = None
    raw_events = []
    for parameter in parameters:
        if not isinstance(parameter, dict):
            raise NotificationError("structure", "a SubscriptionStatus parameter is not an object")
        name = parameter.get("name")
        if name == "type":
            kind = _value(parameter, "valueCode", "valueString")
        elif name == "subscription":
            reference = _value(parameter, "valueReference")
            subscription = reference.get("reference") if isinstance(reference, dict) else None
        elif name == "topic":
            topic = _value(parameter, "valueCanonical", "valueUri")
        elif name == "notification-event":
            raw_events.append(parameter.get("part"))
    if not isinstance(kind, str) or kind not in NOTIFICATION_TYPES:
        raise NotificationError("value", f"SubscriptionStatus.type must be one of {', '.join(NOTIFICATION_TYPES)}")
    notification = Notification(kind, subscription if isinstance(subscription, str) else None,
                                topic if isinstance(topic, str) else None)
    if kind != "event-notification":
        return notification
    if not raw_events:
        raise NotificationError("required", "an event-notification needs at least one notification-event")
    # full-resource payloads: the entries after the status, indexed by their reference, for versions
    versions = {}
    for entry in entries[1:]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
            versions[f"{resource.get('resourceType')}/{resource['id']}"] = meta.get("versionId")
    for number, parts in enumerate(raw_events, start=1):
        if not isinstance(parts, list):
            raise NotificationError("structure", f"notification-event {number} has no parts")
        by_name = {p["name"]: p for p in parts if isinstance(p, dict) and isinstance(p.get("name"), str)}
        focus = by_name.get("focus")
        if focus is None or not isinstance(focus.get("valueReference"), dict):
            raise NotificationError("required", f"notification-event {number} has no focus reference "
                                                "(id-only and full-resource payloads need one)")
        rtype, rid, version = _parse_reference(focus["valueReference"].get("reference"),
                                               f"notification-event {number} focus")
        version = version or versions.get(f"{rtype}/{rid}")
        event_number = by_name.get("event-number", {}).get("valueString")
        if isinstance(event_number, dict | list):
            raise NotificationError("value", f"notification-event {number}: event-number must be a string")
        if version is not None and not isinstance(version, str):
            raise NotificationError("value", f"notification-event {number}: meta.versionId must be a string")
        notification.events.append(NotificationEvent(rtype, rid, version,
                                                      str(event_number)[:32] if event_number is not None else None))
    return notification


def job_key(event: NotificationEvent) -> str:
    """Same note version → same job. Without a version, the event number tells updates apart
    (and write-back stays exactly-once anyway: it is keyed on the version read)."""
    base = f"{event.resource_type}/{event.resource_id}"
    if event.version:
        return f"{base}/_history/{event.version}"
    return f"{base}#event-{event.event_number}" if event.event_number else f"{base}#latest"


def _outcome(message: str, status: int = 200) -> JSONResponse:
    return JSONResponse(operation_outcome("informational", message, severity="information"), status_code=status,
                        media_type="application/fhir+json")


ScorerPrincipal = Annotated[Principal, Depends(require_role(Role.SCORER))]


def work_queue_of(app: Any, settings: SubscriptionSettings) -> WorkQueue:
    """One WorkQueue per app, on the app's store (its table comes from the store's migrations)."""
    queue = getattr(app.state, "work_queue", None)
    if queue is None:
        queue = app.state.work_queue = WorkQueue(app.state.store, settings.queue)
    return queue


def subscription_router(settings: SubscriptionSettings, run_worker: bool = True) -> APIRouter:
    """``POST /fhir/subscription-notification`` (role scorer).

    With ``run_worker`` and ``settings.enabled`` and a FHIR base URL configured, the app's
    lifespan also runs a ``SubscriptionWorker`` as an asyncio task next to the endpoint (each
    ingress replica runs one; the queue's leases keep them apart).
    """
    router = APIRouter(tags=["Subscriptions"], lifespan=_worker_lifespan(settings) if run_worker else None)

    @router.post(NOTIFICATION_PATH, summary="Receive a FHIR Subscription notification (R4 Backport IG)")
    async def notification(request: Request, principal: ScorerPrincipal):
        """Handshake and heartbeat are acknowledged; each DocumentReference event is queued
        durably (answered after the commit) and scored with write-back by the worker."""
        body = await read_json_body(request)
        try:
            parsed = parse_notification(body)
        except NotificationError as err:
            raise ApiError(400, err.code, str(err)) from None
        queue = work_queue_of(request.app, settings)
        queued, ignored, repeated = [], 0, 0
        for event in parsed.events:
            if event.resource_type not in SCORED_TYPES:
                ignored += 1
                continue
            payload = {"resource_type": event.resource_type, "id": event.resource_id, "version": event.version,
                       "event_number": event.event_number, "subscription": parsed.subscription}
            job, created = await run_in_threadpool(queue.enqueue, QUEUE, job_key(event), payload)
            queued.append(f"{event.resource_type}/{event.resource_id}")
            repeated += 0 if created else 1
        store = request.app.state.store
        try:
            await run_in_threadpool(
                store.audit, request_id=request.state.request_id, actor=principal.subject,
                role=",".join(sorted(principal.roles)), action=f"subscription-{parsed.type}",
                endpoint=f"POST {NOTIFICATION_PATH}", resource_type="DocumentReference" if queued else None,
                resource_ids=queued, outcome="ok", http_status=200, latency_ms=0.0,
                detail=f"queued {len(queued) - repeated}, repeated {repeated}, ignored {ignored}")
        except Exception as exc:  # the jobs are committed; an audit failure must not make the EHR resend
            log.error("audit write failed: %s", type(exc).__name__)
        if parsed.type != "event-notification":
            return _outcome(f"{parsed.type} acknowledged")
        return _outcome(f"{len(queued) - repeated} queued, {repeated} already known, {ignored} ignored")

    return router


def _worker_lifespan(settings: SubscriptionSettings):
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if not (settings.enabled and settings.client.base_url):
            yield
            return
        client = FhirClient.from_settings(settings.client)
        worker = SubscriptionWorker(app.state.service, work_queue_of(app, settings), client, settings)
        app.state.subscription_worker = worker
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop), name="subscription-worker")
        try:
            yield
        finally:
            stop.set()
            await task
            client.close()

    return lifespan


# ------------------------------------------------------------------------------------------ worker


class SubscriptionWorker:
    """Claims subscription jobs and turns each into RiskAssessments on the FHIR server.

    ``await worker.run(stop)`` loops until the event is set (an asyncio task in the ingress,
    or ``lang1ops integration worker``); ``await worker.drain()`` processes what is due now.
    The FHIR client is synchronous and runs in a thread.
    """

    def __init__(self, service: ScoringService, queue: WorkQueue, client: FhirClient,
                 settings: SubscriptionSettings, worker_id: str | None = None):
        self.service, self.queue, self.client, self.settings = service, queue, client, settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.principal = Principal(subject="subscription-worker", roles=frozenset({Role.SCORER}),
                                   method="worker:subscriptions")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.drain()
            except Exception as exc:  # e.g. the database briefly away: keep the loop alive
                log.error("subscription worker loop error: %s", type(exc).__name__)
                handled = 0
            if not handled:
                try:
                    await asyncio.wait_for(stop.wait(), self.settings.poll_interval_s)
                except TimeoutError:
                    pass

    async def drain(self, max_jobs: int = 1000) -> int:
        """Process due jobs one at a time until none is due; returns how many were handled."""
        handled = 0
        while handled < max_jobs:
            jobs = await asyncio.to_thread(self.queue.claim, QUEUE, self.worker_id, 1)
            if not jobs:
                return handled
            await self.process(jobs[0])
            handled += 1
        return handled

    async def process(self, job: Job) -> str:
        """One job → 'done', 'skipped', 'pending' (retry later) or 'dead'."""
        payload = job.payload
        reference = f"{payload['resource_type']}/{payload['id']}"
        try:
            resource = await asyncio.to_thread(self.client.read, payload["resource_type"], payload["id"],
                                               payload.get("version"))
            version = (resource.get("meta") or {}).get("versionId") or payload.get("version")
            if not version:
                raise ApiError(422, "required", "the FHIR server returned the note without meta.versionId")
            try:
                risks, model_version, _ = await self.service.score_note(
                    resource, self.principal, None, "subscription", f"subscription-job-{job.id}")
            except ApiError as err:
                if err.code == "not-supported":  # a note type the model does not score: nothing to write
                    await asyncio.to_thread(self.queue.complete, job.id, self.worker_id,
                                            {"skipped": err.code, "version": version})
                    return "skipped"
                raise
            patient = reference_id((resource.get("subject") or {}).get("reference"), "Patient")
            if any(reference_id((r.get("subject") or {}).get("reference"), "Patient") != patient for r in risks):
                # defence in depth: never write one patient's risk onto another patient's chart
                raise ApiError(409, "conflict", "the scored RiskAssessments name another subject than the note")
            del resource  # the note text goes no further than the scorer
            written = {"created": [], "existing": []}
            if self.settings.writeback:
                result = await asyncio.to_thread(write_risk_assessments, self.client, risks, reference, version,
                                                 self.settings.identifier_system)
                written = result.as_dict()
            await asyncio.to_thread(self.queue.complete, job.id, self.worker_id,
                                    {"version": version, "model_version": model_version, **written})
            return "done"
        except FhirNotFound as err:
            status = await asyncio.to_thread(self.queue.fail, job.id, self.worker_id, _reason(err), True)
        except FhirError as err:
            status = await asyncio.to_thread(self.queue.fail, job.id, self.worker_id, _reason(err), err.retryable)
        except ApiError as err:  # the note itself cannot be scored: retrying will not help
            status = await asyncio.to_thread(self.queue.fail, job.id, self.worker_id,
                                             f"ApiError {err.status} {err.code}", False)
        log.warning("subscription job %s for %s: %s", job.id, reference, status)
        return status or "lost"


def _reason(err: FhirError) -> str:
    # FhirError messages carry only the interaction, status and issue codes (no resource text)
    return f"{type(err).__name__}: {err}"
