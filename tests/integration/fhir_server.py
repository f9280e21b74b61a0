"""A real FHIR R4 server for tests: @medplum/fhir-router's in-memory repository behind
tests/integration/fhir_server/server.mjs, on 127.0.0.1.

Installs nothing: `.ci/run` runs `npm ci` in tests/integration/fhir_server. Without node or
node_modules a test skips (fails in CI, see tests.support.missing). The server persists its
data to a JSON file, so `stop()` then `start()` brings it back on the same port with the same
resources (the "FHIR server was down" tests).
"""

from __future__ import annotations

import json
import re
import select
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import missing

SERVER_DIR = Path(__file__).parent / "fhir_server"
STARTUP_TIMEOUT_S = 60


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        missing("system binary 'node' not found (apt-get install nodejs npm)")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        missing(f"npm packages missing: run `npm ci` in {SERVER_DIR}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = (int(x) for x in re.findall(r"\d+", version)[:2])
    if (major, minor) < (20, 10):
        missing(f"node {version} is too old for @medplum/fhir-router: Node 20.10+ needed")
    # fhir-router imports WebSocket, global from Node 22; Node 20 has it behind a flag
    flags = [] if (major, minor) >= (22, 0) else ["--experimental-websocket"]
    return [node, *flags, str(SERVER_DIR / "server.mjs")]


class FhirServer:
    """One Node FHIR server process; `base_url` stays the same across stop/start."""

    def __init__(self, data_file: Path, auth_config: dict | None = None, log_file: Path | None = None):
        self.command = node_command()
        self.data_file = data_file
        self.auth_file = None
        if auth_config is not None:
            self.auth_file = data_file.with_suffix(".auth.json")
            self.auth_file.write_text(json.dumps(auth_config))
        self.log_file = log_file or data_file.with_suffix(".log")
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/auth/token"

    def start(self) -> FhirServer:
        args = [*self.command, "--port", str(self.port), "--data", str(self.data_file)]
        if self.auth_file:
            args += ["--auth", str(self.auth_file)]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, cwd=SERVER_DIR, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], STARTUP_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""  # "LISTENING <port>", or "" if it died
        if not line.startswith("LISTENING"):
            self.stop()
            raise RuntimeError(f"FHIR test server did not start; see {self.log_file}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process.stdout.close()
        self.process = None

    def stats(self) -> dict:
        return httpx.get(f"{self.base_url}/_test/stats", timeout=5).json()

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def fhir_server(tmp_path):
    """A fresh, empty FHIR server (no auth) for one test."""
    server = FhirServer(tmp_path / "fhir-data.json")
    with server:
        yield server


@pytest.fixture
def fhir_server_factory(tmp_path):
    """Make servers with options (e.g. a SMART auth config); all stopped after the test."""
    servers: list[FhirServer] = []

    def make(auth_config: dict | None = None, name: str = "fhir") -> FhirServer:
        server = FhirServer(tmp_path / f"{name}-{len(servers)}.json", auth_config)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


__all__ = ["FhirServer", "fhir_server", "fhir_server_factory", "node_command", "SERVER_DIR"]
