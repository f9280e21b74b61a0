"""The score store on SQLite and on a real PostgreSQL server (started by tests/postgres.py)."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from serving.store import NewScore, Store
from tests.postgres import postgres_url  # noqa: F401

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOTE_TEXT = "Patient is a 67-year-old man admitted with community acquired pneumonia."


def make_score(n: int = 1, **changes) -> NewScore:
    sha = hashlib.sha256(f"{NOTE_TEXT} #{n}".encode()).hexdigest()
    score = NewScore(
        idempotency_key=f"DocumentReference/doc-{n}/_history/1",
        request_id=f"00000000-0000-4000-8000-{n:012d}",
        resource_type="DocumentReference",
        resource_id=f"doc-{n}",
        version_id="1",
        text_sha256=sha,
        note_type="discharge_summary",
        patient_id=f"pat-{n}",
        encounter_id=f"enc-{n}",
        note_date=T0 - timedelta(days=1),
        model_name="lang1-ops",
        model_version="v1",
        model_kind="heads",
        shadow=False,
        source="api",
        probabilities={"readmission": [0.8, 0.2], "los": [0.1, 0.2, 0.3, 0.4]},
        response={"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "RiskAssessment", "id": str(n)}}]},
        note_tokens=412,
        truncated=False,
        latency_ms=12.5,
        encoding=np.arange(8, dtype=np.float32).tobytes(),
        scored_at=T0,
    )
    return replace(score, **changes)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store(url)
    try:
        yield store
    finally:
        if store.backend == "postgresql":  # one database for the session: leave it empty
            from lang1ops.store_schema import Base

            Base.metadata.drop_all(store.engine)
            with store.engine.begin() as connection:  # the next Store migrates the dropped tables back
                connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        store.dispose()


def count(store: Store, table: str) -> int:
    with store.engine.connect() as connection:
        return connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_save_and_find_round_trip(store: Store) -> None:
    new = make_score()
    stored, created = store.save_score(new)
    assert created and stored.id > 0
    found = store.find_score(new.idempotency_key)
    assert found == stored
    assert found.probabilities == {"readmission": [0.8, 0.2], "los": [0.1, 0.2, 0.3, 0.4]}
    assert found.response == new.response
    assert (found.model_version, found.model_kind, found.source, found.note_tokens) == ("v1", "heads", "api", 412)
    assert found.scored_at == T0 and found.note_date == T0 - timedelta(days=1)
    assert found.text_sha256 == new.text_sha256 and not found.shadow
    assert store.find_score("DocumentReference/unknown/_history/1") is None
    assert count(store, "predictions") == 6


def test_same_key_twice_returns_the_first(store: Store) -> None:
    first, created = store.save_score(make_score())
    again, created_again = store.save_score(make_score(probabilities={"readmission": [0.1, 0.9]}, latency_ms=99.0))
    assert created and not created_again
    assert again == first and again.probabilities["readmission"] == [0.8, 0.2]
    assert count(store, "scored_notes") == 1
    # A new model version of the same note is a new score, and the newest answers.
    newer, created_newer = store.save_score(make_score(model_version="v2", scored_at=T0 + timedelta(hours=1)))
    assert created_newer and store.find_score(first.idempotency_key).model_version == "v2"


def test_concurrent_duplicates_from_threads(store: Store) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = store.save_score(make_score(latency_ms=float(i)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert sum(created for _, created in results) == 1
    assert len({stored.id for stored, _ in results}) == 1
    assert count(store, "scored_notes") == 1 and count(store, "predictions") == 6


def _process_worker(url: str, start, queue) -> None:
    store = None
    try:
        start.wait(10)
        store = Store(url)  # all at once on a new file: schema creation and the switch to WAL race too
        results = [store.save_score(make_score(1)), store.save_score(make_score(2))]
        queue.put([(stored.id, created) for stored, created in results])
    except BaseException as exc:
        queue.put(repr(exc))
    finally:
        if store is not None:
            store.dispose()


def test_concurrent_duplicates_from_processes_sqlite(tmp_path: Path) -> None:
    """Several replica processes writing one SQLite file (WAL, busy timeout, BEGIN IMMEDIATE)."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    ctx = multiprocessing.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    processes = [ctx.Process(target=_process_worker, args=(url, start, queue)) for _ in range(4)]
    for p in processes:
        p.start()
    start.set()
    results = [queue.get(timeout=60) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert all(isinstance(r, list) for r in results), results
    for key in (0, 1):
        assert sum(r[key][1] for r in results) == 1
        assert len({r[key][0] for r in results}) == 1
    store = Store(url)
    assert count(store, "scored_notes") == 2
    store.dispose()


def test_shadow_results_do_not_answer(store: Store) -> None:
    new = make_score(model_version="v2-challenger", shadow=True)
    stored, created = store.save_score(new)
    assert created and stored.shadow
    assert store.find_score(new.idempotency_key) is None
    assert store.find_score(new.idempotency_key, shadow=True) == stored
    champion, created = store.save_score(make_score())
    assert created and store.find_score(new.idempotency_key) == champion


def test_audit_records(store: Store) -> None:
    store.audit(request_id="r1", actor="client-a", role="clinician", action="score", endpoint="/fhir/$score",
                resource_type="DocumentReference", resource_ids=["doc-1", "doc-2"], outcome="ok",
                http_status=200, latency_ms=31.0, time=T0)
    store.audit(actor="client-b", action="read-worklist", outcome="forbidden", http_status=403,
                detail="x" * 2000, time=T0 + timedelta(seconds=1))
    records = store.audit_records()
    assert [r["action"] for r in records] == ["read-worklist", "score"]  # newest first
    assert records[1]["resource_ids"] == ["doc-1", "doc-2"] and records[1]["time"] == T0
    assert records[1]["time"].tzinfo is not None
    assert len(records[0]["detail"]) <= 500
    assert [r["request_id"] for r in store.audit_records(action="score")] == ["r1"]
    assert len(store.audit_records(limit=1)) == 1
    with pytest.raises(TypeError, match="note_text"):
        store.audit(action="score", note_text="anything")


def test_scores_between(store: Store) -> None:
    for n in range(5):
        store.save_score(make_score(n, scored_at=T0 + timedelta(hours=n)))
    store.save_score(make_score(2, model_version="v2", shadow=True, scored_at=T0 + timedelta(hours=2)))
    frame = store.scores_between(T0 + timedelta(hours=1), T0 + timedelta(hours=4))
    assert frame["resource_id"].tolist() == ["doc-1", "doc-2", "doc-3"]  # end is exclusive
    p_columns = [c for c in frame.columns if c.startswith("p_")]
    assert p_columns == ["p_los_0", "p_los_1", "p_los_2", "p_los_3", "p_readmission_0", "p_readmission_1"]
    assert frame["p_readmission_0"].tolist() == pytest.approx([0.8] * 3)
    for column in ("id", "patient_id", "encounter_id", "note_date", "scored_at", "note_type", "model_version",
                   "shadow", "note_tokens", "truncated"):
        assert column in frame.columns
    assert str(frame["scored_at"].dt.tz) == "UTC"
    with_shadow = store.scores_between(T0, T0 + timedelta(days=1), include_shadow=True)
    assert len(with_shadow) == 6 and with_shadow["shadow"].sum() == 1
    empty = store.scores_between(T0 - timedelta(days=9), T0 - timedelta(days=8))
    assert empty.empty and "scored_at" in empty.columns


def test_encodings_round_trip(store: Store) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 16)).astype(np.float32)
    ids = [store.save_score(make_score(n, encoding=vectors[n].tobytes(), scored_at=T0 + timedelta(minutes=n)))[0].id
           for n in range(3)]
    store.save_score(make_score(9, encoding=None))
    got_ids, matrix = store.encodings_between(T0, T0 + timedelta(hours=1), model_version="v1")
    assert got_ids == ids and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, vectors)
    assert store.encodings_between(T0, T0 + timedelta(hours=1), model_version="v9")[1].shape == (0, 0)


