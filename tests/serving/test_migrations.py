"""The store's schema comes from one place, Alembic migrations run under the store's lock:
the migrated schema is exactly what every module's models declare, an older store (tables
made on first use, before migrations) is brought up to date without losing rows, and
replicas opening a new database together migrate it once."""

from __future__ import annotations

import multiprocessing
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import MetaData

from lang1ops.migrations import current, head
from serving.store import Store
from tests.postgres import postgres_url  # noqa: F401  (fixture)


def models_metadata() -> MetaData:
    """Every table a module of the project declares, in one MetaData."""
    from integration.cds_hooks.tables import _CdsBase
    from integration.work_queue import _Base as QueueBase
    from lang1ops.store_schema import Base
    from monitoring.alerts import AlertBase
    from monitoring.history import HistoryBase
    from serving.views.census import CensusBase
    from serving.views.outreach import OutreachBase

    union = MetaData()
    for base in (Base, OutreachBase, CensusBase, _CdsBase, QueueBase, HistoryBase, AlertBase):
        for table in base.metadata.tables.values():
            table.to_metadata(union)
    return union


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
        return
    server = sa.make_url(request.getfixturevalue("postgres_url"))
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def test_the_migrated_schema_is_what_the_models_declare(fresh_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = Store(fresh_url)
    with store.engine.connect() as connection:
        assert current(connection) == head()
        differences = compare_metadata(MigrationContext.configure(connection), models_metadata())
    assert differences == []
    store.dispose()


def test_a_store_from_before_migrations_keeps_its_rows(tmp_path):
    from lang1ops.store_schema import AuditRecord, Base
    from serving.views.census import CensusBase

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    old_tables = [t for name, t in Base.metadata.tables.items() if name != "token_uses"]  # as the last release made them
    Base.metadata.create_all(engine, tables=old_tables)
    CensusBase.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(sa.insert(AuditRecord).values(time=datetime(2025, 1, 1, tzinfo=UTC), action="old", outcome="ok"))
    engine.dispose()
    store = Store(url)
    with store.engine.connect() as connection:
        assert current(connection) == head()
    assert set(models_metadata().tables) <= set(sa.inspect(store.engine).get_table_names())
    assert [r["action"] for r in store.audit_records()] == ["old"]
    assert store.first_token_use("iss", "j1", datetime(2100, 1, 1, tzinfo=UTC))  # the new table is there


def _open(url: str) -> str:
    store = Store(url)
    with store.engine.connect() as connection:
        return current(connection)


def test_replicas_opening_a_new_database_together_migrate_it_once(fresh_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        revisions = pool.map(_open, [fresh_url] * 4)
    assert revisions == [head()] * 4
