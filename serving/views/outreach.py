"""Care managers' outreach status per encounter, kept as an append-only history.

Every change is a new row (`views_outreach_events`: encounter, status, actor, role, time,
request id), never an update, so nothing set is ever lost; the current status is the newest
row. There is deliberately no free-text comment: a comment box invites PHI. The router also
writes each change to the store's audit log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Index, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lang1ops.database import BigId, UTCDateTime, table_metadata, write_engine


class OutreachStatus(StrEnum):
    NOT_CONTACTED = "not-contacted"
    ATTEMPTED = "attempted"
    REACHED = "reached"
    DECLINED = "declined"
    SCHEDULED = "scheduled"


class OutreachBase(DeclarativeBase):
    metadata = table_metadata()


class OutreachEvent(OutreachBase):
    __tablename__ = "views_outreach_events"
    __table_args__ = (Index(None, "encounter_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    encounter_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Outreach:
    encounter_id: str
    status: OutreachStatus
    actor: str
    time: datetime

    def to_dict(self) -> dict:
        return {"status": self.status.value, "actor": self.actor, "time": self.time.isoformat()}


class OutreachLog:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._writer = write_engine(engine)  # SQLite's write lock up front: writes wait instead of failing

    def record(self, encounter_id: str, patient_id: str | None, status: OutreachStatus | str, actor: str,
               role: str | None = None, request_id: str | None = None) -> Outreach:
        status = OutreachStatus(status)
        actor, now = actor[:128], datetime.now(UTC)
        with Session(self._writer) as session, session.begin():
            session.add(OutreachEvent(encounter_id=encounter_id, patient_id=patient_id, status=status.value, actor=actor,
                                      role=(role or "")[:64] or None, request_id=request_id, time=now))
        return Outreach(encounter_id, status, actor, now)

    def current(self, encounter_ids: Iterable[str]) -> dict[str, Outreach]:
        """encounter id -> its newest status (encounters never set are absent)."""
        ids, out = sorted(set(encounter_ids)), {}
        with Session(self.engine) as session:
            for start in range(0, len(ids), 500):
                rows = session.execute(
                    select(OutreachEvent.encounter_id, OutreachEvent.status, OutreachEvent.actor, OutreachEvent.time)
                    .where(OutreachEvent.encounter_id.in_(ids[start:start + 500])).order_by(OutreachEvent.id)
                ).all()
                for encounter, status, actor, time in rows:  # oldest first: the newest wins
                    out[encounter] = Outreach(encounter, OutreachStatus(status), actor, time)
        return out

    def history(self, encounter_id: str) -> list[Outreach]:
        with Session(self.engine) as session:
            rows = session.scalars(select(OutreachEvent).where(OutreachEvent.encounter_id == encounter_id)
                                   .order_by(OutreachEvent.id)).all()
            return [Outreach(r.encounter_id, OutreachStatus(r.status), r.actor, r.time) for r in rows]
