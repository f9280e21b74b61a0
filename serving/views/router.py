"""HTTP endpoints of the operational views: JSON / CSV / FHIR APIs under /views/api and the
pages under /ui.

The pages are static shells (HTML, CSS and a small vanilla script, no data in them): the
script keeps the caller's API key or JWT in sessionStorage and calls the JSON APIs with
`Authorization: Bearer`, so the pages are protected exactly like the API. Reading needs the
reader role; setting an outreach status needs a write role (`ViewsSettings.outreach_role`,
care_manager by default; admin holds every role): readers are dashboards and auditors and must not
change workflow state.
"""

# no `from __future__ import annotations`: the endpoints use Annotated aliases local to the factory,
# which FastAPI can only see as real objects, not as strings resolved in module globals
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lang1ops.identifiers import FHIR_ID
from lang1ops.settings.views import ViewsSettings
from serving.auth import Principal, Role, require_role
from serving.service import ApiError
from serving.views import bed_board as beds
from serving.views import mlops
from serving.views.census import Census
from serving.views.outreach import OutreachLog, OutreachStatus
from serving.views.scores import latest_scores
from serving.views.worklist import FACTORS_NOTE, TIERS, build_worklist, filter_rows, to_csv, to_fhir_list

HERE = Path(__file__).parent
PAGES = {"worklist": "Readmission worklist", "beds": "Bed board", "mlops": "MLOps"}
STATIC = {"views.js": "text/javascript", "views.css": "text/css"}

ReaderPrincipal = Annotated[Principal, Depends(require_role(Role.READER))]


class Tier(StrEnum):
    HIGH = "high"
    MODERATE = "moderate"
    LOW = "low"
    NEGLIGIBLE = "negligible"
    UNSCORED = "unscored"


class OutreachUpdate(BaseModel):
    """A care manager's outreach status for one encounter (no free text: it would invite PHI)."""

    status: OutreachStatus = Field(description="not-contacted, attempted, reached, declined or scheduled.")

    model_config = {"json_schema_extra": {"examples": [{"status": "reached"}]}}


def _tables(request: Request) -> tuple[Census, OutreachLog]:
    state = request.app.state
    if getattr(state, "views_tables", None) is None:  # made once per app, on the store's engine
        state.views_tables = (Census(state.store.engine), OutreachLog(state.store.engine))
    return state.views_tables


EARLIEST_AS_OF, LATEST_AS_OF = datetime(1900, 1, 2), datetime(2199, 12, 31)


