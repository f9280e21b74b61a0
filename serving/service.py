"""Scoring one note, whoever asks (the FHIR and JSON API, CDS Hooks, Subscriptions, batch
scoring): the application logic, free of HTTP.

Every note follows one fixed sequence (`ScoringService.score_note`): parse, validate ids and
dates, choose tasks, answer from the store if this exact note was scored before (the replay key
carries the patient's identity), score, build RiskAssessments, persist, answer; a challenger
scores the same note in the shadow when configured. Bad input raises `ApiError` (an
OperationOutcome with a 4xx to the caller); no error or log line carries note text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from lang1ops.identifiers import FHIR_ID
from lang1ops.notes import ClinicalNote, NoteError, note_from_resource
from lang1ops.settings.serving import ApiSettings
from lang1ops.tasks import TaskContract
from serving.auth import Principal
from serving.fhir_output import risk_assessments
from serving.store import NewScore, Store

log = logging.getLogger("lang1ops.api")


@dataclass
class ScoreReply:
    probabilities: dict[str, list[float]]
    model_name: str
    model_version: str
    model_kind: str
    note_tokens: int
    truncated: bool
    encoding: bytes | None = None


@dataclass
class ModelInfo:
    name: str
    version: str
    kind: str
    contract: TaskContract


class ScoringBackend(Protocol):
    async def score(self, text: str, tasks: list[str]) -> ScoreReply: ...

    async def model_info(self) -> ModelInfo: ...

    async def contract_for(self, version: str) -> TaskContract: ...


class ApiError(Exception):
    """An error the caller sees as an OperationOutcome; `diagnostics` never holds note text."""

    def __init__(self, status: int, code: str, diagnostics: str):
        diagnostics = printable(diagnostics)
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics


def printable(text: str) -> str:
    """`text` as valid UTF-8 (a lone surrogate from a JSON escape becomes \\udxxx): an error
    message that quotes a field name must still be sendable and storable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def idempotency_key(note: ClinicalNote, tasks: list[str] | None) -> str:
    """The key under which an answer is stored and replayed.

    A replay may only ever return the answer for the same patient, encounter, note identity
    (resource type, id, version), text and tasks: all of them go into one digest, so two
    patients' notes with the same text, or one id re-sent about another patient, never share a
    key. The readable prefix (the note's reference, when it has an id) is for people reading
    the store; the key's length is bounded whatever the request holds."""
    identity = json.dumps([note.resource_type, note.resource_id, note.version_id, note.patient_id,
                           note.encounter_id, note.text_sha256, sorted(set(tasks)) if tasks else None],
                          separators=(",", ":"))
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()
    if not note.resource_id:
        return f"sha256:{digest}"
    reference = f"{note.resource_type}/{note.resource_id}"
    if note.version_id:
        reference += f"/_history/{note.version_id}"
    return f"{reference}#{digest}"


