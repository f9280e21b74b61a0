"""The outcomes feed: true labels recorded in the store as discharges, deaths and claims arrive.

Reads an export of Patient, Encounter, Condition, Claim and ExplanationOfBenefit (from
`BulkExportClient.export` or a directory), derives each task's label with the training rules
(`training.labels`: the same definitions the model was trained on), and records it with
`Store.record_outcome`, keyed by encounter and task, for the encounters that have a scored
note in the store. Monitoring joins these to the scores to compute AUROC over time.

Maturity: a readmission label is recorded only once `readmission_maturity_days` have passed
after discharge (by the data's cut-off, `as_of`), readmitted or not. Recording positives as
soon as they happen would make early windows look all-positive and bias rolling AUROC.
The other labels are final at discharge (denial once an EOB exists).

`observed_at` is when the label became final: the discharge, or discharge + maturity for
readmission. Reruns are idempotent: `record_outcome` reports new or changed labels only.

Use a full export of those types (not `_since`): a readmission label depends on the patient's
later stays, and a stay discharged weeks ago matures without being updated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import select

from lang1ops.settings.bulk import OutcomesFeedSettings
from lang1ops.store_schema import Prediction, ScoredNote
from lang1ops.tasks import DEFAULT_CONTRACT, TaskContract
from serving.store import Store
from training.labels import EncounterRecord, HospitalRecords, NoLabel, task_label


@dataclass
class OutcomesSummary:
    as_of: datetime | None
    targets: int = 0  # (encounter, task) pairs considered
    recorded: int = 0  # new or changed labels written
    unchanged: int = 0
    immature: dict[str, int] = field(default_factory=dict)  # task -> labels waiting for maturity
    no_label: dict[str, int] = field(default_factory=dict)  # reason -> count
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> {label: count} recorded or unchanged
    source_problems: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def scored_targets(store: Store) -> dict[str, tuple[str | None, set[str]]]:
    """encounter id -> (patient id, tasks scored for it), from the store's non-shadow scores."""
    targets: dict[str, tuple[str | None, set[str]]] = {}
    query = (select(ScoredNote.encounter_id, ScoredNote.patient_id, Prediction.task)
             .join(Prediction, Prediction.scored_note_id == ScoredNote.id)
             .where(ScoredNote.encounter_id.is_not(None), ScoredNote.shadow.is_(False))
             .distinct())
    with store.engine.connect() as connection:
        for encounter_id, patient_id, task in connection.execute(query):
            patient, tasks = targets.setdefault(encounter_id, (patient_id, set()))
            tasks.add(task)
    return targets


def readmission_matures_at(enc: EncounterRecord, maturity_days: int) -> datetime:
    """The end of the last follow-up day (day `maturity_days` after discharge counts)."""
    day = enc.end.date() + timedelta(days=maturity_days)
    return datetime.combine(day, time(23, 59, 59), tzinfo=enc.end.tzinfo or UTC)


def feed_outcomes(source: Path, store: Store, settings: OutcomesFeedSettings | None = None, *,
                  as_of: datetime | None = None, contract: TaskContract = DEFAULT_CONTRACT) -> OutcomesSummary:
    """Record the outcomes found in the export at `source` (see the module docstring).
    `as_of` is the data's cut-off; by default the latest encounter time in the data (never the
    export's transactionTime: see training.labels.HospitalRecords.load)."""
    settings = settings or OutcomesFeedSettings()
    records = HospitalRecords.load(Path(source), contract, as_of=as_of)
    summary = OutcomesSummary(as_of=records.data_end, source_problems=records.problems.counts())
    if settings.only_scored_encounters:
        targets = scored_targets(store)
    else:
        every_task = set(contract.names)
        targets = {e.id: (e.patient_id, every_task) for e in records.encounters.values() if e.inpatient}
    immature: Counter[str] = Counter()
    no_label: Counter[str] = Counter()
    labels: dict[str, Counter[str]] = {}
    for encounter_id, (patient_id, tasks) in sorted(targets.items()):
        enc = records.encounters.get(encounter_id)
        for task in sorted(tasks):
            summary.targets += 1
            if enc is None:
                no_label["unknown-encounter"] += 1
                continue
            if not enc.inpatient:
                no_label["not-inpatient"] += 1
                continue
            if task not in contract.names:
                no_label["unknown-task"] += 1
                continue
            try:
                label = task_label(task, enc, records)
            except NoLabel as why:
                if task == "readmission" and why.reason == "follow-up-incomplete":
                    immature[task] += 1
                else:
                    no_label[why.reason] += 1
                continue
            observed_at = enc.end
            if task == "readmission":
                observed_at = readmission_matures_at(enc, settings.readmission_maturity_days)
                if records.data_end is None or records.data_end < observed_at:
                    immature[task] += 1  # a readmission already seen still waits for the window to close
                    continue
            changed = store.record_outcome(enc.patient_id or patient_id, encounter_id, task, label, observed_at,
                                           settings.source)
            if changed:
                summary.recorded += 1
            else:
                summary.unchanged += 1
            labels.setdefault(task, Counter())[str(label)] += 1
    summary.immature = dict(sorted(immature.items()))
    summary.no_label = dict(sorted(no_label.items()))
    summary.labels = {task: dict(sorted(c.items())) for task, c in sorted(labels.items())}
    return summary
