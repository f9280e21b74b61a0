"""The store's schema, as Alembic migrations: one place where every table of the store is
created and changed (scores, audit, outcomes and token uses; CDS Hooks cards and feedback; the
work queue; census and outreach; monitoring history and alerts), run by `Store` when it opens a
database, under the store's schema lock so that replicas starting together migrate once.

A new table or column is a new file in versions/ (`down_revision` the previous head); the
modules keep their SQLAlchemy models for queries, and tests/serving/test_migrations.py checks
that the migrated schema equals what the models declare.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).resolve().parent


def _script():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config, ScriptDirectory.from_config(config)


def head() -> str:
    return _script()[1].get_current_head()


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
