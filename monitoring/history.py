"""What monitoring found and did, kept in the service's database: drift runs, performance
windows and the retraining loop's events.

Own tables (own `MetaData`) on the `Store`'s engine, created by the store's migrations
(`lang1ops.migrations`). Only numbers, ids, versions, column names and fixed phrases are written: never note
text (details are built from counts, AUROCs and reasons the code writes itself).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lang1ops.database import UTCDateTime
from serving.store import Store

_Json = JSON(none_as_null=True)


class HistoryBase(DeclarativeBase):
    # SQLAlchemy's default names, not `lang1ops.database.table_metadata()`: these tables predate the
    # naming convention and their migration keeps unnamed primary keys (the index names are the same).
    pass


class DriftRun(HistoryBase):
    """One drift check: the current window against the champion's reference."""

    __tablename__ = "monitoring_drift_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    window_by: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(128))
    n_current: Mapped[int] = mapped_column(Integer)
    n_reference: Mapped[int] = mapped_column(Integer)
    detected: Mapped[bool] = mapped_column(Boolean)
    checks: Mapped[Any] = mapped_column(_Json)  # check -> {"detected", "score", "drifted", "columns", "method"}
    features: Mapped[Any] = mapped_column(_Json)  # check -> feature -> score
    report_dir: Mapped[str | None] = mapped_column(String(500))
    duration_s: Mapped[float] = mapped_column(Float)


class PerformanceRun(HistoryBase):
    """One task's performance in one window, once its outcomes arrived."""

    __tablename__ = "monitoring_performance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    model_version: Mapped[str | None] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(32))
    n: Mapped[int] = mapped_column(Integer)
    auroc: Mapped[float | None] = mapped_column(Float)
    auroc_low: Mapped[float | None] = mapped_column(Float)
    auroc_high: Mapped[float | None] = mapped_column(Float)
    ece: Mapped[float | None] = mapped_column(Float)
    report_dir: Mapped[str | None] = mapped_column(String(500))


class LoopEvent(HistoryBase):
    """One step of the retraining loop (trigger, skip, pull, train, evaluate, promote, refuse, error)."""

    __tablename__ = "monitoring_loop_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    cycle: Mapped[str] = mapped_column(String(64), index=True)
    step: Mapped[str] = mapped_column(String(32))
    champion: Mapped[str | None] = mapped_column(String(128))
    candidate: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[Any] = mapped_column(_Json)


def _clean(obj: Any) -> Any:
    """Strict JSON (NaN -> None, numpy -> Python) for the JSON columns."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)),
                      parse_constant=lambda _: None) if obj is not None else None


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


@dataclass(frozen=True)
class TaskPerformance:
    task: str
    model_version: str | None
    n: int
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    ece: float | None
    computed_at: datetime
    window_end: datetime


class MonitoringHistory:
    """Read and write the monitoring tables of one `Store`'s database."""

    def __init__(self, store: Store):
        self.store = store

    def _session(self) -> Session:
        return Session(self.store.engine, expire_on_commit=False)

    # -- drift
    def record_drift(self, **fields: Any) -> int:
        for name in ("checks", "features"):
            fields[name] = _clean(fields.get(name))
        with self._session() as session, session.begin():
            run = DriftRun(**fields)
            session.add(run)
            session.flush()
            return run.id

    def drift_runs(self, limit: int = 20) -> list[dict]:
        with self._session() as session:
            rows = session.scalars(select(DriftRun).order_by(DriftRun.checked_at.desc(), DriftRun.id.desc()).limit(limit))
            return [_as_dict(r) for r in rows]

    def latest_drift(self) -> dict | None:
        runs = self.drift_runs(1)
        return runs[0] if runs else None

    # -- performance
    def record_performance(self, **fields: Any) -> None:
        for name in ("auroc", "auroc_low", "auroc_high", "ece"):
            fields[name] = _finite(fields.get(name))
        with self._session() as session, session.begin():
            session.add(PerformanceRun(**fields))

    def latest_performance(self) -> dict[str, TaskPerformance]:
        """The newest window's numbers per task (the newest computation of the newest window)."""
        with self._session() as session:
            newest = (select(PerformanceRun.task, func.max(PerformanceRun.id).label("id"))
                      .group_by(PerformanceRun.task).subquery())
            rows = session.scalars(select(PerformanceRun).join(newest, PerformanceRun.id == newest.c.id))
            return {r.task: TaskPerformance(r.task, r.model_version, r.n, r.auroc, r.auroc_low, r.auroc_high, r.ece,
                                            r.computed_at, r.window_end) for r in rows}

    # -- loop events
    def record_event(self, cycle: str, step: str, outcome: str, champion: str | None = None,
                     candidate: str | None = None, detail: dict | None = None, time: datetime | None = None) -> None:
        with self._session() as session, session.begin():
            session.add(LoopEvent(time=time or datetime.now(UTC), cycle=cycle, step=step, outcome=outcome,
                                  champion=champion, candidate=candidate, detail=_clean(detail or {})))

    def events(self, cycle: str | None = None, limit: int = 200) -> list[dict]:
        """Loop events, oldest first (of one cycle, or the newest `limit`)."""
        query = select(LoopEvent).order_by(LoopEvent.id.desc()).limit(limit)
        if cycle is not None:
            query = query.where(LoopEvent.cycle == cycle)
        with self._session() as session:
            return [_as_dict(r) for r in reversed(list(session.scalars(query)))]

    def last_event_time(self, step: str, outcome: str | None = None) -> datetime | None:
        query = select(func.max(LoopEvent.time)).where(LoopEvent.step == step)
        if outcome is not None:
            query = query.where(LoopEvent.outcome == outcome)
        with self._session() as session:
            value = session.scalar(query)
        return value


def _as_dict(row: Any) -> dict:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
