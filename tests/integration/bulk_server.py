"""A small FHIR Bulk Data server for tests, following the Bulk Data IG's async pattern over a
directory of ndjson files (one file per resource type, as `lang1ops data generate` writes).

- kick-off `GET /fhir/$export`, `/fhir/Patient/$export`, `/fhir/Group/{id}/$export`: checks
  `Prefer: respond-async`, `Accept`, `_outputFormat`, `_since`; answers 202 + Content-Location;
- status `GET /fhir/_jobs/{id}`: 202 with `Retry-After` and `X-Progress` for the first
  `polls_before_ready` polls, then 200 with the manifest;
- files `GET /fhir/_files/{job}/{name}` (application/fhir+ndjson);
- `DELETE /fhir/_jobs/{id}`: 202, the job and its files are gone (404 afterwards);
- `_type` and `_since` (by meta.lastUpdated; resources without it are always included);
- failure modes for error tests (`mode`), optional bearer token, a request log.

It runs in a thread on a free 127.0.0.1 port (`with BulkServer(dir) as server: server.base`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

FHIR_JSON = "application/fhir+json"
NDJSON_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
# Types outside the Patient compartment: left out of Patient- and Group-level exports.
NON_PATIENT_TYPES = {"Organization", "Location", "Practitioner"}
RAW = "__unparsed_line__"


def outcome(code: str, diagnostics: str, status: int) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome",
                         "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]},
                        status_code=status, media_type=FHIR_JSON)


def _instant(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else None


@dataclass
class Job:
    id: str
    request: str
    files: dict[str, bytes]  # name -> ndjson body
    counts: dict[str, int]
    polls: int = 0
    errors: dict[str, bytes] = field(default_factory=dict)


class BulkServer:
    """`mode`: "ok"; "kickoff-error" (kick-off 500 OperationOutcome); "status-error" (the
    export fails: status 500 with an OperationOutcome); "transient" (the first poll answers 503
    with a transient OperationOutcome); "never" (never completes); "error-file" (the manifest
    also lists an OperationOutcome error file). `retry_after` is sent on 202 polls as is
    ("1", or an HTTP-date). `token` makes every request need `Authorization: Bearer <token>`."""

    def __init__(self, data_dir: Path, *, polls_before_ready: int = 2, retry_after: str | None = "1",
                 mode: str = "ok", token: str | None = None, requires_access_token: bool = False,
                 groups: dict[str, set[str]] | None = None):
        self.data_dir = Path(data_dir)
        self.polls_before_ready, self.retry_after, self.mode = polls_before_ready, retry_after, mode
        self.token, self.requires_access_token = token, requires_access_token
        self.groups = groups or {}
        self.jobs: dict[str, Job] = {}
        self.requests: list[tuple[float, str, str, dict]] = []  # (time, method, path, headers)
        self.deleted: list[str] = []
        self.port = 0
        self.app = self._build()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    # --- data ----------------------------------------------------------------------------

    def _resources(self) -> dict[str, list[dict]]:
        by_type: dict[str, list[dict]] = defaultdict(list)
        for path in sorted(self.data_dir.glob("*.ndjson")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    resource = json.loads(line)
                except ValueError:  # served as is: a real export can carry a broken line too
                    by_type[path.stem].append({RAW: line})
                    continue
                by_type[resource["resourceType"]].append(resource)
        return by_type

    def _select(self, types: list[str] | None, since: datetime | None, patients: set[str] | None,
                patient_level: bool) -> dict[str, list[dict]]:
        chosen: dict[str, list[dict]] = {}
        for kind, resources in self._resources().items():
            if types and kind not in types:
                continue
            if patient_level and kind in NON_PATIENT_TYPES:
                continue
            kept = []
            for r in resources:
                if RAW in r:
                    kept.append(r)
                    continue
                updated = _instant(((r.get("meta") or {}).get("lastUpdated")) or "")
                if since and updated and updated <= since:
                    continue
                if patients is not None and not self._in_patients(r, patients):
                    continue
                kept.append(r)
            if kept:
                chosen[kind] = kept
        return chosen

    @staticmethod
    def _in_patients(resource: dict, patients: set[str]) -> bool:
        if resource["resourceType"] == "Patient":
            return resource.get("id") in patients
        text = json.dumps(resource)
        return any(f'"Patient/{p}"' in text for p in patients)

    # --- app -----------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()
        server = self

        @app.middleware("http")
        async def log_and_auth(request: Request, call_next):
            server.requests.append((time.monotonic(), request.method, request.url.path,
                                    {k.lower(): v for k, v in request.headers.items()}))
            if server.token and request.headers.get("authorization") != f"Bearer {server.token}":
                return outcome("security", "a valid bearer token is required", 401)
            return await call_next(request)

        async def kick_off(request: Request, level: str, group: str | None = None):
            if request.headers.get("prefer", "").strip() != "respond-async":
                return outcome("invalid", "the Prefer header must be respond-async", 400)
            accept = request.headers.get("accept", FHIR_JSON)
            if accept not in (FHIR_JSON, "application/json", "*/*"):
                return outcome("not-supported", "Accept must be application/fhir+json", 400)
            q = request.query_params
            if q.get("_outputFormat", NDJSON_FORMATS[0]) not in NDJSON_FORMATS:
                return outcome("not-supported", "only ndjson output is supported", 400)
            since = None
            if "_since" in q:
                since = _instant(q["_since"])
                if since is None:
                    return outcome("invalid", "_since must be a FHIR instant with a time zone", 400)
            if server.mode == "kickoff-error":
                return outcome("exception", "the export could not be started", 500)
            patients = None
            if level == "group":
                if group not in server.groups:
                    return outcome("not-found", "unknown Group", 404)
                patients = server.groups[group]
            types = [t for t in q.get("_type", "").split(",") if t] or None
            selected = server._select(types, since, patients, level != "system")
            job = Job(uuid.uuid4().hex, str(request.url),
                      {f"{kind}.ndjson": "".join((r[RAW] if RAW in r else json.dumps(r)) + "\n"
                                                  for r in rs).encode() for kind, rs in selected.items()},
                      {kind: len(rs) for kind, rs in selected.items()})
            if server.mode == "error-file":
                job.errors["errors.ndjson"] = (json.dumps({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "processing", "diagnostics": "Binary/b1 could not be exported"}]})
                    + "\n").encode()
            server.jobs[job.id] = job
            return Response(status_code=202, headers={"Content-Location": f"{server.base}/_jobs/{job.id}"})

        @app.get("/fhir/$export")
        async def system_export(request: Request):
            return await kick_off(request, "system")

        @app.get("/fhir/Patient/$export")
        async def patient_export(request: Request):
            return await kick_off(request, "patient")

        @app.get("/fhir/Group/{group}/$export")
        async def group_export(request: Request, group: str):
            return await kick_off(request, "group", group)

        @app.get("/fhir/_jobs/{job_id}")
        async def status(job_id: str):
            job = server.jobs.get(job_id)
            if job is None:
                return outcome("not-found", "no such export (it may have been deleted)", 404)
            job.polls += 1
            if server.mode == "status-error":
                return outcome("exception", "the export failed: disk full", 500)
            if server.mode == "transient" and job.polls == 1:
                return outcome("transient", "busy, try again", 503)
            if server.mode == "never" or job.polls <= server.polls_before_ready:
                headers = {"X-Progress": f"{min(99, 100 * job.polls // (server.polls_before_ready + 1))}% done"}
                if server.retry_after is not None:
                    headers["Retry-After"] = server.retry_after
                return Response(status_code=202, headers=headers)
            manifest = {
                "transactionTime": "2025-01-01T00:00:00Z",
                "request": job.request,
                "requiresAccessToken": server.requires_access_token,
                "output": [{"type": name.removesuffix(".ndjson"), "url": f"{server.base}/_files/{job.id}/{name}",
                            "count": job.counts[name.removesuffix(".ndjson")]} for name in job.files],
                "error": [{"type": "OperationOutcome", "url": f"{server.base}/_files/{job.id}/{name}"}
                          for name in job.errors],
            }
            return JSONResponse(manifest, media_type="application/json")

        @app.delete("/fhir/_jobs/{job_id}")
        async def delete(job_id: str):
            if server.jobs.pop(job_id, None) is None:
                return outcome("not-found", "no such export", 404)
            server.deleted.append(job_id)
            return Response(status_code=202)

        @app.get("/fhir/_files/{job_id}/{name}")
        async def file(job_id: str, name: str):
            job = server.jobs.get(job_id)
            body = (job.files.get(name) or job.errors.get(name)) if job else None
            if body is None:
                return outcome("not-found", "no such file", 404)
            return Response(body, media_type="application/fhir+ndjson")

        return app

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> BulkServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("bulk test server did not start")
            time.sleep(0.02)
        self._socket = sock
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def polls(self) -> list[float]:
        """Times of the status polls, in order."""
        return [t for t, method, path, _ in self.requests if method == "GET" and "/_jobs/" in path]
