"""A small synchronous FHIR R4 REST client (httpx): read, vread, search with paging, create,
conditional create.

Only calls that are safe to repeat are retried (reads, searches, and conditional creates,
which the server makes idempotent through ``If-None-Exist``); a plain create is never
retried, since a lost reply would otherwise write twice. Errors come back as typed
exceptions carrying the HTTP status and the OperationOutcome's issue codes and
expressions, never its free text or the resource (both may quote note text).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

from integration.smart_auth import TokenRequestError, outbound_auth
from lang1ops.settings.fhir_client import FhirClientSettings

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({429, 502, 503, 504, 500})
MAX_RETRY_AFTER_S = 30.0


class FhirError(Exception):
    """A FHIR call failed. ``issues`` are (severity, code, expression) tuples, no free text."""

    retryable = False

    def __init__(self, message: str, status: int | None = None, issues: list[tuple[str, str, str]] | None = None):
        self.status, self.issues = status, issues or []
        codes = ", ".join(f"{code}@{expr}" if expr else code for _, code, expr in self.issues)
        super().__init__(f"{message}" + (f" (HTTP {status})" if status else "") + (f": {codes}" if codes else ""))


class FhirUnavailable(FhirError):
    """Network error, timeout, 5xx or 429: the same call may succeed later."""

    retryable = True


class FhirAuthError(FhirError):
    """401/403 or a refused token request (may recover when credentials are fixed)."""

    retryable = True


class FhirNotFound(FhirError):
    """404 or 410."""


class FhirRequestRefused(FhirError):
    """Another 4xx: the request itself is wrong; repeating it will not help."""


def _issues(response: httpx.Response) -> list[tuple[str, str, str]]:
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    out = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            expression = ",".join(str(e) for e in (issue.get("expression") or []))[:120]
            out.append((str(issue.get("severity", ""))[:16], str(issue.get("code", ""))[:32], expression))
    return out[:5]


def error_for(response: httpx.Response, what: str) -> FhirError:
    status = response.status_code
    issues = _issues(response)
    if status in (401, 403):
        return FhirAuthError(f"{what} not authorised", status, issues)
    if status in (404, 410):
        return FhirNotFound(f"{what} not found", status, issues)
    if status in RETRY_STATUSES or status >= 500:
        return FhirUnavailable(f"{what} failed on the server", status, issues)
    return FhirRequestRefused(f"{what} refused", status, issues)


class FhirClient:
    """One FHIR server. Use as a context manager or call ``close()``."""

    def __init__(self, base_url: str, auth: httpx.Auth | None = None, *, timeout_s: float = 10.0, retries: int = 2,
                 retry_backoff_s: float = 0.2, transport: httpx.BaseTransport | None = None):
        if not base_url:
            raise ValueError("the FHIR server base URL is not configured")
        self.base_url = base_url.rstrip("/")
        self.retries, self.retry_backoff_s = retries, retry_backoff_s
        self._http = httpx.Client(base_url=self.base_url + "/", auth=auth, timeout=timeout_s, transport=transport,
                                  headers={"Accept": FHIR_JSON})

    @classmethod
    def from_settings(cls, settings: FhirClientSettings, **kwargs: Any) -> FhirClient:
        return cls(settings.base_url, outbound_auth(settings), timeout_s=settings.timeout_s, retries=settings.retries,
                   retry_backoff_s=settings.retry_backoff_s, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------
    def _send(self, method: str, url: str, what: str, *, safe: bool, json: Any = None,
              headers: Mapping[str, str] | None = None, params: Any = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, json=json, headers=headers, params=params)
            except TokenRequestError as exc:
                raise FhirAuthError(f"{what}: {exc}", exc.status_code) from None
            except httpx.HTTPError as exc:
                error: FhirError = FhirUnavailable(f"{what}: {type(exc).__name__}")
                response = None
            else:
                if response.status_code < 400:
                    return response
                error = error_for(response, what)
            if not (safe and error.retryable and not isinstance(error, FhirAuthError) and attempt < self.retries):
                raise error
            time.sleep(self._delay(attempt, response))
            attempt += 1

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), MAX_RETRY_AFTER_S)
        return self.retry_backoff_s * 2 ** attempt

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict:
        try:
            body = response.json()
        except ValueError:
            raise FhirError(f"{what}: the server answered something that is not JSON", response.status_code) from None
        if not isinstance(body, dict):
            raise FhirError(f"{what}: the server answered JSON that is not a resource", response.status_code)
        return body

    # -- interactions ------------------------------------------------------
    def read(self, resource_type: str, resource_id: str, version: str | None = None) -> dict:
        """GET [type]/[id] or, with a version, GET [type]/[id]/_history/[vid]."""
        url = f"{resource_type}/{resource_id}" + (f"/_history/{version}" if version else "")
        what = f"read {resource_type}"
        resource = self._json(self._send("GET", url, what, safe=True), what)
        if resource.get("resourceType") != resource_type:
            raise FhirError(f"{what}: the server answered a {resource.get('resourceType')!r}")
        return resource

    def search(self, resource_type: str, params: Mapping[str, Any] | None = None, *,
               max_pages: int = 100) -> Iterator[dict]:
        """Every matching resource (entries with search.mode match or no mode), following ``next`` links."""
        what = f"search {resource_type}"
        url: str | None = resource_type
        query: Any = dict(params or {})
        for _ in range(max_pages):
            bundle = self._json(self._send("GET", url, what, safe=True, params=query), what)
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(f"{what}: the server answered a {bundle.get('resourceType')!r}, not a Bundle")
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry, dict) else "match"
                if isinstance(resource, dict) and mode == "match":
                    yield resource
            url = next((link.get("url") for link in bundle.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not url:
                return
            query = None  # the next link carries the whole query
        raise FhirError(f"{what}: more than {max_pages} pages")

    def create(self, resource: dict) -> dict:
        """POST [type]. Never retried: a lost reply would otherwise create twice."""
        resource_type = resource.get("resourceType")
        what = f"create {resource_type}"
        response = self._send("POST", str(resource_type), what, safe=False, json=resource,
                              headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"})
        return self._json(response, what) if response.content else {}

    def conditional_create(self, resource: dict, if_none_exist: Mapping[str, str] | str) -> tuple[dict, bool]:
        """POST [type] with ``If-None-Exist``: (the resource, True if created, False if one already matched).

        Retried on network errors and 5xx, since the condition makes a repeat harmless.
        """
        resource_type = resource.get("resourceType")
        what = f"conditional create {resource_type}"
        condition = if_none_exist if isinstance(if_none_exist, str) else urlencode(dict(if_none_exist))
        response = self._send("POST", str(resource_type), what, safe=True, json=resource,
                              headers={"Content-Type": FHIR_JSON, "If-None-Exist": condition,
                                       "Prefer": "return=representation"})
        body = self._json(response, what) if response.content else {}
        return body, response.status_code == 201
