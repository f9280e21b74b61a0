"""The store's tables: scored notes, their predictions and encodings, the audit log, outcomes
and token uses (`serving.store.Store` reads and writes them; `lang1ops.migrations` creates them).

Note text is PHI and has no column here: a scored note is identified by its FHIR reference and
the sha256 of its text. Identifier columns are bounded strings (`*_LEN`, shared with the
validation that runs before a write, which also refuses whitespace).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from lang1ops.database import BigId, UTCDateTime, table_metadata

# Column lengths, shared by the schema and the validation that runs before a write.
ID_LEN = 64
KEY_LEN = 320
NAME_LEN = 128
SHORT_LEN = 32
DETAIL_LEN = 500
ENDPOINT_LEN = 256

_Json = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = table_metadata()


class ScoredNote(Base):
    """One scoring of one note by one model version (the note's text is not stored)."""

    __tablename__ = "scored_notes"
    __table_args__ = (
        UniqueConstraint("idempotency_key", "model_version", "shadow"),
        Index(None, "scored_at"),
        Index(None, "note_date"),
        Index(None, "request_id"),
        Index(None, "patient_id"),
        Index(None, "encounter_id"),
        Index(None, "resource_type", "resource_id"),
        Index(None, "model_version", "scored_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(ID_LEN))
    idempotency_key: Mapped[str] = mapped_column(String(KEY_LEN))
    resource_type: Mapped[str] = mapped_column(String(ID_LEN))
    resource_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    version_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    text_sha256: Mapped[str] = mapped_column(String(64))
    note_type: Mapped[str | None] = mapped_column(String(ID_LEN))
    patient_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    encounter_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    note_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    model_name: Mapped[str] = mapped_column(String(NAME_LEN))
    model_version: Mapped[str] = mapped_column(String(NAME_LEN))
    model_kind: Mapped[str] = mapped_column(String(SHORT_LEN))
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(SHORT_LEN))
    note_tokens: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    response: Mapped[Any] = mapped_column("response_json", _Json, nullable=True)

    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="scored_note", cascade="all, delete-orphan", passive_deletes=True, order_by="Prediction.id"
    )
    encoding: Mapped[NoteEncoding | None] = relationship(
        back_populates="scored_note", cascade="all, delete-orphan", passive_deletes=True
    )


class Prediction(Base):
    """One class probability of one task for a scored note."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("scored_note_id", "task", "class_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    scored_note_id: Mapped[int] = mapped_column(ForeignKey("scored_notes.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(SHORT_LEN))
    class_index: Mapped[int] = mapped_column(Integer)
    probability: Mapped[float] = mapped_column(Float)

    scored_note: Mapped[ScoredNote] = relationship(back_populates="predictions")


class NoteEncoding(Base):
    """The pooled encoding of a scored note (float32 bytes), kept for drift monitoring."""

    __tablename__ = "note_encodings"
    __table_args__ = (Index(None, "model_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    scored_note_id: Mapped[int] = mapped_column(ForeignKey("scored_notes.id", ondelete="CASCADE"), unique=True)
    model_version: Mapped[str] = mapped_column(String(NAME_LEN))
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    scored_note: Mapped[ScoredNote] = relationship(back_populates="encoding")


class AuditRecord(Base):
    """Who did what to which resources, and how it ended (no PHI: ids and codes only)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "time"), Index(None, "request_id"), Index(None, "action", "time"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    request_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    actor: Mapped[str | None] = mapped_column(String(NAME_LEN))
    role: Mapped[str | None] = mapped_column(String(ID_LEN))
    action: Mapped[str] = mapped_column(String(ID_LEN))
    endpoint: Mapped[str | None] = mapped_column(String(ENDPOINT_LEN))
    resource_type: Mapped[str | None] = mapped_column(String(ID_LEN))
    resource_ids: Mapped[list[str] | None] = mapped_column(_Json, nullable=True)
    outcome: Mapped[str] = mapped_column(String(ID_LEN))
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str | None] = mapped_column(String(DETAIL_LEN))


class Outcome(Base):
    """A true label as it arrives (e.g. readmission matures 30 days after discharge)."""

    __tablename__ = "outcomes"
    __table_args__ = (
        UniqueConstraint("encounter_id", "task"),
        Index(None, "patient_id"),
        Index(None, "task", "observed_at"),
        Index(None, "recorded_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    encounter_id: Mapped[str] = mapped_column(String(ID_LEN))
    task: Mapped[str] = mapped_column(String(SHORT_LEN))
    label: Mapped[int] = mapped_column(Integer)
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str | None] = mapped_column(String(ID_LEN))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TokenUse(Base):
    """A signed token's (issuer, jti), kept until the token expires: a second use is a replay,
    whichever replica or process sees it (CDS Hooks JWTs, single-use API JWTs)."""

    __tablename__ = "token_uses"
    __table_args__ = (UniqueConstraint("issuer", "jti"), Index(None, "expires_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(ENDPOINT_LEN))
    jti: Mapped[str] = mapped_column(String(ENDPOINT_LEN))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
