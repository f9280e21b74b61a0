"""A durable job queue in the store: nothing accepted is lost across a restart.

One table (``work_jobs``) on the Store's engine. A job is enqueued once per
(queue, key); workers claim due jobs under a lease, then complete them or fail
them (exponential backoff, dead letter after ``max_attempts``). A worker that
dies holding a job only delays it: once the lease expires another claims it.
Claims are safe across processes: SQLite serialises them with BEGIN IMMEDIATE,
PostgreSQL with ``SELECT ... FOR UPDATE SKIP LOCKED``.

Payloads hold references and ids only, never note text (it is PHI); ``last_error``
holds what the caller passes, which must be an error type or code, not content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from lang1ops.database import BigId, UTCDateTime, table_metadata, write_engine
from lang1ops.settings.fhir_client import WorkQueueSettings
from serving.store import Store

JobStatus = Literal["pending", "claimed", "done", "dead"]


class _Base(DeclarativeBase):
    metadata = table_metadata()


class WorkJob(_Base):
    __tablename__ = "work_jobs"
    __table_args__ = (
        UniqueConstraint("queue", "key"),
        Index("ix_work_jobs_due", "queue", "status", "available_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512), doc="Idempotency key: enqueuing it again is a no-op.")
    payload: Mapped[dict] = mapped_column(JSON, doc="References and ids only; never note text.")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, doc="Claims so far (a crash mid-job counts).")
    available_at: Mapped[datetime] = mapped_column(UTCDateTime(), doc="Not claimed before this time (backoff).")
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True, doc="What the job produced (ids, counts).")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True)
class Job:
    id: int
    queue: str
    key: str
    payload: dict
    status: str
    attempts: int
    available_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    result: dict | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


def _job(row: WorkJob) -> Job:
    return Job(row.id, row.queue, row.key, dict(row.payload or {}), row.status, row.attempts, row.available_at,
               row.lease_owner, row.lease_expires_at, row.last_error, row.result, row.created_at, row.updated_at,
               row.completed_at)


class WorkQueue:
    """Durable jobs on ``store.engine``; one instance per process, thread-safe."""

    def __init__(self, store: Store, settings: WorkQueueSettings | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store = store
        self.settings = settings or WorkQueueSettings()
        self.clock = clock
        engine = store.engine
        self._dialect = engine.dialect.name
        # SQLite: BEGIN IMMEDIATE takes the write lock before reading, so two claimers never
        # pick the same job.
        self._write = sessionmaker(write_engine(engine), expire_on_commit=False)
        self._read = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    # -- producing -------------------------------------------------------
    def enqueue(self, queue: str, key: str, payload: dict[str, Any], delay_s: float = 0.0) -> tuple[Job, bool]:
        """(the job, True if new). Committed when this returns; the same key again is a no-op."""
        if not key or len(key) > 512 or any(ch.isspace() for ch in key):
            # an identifier, never a sentence: no note text can end up in the key column
            raise ValueError("a job key must have 1..512 characters and no whitespace")
        now = self.clock()
        values = dict(queue=queue, key=key, payload=payload, status="pending", attempts=0,
                      available_at=now + timedelta(seconds=delay_s), created_at=now, updated_at=now)
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        with self._writing() as session:
            inserted = session.execute(
                insert(WorkJob).values(**values).on_conflict_do_nothing(index_elements=["queue", "key"])
                .returning(WorkJob.id)).scalar()
            row = session.execute(select(WorkJob).where(WorkJob.queue == queue, WorkJob.key == key)).scalar_one()
            return _job(row), inserted is not None

    # -- consuming -------------------------------------------------------
    def claim(self, queue: str, worker: str, limit: int = 1) -> list[Job]:
        """Up to ``limit`` due jobs (pending and due, or claimed with an expired lease), leased to ``worker``.

        A job whose lease expired after its last allowed attempt (the worker died on it
        every time) goes to the dead letters instead of being claimed again.
        """
        now = self.clock()
        due = or_(
            (WorkJob.status == "pending") & (WorkJob.available_at <= now),
            (WorkJob.status == "claimed") & (WorkJob.lease_expires_at <= now),
        )
        query = (select(WorkJob).where(WorkJob.queue == queue, due)
                 .order_by(WorkJob.available_at, WorkJob.id).limit(limit))
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claimed = []
        with self._writing() as session:
            for row in session.execute(query).scalars():
                row.updated_at = now
                if row.status == "claimed" and row.attempts >= self.settings.max_attempts:
                    row.status, row.lease_owner, row.lease_expires_at = "dead", None, None
                    row.last_error = f"lease expired on the last attempt ({row.attempts}); {row.last_error or ''}"[:500]
                    continue
                row.status, row.attempts = "claimed", row.attempts + 1
                row.lease_owner = worker
                row.lease_expires_at = now + timedelta(seconds=self.settings.lease_s)
                claimed.append(row)
            session.flush()
            return [_job(r) for r in claimed]

    def complete(self, job_id: int, worker: str, result: dict | None = None) -> bool:
        """Mark done; False when ``worker`` no longer holds the job (another claimed it)."""
        now = self.clock()
        with self._writing() as session:
            changed = session.execute(
                update(WorkJob).where(WorkJob.id == job_id, WorkJob.status == "claimed", WorkJob.lease_owner == worker)
                .values(status="done", lease_owner=None, lease_expires_at=None, result=result, completed_at=now,
                        updated_at=now, last_error=None)).rowcount
            return changed == 1

    def fail(self, job_id: int, worker: str, error: str, retryable: bool = True) -> JobStatus | None:
        """Record a failed attempt: back to pending after a backoff, or dead when attempts are
        used up or the failure cannot succeed on retry. None when ``worker`` lost the job."""
        now = self.clock()
        with self._writing() as session:
            row = session.execute(select(WorkJob).where(
                WorkJob.id == job_id, WorkJob.status == "claimed", WorkJob.lease_owner == worker)).scalar_one_or_none()
            if row is None:
                return None
            row.last_error, row.updated_at = error[:500], now
            row.lease_owner, row.lease_expires_at = None, None
            if not retryable or row.attempts >= self.settings.max_attempts:
                row.status = "dead"
            else:
                row.status, row.available_at = "pending", now + timedelta(seconds=self.backoff_s(row.attempts))
            return row.status  # type: ignore[return-value]

    def backoff_s(self, attempts: int) -> float:
        """Delay after the ``attempts``-th failure: base, 2×base, 4×base, ... capped."""
        return min(self.settings.backoff_base_s * 2 ** max(attempts - 1, 0), self.settings.backoff_max_s)

    # -- operating -------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        with self._read() as session:
            row = session.get(WorkJob, job_id)
            return _job(row) if row else None

    def find(self, queue: str, key: str) -> Job | None:
        with self._read() as session:
            row = session.execute(select(WorkJob).where(WorkJob.queue == queue, WorkJob.key == key)).scalar_one_or_none()
            return _job(row) if row else None

    def jobs(self, queue: str | None = None, status: str | None = None, limit: int = 100) -> list[Job]:
        query = select(WorkJob).order_by(WorkJob.id).limit(limit)
        if queue:
            query = query.where(WorkJob.queue == queue)
        if status:
            query = query.where(WorkJob.status == status)
        with self._read() as session:
            return [_job(r) for r in session.execute(query).scalars()]

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[Job]:
        return self.jobs(queue, "dead", limit)

    def replay(self, job_ids: Sequence[int] | None = None, queue: str | None = None) -> int:
        """Dead jobs (the given ids, or all of ``queue``/all queues) back to pending with fresh attempts."""
        now = self.clock()
        condition = [WorkJob.status == "dead"]
        if job_ids is not None:
            condition.append(WorkJob.id.in_(list(job_ids)))
        if queue:
            condition.append(WorkJob.queue == queue)
        with self._writing() as session:
            return session.execute(update(WorkJob).where(*condition).values(
                status="pending", attempts=0, available_at=now, updated_at=now)).rowcount

    def counts(self, queue: str | None = None) -> dict[str, int]:
        query = select(WorkJob.status, func.count()).group_by(WorkJob.status)
        if queue:
            query = query.where(WorkJob.queue == queue)
        with self._read() as session:
            return {status: n for status, n in session.execute(query)}