class ScoringService:
    def __init__(self, backend: ScoringBackend, store: Store, settings: ApiSettings,
                 shadow: ScoringBackend | None = None):
        self.backend, self.store, self.settings, self.shadow = backend, store, settings, shadow
        self._shadow_tasks: set[asyncio.Task] = set()

    async def score_note(self, resource: Any, principal: Principal, tasks: list[str] | None, source: str,
                         request_id: str) -> tuple[list[dict], str, bool]:
        """(RiskAssessments, model version, replayed?) for one FHIR resource."""
        if not isinstance(resource, dict):
            raise ApiError(400, "structure", "expected a JSON object (a FHIR resource)")
        try:
            note = note_from_resource(resource, max_bytes=self.settings.max_note_bytes)
        except NoteError as err:
            raise ApiError(err.http_status, err.issue_code, err.message) from None
        except (TypeError, AttributeError, ValueError, LookupError, RecursionError) as exc:
            # a shape the reader did not foresee is still the request's fault, not the service's
            log.warning("note could not be read: %s", type(exc).__name__)
            raise ApiError(400, "invalid", f"the {printable(str(resource.get('resourceType'))[:64])} could not "
                                           f"be read ({type(exc).__name__})") from None
        if not note.patient_id:
            raise ApiError(422, "required", f"{note.resource_type}.subject is required to assess a patient's risk")
        for what, value in (("id", note.resource_id), ("subject", note.patient_id), ("encounter", note.encounter_id),
                            ("meta.versionId", note.version_id)):
            if value is not None and not FHIR_ID.fullmatch(value):
                raise ApiError(400, "value", f"{note.resource_type}.{what} is not a valid FHIR id "
                                             "([A-Za-z0-9-.], at most 64 characters)")
        if note.date is not None and not (self.settings.earliest_note_date <= note.date <= datetime.now(UTC)
                                          + timedelta(days=self.settings.max_note_days_ahead)):
            raise ApiError(422, "value", f"{note.resource_type} date is implausible (before "
                                         f"{self.settings.earliest_note_date.date()} or in the future)")
        info = await self.backend.model_info()
        tasks = list(dict.fromkeys(tasks)) if tasks else None  # a task asked twice is answered once
        chosen = self.choose_tasks(note, tasks, info.contract)
        key = idempotency_key(note, tasks)
        conflict = await run_in_threadpool(self.store.conflicting_score, note.resource_type, note.resource_id,
                                           note.version_id, note.patient_id, note.encounter_id, note.text_sha256)
        if conflict is not None:
            raise ApiError(409, "conflict", f"{note.resource_type}/{note.resource_id} was already scored with a "
                                            f"different {conflict}; a changed note needs a new meta.versionId")
        stored = await run_in_threadpool(self.store.find_score, key)
        if stored is not None:
            return stored.response, stored.model_version, True
        started = time.perf_counter()
        reply = await self.backend.score(note.text, chosen)
        # the answer is described by the contract of the version that answered (a new champion may have arrived)
        contract = await self.backend.contract_for(reply.model_version)
        scored_at = datetime.now(UTC)
        resources = risk_assessments(note, contract, reply.probabilities, idempotency_key=key,
                                     model_name=reply.model_name, model_version=reply.model_version, scored_at=scored_at,
                                     bands=self.settings.risk_bands or None)
        record = NewScore(
            idempotency_key=key, request_id=request_id, resource_type=note.resource_type, resource_id=note.resource_id,
            version_id=note.version_id, text_sha256=note.text_sha256, note_type=str(note.note_type or ""),
            patient_id=note.patient_id, encounter_id=note.encounter_id, note_date=note.date, model_name=reply.model_name,
            model_version=reply.model_version, model_kind=reply.model_kind, shadow=False, source=source,
            probabilities=reply.probabilities, response=resources, note_tokens=reply.note_tokens, truncated=reply.truncated,
            latency_ms=(time.perf_counter() - started) * 1000, encoding=reply.encoding, scored_at=scored_at)
        saved, created = await run_in_threadpool(self.store.save_score, record)
        if self.shadow is not None and created:
            task = asyncio.create_task(self._score_shadow(note, chosen, key, request_id, source))
            self._shadow_tasks.add(task)  # keep a reference until it finishes
            task.add_done_callback(self._shadow_tasks.discard)
        return saved.response, saved.model_version, not created

    async def _score_shadow(self, note: ClinicalNote, tasks: list[str], key: str, request_id: str, source: str) -> None:
        """The challenger answers the same note; stored with shadow=True, never returned.
        Best effort: a missing or failing challenger never affects the caller."""
        try:
            reply = await self.shadow.score(note.text, tasks)
            contract = await self.shadow.contract_for(reply.model_version)
            resources = risk_assessments(note, contract, reply.probabilities, idempotency_key=key,
                                         model_name=reply.model_name, model_version=reply.model_version,
                                         scored_at=datetime.now(UTC), bands=self.settings.risk_bands or None)
            await run_in_threadpool(self.store.save_score, NewScore(
                idempotency_key=key, request_id=request_id, resource_type=note.resource_type, resource_id=note.resource_id,
                version_id=note.version_id, text_sha256=note.text_sha256, note_type=str(note.note_type or ""),
                patient_id=note.patient_id, encounter_id=note.encounter_id, note_date=note.date,
                model_name=reply.model_name, model_version=reply.model_version, model_kind=reply.model_kind, shadow=True,
                source=source, probabilities=reply.probabilities, response=resources, note_tokens=reply.note_tokens,
                truncated=reply.truncated, latency_ms=0.0, encoding=reply.encoding))
        except Exception as exc:
            log.warning("shadow scoring skipped: %s", type(exc).__name__)

    @staticmethod
    def choose_tasks(note: ClinicalNote, tasks: list[str] | None, contract: TaskContract) -> list[str]:
        if tasks:
            unknown = [t for t in tasks if t not in contract.names]
            if unknown:
                raise ApiError(400, "value", f"unknown task(s) {', '.join(unknown)}; this model answers "
                                             f"{', '.join(contract.names)}")
            return tasks
        chosen = [t.name for t in contract.tasks_for(note.note_type)] if note.note_type else []
        if not chosen:
            kinds = ", ".join(f"{s.display} (LOINC {', '.join(s.loinc)})" for s in contract.note_types)
            raise ApiError(422, "not-supported", f"the document type is not one this model scores ({kinds}); "
                                                 "ask for tasks explicitly with the `task` parameter")
        return chosen
