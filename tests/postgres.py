"""A throwaway PostgreSQL server for tests, started from the Debian server packages.

Use the session fixture in a test module (no conftest involved):

    from tests.postgres import postgres_url  # noqa: F401

`postgres_url` is a SQLAlchemy URL "postgresql+psycopg://postgres@127.0.0.1:PORT/lang1ops" of a
server listening only on 127.0.0.1 (and a unix socket in its temporary directory), with
trust authentication and fsync off. The server is stopped and its directory removed at the
end of the session, also when a test or the startup fails. Without server binaries the
fixture skips (fails in CI, see tests/support.py).

Debian installs initdb, pg_ctl and postgres in /usr/lib/postgresql/<version>/bin/, not on
PATH. initdb refuses to run as root, so as root the server runs as the `postgres` system
user (created by the package) through `runuser` (or `su`).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.support import missing

DATABASE = "lang1ops"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30


def find_server_bin() -> Path | None:
    """The bin directory of the newest installed PostgreSQL server, or None."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        key = tuple(int(part) for part in re.findall(r"\d+", version))
        candidates.append((key, Path(initdb).parent))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")  # other layouts: server binaries on PATH
    if initdb:
        bin_dir = Path(initdb).resolve().parent
        if (bin_dir / "pg_ctl").exists() and (bin_dir / "postgres").exists():
            return bin_dir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Runner:
    """Runs server commands as the current user, or as `postgres` when we are root."""

    def __init__(self) -> None:
        self.as_postgres = os.geteuid() == 0
        self.uid = self.gid = None
        if self.as_postgres:
            try:
                entry = pwd.getpwnam(SUPERUSER)
            except KeyError:
                missing("running as root and there is no 'postgres' system user to run the server as")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def chown(self, path: Path) -> None:
        if self.as_postgres:
            os.chown(path, self.uid, self.gid)

    def command(self, argv: list[str]) -> list[str]:
        if not self.as_postgres:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", SUPERUSER, "--", *argv]
        return ["su", SUPERUSER, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def run(self, argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )


def _fail(what: str, result: subprocess.CompletedProcess[str] | None, log: Path | None = None) -> None:
    parts = [what]
    if result is not None:
        parts.append((result.stdout + result.stderr)[-2000:])
    if log is not None and log.exists():
        with suppress(OSError):
            parts.append(log.read_text(errors="replace")[-2000:])
    raise RuntimeError("\n".join(parts))


@contextmanager
def postgres_server(database: str = DATABASE) -> Iterator[str]:
    """Start a throwaway server, yield a SQLAlchemy URL to `database`, stop and remove it."""
    bin_dir = find_server_bin()
    if bin_dir is None:
        missing("PostgreSQL server binaries not found (apt-get install postgresql)")
    try:
        import psycopg
    except ImportError:
        missing("psycopg is not installed (pip install 'psycopg[binary]')")
    runner = _Runner()
    # As root the directory must be reachable by `postgres`: /tmp, not a 0700 pytest base dir.
    base = Path(tempfile.mkdtemp(prefix="lang1ops-pg-", dir="/tmp" if runner.as_postgres else None))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        sockets.mkdir()
        for path in (base, sockets):
            runner.chown(path)
        result = runner.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--no-locale", "--no-sync"],
            cwd=base, timeout=60,
        )
        if result.returncode != 0:
            _fail("initdb failed", result)
        for attempt in range(3):
            port = _free_port()
            with open(data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sockets}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 50\nlogging_collector = off\n"
                )
            result = runner.run(
                [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S), "start"],
                cwd=base, timeout=START_TIMEOUT_S + 10,
            )
            started = (data / "postmaster.pid").exists()
            if result.returncode == 0:
                break
            if attempt == 2 or "could not bind" not in log.read_text(errors="replace"):
                _fail("pg_ctl start failed", result, log)
        with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            _stop(runner, pg_ctl, data, base)
        shutil.rmtree(base, ignore_errors=True)


def _stop(runner: _Runner, pg_ctl: str, data: Path, base: Path) -> None:
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = None
    with suppress(subprocess.TimeoutExpired, OSError):
        runner.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "10", "stop"], cwd=base, timeout=20)
    if pid is not None and pid_file.exists():  # pg_ctl could not stop it: kill the postmaster we started
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a throwaway PostgreSQL database (server started for this session)."""
    with postgres_server() as url:
        yield url
