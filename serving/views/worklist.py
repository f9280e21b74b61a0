"""The readmission worklist: current and recently discharged inpatients ranked by 30-day
readmission risk, with the signals behind the rank, the outreach status, and CSV / FHIR List exports.

"Top factors". The readmission score comes from a language model reading the whole discharge
summary; it does not attribute its answer to parts of the note, and showing note text here is
not allowed. What this view can show honestly is (1) the other tasks' scores for the same
encounter, which the model card (and the readmission literature) ties to readmission risk:
in-hospital mortality risk, a high Charlson comorbidity class, a long expected stay, claim
denial risk; each is labelled with the probability it came from, and (2) which note and model
version the score came from. They are context for the care manager, not an explanation of the
model's internals, and the API says so (`FACTORS_NOTE`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from lang1ops.settings.serving import RiskBands
from lang1ops.tasks import OUTCOME_SYSTEM, TaskContract
from serving.views.census import Stay
from serving.views.outreach import Outreach
from serving.views.scores import TaskScore

TIERS = ("high", "moderate", "low", "negligible", "unscored")
FACTORS_NOTE = ("Related signals scored from the same encounter's notes (other tasks of the model), shown as context; "
                "the readmission model reads the whole discharge summary and does not attribute its score to them.")
OUTREACH_SYSTEM = "http://lang1-ops.org/fhir/CodeSystem/outreach-status"
TIER_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"


@dataclass
class WorklistRow:
    encounter_id: str
    patient_id: str
    unit: str
    admitted_at: datetime
    discharged_at: datetime | None
    readmission: float | None
    tier: str
    model_version: str | None
    scored_at: datetime | None
    basis_note_type: str | None
    factors: list[dict] = field(default_factory=list)
    outreach: Outreach | None = None

    @property
    def status(self) -> str:
        return "discharged" if self.discharged_at else "admitted"

    def to_dict(self, rank: int) -> dict:
        return {
            "rank": rank, "encounter": self.encounter_id, "patient": self.patient_id, "unit": self.unit,
            "status": self.status, "admitted_at": self.admitted_at.isoformat(),
            "discharged_at": self.discharged_at.isoformat() if self.discharged_at else None,
            "readmission": None if self.readmission is None else round(self.readmission, 4), "tier": self.tier,
            "model_version": self.model_version, "scored_at": self.scored_at.isoformat() if self.scored_at else None,
            "basis_note_type": self.basis_note_type, "factors": self.factors,
            "outreach": self.outreach.to_dict() if self.outreach else {"status": "not-contacted", "actor": None, "time": None},
        }


def _positive(contract: TaskContract, task: str, score: TaskScore) -> float:
    spec = contract.task(task)
    return float(score.probabilities[spec.positive_option if spec.positive_option is not None else -1])


def factors(scores: dict[str, TaskScore], contract: TaskContract, bands: dict[str, RiskBands]) -> list[dict]:
    """The other tasks' scores for the encounter, strongest signal first."""
    out = []
    for task in ("mortality", "denial"):
        if task in scores and task in contract.names:
            p = _positive(contract, task, scores[task])
            band = bands[task].band(p) if task in bands else None
            out.append({"task": task, "text": f"{contract.task(task).title}: {p:.0%}" + (f" ({band})" if band else ""),
                        "probability": round(p, 4), "weight": {"high": 3, "moderate": 2, "low": 1}.get(band or "", 0)})
    for task, heavy_from in (("cci", 3), ("los", 3)):
        if task in scores and task in contract.names:
            spec, probs = contract.task(task), scores[task].probabilities
            k = max(range(len(probs)), key=probs.__getitem__)
            heavy = sum(probs[heavy_from:])  # Charlson 5 or more; LOS more than 5 days
            what = "Charlson index" if task == "cci" else "Expected stay"
            out.append({"task": task, "text": f"{what}: {spec.options[k].text} most likely ({probs[k]:.0%})",
                        "probability": round(heavy, 4), "weight": 3 if heavy >= 0.5 else 2 if heavy >= 0.25 else 0})
    return sorted(out, key=lambda f: (-f["weight"], -f["probability"]))