def test_outcomes_upsert(store: Store) -> None:
    observed = T0 + timedelta(days=30)
    assert store.record_outcome("pat-1", "enc-1", "readmission", 0, observed, "adt")
    assert not store.record_outcome("pat-1", "enc-1", "readmission", 0, observed, "adt")  # unchanged
    assert store.record_outcome("pat-1", "enc-1", "readmission", 1, observed, "adt")  # changed label
    assert store.record_outcome("pat-1", "enc-1", "mortality", 0, observed - timedelta(days=20), "adt")
    assert store.record_outcome("pat-2", "enc-2", "readmission", 0, observed + timedelta(days=1), None)
    frame = store.outcomes()
    assert len(frame) == 3 and count(store, "outcomes") == 3
    readmission = store.outcomes(task="readmission")
    assert readmission["encounter_id"].tolist() == ["enc-1", "enc-2"]
    assert readmission["label"].tolist() == [1, 0]
    assert store.outcomes(since=observed + timedelta(hours=1))["encounter_id"].tolist() == ["enc-2"]
    assert str(frame["observed_at"].dt.tz) == "UTC"


def test_datetimes_round_trip_as_aware_utc(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=plus2)
    stored, _ = store.save_score(make_score(scored_at=local, note_date=local - timedelta(days=2)))
    found = store.find_score(stored.idempotency_key)
    for value, expected in ((found.scored_at, local), (found.note_date, local - timedelta(days=2))):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert value == expected and value.hour == 12
    with store.engine.connect() as connection:  # through the column type, outside the Store's API
        from lang1ops.store_schema import ScoredNote

        raw = connection.execute(sa.select(ScoredNote.scored_at)).scalar_one()
        assert raw == local and raw.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="naive"):
        store.save_score(make_score(2, scored_at=datetime(2025, 1, 1)))
    with pytest.raises(ValueError, match="naive"):
        store.scores_between(datetime(2025, 1, 1), T0)


