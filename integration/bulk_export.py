"""A FHIR Bulk Data Access ($export) client.

The asynchronous request pattern of the Bulk Data IG (v2):

1. kick-off: `GET [base]/$export` (or `Patient/$export`, `Group/[id]/$export`) with
   `Prefer: respond-async` and `Accept: application/fhir+json` -> 202 with `Content-Location`;
2. poll the status URL: 202 (in progress; `Retry-After`, `X-Progress`) until 200 with the
   manifest (`transactionTime`, `requiresAccessToken`, `output[]`, `error[]`);
3. download every file of the manifest (ndjson), streaming to disk;
4. DELETE the status URL, so the server may free the files.

The download directory gets a `manifest.json` whose urls name the local files, so
`lang1ops.fhir_source.iter_resources` (and `lang1ops data build`) read it as an export.

Exports hold PHI: nothing here logs or raises with resource content; errors carry HTTP
status codes and the server's OperationOutcome issue codes and diagnostics.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin

import httpx

from lang1ops.identifiers import FHIR_ID
from lang1ops.settings.bulk import BulkExportSettings

log = logging.getLogger("lang1ops.bulk")

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class BulkExportError(Exception):
    """The export failed. `status` is the HTTP status (None when no response came back);
    `outcome` the server's OperationOutcome when it sent one."""

    def __init__(self, message: str, status: int | None = None, outcome: dict | None = None):
        self.status, self.outcome = status, outcome
        super().__init__(message)


class BulkExportTimeout(BulkExportError):
    """The export was not complete within the overall timeout (it has been cancelled)."""


@dataclass
class ExportFile:
    type: str
    url: str  # as the server listed it
    path: Path  # where it was downloaded
    count: int | None  # as the server declared it
    lines: int  # non-empty lines downloaded


@dataclass
class ExportResult:
    manifest: dict  # the server's manifest, unchanged
    directory: Path  # holds manifest.json (local urls) and the files
    status_url: str
    output: list[ExportFile] = field(default_factory=list)
    errors: list[ExportFile] = field(default_factory=list)  # OperationOutcome ndjson files
    polls: int = 0

    @property
    def transaction_time(self) -> datetime | None:
        value = self.manifest.get("transactionTime")
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None

    @property
    def files(self) -> list[Path]:
        return [f.path for f in self.output]


