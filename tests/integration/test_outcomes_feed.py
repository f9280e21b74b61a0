"""The outcomes feed records the labels training.labels derives, for scored encounters, once mature."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from integration.outcomes_feed import feed_outcomes, readmission_matures_at
from lang1ops.settings.bulk import OutcomesFeedSettings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.store import NewScore, Store
from tests.integration.bulk_server import BulkServer
from tests.postgres import postgres_url  # noqa: F401
from training.labels import HospitalRecords, NoLabel, label_note


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    from lang1ops.synthetic import HospitalSpec, generate_hospital

    out = tmp_path_factory.mktemp("outcomes") / "export"
    generate_hospital(HospitalSpec(name="Outcomes Test", patients=40, seed=7, start=date(2023, 1, 1),
                                   end=date(2024, 12, 31)), out)
    return out


@pytest.fixture(scope="module")
def records(hospital) -> HospitalRecords:
    return HospitalRecords.load(hospital)


def scored_store(path: Path | str, records: HospitalRecords, keep=lambda note: True) -> Store:
    """A store (SQLite file or URL) holding a score for each kept note, as the service writes it."""
    store = Store(path if isinstance(path, str) else f"sqlite:///{path}")
    for note in records.notes:
        if not keep(note) or note.note_type is None:
            continue
        tasks = DEFAULT_CONTRACT.tasks_for(note.note_type)
        store.save_score(NewScore(
            idempotency_key=f"DocumentReference/{note.resource_id}/_history/1", request_id="test",
            resource_type="DocumentReference", resource_id=note.resource_id, version_id="1",
            text_sha256=note.text_sha256, note_type=str(note.note_type), patient_id=note.patient_id,
            encounter_id=note.encounter_id, note_date=note.date, model_name="m", model_version="v1", model_kind="mc",
            shadow=False, source="bulk", probabilities={t.name: [1.0 / t.n_classes] * t.n_classes for t in tasks},
            response=None, note_tokens=10, truncated=False, latency_ms=1.0))
    return store


def expected_outcomes(records: HospitalRecords, as_of: datetime, keep=lambda note: True) -> dict:
    """(encounter, task) -> label, straight from training.labels, readmission only when mature."""
    expected = {}
    for note in records.notes:
        if not keep(note) or note.note_type is None:
            continue
        enc, labels = label_note(note, records)
        for task, label in labels.items():
            if isinstance(label, NoLabel):
                continue
            if task == "readmission" and as_of < readmission_matures_at(enc, 30):
                continue
            expected[(enc.id, task)] = label
    return expected


def stored(store: Store) -> dict:
    frame = store.outcomes()
    return {(r.encounter_id, r.task): int(r.label) for r in frame.itertuples()}


def test_recorded_outcomes_are_the_training_labels_and_a_rerun_changes_nothing(hospital, records, tmp_path):
    store = scored_store(tmp_path / "s.sqlite", records)
    summary = feed_outcomes(hospital, store)
    # the latest encounter time in the export (not the manifest's transactionTime)
    assert summary.as_of == max(t for e in records.encounters.values() for t in (e.start, e.end) if t)
    expected = expected_outcomes(records, summary.as_of)
    assert stored(store) == expected and summary.recorded == len(expected)
    tasks = {task for _, task in expected}
    assert tasks == {"readmission", "mortality", "los", "cci", "denial"}
    assert set(expected.values()) >= {0, 1}
    # discharges in the last 30 days of the data: their readmission label waits
    assert summary.immature.get("readmission", 0) > 0
    frame = store.outcomes(task="readmission")
    for row in frame.itertuples():
        enc = records.encounters[row.encounter_id]
        assert row.observed_at.to_pydatetime() == readmission_matures_at(enc, 30) and row.source == "fhir-export"
    again = feed_outcomes(hospital, store)
    assert again.recorded == 0 and again.unchanged == len(expected)
    assert stored(store) == expected


def test_readmission_waits_for_maturity_even_when_already_readmitted(hospital, records, tmp_path):
    readmitted = []
    for note in records.notes:
        enc, labels = label_note(note, records)
        if labels.get("readmission") == 1:
            readmitted.append(enc)
    assert readmitted, "the synthetic hospital has readmissions"
    enc = readmitted[0]
    store = scored_store(tmp_path / "m.sqlite", records, keep=lambda n: n.encounter_id == enc.id)
    early = feed_outcomes(hospital, store, as_of=enc.end + timedelta(days=10))
    assert (enc.id, "readmission") not in stored(store) and early.immature == {"readmission": 1}
    mature = feed_outcomes(hospital, store, as_of=readmission_matures_at(enc, 30))
    assert stored(store)[(enc.id, "readmission")] == 1 and mature.recorded == 1 and not mature.immature


def test_only_scored_encounters_unless_asked_for_all(hospital, records, tmp_path):
    first = records.notes[0].encounter_id
    store = scored_store(tmp_path / "o.sqlite", records, keep=lambda n: n.encounter_id == first)
    feed_outcomes(hospital, store)
    assert {e for e, _ in stored(store)} <= {first}
    everything = feed_outcomes(hospital, store, OutcomesFeedSettings(only_scored_encounters=False))
    encounters = {e for e, _ in stored(store)}
    assert len(encounters) > 10 and everything.recorded > 0
    assert all(records.encounters[e].inpatient for e in encounters)


def test_outcomes_cli_from_an_export_url(hospital, records, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from integration.batch_cli import app

    monkeypatch.setenv("LANG1OPS_HOME", str(tmp_path))
    store = scored_store(tmp_path / "cli.sqlite", records)
    with BulkServer(hospital, polls_before_ready=0) as server:
        result = CliRunner().invoke(app, ["outcomes", "--export-url", server.base, "--out", str(tmp_path / "exp"),
                                          "--store-url", f"sqlite:///{tmp_path / 'cli.sqlite'}",
                                          "--as-of", "2024-12-31T23:59:59Z"])
        kick = next(p for _, m, p, h in server.requests if p.endswith("$export"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    # the export carries only what the label rules read: no notes, no Practitioners
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Encounter", "Condition", "Claim",
                                                       "ExplanationOfBenefit"}
    expected = expected_outcomes(records, datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert summary["recorded"] == len(expected) and stored(store) == expected
    assert kick.endswith("/$export")


def test_feed_on_postgresql(hospital, records, postgres_url):  # noqa: F811
    """The store query for scored encounters and the upsert work on PostgreSQL too."""
    from sqlalchemy import text

    schema = Store(postgres_url)  # creates the tables; then a clean slate in the session's shared database
    with schema.engine.begin() as connection:
        connection.execute(text("TRUNCATE scored_notes, outcomes RESTART IDENTITY CASCADE"))
    schema.dispose()
    first = records.notes[0].encounter_id
    keep = lambda n: n.encounter_id == first  # noqa: E731
    store = scored_store(postgres_url, records, keep)
    summary = feed_outcomes(hospital, store)
    expected = expected_outcomes(records, summary.as_of, keep)
    assert expected and stored(store) == expected
    assert feed_outcomes(hospital, store).recorded == 0
    store.dispose()
