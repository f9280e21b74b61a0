"""The store's schema, as Alembic migrations: one place where every table of the store is
created and changed (scores, audit, outcomes and token uses; CDS Hooks cards and feedback; the
work queue; census and outreach; monitoring history and alerts), run by `upgrade_schema` when a
`Store` opens a database, under a schema lock so that replicas starting together migrate once.

A new table or column is a new file in versions/ (`down_revision` the previous head); the
modules keep their SQLAlchemy models for queries (the store's in `lang1ops.store_schema`), and
tests/serving/test_migrations.py checks that the migrated schema equals what the models declare.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from lang1ops.database import write_engine

MIGRATIONS = Path(__file__).resolve().parent
# pg_advisory_xact_lock key serialising migrations across replicas starting together ("l1op").
SCHEMA_LOCK_KEY = 0x6C316F70


def _script():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config, ScriptDirectory.from_config(config)


def head() -> str:
    return _script()[1].get_current_head()


def upgrade_schema(engine: Engine) -> None:
    """Create and upgrade every table of the store behind `engine` to the newest revision, in one
    transaction under the schema lock (SQLite's write lock, PostgreSQL's advisory lock), so that
    replicas starting together do not race on CREATE TABLE."""
    with write_engine(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        migrate(connection)


def migrate(connection: Connection) -> None:
    """Upgrade the database behind `connection` to the newest revision, inside the caller's
    transaction (the caller holds the schema lock)."""
    from alembic.runtime.environment import EnvironmentContext

    config, script = _script()

    def upgrade(revision, context):
        return script._upgrade_revs("head", revision)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev="head") as environment:
        environment.configure(connection=connection, target_metadata=None)
        with environment.begin_transaction():
            environment.run_migrations()


def current(connection: Connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
