"""Labeled, time-split task data from a hospital's FHIR export.

`build_dataset` labels every H&P and discharge summary (training.labels), keeps the notes
whose stay ended inside a window, splits the early window 8:1:1 into train/val/test by
patient (all of a patient's notes land in one split, so no patient is both trained on and
tested on within the window), and writes:

- `notes.parquet`: one row per note: ids, note type, dates, split, subgroup attributes
  (age band, sex, race, ethnicity, payer, unit, service) and the text;
- `labels.parquet`: one row per (note, task) with the class index;
- `dataset.json`: windows, counts and prevalences per task and split, the reasons notes
  and resources were left out, and the task contract the labels follow.

Later temporal windows are whole test sets of their own, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pandas as pd

from lang1ops.settings.data import DataSettings
from lang1ops.tasks import DEFAULT_CONTRACT, TaskContract
from training.labels import HospitalRecords, NoLabel, label_note

SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
AGE_BANDS = ((18, "18-44"), (45, "45-64"), (65, "65-74"), (75, "75-84"), (85, "85+"))


@dataclass(frozen=True)
class Window:
    """An inclusive range of discharge dates."""

    name: str
    start: date
    end: date

    @classmethod
    def parse(cls, text: str, default_name: str | None = None) -> Window:
        """'2019-01-01:2022-12-31' or 'name=2019-01-01:2022-12-31'."""
        name, _, span = text.rpartition("=")
        try:
            first, last = (date.fromisoformat(x.strip()) for x in span.split(":"))
        except ValueError as exc:
            raise ValueError(f"window {text!r}: expected START:END as ISO dates, e.g. 2023-01-01:2023-12-31") from exc
        if last < first:
            raise ValueError(f"window {text!r}: end before start")
        if not name:
            whole_year = first.year == last.year and (first.month, first.day, last.month, last.day) == (1, 1, 12, 31)
            name = default_name or (f"temporal_{first.year}" if whole_year else f"temporal_{first:%Y%m%d}_{last:%Y%m%d}")
        return cls(name, first, last)

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end

    def to_dict(self) -> dict:
        return {"name": self.name, "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass
class DatasetSpec:
    train_window: Window
    temporal_windows: list[Window] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        windows = [self.train_window, *self.temporal_windows]
        for a, b in zip(windows, windows[1:], strict=False):
            if b.start <= a.end:
                raise ValueError(f"windows must be in time order without overlap: {a.name} and {b.name}")
        names = [w.name for w in self.temporal_windows]
        if len(set(names)) != len(names) or {"train", "val", "test"} & set(names):
            raise ValueError("temporal window names must be unique and not train/val/test")


def patient_split(patient_id: str, seed: int) -> str:
    """Deterministic 8:1:1 bucket of a patient (sha256, not Python's salted hash)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()[:8], "big") / 2**64
    cumulative = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        cumulative += fraction
        if u < cumulative:
            return name
    return SPLIT_FRACTIONS[-1][0]


def age_band(age: int | None) -> str | None:
    if age is None:
        return None
    band = None
    for low, name in AGE_BANDS:
        if age >= low:
            band = name
    return band or "<18"


def _age(birth: date | None, at: datetime) -> int | None:
    if birth is None:
        return None
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


@dataclass
class DatasetSummary:
    out_dir: str
    data_end: str | None
    windows: list[dict]
    splits: list[str]
    notes_per_split: dict[str, int]
    tasks: dict[str, dict[str, dict]]  # task -> split -> {"n", "counts", "prevalence"}
    excluded: dict[str, dict[str, int]]  # task -> reason -> count
    notes_excluded: dict[str, int]  # reason -> count (notes not in any window, not a task note type, ...)
    problems: dict  # resources that could not be used, by reason, and repairs (ProblemLog.to_dict())
    contract: dict
    horizon_source: str = "latest encounter time in the data"  # or "--as-of"
    timezone: str = "UTC"  # the hospital's, in which calendar days were counted
    cci_code_sources: dict = field(default_factory=dict)  # stays given ICD-10 codes by each source
    snomed_only_conditions: int = 0  # Conditions without an ICD-10 code (CCI needs ICD-10)
    denial_definition: str = "any-denial"  # which denial label this dataset holds (lang1ops.settings.data)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)


def build_dataset(fhir_path: Path, out_dir: Path, spec: DatasetSpec, contract: TaskContract = DEFAULT_CONTRACT,
                  as_of: datetime | None = None, on_resource=None, records: HospitalRecords | None = None,
                  data: DataSettings | None = None) -> DatasetSummary:
    records = records or HospitalRecords.load(fhir_path, contract, as_of=as_of, on_resource=on_resource, data=data)
    windows = [spec.train_window, *spec.temporal_windows]
    note_rows: list[dict] = []
    label_rows: list[dict] = []
    excluded: dict[str, Counter] = defaultdict(Counter)
    notes_excluded: Counter = Counter()
    for note in records.notes:
        try:
            enc, labels = label_note(note, records)
        except NoLabel as why:
            notes_excluded[why.reason] += 1
            continue
        known = {t: v for t, v in labels.items() if not isinstance(v, NoLabel)}
        for task, value in labels.items():
            if isinstance(value, NoLabel):
                excluded[task][value.reason] += 1
        if not known or enc is None or enc.end is None:
            notes_excluded["no-task-label"] += 1
            continue
        window = next((w for w in windows if w.contains(enc.end.date())), None)
        if window is None:
            notes_excluded["outside-windows"] += 1
            for task in known:
                excluded[task]["outside-windows"] += 1
            continue
        # split by the stay's patient (the note's subject can be a merged-away record)
        split = patient_split(enc.patient_id or note.patient_id or "", spec.seed) if window is spec.train_window else window.name
        patient = records.patients.get(enc.patient_id or "")
        age = _age(patient.birth_date if patient else None, enc.start)
        note_id = f"{note.resource_type}/{note.resource_id}"
        note_rows.append({
            "note_id": note_id, "patient_id": enc.patient_id, "encounter_id": enc.id, "note_type": str(note.note_type),
            "note_date": note.date, "admitted": enc.start, "discharged": enc.end, "window": window.name, "split": split,
            "age": age, "age_band": age_band(age), "sex": patient.sex if patient else None,
            "race": patient.race if patient else None, "ethnicity": patient.ethnicity if patient else None,
            "payer": patient.payer if patient else None, "unit": enc.unit, "service": enc.service,
            "text_sha256": note.text_sha256, "n_words": len(note.text.split()), "text": note.text,
        })
        label_rows += [{"note_id": note_id, "task": task, "label": int(value), "split": split} for task, value in known.items()]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = pd.DataFrame(note_rows, columns=NOTE_COLUMNS)
    labels = pd.DataFrame(label_rows, columns=["note_id", "task", "label", "split"]).astype({"label": "int64"})
    notes.to_parquet(out_dir / "notes.parquet", index=False)
    labels.to_parquet(out_dir / "labels.parquet", index=False)

    splits = ["train", "val", "test"] + [w.name for w in spec.temporal_windows]
    summary = DatasetSummary(
        out_dir=str(out_dir), data_end=records.data_end.isoformat() if records.data_end else None,
        windows=[w.to_dict() for w in windows], splits=splits,
        notes_per_split={s: int((notes["split"] == s).sum()) for s in splits},
        tasks=_task_table(labels, contract, splits), excluded={t: dict(c) for t, c in excluded.items()},
        notes_excluded=dict(notes_excluded), problems=records.problems.to_dict(), contract=contract.model_dump(mode="json"),
        horizon_source=records.horizon_source, timezone=records.data.timezone,
        cci_code_sources=dict(sorted(records.code_sources.items())), snomed_only_conditions=records.snomed_only_conditions,
        denial_definition=records.data.denial_definition,
    )
    (out_dir / "dataset.json").write_text(summary.to_json() + "\n")
    return summary


NOTE_COLUMNS = ["note_id", "patient_id", "encounter_id", "note_type", "note_date", "admitted", "discharged", "window", "split",
                "age", "age_band", "sex", "race", "ethnicity", "payer", "unit", "service", "text_sha256", "n_words", "text"]


def _task_table(labels: pd.DataFrame, contract: TaskContract, splits: list[str]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for task in contract.tasks:
        per_split = {}
        for split in splits:
            values = labels.loc[(labels["task"] == task.name) & (labels["split"] == split), "label"]
            counts = [int((values == k).sum()) for k in range(task.n_classes)]
            n = int(len(values))
            per_split[split] = {"n": n, "counts": counts, "prevalence": [c / n if n else None for c in counts]}
        out[task.name] = per_split
    return out


@dataclass
class Dataset:
    """A built dataset, read back for training and evaluation."""

    path: Path
    notes: pd.DataFrame
    labels: pd.DataFrame
    info: dict

    @classmethod
    def load(cls, path: Path) -> Dataset:
        path = Path(path)
        return cls(path, pd.read_parquet(path / "notes.parquet"), pd.read_parquet(path / "labels.parquet"),
                   json.loads((path / "dataset.json").read_text()))

    @property
    def contract(self) -> TaskContract:
        return TaskContract.model_validate(self.info["contract"])

    @property
    def splits(self) -> list[str]:
        return list(self.info["splits"])

    def task_frame(self, task: str, split: str) -> pd.DataFrame:
        """Notes with their label for one task and split (text, label, subgroup columns)."""
        rows = self.labels[(self.labels["task"] == task) & (self.labels["split"] == split)][["note_id", "label"]]
        return rows.merge(self.notes, on="note_id", how="left")
