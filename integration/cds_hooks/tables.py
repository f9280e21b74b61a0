"""The CDS tables: the cards this service issued (ids only, so feedback can be tied to them) and
what clinicians did with them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Engine, String, UniqueConstraint, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lang1ops.database import BigId, UTCDateTime, table_metadata


class _CdsBase(DeclarativeBase):
    metadata = table_metadata()


class CdsCard(_CdsBase):
    """A card this service answered with (ids only), so feedback can be tied to it."""

    __tablename__ = "cds_cards"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(64), index=True)
    hook_instance: Mapped[str] = mapped_column(String(36))
    patient_id: Mapped[str] = mapped_column(String(64))
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    indicator: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64))
    basis: Mapped[list] = mapped_column(JSON)  # "DocumentReference/<id>" of the notes read
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class CdsFeedback(_CdsBase):
    """What the clinician did with a card: accepted or overridden, with a reason code."""

    __tablename__ = "cds_feedback"
    __table_args__ = (UniqueConstraint("card_uuid", "outcome", "outcome_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(36), index=True)
    service_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    override_reason_code: Mapped[str | None] = mapped_column(String(64))
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    client: Mapped[str | None] = mapped_column(String(256))  # the EHR's iss


class CdsTables:
    """The CDS tables on the Store's engine (made by the store's migrations, SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine):
        self.engine = engine  # the tables come from the store's migrations (lang1ops/migrations)

    def record_card(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(CdsCard).values(**values))

    def card_service(self, card_uuid: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(select(CdsCard.service_id).where(CdsCard.uuid == card_uuid))

    def record_feedback(self, rows: list[dict]) -> int:
        """Stores the rows not stored before (an EHR may resend feedback); returns how many were new."""
        new = 0
        with self.engine.begin() as conn:
            for row in rows:
                seen = conn.scalar(select(CdsFeedback.id).where(
                    CdsFeedback.card_uuid == row["card_uuid"], CdsFeedback.outcome == row["outcome"],
                    CdsFeedback.outcome_at == row["outcome_at"]))
                if seen is None:
                    conn.execute(insert(CdsFeedback).values(**row))
                    new += 1
        return new

    def feedback(self, card_uuid: str | None = None) -> list[dict]:
        query = select(CdsFeedback).order_by(CdsFeedback.id)
        if card_uuid:
            query = query.where(CdsFeedback.card_uuid == card_uuid)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def cards(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(CdsCard).order_by(CdsCard.issued_at))]