def views_router(settings: ViewsSettings | None = None, registry_dir: Path | None = None,
                 model_name: str = "lang1-ops", history: mlops.HistoryReader | None = None,
                 performance: mlops.Performance | None = None) -> APIRouter:
    """The views' router; `registry_dir` and `model_name` say whose promotions the MLOps page lists,
    `history` and `performance` (monitoring's, passed by the service's assembly) its drift checks,
    loop events and AUROC by month."""
    settings = settings or ViewsSettings()
    zone = ZoneInfo(settings.timezone)
    try:
        writer_role = Role(settings.outreach_role)
    except ValueError:
        raise ValueError(f"views.outreach_role {settings.outreach_role!r} is not a role") from None
    if writer_role == Role.READER:
        raise ValueError("views.outreach_role must be a write role (care_manager, scorer or admin), not reader")
    WriterPrincipal = Annotated[Principal, Depends(require_role(writer_role))]
    router = APIRouter()

    def as_of_or_now(as_of: datetime | None) -> datetime:
        if as_of is None:
            # a replayed instant (demos over a past export, back-testing) or the real now
            return settings.as_of.astimezone(UTC) if settings.as_of else datetime.now(UTC)
        if not EARLIEST_AS_OF <= as_of.replace(tzinfo=None) <= LATEST_AS_OF:  # nor can it overflow below
            raise ApiError(400, "value", f"as_of must lie between {EARLIEST_AS_OF.year} and {LATEST_AS_OF.year}")
        return (as_of.replace(tzinfo=zone) if as_of.tzinfo is None else as_of).astimezone(UTC)

    async def contract_and_bands(request: Request):
        info = await request.app.state.service.backend.model_info()
        return info, request.app.state.api_settings.risk_bands

    async def worklist_rows(request: Request, as_of: datetime | None, unit: str | None, tier: list[Tier] | None,
                            status: str | None, discharged_from: date | None, discharged_to: date | None,
                            outreach: str | None):
        census, log = _tables(request)
        info, bands = await contract_and_bands(request)
        when = as_of_or_now(as_of)

        def load():
            stays = census.stays(when, timedelta(days=settings.recent_discharge_days))
            ids = [s.encounter_id for s in stays]
            return build_worklist(stays, latest_scores(request.app.state.store, ids, when), log.current(ids),
                                  info.contract, bands)

        rows = await run_in_threadpool(load)
        rows = filter_rows(rows, zone, unit, [t.value for t in tier] if tier else None, status, discharged_from,
                           discharged_to, outreach)
        return when, rows[:settings.worklist_limit], len(rows)

    Unit = Annotated[str | None, Query(max_length=128, description="Only this unit (exact name).")]
    Tiers = Annotated[list[Tier] | None, Query(description="Only these risk tiers (repeat).")]
    Status = Annotated[str | None, Query(pattern="^(admitted|discharged)$", description="admitted or discharged.")]
    AsOf = Annotated[datetime | None, Query(description="The census at this time (default now; naive = hospital time).")]
    DischargedFrom = Annotated[date | None, Query(description="Discharged on or after this day (hospital calendar).")]
    DischargedTo = Annotated[date | None, Query(description="Discharged on or before this day.")]
    Outreach = Annotated[str | None, Query(pattern="^(not-contacted|attempted|reached|declined|scheduled)$")]

    @router.get("/views/api/worklist", tags=["views"], summary="Readmission worklist (JSON)")
    async def worklist(request: Request, principal: ReaderPrincipal, unit: Unit = None, tier: Tiers = None,
                       status: Status = None, as_of: AsOf = None, discharged_from: DischargedFrom = None,
                       discharged_to: DischargedTo = None, outreach: Outreach = None):
        """Current and recently discharged inpatients, highest 30-day readmission risk first."""
        when, rows, total = await worklist_rows(request, as_of, unit, tier, status, discharged_from, discharged_to, outreach)
        census, _ = _tables(request)
        return {"as_of": when.isoformat(), "total": total, "returned": len(rows), "tiers": list(TIERS),
                "outreach_statuses": [s.value for s in OutreachStatus], "factors_note": FACTORS_NOTE,
                "units": await run_in_threadpool(census.units), "outreach_role": writer_role.value,
                "rows": [r.to_dict(i) for i, r in enumerate(rows, 1)]}

    @router.get("/views/api/worklist.csv", tags=["views"], summary="Readmission worklist (CSV)")
    async def worklist_csv(request: Request, principal: ReaderPrincipal, unit: Unit = None, tier: Tiers = None,
                           status: Status = None, as_of: AsOf = None, discharged_from: DischargedFrom = None,
                           discharged_to: DischargedTo = None, outreach: Outreach = None):
        when, rows, _ = await worklist_rows(request, as_of, unit, tier, status, discharged_from, discharged_to, outreach)
        name = f"readmission-worklist-{when.astimezone(zone).date().isoformat()}.csv"
        return Response(to_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @router.get("/views/api/worklist/fhir", tags=["views"], summary="Readmission worklist (FHIR List)")
    async def worklist_fhir(request: Request, principal: ReaderPrincipal, unit: Unit = None, tier: Tiers = None,
                            status: Status = None, as_of: AsOf = None, discharged_from: DischargedFrom = None,
                            discharged_to: DischargedTo = None, outreach: Outreach = None):
        when, rows, _ = await worklist_rows(request, as_of, unit, tier, status, discharged_from, discharged_to, outreach)
        title = "Readmission worklist" + (f", {unit}" if unit else "")
        return JSONResponse(to_fhir_list(rows, title, when), media_type="application/fhir+json")

    @router.put("/views/api/worklist/{encounter_id}/outreach", tags=["views"], summary="Set the outreach status")
    async def set_outreach(request: Request, encounter_id: str, body: OutreachUpdate, principal: WriterPrincipal):
        if not FHIR_ID.fullmatch(encounter_id):
            raise ApiError(400, "value", "the encounter id is not a valid FHIR id")
        census, log = _tables(request)
        stays = await run_in_threadpool(census.get, encounter_id)
        if stays is None:
            raise ApiError(404, "not-found", "no inpatient encounter with that id in the census")
        role = ",".join(sorted(principal.roles))
        saved = await run_in_threadpool(log.record, encounter_id, stays.patient_id, body.status, principal.subject, role,
                                        request.state.request_id)
        await run_in_threadpool(
            request.app.state.store.audit, request_id=request.state.request_id, actor=principal.subject, role=role,
            action="worklist-outreach", endpoint=f"PUT {request.url.path}", resource_type="Encounter",
            resource_ids=[f"Encounter/{encounter_id}"], outcome="ok", http_status=200, detail=f"status={saved.status.value}")
        return {"encounter": encounter_id, "outreach": saved.to_dict()}

    @router.get("/views/api/worklist/{encounter_id}/outreach", tags=["views"], summary="Outreach history")
    async def outreach_history(request: Request, encounter_id: str, principal: ReaderPrincipal):
        if not FHIR_ID.fullmatch(encounter_id):
            raise ApiError(400, "value", "the encounter id is not a valid FHIR id")
        _, log = _tables(request)
        return {"encounter": encounter_id, "history": [o.to_dict() for o in await run_in_threadpool(log.history, encounter_id)]}

    @router.get("/views/api/beds", tags=["views"], summary="Bed board")
    async def bed_board(request: Request, principal: ReaderPrincipal, as_of: AsOf = None,
                        days: Annotated[int | None, Query(ge=1, le=30)] = None, unit: Unit = None):
        """Per unit and day: expected discharges and occupied beds (mean, sd, band) from the LOS
        class probabilities of admitted patients, and the patients behind each number."""
        census, _ = _tables(request)
        when = as_of_or_now(as_of)
        info, _ = await contract_and_bands(request)
        if "los" not in info.contract.names:
            raise ApiError(422, "not-supported", "the serving model has no length-of-stay task")
        n_classes = info.contract.task("los").n_classes

        def load():
            stays = [s for s in census.stays(when) if s.discharged_at is None and (not unit or s.unit == unit)]
            scores = latest_scores(request.app.state.store, [s.encounter_id for s in stays], when)
            patients = []
            for s in stays:
                los = scores.get(s.encounter_id, {}).get("los")
                probs = los.probabilities if los is not None and len(los.probabilities) == n_classes else None
                patients.append(beds.Admitted(s.encounter_id, s.patient_id, s.unit, s.admitted_at, probs,
                                              los.model_version if los else None))
            return beds.bed_board(patients, when, days or settings.bed_board_days, zone,
                                  settings.los_tail_mean_extra_days, settings.band_coverage)

        return await run_in_threadpool(load)

    @router.get("/views/api/mlops", tags=["views"], summary="MLOps summary")
    async def mlops_summary(request: Request, principal: ReaderPrincipal):
        service = request.app.state.service
        info = await service.backend.model_info()
        store = request.app.state.store
        now = as_of_or_now(None)

        def load():
            return {"registry": mlops.registry_summary(registry_dir, model_name, settings.mlops_events),
                    "drift": mlops.drift_runs(store, settings.mlops_events, history),
                    "loop": mlops.loop_events(store, settings.mlops_events, history),
                    "performance": mlops.performance_by_month(store, info.contract, now, performance=performance)}

        data = await run_in_threadpool(load)
        return {"model": {"name": info.name, "version": info.version, "kind": info.kind,
                          "tasks": info.contract.names, "shadow": service.shadow is not None}, "now": now.isoformat(),
                **data}

    @router.get("/views/api/drift/{run_id}/report", tags=["views"], summary="A drift check's Evidently HTML report")
    async def drift_report(request: Request, run_id: str, principal: ReaderPrincipal):
        runs = await run_in_threadpool(mlops.drift_runs, request.app.state.store, 1000, history)
        run = next((r for r in runs if str(r.get("id")) == run_id), None)
        path = Path(run["html_path"]) if run and run.get("html_path") else None
        if path is None or not path.is_file():
            raise ApiError(404, "not-found", "no HTML report for that drift check")
        # Evidently's report runs its own inline scripts: sandboxed (an opaque origin, no access to
        # the pages' storage or the API) and unable to reach any network address
        return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": (
            "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval' blob:; "
            "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'")})

    def page(name: str):
        async def serve_page() -> HTMLResponse:
            layout = (HERE / "templates" / "layout.html").read_text()
            body = (HERE / "templates" / f"{name}.html").read_text()
            return HTMLResponse(layout.replace("{{title}}", PAGES[name]).replace("{{page}}", name)
                                .replace("{{body}}", body), headers={"Cache-Control": "no-store"})
        return serve_page

    for name in PAGES:
        router.add_api_route(f"/ui/{name}", page(name), methods=["GET"], include_in_schema=False)

    @router.get("/ui", include_in_schema=False)
    async def ui_home():
        return Response(status_code=307, headers={"Location": "/ui/worklist"})

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            raise ApiError(404, "not-found", "no such file")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name])

    return router