def build_worklist(stays: list[Stay], scores: dict[str, dict[str, TaskScore]], outreach: dict[str, Outreach],
                   contract: TaskContract, bands: dict[str, RiskBands]) -> list[WorklistRow]:
    """Ranked rows: highest readmission probability first, unscored last (oldest admission first)."""
    readmission_bands = bands.get("readmission", RiskBands())
    rows = []
    for stay in stays:
        by_task = scores.get(stay.encounter_id, {})
        score = by_task.get("readmission") if "readmission" in contract.names else None
        p = _positive(contract, "readmission", score) if score is not None else None
        rows.append(WorklistRow(
            stay.encounter_id, stay.patient_id, stay.unit, stay.admitted_at, stay.discharged_at, p,
            readmission_bands.band(p) if p is not None else "unscored",
            score.model_version if score else None, score.scored_at if score else None,
            score.note_type if score else None, factors(by_task, contract, bands), outreach.get(stay.encounter_id)))
    rows.sort(key=lambda r: (r.readmission is None, -(r.readmission or 0.0), r.admitted_at, r.encounter_id))
    return rows


def filter_rows(rows: list[WorklistRow], zone: ZoneInfo, unit: str | None = None, tiers: list[str] | None = None,
                status: str | None = None, discharged_from: date | None = None,
                discharged_to: date | None = None, outreach: str | None = None) -> list[WorklistRow]:
    def keep(r: WorklistRow) -> bool:
        if unit and r.unit != unit:
            return False
        if tiers and r.tier not in tiers:
            return False
        if status and r.status != status:
            return False
        if outreach and (r.outreach.status.value if r.outreach else "not-contacted") != outreach:
            return False
        if discharged_from or discharged_to:
            if r.discharged_at is None:
                return False
            day = r.discharged_at.astimezone(zone).date()
            if (discharged_from and day < discharged_from) or (discharged_to and day > discharged_to):
                return False
        return True

    return [r for r in rows if keep(r)]


CSV_COLUMNS = ["rank", "patient", "encounter", "unit", "status", "admitted_at", "discharged_at", "readmission",
               "tier", "factors", "outreach_status", "outreach_by", "outreach_at", "model_version"]


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text  # no formula injection in Excel


def to_csv(rows: list[WorklistRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for rank, row in enumerate(rows, 1):
        d = row.to_dict(rank)
        writer.writerow([_cell(v) for v in (
            rank, d["patient"], d["encounter"], d["unit"], d["status"], d["admitted_at"], d["discharged_at"] or "",
            "" if d["readmission"] is None else f"{d['readmission']:.4f}", d["tier"],
            "; ".join(f["text"] for f in d["factors"]), d["outreach"]["status"], d["outreach"]["actor"] or "",
            d["outreach"]["time"] or "", d["model_version"] or "")])
    return buffer.getvalue()


def to_fhir_list(rows: list[WorklistRow], title: str, now: datetime | None = None) -> dict:
    """A FHIR R4 `List` (mode working, ordered by priority) of the encounters, highest risk first;
    each entry's flag carries the risk tier and the outreach status."""
    entries = []
    for row in rows:
        status = row.outreach.status.value if row.outreach else "not-contacted"
        risk = "not scored" if row.readmission is None else f"30-day readmission risk {row.readmission:.0%} ({row.tier})"
        coding = [{"system": OUTREACH_SYSTEM, "code": status}]
        if row.tier != "unscored":
            coding.insert(0, {"system": TIER_SYSTEM, "code": row.tier})
        entry = {"flag": {"coding": coding, "text": f"{risk}; outreach {status}"},
                 "item": {"reference": f"Encounter/{row.encounter_id}", "display": f"Patient/{row.patient_id}"}}
        if row.outreach:
            entry["date"] = row.outreach.time.isoformat()
        entries.append(entry)
    resource = {
        "resourceType": "List", "status": "current", "mode": "working", "title": title,
        "code": {"coding": [{"system": OUTCOME_SYSTEM, "code": "readmission-30d", "display": "Readmission within 30 days"}],
                 "text": "Readmission worklist"},
        "date": (now or datetime.now(UTC)).isoformat(),
        "orderedBy": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-order", "code": "priority",
                                  "display": "Sorted by Priority"}]},
    }
    if entries:
        resource["entry"] = entries
    else:
        resource["emptyReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                                               "code": "nilknown"}]}
    return resource
