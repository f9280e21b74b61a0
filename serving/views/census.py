"""The inpatient census: which encounter is in which unit, admitted and discharged when.

The store knows scores, not beds: this module keeps its own table `views_census` (one row per
encounter: FHIR ids, unit, admission and discharge times; no names, no text) on the store's
engine, and loads it from FHIR `Encounter` resources (a list, or a Bulk Data export read with
`lang1ops.fhir_source`). The unit is the Encounter's current `location` (the active entry,
else the last one), named by its `display` or, without one, by the Location id; an Encounter
with no location falls back to `serviceType.text`, else "unassigned".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Index, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lang1ops.database import UTCDateTime, table_metadata, write_engine
from lang1ops.identifiers import FHIR_ID

UNIT_LEN = 128
UNASSIGNED = "unassigned"


class CensusBase(DeclarativeBase):
    metadata = table_metadata()


class CensusEntry(CensusBase):
    """One inpatient encounter: where and when (ids and times only)."""

    __tablename__ = "views_census"
    __table_args__ = (Index(None, "unit"), Index(None, "discharged_at"), Index(None, "patient_id"))

    encounter_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(UNIT_LEN))
    encounter_class: Mapped[str] = mapped_column(String(32))
    admitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    discharged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Stay:
    encounter_id: str
    patient_id: str
    unit: str
    encounter_class: str
    admitted_at: datetime
    discharged_at: datetime | None


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count (never content)


def _reference_id(reference: object, resource_type: str) -> str | None:
    if not isinstance(reference, dict):
        return None
    value = reference.get("reference")
    if not isinstance(value, str) or not value.startswith(resource_type + "/"):
        return None
    rid = value.split("/", 2)[1]
    return rid if FHIR_ID.fullmatch(rid) else None


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _unit(encounter: dict) -> str:
    locations = [e for e in encounter.get("location") or [] if isinstance(e, dict) and isinstance(e.get("location"), dict)]
    if locations:
        current = next((e for e in locations if e.get("status") == "active"), locations[-1])["location"]
        name = current.get("display") or _reference_id(current, "Location")
        if isinstance(name, str) and name.strip():
            return " ".join(name.split())[:UNIT_LEN]
    service = encounter.get("serviceType")
    if isinstance(service, dict) and isinstance(service.get("text"), str) and service["text"].strip():
        return " ".join(service["text"].split())[:UNIT_LEN]
    return UNASSIGNED


def stay_of_encounter(encounter: dict, inpatient_classes: Iterable[str]) -> Stay | str:
    """A `Stay`, or the reason (a short code) the resource is not one."""
    if not isinstance(encounter, dict) or encounter.get("resourceType") != "Encounter":
        return "not-an-encounter"
    eid = encounter.get("id")
    if not isinstance(eid, str) or not FHIR_ID.fullmatch(eid):
        return "invalid-id"
    klass = encounter.get("class") or {}
    code = klass.get("code") if isinstance(klass, dict) else None
    if code not in set(inpatient_classes):
        return "not-inpatient"
    if encounter.get("status") in ("cancelled", "entered-in-error", "planned"):
        return "not-admitted"
    patient = _reference_id(encounter.get("subject"), "Patient")
    if patient is None:
        return "no-subject"
    period = encounter.get("period") if isinstance(encounter.get("period"), dict) else {}
    admitted = _datetime(period.get("start"))
    if admitted is None:
        return "no-admission-time"
    discharged = _datetime(period.get("end"))
    if discharged is not None and discharged < admitted:
        return "discharge-before-admission"
    return Stay(eid, patient, _unit(encounter), code, admitted, discharged)


class Census:
    """The census table on a store's engine (created by the store's migrations)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._writer = write_engine(engine)  # SQLite's write lock up front: writes wait instead of failing

    def upsert(self, stays: Iterable[Stay]) -> int:
        """Insert or replace stays by encounter id (the newest load wins). Returns the count."""
        now, n = datetime.now(UTC), 0
        with Session(self._writer) as session, session.begin():
            for stay in stays:
                row = session.get(CensusEntry, stay.encounter_id) or CensusEntry(encounter_id=stay.encounter_id)
                row.patient_id, row.unit, row.encounter_class = stay.patient_id, stay.unit, stay.encounter_class
                row.admitted_at, row.discharged_at, row.updated_at = stay.admitted_at, stay.discharged_at, now
                session.add(row)
                n += 1
        return n

    def load_encounters(self, resources: Iterable[dict], inpatient_classes: Iterable[str]) -> LoadReport:
        report, stays = LoadReport(), {}
        classes = list(inpatient_classes)
        for resource in resources:
            if not isinstance(resource, dict) or resource.get("resourceType") != "Encounter":
                continue
            stay = stay_of_encounter(resource, classes)
            if isinstance(stay, str):
                report.skipped[stay] += 1
            else:
                stays[stay.encounter_id] = stay
        report.loaded = self.upsert(stays.values())
        return report

    def load_directory(self, path: Path, inpatient_classes: Iterable[str]) -> tuple[LoadReport, dict]:
        """Load the Encounters of a Bulk Data export (or ndjson directory). Returns the report and
        the reader's problem counts (malformed lines etc.)."""
        from lang1ops.fhir_source import ProblemLog, iter_resources

        problems = ProblemLog()
        report = self.load_encounters((r for r, _ in iter_resources(Path(path), problems)), inpatient_classes)
        return report, problems.counts()

    def stays(self, as_of: datetime, discharged_within: timedelta | None = None) -> list[Stay]:
        """Stays in hospital at `as_of` (admitted at or before it, not discharged by then) and,
        with `discharged_within`, those discharged in that span before `as_of`. A stay discharged
        after `as_of` counts as admitted at `as_of` (so a past day can be replayed)."""
        still_in = CensusEntry.discharged_at.is_(None) | (CensusEntry.discharged_at > as_of)
        if discharged_within is not None:
            still_in = still_in | (CensusEntry.discharged_at > as_of - discharged_within)
        query = (select(CensusEntry).where(CensusEntry.admitted_at <= as_of, still_in)
                 .order_by(CensusEntry.unit, CensusEntry.admitted_at, CensusEntry.encounter_id))
        with Session(self.engine) as session:
            return [Stay(r.encounter_id, r.patient_id, r.unit, r.encounter_class, r.admitted_at,
                         r.discharged_at if r.discharged_at is not None and r.discharged_at <= as_of else None)
                    for r in session.scalars(query)]

    def get(self, encounter_id: str) -> Stay | None:
        with Session(self.engine) as session:
            r = session.get(CensusEntry, encounter_id)
            return None if r is None else Stay(r.encounter_id, r.patient_id, r.unit, r.encounter_class,
                                               r.admitted_at, r.discharged_at)

    def units(self) -> list[str]:
        with Session(self.engine) as session:
            return list(session.scalars(select(CensusEntry.unit).distinct().order_by(CensusEntry.unit)))