def fhir_instant(when: datetime) -> str:
    """`_since` as a FHIR instant (UTC, seconds, Z)."""
    if when.tzinfo is None:
        raise ValueError("_since must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date; None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def outcome_summary(outcome: dict | None) -> str:
    """"code: diagnostics; ..." of an OperationOutcome's issues (the server's words, short)."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in outcome.get("issue") or []:
        if isinstance(issue, dict):
            text = str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or "")[:200]
            parts.append(f"{issue.get('code', '?')}: {text}" if text else str(issue.get("code", "?")))
    return "; ".join(parts[:5])


def _outcome_of(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None


def _is_transient(outcome: dict | None) -> bool:
    issues = outcome.get("issue") if outcome else None
    return bool(issues) and all(isinstance(i, dict) and i.get("code") == "transient" for i in issues)


class BulkExportClient:
    """Runs exports against one FHIR server. `auth` (an httpx.Auth, e.g. SMART Backend
    Services) is sent on kick-off, polls and DELETE, and on downloads only when the manifest
    says `requiresAccessToken` (files may live on another host that must not see the token)."""

    def __init__(self, base_url: str, settings: BulkExportSettings | None = None, *, auth: httpx.Auth | None = None,
                 client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, on_progress: Callable[[str], None] | None = None):
        self.base_url = base_url.rstrip("/") + "/"
        self.settings = settings or BulkExportSettings()
        self.auth = auth
        self._own_client = client is None
        self.client = client or httpx.Client(timeout=self.settings.request_timeout_s, follow_redirects=True)
        self.sleep, self.clock, self.on_progress = sleep, clock, on_progress

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> BulkExportClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the whole exchange --------------------------------------------------------------

    def export(self, out_dir: Path, *, types: Sequence[str] | None = None, since: datetime | None = None,
               level: str = "system", group_id: str | None = None,
               type_filters: Sequence[str] | None = None) -> ExportResult:
        """Kick off, wait for, download (into `out_dir`) and release one export."""
        status_url = self.kick_off(types=types, since=since, level=level, group_id=group_id,
                                   type_filters=type_filters)
        manifest, polls = self.wait(status_url)
        result = self.download(manifest, out_dir, status_url)
        result.polls = polls
        if self.settings.delete_when_done:
            self.delete(status_url)
        return result

    # --- the steps -----------------------------------------------------------------------

    def kick_off(self, *, types: Sequence[str] | None = None, since: datetime | None = None, level: str = "system",
                 group_id: str | None = None, type_filters: Sequence[str] | None = None) -> str:
        """Start an export; returns the status URL (Content-Location)."""
        if level == "system":
            path = "$export"
        elif level == "patient":
            path = "Patient/$export"
        elif level == "group":
            if not group_id or not FHIR_ID.fullmatch(group_id):
                raise ValueError("a group export needs a valid Group id")
            path = f"Group/{group_id}/$export"
        else:
            raise ValueError(f"export level must be system, patient or group, not {level!r}")
        params: dict[str, str] = {"_outputFormat": self.settings.output_format}
        if types:
            params["_type"] = ",".join(types)
        if since is not None:
            params["_since"] = fhir_instant(since)
        if type_filters:
            params["_typeFilter"] = ",".join(type_filters)
        url = self.base_url + path
        response = self._request("GET", url, params=params, headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
                                 what="kick-off")
        if response.status_code != 202:
            raise self._failure("kick-off", response)
        location = response.headers.get("content-location")
        if not location:
            raise BulkExportError("kick-off answered 202 without a Content-Location header", 202)
        return urljoin(url, location)

    def wait(self, status_url: str) -> tuple[dict, int]:
        """Poll until the manifest is ready: (manifest, polls). Honours Retry-After (capped by
        `poll_max_s`); backs off exponentially when the server gives none; cancels the export
        and raises BulkExportTimeout after `timeout_s`."""
        started = self.clock()
        backoff = self.settings.poll_min_s
        polls = 0
        while True:
            response = self._request("GET", status_url, headers={"Accept": FHIR_JSON}, what="status poll")
            polls += 1
            status = response.status_code
            if status == 200:
                return self._manifest(response), polls
            outcome = _outcome_of(response) if status >= 400 else None
            # 202 in progress; 429 polled too often; 5xx with a transient OperationOutcome: try again
            if not (status == 202 or status == 429 or (status >= 500 and _is_transient(outcome))):
                raise self._failure("export", response)
            if status == 202 and self.on_progress and response.headers.get("x-progress"):
                self.on_progress(response.headers["x-progress"][:100])
            asked = retry_after_seconds(response.headers.get("retry-after"))
            wait = min(asked if asked is not None else backoff, self.settings.poll_max_s)
            if asked is None:
                backoff = min(max(backoff * 2, 0.1), self.settings.poll_max_s)
            elapsed = self.clock() - started
            if elapsed + wait > self.settings.timeout_s:
                self._cancel(status_url)
                raise BulkExportTimeout(
                    f"export not complete after {elapsed:.0f} s and {polls} polls (timeout {self.settings.timeout_s:.0f} s);"
                    " it was cancelled")
            self.sleep(wait)

    def download(self, manifest: dict, out_dir: Path, status_url: str = "") -> ExportResult:
        """Every output and error file of the manifest, streamed to `out_dir`; writes
        `out_dir/manifest.json` with local urls (the server's are kept as `sourceUrl`)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        auth = self.auth if manifest.get("requiresAccessToken") else None
        result = ExportResult(manifest=manifest, directory=out_dir, status_url=status_url)
        local = {k: v for k, v in manifest.items() if k not in ("output", "error")}
        for key, into, sub in (("output", result.output, ""), ("error", result.errors, "errors/")):
            local[key] = []
            for i, item in enumerate(manifest.get(key) or []):
                if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                    raise BulkExportError(f"manifest {key}[{i}] has no url")
                kind = str(item.get("type") or "OperationOutcome")
                name = f"{sub}{i:04d}-{_SAFE_NAME.sub('_', kind)[:64]}.ndjson"
                url = urljoin(status_url or self.base_url, item["url"])
                lines = self._fetch_file(url, out_dir / name, auth)
                count = item.get("count") if isinstance(item.get("count"), int) else None
                if count is not None and count != lines:
                    log.warning("export file %s: manifest count %d, downloaded %d lines", name, count, lines)
                into.append(ExportFile(kind, item["url"], out_dir / name, count, lines))
                local[key].append({"type": kind, "url": name, "count": lines, "sourceUrl": item["url"]})
        tmp = out_dir / "manifest.json.part"
        tmp.write_text(json.dumps(local, indent=2) + "\n")
        tmp.replace(out_dir / "manifest.json")  # the manifest last: its presence means the download is complete
        return result

    def delete(self, status_url: str) -> bool:
        """Tell the server the files may go (202 expected); a failure is logged, not raised:
        the data is already safe on disk."""
        try:
            response = self._request("DELETE", status_url, what="delete")
        except BulkExportError as exc:
            log.warning("export DELETE failed: %s", exc)
            return False
        if response.status_code not in (200, 202, 204):
            log.warning("export DELETE answered HTTP %d", response.status_code)
            return False
        return True

    # --- helpers -------------------------------------------------------------------------

    def _cancel(self, status_url: str) -> None:
        self.delete(status_url)

    def _fetch_file(self, url: str, path: Path, auth: httpx.Auth | None) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            with self.client.stream("GET", url, headers={"Accept": NDJSON}, auth=auth) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._failure("file download", response)
                with open(part, "wb") as out:
                    last = b"\n"
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        last = chunk[-1:] or last
                    if last != b"\n":
                        out.write(b"\n")  # a last line without newline still ends the file cleanly
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise BulkExportError(f"file download failed ({type(exc).__name__})") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        with open(part, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        part.replace(path)
        return lines

    def _manifest(self, response: httpx.Response) -> dict:
        try:
            manifest = response.json()
        except (ValueError, UnicodeDecodeError):
            raise BulkExportError("the completed export's manifest is not JSON", 200) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
            raise BulkExportError("the completed export's manifest has no output list", 200)
        return manifest

    def _request(self, method: str, url: str, *, what: str, **kwargs) -> httpx.Response:
        try:
            return self.client.request(method, url, auth=self.auth, **kwargs)
        except httpx.HTTPError as exc:
            raise BulkExportError(f"{what} failed: {type(exc).__name__} reaching the FHIR server") from None

    @staticmethod
    def _failure(what: str, response: httpx.Response) -> BulkExportError:
        outcome = _outcome_of(response)
        detail = outcome_summary(outcome)
        return BulkExportError(f"{what} failed with HTTP {response.status_code}" + (f": {detail}" if detail else ""),
                               response.status_code, outcome)
