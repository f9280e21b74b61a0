"""The service's database, as every module that keeps tables in it sees it: the engine, the
column types, the names of constraints and indexes, and SQLite's write lock, defined once.

One SQLAlchemy 2.x engine per process, from a URL: SQLite by default
(`sqlite:///var/lang1ops.sqlite`), PostgreSQL by URL (`postgresql+psycopg://user@host:5432/db`).
The store (`serving.store`) opens it; the other modules (CDS Hooks cards, the work queue, the
census and outreach views, monitoring history and alerts) keep their own tables on the store's
engine, declared on a `table_metadata()` and created by the store's migrations
(`lang1ops.migrations`).

SQLite is shared by several Ray replica processes writing to one file: connections use WAL,
a busy timeout, foreign keys, and a transaction on `write_engine(engine)` starts with
BEGIN IMMEDIATE so that a writer waits for the lock instead of failing on a stale read snapshot.
The engine hides SQL parameters in its errors (a value in the wrong column could be PHI).

Times are timezone-aware UTC on both backends (`UTCDateTime`); naive datetimes are refused.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Engine,
    Integer,
    MetaData,
    TypeDecorator,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Constraint and index names, identical on SQLite and PostgreSQL. Every module that keeps tables in
# the store (its own MetaData, on the store's engine) names them the same way.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def table_metadata() -> MetaData:
    """A MetaData for one module's own tables in the store, named like every other's."""
    return MetaData(naming_convention=NAMING_CONVENTION)


# --------------------------------------------------------------------------------------------- types


# Autoincrementing 64-bit ids (SQLite only autoincrements INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no timezone type, so the value is stored as naive
    UTC and given `tzinfo=UTC` back when read. Naive datetimes are refused when written (their
    zone is unknown), values in another zone are converted to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = aware_utc(value, "datetime value")
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def aware_utc(value: datetime, name: str) -> datetime:
    """`value` in UTC; a naive datetime or another type is refused (the message names `name`)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} is a naive datetime; pass a timezone-aware one (e.g. tzinfo=UTC)")
    return value.astimezone(UTC)


# --------------------------------------------------------------------------------------------- engine


def make_engine(url: str | URL) -> Engine:
    """The engine for a store URL: SQLite (WAL, busy timeout, foreign keys, see `write_engine`)
    or PostgreSQL (psycopg 3, a small pre-pinged pool)."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(u)
    if backend == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(
            u,
            hide_parameters=True,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"connect_timeout": 10, "application_name": "lang1ops"},
        )
    raise ValueError(
        f"unsupported database backend {backend!r}: use sqlite:///path/db.sqlite or postgresql+psycopg://..."
    )


def write_engine(engine: Engine) -> Engine:
    """`engine` for writes: on SQLite its transactions take the write lock up front (BEGIN
    IMMEDIATE, waiting up to the busy timeout), so a writer that read first cannot fail on a
    stale snapshot and two writers never both act on one read; PostgreSQL's is `engine` itself."""
    return engine.execution_options(sqlite_begin="IMMEDIATE") if engine.dialect.name == "sqlite" else engine


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (persistent; a no-op once done). The switch needs an exclusive
    lock and SQLite can report "database is locked" at once, without the busy handler, while
    other processes open a new file at the same moment: retry until the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _sqlite_engine(u: URL) -> Engine:
    memory = u.database in (None, "", ":memory:") or u.query.get("mode") == "memory"
    kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, else every session gets its own empty db
    else:
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, hide_parameters=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _on_begin); sqlite3's legacy mode
        # would start transactions only at the first write, after reads on a stale snapshot.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Write transactions (`write_engine`) take the write lock up front (waiting up to the busy timeout).
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine
