"""Persistence of scores, audit records, drift encodings and true outcomes: the `Store`'s
operations on the store's tables (`lang1ops.store_schema`).

One `Store` over SQLAlchemy 2.x: SQLite by default (`sqlite:///var/lang1ops.sqlite`), PostgreSQL
by URL (`postgresql+psycopg://user@host:5432/db`), the same code for both (the engine, SQLite's
pragmas and write lock: `lang1ops.database`). Every table of the store is created and migrated
by `lang1ops.migrations` (Alembic) when a `Store` is constructed.

Note text is PHI and never reaches this module: a scored note is identified by its FHIR
reference and the sha256 of its text. Identifier columns are bounded strings without
whitespace (validated before writing), so a sentence of a note cannot be stored by mistake,
and neither errors nor logs echo a value (the engine hides SQL parameters in its errors).

Times are timezone-aware UTC on both backends (`UTCDateTime`); naive datetimes are refused.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import Engine, String, delete, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from lang1ops.database import aware_utc, make_engine, write_engine
from lang1ops.identifiers import FHIR_ID, FHIR_ID_CHARS
from lang1ops.migrations import upgrade_schema
from lang1ops.store_schema import (
    ENDPOINT_LEN,
    ID_LEN,
    KEY_LEN,
    NAME_LEN,
    SHORT_LEN,
    AuditRecord,
    NoteEncoding,
    Outcome,
    Prediction,
    ScoredNote,
    TokenUse,
)

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

SOURCES = ("api", "subscription", "bulk", "cds")

# Identifier columns: bounded, no whitespace (a note sentence cannot pass).
_TOKEN = re.compile(r"\S+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_TASK = re.compile(r"[A-Za-z0-9_\-]{1,32}")
# "DocumentReference/<id>/_history/<version>" or "sha256:<hash>", the caller may qualify it
# (e.g. "...#sha256:<hash>", "...?tasks=los,cci"); never whitespace.
_IDEMPOTENCY_KEY = re.compile(rf"(?:[A-Z][A-Za-z]{{0,63}}/{FHIR_ID_CHARS}|sha256:[0-9a-f]{{64}})\S*")

_AUDIT_FIELDS = {c.key for c in AuditRecord.__table__.columns} - {"id"}


# --------------------------------------------------------------------------------------------- API types


@dataclass
class NewScore:
    """A score to persist. `idempotency_key` is built by the caller:
    "DocumentReference/<id>/_history/<version>" or "sha256:<text hash>"."""

    idempotency_key: str
    request_id: str
    resource_type: str
    resource_id: str | None
    version_id: str | None
    text_sha256: str
    note_type: str | None
    patient_id: str | None
    encounter_id: str | None
    note_date: datetime | None
    model_name: str
    model_version: str
    model_kind: str
    shadow: bool
    source: str
    probabilities: dict[str, list[float]]
    response: dict | list | None
    note_tokens: int
    truncated: bool
    latency_ms: float
    encoding: bytes | None = None
    scored_at: datetime | None = None


@dataclass(frozen=True)
class StoredScore:
    """A persisted score, detached from any session: enough to answer the request again."""

    id: int
    request_id: str
    idempotency_key: str
    model_version: str
    model_name: str
    scored_at: datetime
    probabilities: dict[str, list[float]]
    response: dict | list | None
    shadow: bool
    model_kind: str
    resource_type: str
    resource_id: str | None
    version_id: str | None
    text_sha256: str
    note_type: str | None
    patient_id: str | None
    encounter_id: str | None
    note_date: datetime | None
    source: str
    note_tokens: int
    truncated: bool
    latency_ms: float


def _stored(note: ScoredNote) -> StoredScore:
    by_task: dict[str, list[tuple[int, float]]] = {}
    for p in note.predictions:  # insertion (id) order keeps the caller's task order
        by_task.setdefault(p.task, []).append((p.class_index, p.probability))
    probabilities = {task: [p for _, p in sorted(row)] for task, row in by_task.items()}
    return StoredScore(
        id=note.id,
        request_id=note.request_id,
        idempotency_key=note.idempotency_key,
        model_version=note.model_version,
        model_name=note.model_name,
        scored_at=note.scored_at,
        probabilities=probabilities,
        response=note.response,
        shadow=note.shadow,
        model_kind=note.model_kind,
        resource_type=note.resource_type,
        resource_id=note.resource_id,
        version_id=note.version_id,
        text_sha256=note.text_sha256,
        note_type=note.note_type,
        patient_id=note.patient_id,
        encounter_id=note.encounter_id,
        note_date=note.note_date,
        source=note.source,
        note_tokens=note.note_tokens,
        truncated=note.truncated,
        latency_ms=note.latency_ms,
    )


# --------------------------------------------------------------------------------------------- validation
# Messages name the field, never its value (a value in the wrong field could be PHI).


def _str_value(value: Any) -> Any:
    return value.value if hasattr(value, "value") and isinstance(value.value, str) else value


def _check(name: str, value: Any, pattern: re.Pattern[str], max_len: int, optional: bool = False) -> str | None:
    value = _str_value(value)
    if optional and (value is None or value == ""):
        return value
    if not isinstance(value, str) or len(value) > max_len or not pattern.fullmatch(value):
        raise ValueError(f"{name} is not a valid identifier (at most {max_len} characters, no whitespace)")
    return value


def _probabilities(probabilities: Mapping[str, Any]) -> dict[str, list[float]]:
    if not isinstance(probabilities, Mapping):
        raise TypeError("probabilities must be a mapping task -> list of class probabilities")
    out: dict[str, list[float]] = {}
    for task, values in probabilities.items():
        _check("task name", task, _TASK, SHORT_LEN)
        row = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        if not row or not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in row):
            raise ValueError(f"probabilities of task {task!r} must be a non-empty list of numbers in [0, 1]")
        out[task] = row
    return out


def _encoding_bytes(encoding: Any) -> bytes | None:
    if encoding is None:
        return None
    if isinstance(encoding, np.ndarray):
        return np.ascontiguousarray(encoding, dtype=np.float32).reshape(-1).tobytes()
    data = bytes(encoding)
    if not data or len(data) % 4:
        raise ValueError("encoding must be float32 bytes (a non-empty multiple of 4 bytes)")
    return data


def _new_note(score: NewScore) -> ScoredNote:
    sha = score.text_sha256.lower() if isinstance(score.text_sha256, str) else score.text_sha256
    key = score.idempotency_key
    if not isinstance(key, str) or len(key) > KEY_LEN or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValueError(
            "idempotency_key must start with '<ResourceType>/<id>' or 'sha256:<64 hex digits>', "
            f"have no whitespace and at most {KEY_LEN} characters"
        )
    source = _str_value(score.source)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}")
    if score.note_tokens is None or int(score.note_tokens) < 0:
        raise ValueError("note_tokens must be a non-negative integer")
    probabilities = _probabilities(score.probabilities)
    encoding = _encoding_bytes(score.encoding)
    scored_at = aware_utc(score.scored_at, "scored_at") if score.scored_at is not None else datetime.now(UTC)
    note = ScoredNote(
        request_id=_check("request_id", score.request_id, _TOKEN, ID_LEN),
        idempotency_key=key,
        resource_type=_check("resource_type", score.resource_type, _RESOURCE_TYPE, ID_LEN),
        resource_id=_check("resource_id", score.resource_id, FHIR_ID, ID_LEN, optional=True),
        version_id=_check("version_id", score.version_id, FHIR_ID, ID_LEN, optional=True),
        text_sha256=_check("text_sha256", sha, _SHA256, 64),
        note_type=_check("note_type", score.note_type, _TOKEN, ID_LEN, optional=True),
        patient_id=_check("patient_id", score.patient_id, _TOKEN, ID_LEN, optional=True),
        encounter_id=_check("encounter_id", score.encounter_id, _TOKEN, ID_LEN, optional=True),
        note_date=aware_utc(score.note_date, "note_date") if score.note_date is not None else None,
        scored_at=scored_at,
        model_name=_check("model_name", score.model_name, _TOKEN, NAME_LEN),
        model_version=_check("model_version", score.model_version, _TOKEN, NAME_LEN),
        model_kind=_check("model_kind", score.model_kind, _TOKEN, SHORT_LEN),
        shadow=bool(score.shadow),
        source=source,
        note_tokens=int(score.note_tokens),
        truncated=bool(score.truncated),
        latency_ms=float(score.latency_ms),
        response=score.response,
    )
    note.predictions = [
        Prediction(task=task, class_index=k, probability=p)
        for task, row in probabilities.items()
        for k, p in enumerate(row)
    ]
    if encoding is not None:
        note.encoding = NoteEncoding(model_version=note.model_version, vector=encoding)
    return note


def _clip(value: Any, length: int) -> str | None:
    if value is None:
        return None
    value = str(_str_value(value))
    return value if len(value) <= length else value[: length - 1] + "…"


# --------------------------------------------------------------------------------------------- store


def _timestamps(values: Any) -> Any:
    """UTC pandas timestamps; a stored time outside pandas' range (a note dated 9999-12-31,
    accepted before dates were checked at the door) reads as NaT instead of failing every
    reader of the window (monitoring, the MLOps page)."""
    import pandas as pd

    out = pd.to_datetime(values, utc=True, errors="coerce")
    lost = int(out.isna().sum() - pd.isna(values).sum())
    if lost:
        log.warning("%d stored time(s) outside the representable range read as NaT", lost)
    return out


def _window(column: Any, start: datetime, end: datetime) -> list[Any]:
    return [column >= aware_utc(start, "start"), column < aware_utc(end, "end")]


class Store:
    """Scores, audit log, encodings and outcomes in SQLite or PostgreSQL.

    Safe to use from several threads; each process (e.g. each Ray replica) builds its own
    `Store` from the URL. Every method runs in its own short transaction.
    """

    def __init__(self, url: str | URL) -> None:
        self._engine = make_engine(url)
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine(self._engine), expire_on_commit=False)
        upgrade_schema(self._engine)  # every table of the store, in one place (lang1ops/migrations)

    # -- plumbing

    @property
    def url(self) -> URL:
        """The database URL; its str() and repr() hide the password."""
        return self._engine.url

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return self._engine.dialect.name  # type: ignore[return-value]

    @property
    def engine(self) -> Engine:
        return self._engine

    def __repr__(self) -> str:
        return f"Store('{self.url}')"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def dispose(self) -> None:
        """Close every pooled connection (call before a process exits or forks)."""
        self._engine.dispose()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    # -- scores

    def find_score(self, idempotency_key: str, shadow: bool = False) -> StoredScore | None:
        """The newest result for that key (any model version): non-shadow unless `shadow`."""
        with self._reading() as session:
            note = session.scalars(
                select(ScoredNote)
                .where(ScoredNote.idempotency_key == idempotency_key, ScoredNote.shadow.is_(bool(shadow)))
                .order_by(ScoredNote.scored_at.desc(), ScoredNote.id.desc())
                .limit(1)
                .options(selectinload(ScoredNote.predictions))
            ).first()
            return None if note is None else _stored(note)

    def conflicting_score(self, resource_type: str, resource_id: str | None, version_id: str | None,
                          patient_id: str | None, encounter_id: str | None, text_sha256: str) -> str | None:
        """What differs ("subject", "encounter" or "text") when this note identity was already
        scored with other content, else None.

        A resource id names one document: the same id about another patient is refused (a
        correction comes as a new version). One id *and* version names one content: a
        different encounter or text under it is refused too. An id without a version may
        change its text (an amended note) and is scored afresh."""
        if not resource_id:
            return None
        conditions = [ScoredNote.resource_type == resource_type, ScoredNote.resource_id == resource_id,
                      ScoredNote.shadow.is_(False),
                      ScoredNote.version_id == version_id if version_id else ScoredNote.version_id.is_(None)]
        with self._reading() as session:  # one query: the distinct contents already scored under this identity
            scored = session.execute(select(ScoredNote.patient_id, ScoredNote.encounter_id, ScoredNote.text_sha256)
                                     .where(*conditions).distinct()).all()
        if any(patient != patient_id for patient, _, _ in scored):
            return "subject"
        if version_id and any(encounter != encounter_id for _, encounter, _ in scored):
            return "encounter"
        if version_id and any(sha != text_sha256 for _, _, sha in scored):
            return "text"
        return None

    def _existing(self, session: Session, key: str, model_version: str, shadow: bool) -> ScoredNote | None:
        return session.scalars(
            select(ScoredNote)
            .where(
                ScoredNote.idempotency_key == key,
                ScoredNote.model_version == model_version,
                ScoredNote.shadow.is_(shadow),
            )
            .options(selectinload(ScoredNote.predictions))
        ).first()

    def save_score(self, score: NewScore) -> tuple[StoredScore, bool]:
        """Persist a score, its per-class predictions and encoding in one transaction.

        Returns (stored, created). If (idempotency_key, model_version, shadow) is already
        stored, also by a concurrent writer, the existing score comes back with created=False.
        """
        note = _new_note(score)
        try:
            with self._write.begin() as session:
                existing = self._existing(session, note.idempotency_key, note.model_version, note.shadow)
                if existing is not None:
                    return _stored(existing), False
                session.add(note)
                session.flush()
                stored = _stored(note)
            return stored, True
        except IntegrityError:
            # A concurrent duplicate committed between our check and insert (PostgreSQL).
            with self._reading() as session:
                existing = self._existing(session, note.idempotency_key, note.model_version, note.shadow)
                if existing is None:
                    raise
                log.debug("concurrent duplicate score for one key: returning the first (id %s)", existing.id)
                return _stored(existing), False

    def purge_scores(self, before: datetime) -> int:
        """Delete scored notes scored before `before` (retention); their predictions and
        encodings go with them (ON DELETE CASCADE). Returns the number of notes deleted."""
        with self._write.begin() as session:
            result = session.execute(
                delete(ScoredNote).where(ScoredNote.scored_at < aware_utc(before, "before")),
                execution_options={"synchronize_session": False},
            )
            return int(result.rowcount or 0)

    def count_scores_before(self, before: datetime) -> int:
        """How many scored notes `purge_scores(before)` would delete."""
        with self._reading() as session:
            return int(session.scalar(select(func.count(ScoredNote.id)).where(
                ScoredNote.scored_at < aware_utc(before, "before"))) or 0)

    def scores_between(
        self,
        start: datetime,
        end: datetime,
        include_shadow: bool = False,
        by: Literal["scored_at", "note_date"] = "scored_at",
    ) -> pandas.DataFrame:
        """One row per scored note with `start <= <by> < end`, ordered by that time: ids, dates,
        note_type, model, shadow, note_tokens, truncated, latency_ms and a column
        "p_<task>_<k>" per task and class."""
        import pandas as pd

        column = {"scored_at": ScoredNote.scored_at, "note_date": ScoredNote.note_date}[by]
        conditions = _window(column, start, end)
        if not include_shadow:
            conditions.append(ScoredNote.shadow.is_(False))
        fields = [
            ScoredNote.id, ScoredNote.request_id, ScoredNote.idempotency_key, ScoredNote.resource_type,
            ScoredNote.resource_id, ScoredNote.version_id, ScoredNote.text_sha256, ScoredNote.patient_id,
            ScoredNote.encounter_id, ScoredNote.note_type, ScoredNote.note_date, ScoredNote.scored_at,
            ScoredNote.model_name, ScoredNote.model_version, ScoredNote.model_kind, ScoredNote.shadow,
            ScoredNote.source, ScoredNote.note_tokens, ScoredNote.truncated, ScoredNote.latency_ms,
        ]
        with self._reading() as session:
            notes = session.execute(
                select(*fields).where(*conditions).order_by(column, ScoredNote.id)
            ).all()
            predictions = session.execute(
                select(Prediction.scored_note_id, Prediction.task, Prediction.class_index, Prediction.probability)
                .join(ScoredNote, Prediction.scored_note_id == ScoredNote.id)
                .where(*conditions)
            ).all()
        names = [f.key for f in fields]
        frame = pd.DataFrame.from_records([tuple(r) for r in notes], columns=names)
        for name in ("note_date", "scored_at"):
            frame[name] = _timestamps(frame[name])
        if not predictions:
            return frame
        p = pd.DataFrame.from_records(
            [tuple(r) for r in predictions], columns=["id", "task", "class_index", "probability"]
        )
        p["column"] = "p_" + p["task"] + "_" + p["class_index"].astype(str)
        wide = p.pivot(index="id", columns="column", values="probability")
        order = p.drop_duplicates("column").sort_values(["task", "class_index"])["column"].tolist()
        wide = wide[order].reset_index()
        wide.columns.name = None
        return frame.merge(wide, on="id", how="left")

    def encodings_between(
        self, start: datetime, end: datetime, model_version: str | None = None
    ) -> tuple[list[int], np.ndarray]:
        """(scored_note ids, float32 matrix n x d) of the encodings of notes scored in [start, end)."""
        conditions = _window(ScoredNote.scored_at, start, end)
        if model_version is not None:
            conditions.append(NoteEncoding.model_version == model_version)
        with self._reading() as session:
            rows = session.execute(
                select(NoteEncoding.scored_note_id, NoteEncoding.vector)
                .join(ScoredNote, NoteEncoding.scored_note_id == ScoredNote.id)
                .where(*conditions)
                .order_by(ScoredNote.scored_at, ScoredNote.id)
            ).all()
        if not rows:
            return [], np.empty((0, 0), dtype=np.float32)
        vectors = [np.frombuffer(bytes(vector), dtype=np.float32) for _, vector in rows]
        if len({v.shape[0] for v in vectors}) > 1:
            raise ValueError("encodings of different sizes in this window: pass model_version")
        return [int(i) for i, _ in rows], np.stack(vectors)

    # -- token replay

    def first_token_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True the first time (issuer, jti) is recorded while unexpired; False for a replay.
        Expired entries are dropped on the way (a jti may be reused once its token has expired)."""
        now = datetime.now(UTC)
        issuer, jti = issuer[:ENDPOINT_LEN], jti[:ENDPOINT_LEN]
        try:
            with self._write.begin() as session:
                session.execute(delete(TokenUse).where(TokenUse.expires_at <= now),
                                execution_options={"synchronize_session": False})
                session.add(TokenUse(issuer=issuer, jti=jti, expires_at=aware_utc(expires_at, "expires_at")))
            return True
        except IntegrityError:  # unique (issuer, jti): already used, by this process or another
            return False

    # -- audit

    def audit(self, **fields: Any) -> None:
        """Append one audit record. Fields: request_id, actor, role, action, endpoint,
        resource_type, resource_ids (list of ids), outcome ("ok" or an OperationOutcome code),
        http_status, latency_ms, detail (short, never PHI), time (default now, UTC)."""
        unknown = set(fields) - _AUDIT_FIELDS
        if unknown:
            raise TypeError(f"unknown audit fields: {', '.join(sorted(unknown))}")
        if not fields.get("action"):
            raise ValueError("an audit record needs an action")
        lengths = {c.key: c.type.length for c in AuditRecord.__table__.columns if isinstance(c.type, String)}
        values: dict[str, Any] = {k: _clip(v, lengths[k]) if k in lengths else v for k, v in fields.items()}
        values["time"] = aware_utc(fields["time"], "time") if fields.get("time") is not None else datetime.now(UTC)
        values["outcome"] = values.get("outcome") or "ok"
        ids = fields.get("resource_ids")
        if ids is not None:
            if isinstance(ids, str | bytes):
                raise TypeError("resource_ids must be a list of ids")
            values["resource_ids"] = [str(i) for i in ids]
        for name in ("http_status",):
            if values.get(name) is not None:
                values[name] = int(values[name])
        if values.get("latency_ms") is not None:
            values["latency_ms"] = float(values["latency_ms"])
        with self._write.begin() as session:
            session.add(AuditRecord(**values))

    def audit_records(self, limit: int = 100, action: str | None = None) -> list[dict]:
        """The newest audit records first, as plain dicts."""
        query = select(AuditRecord).order_by(AuditRecord.time.desc(), AuditRecord.id.desc()).limit(int(limit))
        if action is not None:
            query = query.where(AuditRecord.action == action)
        columns = [c.key for c in AuditRecord.__table__.columns]
        with self._reading() as session:
            return [{name: getattr(r, name) for name in columns} for r in session.scalars(query)]

    # -- outcomes

    def record_outcome(
        self,
        patient_id: str | None,
        encounter_id: str,
        task: str,
        label: int,
        observed_at: datetime,
        source: str | None,
    ) -> bool:
        """Insert or update the true label of (encounter, task). True if new or changed."""
        values = {
            "patient_id": _check("patient_id", patient_id, _TOKEN, ID_LEN, optional=True),
            "encounter_id": _check("encounter_id", encounter_id, _TOKEN, ID_LEN),
            "task": _check("task", task, _TASK, SHORT_LEN),
            "label": int(label),
            "observed_at": aware_utc(observed_at, "observed_at"),
            "source": _check("source", source, _TOKEN, ID_LEN, optional=True),
            "recorded_at": datetime.now(UTC),
        }
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(Outcome).values(**values)
        excluded = statement.excluded
        changed = (
            (Outcome.label != excluded.label)
            | Outcome.observed_at.is_distinct_from(excluded.observed_at)
            | Outcome.source.is_distinct_from(excluded.source)
            | Outcome.patient_id.is_distinct_from(excluded.patient_id)
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Outcome.encounter_id, Outcome.task],
            set_={name: excluded[name] for name in ("patient_id", "label", "observed_at", "source", "recorded_at")},
            where=changed,
        ).returning(Outcome.id)
        with self._write.begin() as session:
            return session.execute(statement).first() is not None

    def outcomes(
        self,
        task: str | None = None,
        since: datetime | None = None,
        by: Literal["observed_at", "recorded_at"] = "observed_at",
    ) -> pandas.DataFrame:
        """Outcomes (optionally of one task, with `<by> >= since`), ordered by that time."""
        import pandas as pd

        column = {"observed_at": Outcome.observed_at, "recorded_at": Outcome.recorded_at}[by]
        names = ["id", "patient_id", "encounter_id", "task", "label", "observed_at", "source", "recorded_at"]
        query = select(*(getattr(Outcome, n) for n in names)).order_by(column, Outcome.id)
        if task is not None:
            query = query.where(Outcome.task == task)
        if since is not None:
            query = query.where(column >= aware_utc(since, "since"))
        with self._reading() as session:
            rows = session.execute(query).all()
        frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=names)
        frame["label"] = frame["label"].astype("int64")
        for name in ("observed_at", "recorded_at"):
            frame[name] = _timestamps(frame[name])
        return frame