def test_purge_cascades_to_predictions_and_encodings(store: Store) -> None:
    store.save_score(make_score(1, scored_at=T0))
    store.save_score(make_score(2, scored_at=T0 + timedelta(days=10)))
    assert (count(store, "predictions"), count(store, "note_encodings")) == (12, 2)
    assert store.purge_scores(before=T0 + timedelta(days=1)) == 1
    assert (count(store, "scored_notes"), count(store, "predictions"), count(store, "note_encodings")) == (1, 6, 1)


def test_no_column_can_hold_note_text(store: Store) -> None:
    inspector = sa.inspect(store.engine)
    tables = set(inspector.get_table_names())
    assert {"scored_notes", "predictions", "note_encodings", "audit_log", "outcomes"} <= tables
    for table in tables:
        for column in inspector.get_columns(table):
            name = column["name"].lower()
            assert name not in {"text", "note", "content", "note_text", "body", "data"}, (table, name)
            if isinstance(column["type"], sa.String) and not isinstance(column["type"], sa.JSON):
                # bounded identifiers (PostgreSQL enforces the length), validated without whitespace
                # where they are written — no free text column, in any module's table
                assert column["type"].length is not None and column["type"].length <= 512, (table, name)


def test_values_are_validated_without_echoing_them(store: Store) -> None:
    for field in ("text_sha256", "patient_id", "note_type", "request_id"):
        with pytest.raises(ValueError) as info:
            store.save_score(make_score(**{field: NOTE_TEXT}))
        assert field in str(info.value) and NOTE_TEXT not in str(info.value)
    with pytest.raises(ValueError) as info:
        store.save_score(make_score(idempotency_key=NOTE_TEXT))
    assert NOTE_TEXT not in str(info.value)
    with pytest.raises(ValueError, match="source"):
        store.save_score(make_score(source="email"))
    assert count(store, "scored_notes") == 0


