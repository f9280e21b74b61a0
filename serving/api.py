"""The HTTP API: FHIR R4 scoring, a plain JSON endpoint, and operations endpoints.

`create_api(...)` builds the FastAPI app around a `ScoringBackend` (the Ray Serve scorer
deployment in production, an in-process scorer in tests), the store and the authenticator.
Every note follows one fixed sequence (`serving.service.ScoringService.score_note`, the
application logic this module only exposes over HTTP): parse, choose tasks, answer from the
store if this exact note was scored before, score, build RiskAssessments, persist, audit,
answer. A note is persisted before its answer is sent; bad input gets an OperationOutcome with
a 4xx, and no error, log line or audit record carries note text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lang1ops.settings.serving import ApiSettings
from lang1ops.tasks import NoteType
from serving import instruments as prom
from serving.auth import Authenticator, Principal, Role, TokenReplayLog, require_role
from serving.fhir_output import capability_statement, collection, operation_outcome
from serving.service import ApiError, ScoringBackend, ScoringService, printable
from serving.store import Store

log = logging.getLogger("lang1ops.api")
FHIR_JSON = "application/fhir+json"
REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
ACCEPTED_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


class BodyTooLarge(HTTPException):
    """Raised while the body is being received, so no more than the limit is ever held."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimit:
    """ASGI middleware, the one body limit of every route: reading a body whose declared
    Content-Length is over `max_bytes` fails before the first byte, and one that streams past it
    (chunked, or a lying Content-Length) fails at the chunk that crosses it. The failure is an
    HTTPException raised inside the route, so it is answered, counted and audited like any other."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        declared_too_long = declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def limited_receive():
            nonlocal received
            if declared_too_long:
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, limited_receive, send)


MAX_JSON_DEPTH = 64  # FHIR resources nest a dozen levels; deeper is an attack on the parsers


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


EXAMPLE_DOCUMENT = {
    "resourceType": "DocumentReference", "id": "hp-123", "meta": {"versionId": "1"}, "status": "current",
    "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2", "display": "History and physical note"}]},
    "subject": {"reference": "Patient/p-456"}, "context": {"encounter": [{"reference": "Encounter/e-789"}]},
    "date": "2024-06-01T14:30:00Z",
    "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                "data": "Q0M6IHNob3J0bmVzcyBvZiBicmVhdGguIEhQSTogNzggeW8gRiB3aXRoIENIRi4uLg=="}}],
}

# module level: with postponed annotations FastAPI resolves these names in the module's globals
ScorerPrincipal = Annotated[Principal, Depends(require_role(Role.SCORER))]
ReaderPrincipal = Annotated[Principal, Depends(require_role(Role.READER))]
AdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]


def parse_tasks(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    tasks = [t.strip() for item in raw for t in item.split(",") if t.strip()]
    return tasks or None


async def read_json_body(request: Request) -> Any:
    """The request's JSON body; its size is limited by the app's BodyLimit middleware."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise ApiError(415, "not-supported", f"content type {media or '(none)'} is not supported; send {FHIR_JSON}")
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "structure", "request body is not valid UTF-8") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, "structure", f"malformed JSON at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise ApiError(400, "structure", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # e.g. an integer over Python's digit limit
        raise ApiError(400, "structure", "JSON holds a value that cannot be read (a number too long?)") from None
    if json_depth_exceeds(body):
        raise ApiError(400, "structure", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def resource_of_parameters(body: dict) -> tuple[Any, list[str]]:
    """A DocumentReference (or other note resource) and requested tasks from a Parameters."""
    resource, tasks = None, []
    parameters = body.get("parameter") or []
    if not isinstance(parameters, list):
        raise ApiError(400, "structure", "Parameters.parameter must be a list")
    for index, parameter in enumerate(parameters):
        if not isinstance(parameter, dict):
            raise ApiError(400, "structure", f"Parameters.parameter[{index}] must be an object")
        if parameter.get("name") in ("resource", "document", "documentReference") and "resource" in parameter:
            resource = parameter["resource"]
            if not isinstance(resource, dict):
                raise ApiError(400, "structure", f"Parameters.parameter[{index}].resource must be a resource")
        elif parameter.get("name") == "task":
            code = parameter.get("valueCode", parameter.get("valueString"))
            if not isinstance(code, str):
                raise ApiError(400, "value", f"Parameters.parameter[{index}] (task) needs a valueCode string")
            tasks.append(code)
    if resource is None:
        raise ApiError(422, "required", "Parameters must carry the note as a parameter named 'resource'")
    return resource, [t for t in tasks if t]


class PlainScoreRequest(BaseModel):
    """A note for callers that do not speak FHIR."""

    text: str = Field(description="The note text (UTF-8).", min_length=1)
    note_type: NoteType | None = Field(None, description="admission_hp or discharge_summary; decides the tasks.")
    tasks: list[str] | None = Field(None, description="Tasks to answer; default: those of the note type.")
    patient_id: str = Field(description="Patient id the scores are about.")
    encounter_id: str | None = None
    note_id: str | None = Field(None, description="Your id for the note; with the text, makes re-posts idempotent.")

    model_config = {"json_schema_extra": {"examples": [{
        "text": "CC: shortness of breath. HPI: 78 yo F with CHF presents with worsening dyspnea ...",
        "note_type": "admission_hp", "patient_id": "p123", "encounter_id": "e456", "note_id": "n789"}]}}


class PlainScore(BaseModel):
    probabilities: dict[str, float]
    risk: str | None = None


class PlainScoreResponse(BaseModel):
    request_id: str
    model: dict[str, str]
    scores: dict[str, PlainScore]
    replayed: bool


# Pages are this app's own files only: no inline script, no other origin, never framed.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
DOCS_CSP = PAGE_CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")  # Swagger UI's init script
CACHEABLE = ("/ui/static/", "/docs/static/")  # the pages' own CSS and JS: no patient data


def security_headers(request: Request, response: Any) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.url.path.startswith(CACHEABLE):  # answers name patients: never kept by a browser or proxy
        headers["Cache-Control"] = "no-store"
    if headers.get("content-type", "").startswith("text/html"):
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
    if request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https":
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


def docs_router(openapi_url: str, title: str) -> APIRouter:
    """Swagger UI whose files come from the swagger-ui-bundle wheel (mounted at /docs/static by
    create_api): the API docs load nothing from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    router = APIRouter()

    @router.get("/docs", include_in_schema=False)
    async def docs():
        page = get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} API", swagger_js_url="/docs/static/"
                                   "swagger-ui-bundle.js", swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    return router


def create_api(backend: ScoringBackend, store: Store, authenticator, settings: ApiSettings | None = None,
               metrics_text=None, software_version: str = "0.1.0", shadow: ScoringBackend | None = None,
               routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The service's FastAPI app. `routers` are the other areas' endpoints (CDS Hooks,
    Subscriptions, alert webhook, operational views; see app.service); they reach the
    shared pieces through `request.app.state`: `service` (ScoringService), `store`,
    `authenticator`, `api_settings`."""
    settings = settings or ApiSettings()
    app = FastAPI(title="lang1-ops", version=software_version, docs_url=None, redoc_url=None,
                  description="Operational risk from clinical notes (readmission, mortality, length of stay, Charlson "
                              "index, claim denial) over FHIR R4, with finetuned Lang1-style language models.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.authenticator = authenticator
    if isinstance(authenticator, Authenticator) and authenticator.replays is None:
        authenticator.replays = TokenReplayLog(store)  # single-use JWTs: one replay log for every replica
    service = ScoringService(backend, store, settings, shadow)
    app.state.service = service
    app.state.store = store
    app.state.api_settings = settings
    started = datetime.now(UTC)

    def fhir(content: Any, status: int = 200, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(content, status_code=status, media_type=FHIR_JSON, headers=headers)

    @app.middleware("http")
    async def request_id_and_audit(request: Request, call_next):
        given = request.headers.get("x-request-id", "")
        # a caller's request id is echoed and audited only when it is a plain token
        request.state.request_id = given if REQUEST_ID.fullmatch(given) else str(uuid.uuid4())
        request.state.started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # answered with a 500 by the `unexpected` handler, outside this middleware
            prom.observe_request(prom.route_template(request.scope), request.method, 500,
                                 time.perf_counter() - request.state.started)
            raise
        prom.observe_request(prom.route_template(request.scope), request.method, response.status_code,
                             time.perf_counter() - request.state.started)
        response.headers["X-Request-Id"] = request.state.request_id
        security_headers(request, response)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        prom.observe_error(prom.route_template(request.scope), exc.code)
        await audit(request, None, "error", exc.status, exc.code, exc.diagnostics)
        return fhir(operation_outcome(exc.code, exc.diagnostics), exc.status)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and the router's 404/405
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {401: "security", 403: "security", 404: "not-found", 405: "not-supported",
                413: "too-long", 429: "throttled"}.get(exc.status_code, "processing" if exc.status_code >= 500 else "invalid")
        prom.observe_error(prom.route_template(request.scope), code)
        if exc.status_code in (401, 403):
            client = request.client.host if request.client else "unknown"
            await audit(request, getattr(request.state, "principal", None), "denied", exc.status_code, code,
                        f"{exc.detail} (client {client})")
        elif exc.status_code == 413:  # a refused body, audited as every refused request is (ApiError)
            await audit(request, getattr(request.state, "principal", None), "error", 413, code, str(exc.detail))
        return fhir(operation_outcome(code, printable(str(exc.detail))), exc.status_code,
                    headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        where = printable("; ".join(".".join(str(p)[:64] for p in e["loc"]) + f" ({e['type']})" for e in exc.errors()[:8]))
        prom.observe_error(prom.route_template(request.scope), "invalid")
        return fhir(operation_outcome("invalid", f"invalid request: {where}"), 400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # the exception's text may quote input: only its type and the request id are logged
        log.error("unexpected %s in request %s", type(exc).__name__, getattr(request.state, "request_id", "?"),
                  exc_info=os.environ.get("LANG1OPS_DEBUG_TRACEBACKS") == "1")
        prom.observe_error(prom.route_template(request.scope), "exception")
        await audit(request, None, "error", 500, "exception", type(exc).__name__)
        return fhir(operation_outcome("exception", f"internal error; request id {request.state.request_id}"), 500)

    async def audit(request: Request, principal: Principal | None, outcome: str, status: int, code: str | None,
                    detail: str = "", resource_ids: list[str] | None = None, action: str | None = None) -> None:
        try:
            await run_in_threadpool(
                store.audit, request_id=request.state.request_id, actor=principal.subject if principal else None,
                role=",".join(sorted(principal.roles)) if principal else None, action=action or request.url.path,
                endpoint=f"{request.method} {request.url.path}", resource_type=None, resource_ids=resource_ids or [],
                outcome=outcome if outcome == "ok" else (code or outcome), http_status=status,
                latency_ms=(time.perf_counter() - request.state.started) * 1000, detail=printable(detail[:300]))
        except Exception as exc:  # an audit failure must not turn an answer into an error
            log.error("audit write failed: %s", type(exc).__name__)

    @app.post("/fhir/DocumentReference/$score", tags=["FHIR"], summary="Score one note",
              response_description="A Bundle (collection) of RiskAssessments, one per task",
              openapi_extra={"requestBody": {"required": True, "content": {FHIR_JSON: {"example": EXAMPLE_DOCUMENT}}}})
    async def score_document(request: Request, principal: ScorerPrincipal,
                             task: Annotated[list[str] | None, Query(description="Tasks to answer (repeat or comma-separate)")] = None):
        """POST a DocumentReference, DiagnosticReport or Composition, or a Parameters carrying one
        (parameter `resource`, optional `task` codes)."""
        body = await read_json_body(request)
        tasks = parse_tasks(task)
        if isinstance(body, dict) and body.get("resourceType") == "Parameters":
            body, in_parameters = resource_of_parameters(body)
            tasks = tasks or in_parameters or None
        resources, version, replayed = await service.score_note(body, principal, tasks, "api", request.state.request_id)
        ids = [f"{body.get('resourceType')}/{body.get('id')}"] if isinstance(body, dict) and body.get("id") else []
        await audit(request, principal, "ok", 200, None, "replayed" if replayed else "", ids, "score")
        return fhir(collection(resources), headers={"X-Model-Version": version, "X-Idempotent-Replay": str(replayed).lower()})

    @app.post("/fhir", tags=["FHIR"], summary="Batch: a Bundle of notes to score",
              openapi_extra={"requestBody": {"required": True, "content": {FHIR_JSON: {"example": {
                  "resourceType": "Bundle", "type": "batch",
                  "entry": [{"resource": EXAMPLE_DOCUMENT,
                             "request": {"method": "POST", "url": "DocumentReference/$score"}}]}}}}})
    async def batch(request: Request, principal: ScorerPrincipal):
        """A `batch` Bundle whose entries are notes (request POST DocumentReference/$score or no
        request); answered with a `batch-response` Bundle, each entry succeeding or failing alone."""
        body = await read_json_body(request)
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or body.get("type") != "batch":
            raise ApiError(400, "invalid", "POST /fhir takes a Bundle of type batch")
        entries = body.get("entry") or []
        if not isinstance(entries, list):
            raise ApiError(400, "structure", "Bundle.entry must be a list")
        if len(entries) > settings.max_batch_entries:
            raise ApiError(413, "too-long", f"at most {settings.max_batch_entries} entries per batch")
        out, versions, ids = [], set(), []
        for entry in entries:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            try:
                resources, version, _ = await service.score_note(resource, principal, None, "api", request.state.request_id)
                versions.add(version)
                out.append({"resource": collection(resources), "response": {"status": "200 OK"}})
                if isinstance(resource, dict) and resource.get("id"):
                    ids.append(f"{resource.get('resourceType')}/{resource['id']}")
            except ApiError as err:
                prom.observe_error(prom.route_template(request.scope), err.code)
                out.append({"resource": operation_outcome(err.code, err.diagnostics),
                            "response": {"status": str(err.status), "outcome": operation_outcome(err.code, err.diagnostics)}})
        await audit(request, principal, "ok", 200, None, f"{len(entries)} entries", ids, "score-batch")
        return fhir({"resourceType": "Bundle", "type": "batch-response", "entry": out},
                    headers={"X-Model-Version": ",".join(sorted(versions))})

    @app.get("/fhir/metadata", tags=["FHIR"], summary="CapabilityStatement")
    async def metadata():
        info = await backend.model_info()
        return fhir(capability_statement(settings.base_url, software_version, info.contract, started))

    @app.post("/v1/score", tags=["JSON"], response_model=PlainScoreResponse, summary="Score one note (plain JSON)")
    async def score_plain(request: Request, body: PlainScoreRequest, principal: ScorerPrincipal):
        resource = {"resourceType": "DocumentReference", "status": "current", "id": body.note_id,
                    "subject": {"reference": f"Patient/{body.patient_id}"},
                    "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                                "data": _b64(body.text)}}]}
        if not body.note_id:
            del resource["id"]
        if body.encounter_id:
            resource["context"] = {"encounter": [{"reference": f"Encounter/{body.encounter_id}"}]}
        if body.note_type:
            info = await backend.model_info()
            spec = next(s for s in info.contract.note_types if s.name == body.note_type)
            resource["type"] = {"coding": [{"system": "http://loinc.org", "code": spec.loinc[0]}]}
        resources, version, replayed = await service.score_note(resource, principal, body.tasks, "api",
                                                                 request.state.request_id)
        await audit(request, principal, "ok", 200, None, "replayed" if replayed else "", [], "score")
        return PlainScoreResponse(request_id=request.state.request_id, model={"version": version},
                                  scores=plain_scores(resources), replayed=replayed)

    @app.get("/healthz", tags=["ops"], include_in_schema=True)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz():
        try:
            info = await backend.model_info()
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": type(exc).__name__}, status_code=503)
        return {"status": "ready", "model": {"name": info.name, "version": info.version, "kind": info.kind}}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics():
        # every process's metrics (ingress and scorer replicas) plus registered collectors;
        # built in a thread: extra collectors may query the store
        body = metrics_text() if metrics_text else await run_in_threadpool(prom.exposition)
        return PlainTextResponse(body, media_type=prom.CONTENT_TYPE)

    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="swagger-ui-static")
    app.include_router(docs_router(app.openapi_url, app.title))
    for router in routers:
        app.include_router(router)
    return app


def plain_scores(resources: list[dict]) -> dict[str, PlainScore]:
    out = {}
    for r in resources:
        task = r["identifier"][0]["value"].split("|")[-2]
        probs = {p["outcome"]["coding"][0]["code"]: p["probabilityDecimal"] for p in r["prediction"]}
        risk = r["prediction"][0].get("qualitativeRisk", {}).get("coding", [{}])[0].get("code")
        out[task] = PlainScore(probabilities=probs, risk=risk)
    return out


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8")).decode("ascii")
