"""training.dataset: windows, patient splits, Parquet tables and dataset.json on a hand-written export.

The export (built with the resource helpers of test_labels) has six patients. With seed 0, ann
falls in train, fay in val and cat in test (asserted below, so a change to the hash shows here):

  patient  stay  admitted..discharged        window         notes   labels
  ann      a1    2022-03-01..2022-03-04      train          hp, ds  los 3d (1), CCI 2 (1), paid (0), readmitted day 10 (1)
  ann      a2    2022-03-14..2022-03-20      train          hp, ds  los 6d (3), CCI 3 (2), denied (1), not readmitted (0)
  fay      f1    2022-06-01..2022-06-03      train          hp      los 2d (0); no codes, no claim
  cat      c1    2022-09-10..2022-09-15 exp  train          hp, ds  died (1), los 5d (2), CCI 6 (3), claim pending; ds: died
  dan      d1    2023-05-01..2023-05-04      temporal_2023  hp, ds  los 3d (1), denied then paid on appeal (1); ds 0
  eve      e1    2024-02-01..2024-02-02      q1             hp      los 1d (0), CCI 0 (0), no claim
  eve      e2    2024-06-01..2024-06-03      (none)         hp      outside every window
  gus      g1    2021-06-01..2021-06-02      (none)         hp, progress note
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from lang1ops.settings.data import DataSettings
from tests.training.test_labels import (
    DS,
    PROGRESS_NOTE,
    claim,
    condition,
    coverage,
    eob,
    export,
    note,
    patient,
    stay,
)
from training.dataset import Dataset, DatasetSpec, Window, build_dataset, patient_split

AS_OF = datetime(2024, 12, 31, tzinfo=UTC)
TRAIN = Window.parse("2022-01-01:2022-12-31", "train")
TEMPORAL = [Window.parse("2023-01-01:2023-12-31"), Window.parse("q1=2024-01-01:2024-03-31")]
SPLITS = ["train", "val", "test", "temporal_2023", "q1"]

NOTE_COLUMNS = ["note_id", "patient_id", "encounter_id", "note_type", "note_date", "admitted", "discharged", "window",
                "split", "age", "age_band", "sex", "race", "ethnicity", "payer", "unit", "service", "text_sha256",
                "n_words", "text"]

# note id -> (split, {task: label}) for every note that lands in a window
EXPECTED = {
    "a1-hp": ("train", {"mortality": 0, "los": 1, "cci": 1, "denial": 0}),
    "a1-ds": ("train", {"readmission": 1}),
    "a2-hp": ("train", {"mortality": 0, "los": 3, "cci": 2, "denial": 1}),
    "a2-ds": ("train", {"readmission": 0}),
    "f1-hp": ("val", {"mortality": 0, "los": 0}),
    "c1-hp": ("test", {"mortality": 1, "los": 2, "cci": 3}),
    "d1-hp": ("temporal_2023", {"mortality": 0, "los": 1, "denial": 1}),
    "d1-ds": ("temporal_2023", {"readmission": 0}),
    "e1-hp": ("q1", {"mortality": 0, "los": 0, "cci": 0}),
}


def text_of(note_id: str) -> str:
    return f"Note {note_id}: history, examination, assessment and plan."


def hospital_stay(pid: str, eid: str, start: str, end: str, notes: tuple[str, ...] = ("hp",), **kw) -> list[dict]:
    """The Encounter and its notes ("hp", "ds", "progress"), each dated at admission or discharge."""
    loinc = {"hp": "34117-2", "ds": DS, "progress": PROGRESS_NOTE}
    docs = [note(f"{eid}-{kind}", eid, loinc[kind], pid=pid, text=text_of(f"{eid}-{kind}"),
                 date=end if kind == "ds" else start) for kind in notes]
    return [stay(eid, start, end, pid=pid, **kw), *docs]


def hospital() -> list[dict]:
    return [
        patient("ann", birth="1955-04-10", sex="female"), coverage("ann", "Medicare"),
        *hospital_stay("ann", "a1", "2022-03-01T10:00:00Z", "2022-03-04T15:00:00Z", ("hp", "ds")),
        condition("a1-c1", "a1", "E11.9", pid="ann"), condition("a1-c2", "a1", "E11.22", pid="ann"),
        claim("a1-claim", "a1", pid="ann"), eob("a1-eob", "a1-claim", pid="ann"),
        *hospital_stay("ann", "a2", "2022-03-14T08:00:00Z", "2022-03-20T12:00:00Z", ("hp", "ds")),
        condition("a2-c1", "a2", "I50.9", pid="ann"), condition("a2-c2", "a2", "N18.4", pid="ann"),
        claim("a2-claim", "a2", pid="ann"), eob("a2-eob", "a2-claim", denied=True, pid="ann"),

        patient("fay", birth="1980-01-01", sex="male"), coverage("fay", "Acme Health"),
        *hospital_stay("fay", "f1", "2022-06-01T09:00:00Z", "2022-06-03T09:00:00Z"),

        patient("cat", birth="1940-02-01", sex="female", deceased="2022-09-15T03:00:00Z"), coverage("cat", "Medicare"),
        *hospital_stay("cat", "c1", "2022-09-10T18:00:00Z", "2022-09-15T04:00:00Z", ("hp", "ds"), disposition="exp"),
        condition("c1-c1", "c1", "C78.00", pid="cat"), claim("c1-claim", "c1", pid="cat"),

        patient("dan", birth="1970-07-07", sex="male"), coverage("dan", "Medicaid"),
        *hospital_stay("dan", "d1", "2023-05-01T10:00:00Z", "2023-05-04T10:00:00Z", ("hp", "ds")),
        claim("d1-claim", "d1", pid="dan"), eob("d1-eob1", "d1-claim", denied=True, pid="dan"),
        eob("d1-eob2", "d1-claim", pid="dan"),

        patient("eve", birth="2000-12-24", sex="female"),
        *hospital_stay("eve", "e1", "2024-02-01T10:00:00Z", "2024-02-02T10:00:00Z"),
        condition("e1-c1", "e1", "I10", pid="eve"),
        *hospital_stay("eve", "e2", "2024-06-01T10:00:00Z", "2024-06-03T10:00:00Z"),

        patient("gus", birth="1960-01-01", sex="male"),
        *hospital_stay("gus", "g1", "2021-06-01T10:00:00Z", "2021-06-02T10:00:00Z", ("hp", "progress")),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    fhir = export(root / "fhir", *hospital())
    # the hand counts below are for the any-denial label (tests/training/test_labels.py covers both)
    summary = build_dataset(fhir, root / "out", DatasetSpec(TRAIN, TEMPORAL), as_of=AS_OF,
                            data=DataSettings(denial_definition="any-denial"))
    return summary, root / "out"


def test_patients_fall_in_the_splits_the_cases_assume():
    assert [patient_split(p, 0) for p in ("ann", "fay", "cat")] == ["train", "val", "test"]


def test_parquet_tables(built):
    _, out = built
    notes = pd.read_parquet(out / "notes.parquet")
    labels = pd.read_parquet(out / "labels.parquet")
    assert list(notes.columns) == NOTE_COLUMNS
    assert list(labels.columns) == ["note_id", "task", "label", "split"]
    assert labels["label"].dtype == "int64"

    assert dict(zip(notes["note_id"], notes["split"], strict=True)) == {
        f"DocumentReference/{nid}": split for nid, (split, _) in EXPECTED.items()}
    got = {(row.note_id, row.task, row.label, row.split) for row in labels.itertuples()}
    assert got == {(f"DocumentReference/{nid}", task, label, split)
                   for nid, (split, tasks) in EXPECTED.items() for task, label in tasks.items()}
    assert len(labels) == len(got)

    ann_a1_hp = notes.set_index("note_id").loc["DocumentReference/a1-hp"]
    assert (ann_a1_hp["patient_id"], ann_a1_hp["encounter_id"], ann_a1_hp["note_type"]) == ("ann", "a1", "admission_hp")
    assert (ann_a1_hp["age"], ann_a1_hp["age_band"], ann_a1_hp["sex"], ann_a1_hp["payer"]) == (66, "65-74", "female", "Medicare")
    assert (ann_a1_hp["window"], ann_a1_hp["service"], ann_a1_hp["text"]) == ("train", "medicine", text_of("a1-hp"))
    assert ann_a1_hp["admitted"] == pd.Timestamp("2022-03-01T10:00:00Z")
    assert ann_a1_hp["discharged"] == pd.Timestamp("2022-03-04T15:00:00Z")
    assert ann_a1_hp["n_words"] == len(text_of("a1-hp").split())


def test_splits_and_windows(built):
    _, out = built
    notes = pd.read_parquet(out / "notes.parquet")
    in_train = notes[notes["window"] == "train"]
    assert set(in_train["split"]) == {"train", "val", "test"}
    temporal = notes[notes["window"] != "train"]
    assert (temporal["split"] == temporal["window"]).all()
    assert set(temporal["window"]) == {"temporal_2023", "q1"}
    assert notes.groupby("patient_id")["split"].nunique().max() == 1


def test_dataset_json_matches_a_hand_count(built):
    summary, out = built
    info = json.loads((out / "dataset.json").read_text())
    assert info == json.loads(summary.to_json())
    assert info["splits"] == SPLITS and info["denial_definition"] == "any-denial"
    assert info["data_end"] == "2024-12-31T00:00:00+00:00"
    assert info["windows"] == [{"name": "train", "start": "2022-01-01", "end": "2022-12-31"},
                               {"name": "temporal_2023", "start": "2023-01-01", "end": "2023-12-31"},
                               {"name": "q1", "start": "2024-01-01", "end": "2024-03-31"}]
    assert info["notes_per_split"] == {"train": 4, "val": 1, "test": 1, "temporal_2023": 2, "q1": 1}
    assert info["notes_excluded"] == {"no-task-label": 1, "outside-windows": 2, "not-a-task-note-type": 1}
    assert info["excluded"] == {
        "readmission": {"died-in-hospital": 1},
        "mortality": {"outside-windows": 2},
        "los": {"outside-windows": 2},
        "cci": {"no-diagnosis-codes": 4},  # f1, d1, e2, g1
        "denial": {"no-claim": 4, "claim-pending": 1},  # no claim: f1, e1, e2, g1; pending: c1
    }
    assert info["problems"] == {"counts": {}, "examples": {}, "repairs": {}}

    # a few cells spelled out
    assert info["tasks"]["los"]["train"] == {"n": 2, "counts": [0, 1, 0, 1], "prevalence": [0.0, 0.5, 0.0, 0.5]}
    assert info["tasks"]["readmission"]["val"] == {"n": 0, "counts": [0, 0], "prevalence": [None, None]}
    assert info["tasks"]["mortality"]["test"] == {"n": 1, "counts": [0, 1], "prevalence": [0.0, 1.0]}
    assert info["tasks"]["denial"]["temporal_2023"] == {"n": 1, "counts": [0, 1], "prevalence": [0.0, 1.0]}
    assert info["tasks"]["cci"]["q1"] == {"n": 1, "counts": [1, 0, 0, 0, 0], "prevalence": [1.0, 0, 0, 0, 0]}

    # and every cell from the table of expected labels
    n_classes = {"readmission": 2, "mortality": 2, "los": 4, "cci": 5, "denial": 2}
    for task, k in n_classes.items():
        for split in SPLITS:
            values = Counter(tasks[task] for s, tasks in EXPECTED.values() if s == split and task in tasks)
            n = sum(values.values())
            counts = [values[i] for i in range(k)]
            assert info["tasks"][task][split] == {"n": n, "counts": counts,
                                                  "prevalence": [c / n if n else None for c in counts]}, (task, split)


def test_task_frame(built):
    _, out = built
    dataset = Dataset.load(out)
    assert dataset.splits == SPLITS
    assert dataset.contract.names == ["readmission", "mortality", "los", "cci", "denial"]
    frame = dataset.task_frame("los", "train").sort_values("note_id").reset_index(drop=True)
    assert {"text", "label", "age_band", "sex", "payer"} <= set(frame.columns)
    assert frame[["note_id", "label", "age_band", "sex", "payer"]].to_dict("records") == [
        {"note_id": "DocumentReference/a1-hp", "label": 1, "age_band": "65-74", "sex": "female", "payer": "Medicare"},
        {"note_id": "DocumentReference/a2-hp", "label": 3, "age_band": "65-74", "sex": "female", "payer": "Medicare"},
    ]
    assert list(frame["text"]) == [text_of("a1-hp"), text_of("a2-hp")]
    assert list(dataset.task_frame("mortality", "val")["age_band"]) == ["18-44"]
    assert list(dataset.task_frame("cci", "q1")["payer"]) == [None]  # eve has no Coverage
    assert dataset.task_frame("readmission", "val").empty


def test_note_subject_disagreeing_with_its_stay_does_not_split_a_patient(tmp_path):
    # After a patient merge, the H&P still names ann's old record "cat" while its stay is ann's.
    resources = [patient("ann"), patient("cat"),
                 *hospital_stay("ann", "a1", "2022-03-01T10:00:00Z", "2022-03-04T15:00:00Z", ("ds",)),
                 stay("a2", "2022-05-01T10:00:00Z", "2022-05-03T10:00:00Z", pid="ann"),
                 note("a2-hp", "a2", pid="cat", text="Admitted with pneumonia.")]
    build_dataset(export(tmp_path / "fhir", *resources), tmp_path / "out", DatasetSpec(TRAIN), as_of=AS_OF)
    notes = pd.read_parquet(tmp_path / "out" / "notes.parquet")
    assert set(notes["patient_id"]) == {"ann"}
    assert notes["split"].nunique() == 1


# --- windows and splits ------------------------------------------------------------------------


def test_window_parse():
    assert Window.parse("2023-01-01:2023-12-31") == Window("temporal_2023", date(2023, 1, 1), date(2023, 12, 31))
    assert Window.parse("q1=2024-01-01:2024-03-31") == Window("q1", date(2024, 1, 1), date(2024, 3, 31))
    assert Window.parse("2023-01-01:2023-06-30").name == "temporal_20230101_20230630"
    assert Window.parse(" 2019-01-01 : 2022-12-31 ", "train") == Window("train", date(2019, 1, 1), date(2022, 12, 31))
    assert Window.parse("2024-02-29:2024-02-29").contains(date(2024, 2, 29))
    window = Window.parse("2023-01-01:2023-12-31")
    assert window.contains(date(2023, 1, 1)) and window.contains(date(2023, 12, 31))
    assert not window.contains(date(2022, 12, 31)) and not window.contains(date(2024, 1, 1))


@pytest.mark.parametrize("text, message", [
    ("2023-12-31:2023-01-01", "end before start"),
    ("2023-01-01", "expected START:END"),
    ("2023-01-01:2023-13-01", "expected START:END"),
    ("2023-01-01:2023-06-30:2023-12-31", "expected START:END"),
])
def test_window_parse_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        Window.parse(text)


def test_dataset_spec_rejects_overlapping_or_unordered_windows():
    train = Window.parse("2019-01-01:2022-12-31", "train")
    with pytest.raises(ValueError, match="without overlap"):
        DatasetSpec(train, [Window.parse("2022-12-31:2023-12-31")])
    with pytest.raises(ValueError, match="without overlap"):
        DatasetSpec(train, [Window.parse("2023-01-01:2023-12-31"), Window.parse("2023-06-01:2024-05-31")])
    with pytest.raises(ValueError, match="without overlap"):
        DatasetSpec(train, [Window.parse("2024-01-01:2024-12-31"), Window.parse("2023-01-01:2023-12-31")])
    with pytest.raises(ValueError, match="unique"):
        DatasetSpec(train, [Window.parse("val=2023-01-01:2023-12-31")])
    with pytest.raises(ValueError, match="unique"):
        DatasetSpec(train, [Window.parse("x=2023-01-01:2023-06-30"), Window.parse("x=2023-07-01:2023-12-31")])
    spec = DatasetSpec(train, [Window.parse("2023-01-01:2023-12-31"), Window.parse("2024-01-01:2024-12-31")])
    assert [w.name for w in spec.temporal_windows] == ["temporal_2023", "temporal_2024"]


def test_patient_split_is_deterministic_and_8_1_1():
    ids = [f"patient-{i}" for i in range(20_000)]
    first = [patient_split(p, 0) for p in ids]
    assert first == [patient_split(p, 0) for p in ids]
    shares = {k: v / len(ids) for k, v in Counter(first).items()}
    assert set(shares) == {"train", "val", "test"}
    assert shares["train"] == pytest.approx(0.8, abs=0.015)
    assert shares["val"] == pytest.approx(0.1, abs=0.01)
    assert shares["test"] == pytest.approx(0.1, abs=0.01)
    other_seed = [patient_split(p, 1) for p in ids[:1000]]
    assert other_seed != first[:1000]  # the seed reshuffles patients