def test_database_errors_hide_parameters(store: Store) -> None:
    from lang1ops.store_schema import ScoredNote

    store.save_score(make_score())
    row = {c.key: getattr(make_score(), c.key, None) for c in ScoredNote.__table__.columns if c.key != "id"}
    row.update(response_json=None, request_id="pat-secret-value", scored_at=T0)
    with pytest.raises(sa.exc.IntegrityError) as info, store.engine.begin() as connection:
        connection.execute(sa.insert(ScoredNote.__table__).values(**row))  # bypasses the Store: a duplicate
    assert "pat-secret-value" not in str(info.value) and "hidden" in str(info.value)


def test_sha256_key_and_minimal_score(store: Store) -> None:
    sha = hashlib.sha256(NOTE_TEXT.encode()).hexdigest()
    new = make_score(idempotency_key=f"sha256:{sha}", resource_id=None, version_id=None, patient_id=None,
                     encounter_id=None, note_date=None, response=None, encoding=None, scored_at=None,
                     text_sha256=sha, source="cds")
    stored, created = store.save_score(new)
    assert created and stored.response is None and stored.note_date is None
    assert abs(stored.scored_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert store.find_score(f"sha256:{sha}") == stored
    # keys the API qualifies (no version: id + hash; tasks asked), and an unknown note type
    qualified = f"DocumentReference/doc-7#sha256:{sha}?tasks=los,readmission"
    stored, created = store.save_score(make_score(7, idempotency_key=qualified, version_id=None, note_type=""))
    assert created and store.find_score(qualified) == stored and stored.note_type == ""


def test_url_hides_the_password(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("postgres_url").replace("postgres@", "postgres:s3cret-pw@")
    store = Store(url)  # trust authentication ignores the password
    try:
        assert "s3cret-pw" not in repr(store) and "s3cret-pw" not in str(store.url)
        assert "***" in repr(store)
        assert store.url.password == "s3cret-pw"  # still usable by code that needs it
    finally:
        store.dispose()


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'sub' / 'db.sqlite'}")
    try:
        with store.engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") >= 10_000
    finally:
        store.dispose()


def test_in_memory_sqlite() -> None:
    store = Store("sqlite://")
    stored, created = store.save_score(make_score())
    assert created and store.find_score(stored.idempotency_key) == stored
    store.dispose()


def test_unsupported_backend() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://u@h/db")


def test_a_stored_note_dated_9999_does_not_break_the_window_readers(store: Store) -> None:
    # accepted before dates were checked at the door: readers must keep working around it
    store.save_score(make_score(1, note_date=datetime(9999, 12, 31, tzinfo=UTC)))
    store.save_score(make_score(2))
    frame = store.scores_between(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert len(frame) == 2 and frame["note_date"].isna().sum() == 1
    by_note_date = store.scores_between(T0 - timedelta(days=30), T0 + timedelta(days=1), by="note_date")
    assert list(by_note_date["patient_id"]) == ["pat-2"]


def test_retention_command_deletes_old_scores_and_audits_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app.cli import app
    from lang1ops.settings import get_settings

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    now = datetime.now(UTC)
    with Store(url) as store:
        store.save_score(make_score(1, scored_at=now - timedelta(days=400)))
        store.save_score(make_score(2, scored_at=now - timedelta(days=10)))
    monkeypatch.setenv("LANG1OPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANG1OPS_SERVING__STORE_URL", url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert "kept" in runner.invoke(app, ["retention"]).output  # no retention configured: nothing deleted
        monkeypatch.setenv("LANG1OPS_SERVING__RETENTION_DAYS", "365")
        get_settings.cache_clear()
        dry = runner.invoke(app, ["retention", "--dry-run"])
        assert dry.exit_code == 0 and "1 scores" in dry.output
        result = runner.invoke(app, ["retention"])
        assert result.exit_code == 0 and "deleted 1 scores" in result.output, result.output
    finally:
        get_settings.cache_clear()
    with Store(url) as store:
        left = store.scores_between(now - timedelta(days=1000), now + timedelta(days=1))
        assert list(left["patient_id"]) == ["pat-2"]
        assert count(store, "predictions") == 6 and count(store, "note_encodings") == 1  # the old one's cascaded
        assert store.audit_records(limit=1, action="retention")[0]["detail"].startswith("1 scores")
