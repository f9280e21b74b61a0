"""Picking and scoring the notes a card reports: for each note type the service's tasks read, the
latest note of the admission, answered from the stored score of that note or scored now
(ScoringService.score_note: the same idempotency key as the FHIR API, so a note scored by any path
is not scored twice); a note that cannot be read gives way to the next newest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from integration.cds_hooks.models import CdsRequest
from integration.cds_hooks.reader import Candidate, FhirReader, _bundle_resources, _candidates, _render
from integration.cds_hooks.services import CdsService
from lang1ops.settings.cds_hooks import CdsHooksSettings
from lang1ops.tasks import NoteType, TaskContract
from serving.auth import Principal
from serving.service import ApiError

log = logging.getLogger("lang1ops.cds_hooks")


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


async def gather(service: CdsService, body: CdsRequest, principal: Principal, contract: TaskContract,
                 scoring: Any, request_id: str, settings: CdsHooksSettings) -> Gathered:
    """The notes the service's tasks read, from the `notes` prefetch or else a search of fhirServer,
    and their scores (score_latest)."""
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


def _kind_name(contract: TaskContract, kind: NoteType) -> str:
    return next((s.display for s in contract.note_types if s.name == kind), kind.value).lower()
