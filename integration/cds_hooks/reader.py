"""Reading the patient's notes: the DocumentReferences of the request's `notes` prefetch or of a
search of the EHR's fhirServer (with the access token the EHR gave for the call), as candidates
newest first, and their `attachment.url` Binaries fetched inline."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from integration.cds_hooks.models import FhirAuthorization
from lang1ops.notes import aware_datetime, reference_id
from lang1ops.settings.cds_hooks import CdsHooksSettings
from lang1ops.tasks import LOINC, NoteType, TaskContract
from serving.service import ApiError

MAX_PAGES = 3  # of a fallback search; the notes wanted are the newest


@dataclass
class Candidate:
    resource: dict
    note_type: NoteType
    date: datetime | None
    encounter_id: str | None


def _render(template: str, context: dict[str, Any]) -> str:
    def value(match: re.Match) -> str:
        raw = context.get(match[1])
        if not isinstance(raw, str):
            raise ApiError(400, "required", f"context.{match[1]} is needed by this service")
        return quote(raw, safe="")

    return re.sub(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}", value, template)


def _note_type_of(resource: dict, contract: TaskContract) -> NoteType | None:
    codings = _object(resource.get("type")).get("coding")
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and coding.get("system") == LOINC and isinstance(coding.get("code"), str):
            if kind := contract.note_type_of_loinc(coding["code"]):
                return kind
    return None


def _candidates(resources: list[Any], patient_id: str, contract: TaskContract, where: str) -> list[Candidate]:
    """The notes among `resources`, newest first. A note about another patient means the EHR
    answered the wrong query: refused rather than scored."""
    out = []
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != "DocumentReference":
            continue
        reference = _object(resource.get("subject")).get("reference")
        subject = reference_id(reference if isinstance(reference, str) else None, "Patient")
        if subject != patient_id:
            raise ApiError(422 if where == "prefetch" else 502, "invalid",
                           f"{where}: a DocumentReference is not about context.patientId")
        if resource.get("status") in ("entered-in-error", "superseded") or resource.get("docStatus") == "entered-in-error":
            continue
        kind = _note_type_of(resource, contract)
        if kind is None:
            continue
        context = _object(resource.get("context"))
        encounters = context.get("encounter")
        first = _object(encounters[0]) if isinstance(encounters, list) and encounters else {}
        encounter = reference_id(first.get("reference"), "Encounter") if isinstance(first.get("reference"), str) else None
        when = resource.get("date") or _object(context.get("period")).get("start")
        out.append(Candidate(resource, kind, aware_datetime(when) if isinstance(when, str) else None, encounter))
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda c: c.date or oldest, reverse=True)


def _bundle_resources(bundle: Any, where: str) -> list[Any]:
    if not isinstance(bundle, dict):
        raise ApiError(422 if where == "prefetch" else 502, "structure", f"{where}: expected a FHIR Bundle")
    if bundle.get("resourceType") == "DocumentReference":
        return [bundle]
    if bundle.get("resourceType") != "Bundle":
        raise ApiError(422 if where == "prefetch" else 502, "structure",
                       f"{where}: expected a Bundle, got {str(bundle.get('resourceType'))[:40]}")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise ApiError(422 if where == "prefetch" else 502, "structure", f"{where}: Bundle.entry must be a list")
    return [e.get("resource") for e in entries
            if isinstance(e, dict) and _object(e.get("search")).get("mode", "match") == "match"]


def _object(value: Any) -> dict:
    """`value` if it is a JSON object, else an empty one: a field of the wrong shape reads as absent."""
    return value if isinstance(value, dict) else {}


class FhirReader:
    """Reads the EHR's FHIR server with the access token the EHR gave for this call."""

    def __init__(self, base: str, authorization: FhirAuthorization | None, settings: CdsHooksSettings):
        parts = urlsplit(base)
        loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            # the access token is a credential: never sent in the clear
            raise ApiError(400, "value", "fhirServer must be an https URL (plain http only on loopback)")
        self.base = base.rstrip("/") + "/"
        self.origin = (parts.scheme, parts.netloc)
        self.headers = {"Accept": "application/fhir+json"}
        if authorization is not None:
            self.headers["Authorization"] = f"Bearer {authorization.access_token}"
        self.settings = settings
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(settings.fhir_timeout_s), follow_redirects=False)

    async def __aenter__(self) -> FhirReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, url: str, what: str) -> dict:
        absolute = urljoin(self.base, url)
        parts = urlsplit(absolute)
        if (parts.scheme, parts.netloc) != self.origin:
            raise ApiError(502, "security", f"{what}: the FHIR server pointed outside fhirServer; not followed")
        try:
            response = await self.client.get(absolute, headers=self.headers)
        except httpx.TimeoutException:
            raise ApiError(504, "timeout", f"{what}: the EHR's FHIR server did not answer within "
                                           f"{self.settings.fhir_timeout_s} s; no risk was computed") from None
        except httpx.HTTPError as exc:
            raise ApiError(502, "transient", f"{what}: the EHR's FHIR server could not be reached "
                                             f"({type(exc).__name__}); no risk was computed") from None
        if response.status_code in (401, 403):
            raise ApiError(502, "security", f"{what}: the EHR's FHIR server refused fhirAuthorization "
                                            f"(HTTP {response.status_code}); no risk was computed")
        if response.status_code != 200:
            raise ApiError(502, "transient", f"{what}: the EHR's FHIR server answered HTTP {response.status_code}; "
                                             "no risk was computed")
        if len(response.content) > self.settings.max_response_bytes:
            raise ApiError(502, "too-long", f"{what}: the FHIR server's answer is over "
                                            f"{self.settings.max_response_bytes} bytes")
        try:
            body = response.json()
        except ValueError:
            raise ApiError(502, "structure", f"{what}: the FHIR server's answer is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(502, "structure", f"{what}: the FHIR server's answer is not a FHIR resource")
        return body

    async def search(self, query: str) -> list[Any]:
        resources, url = [], query
        for _ in range(MAX_PAGES):
            bundle = await self.get(url, "DocumentReference search")
            resources += _bundle_resources(bundle, "fhirServer search")
            url = next((link.get("url") for link in bundle.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not url or len(resources) >= self.settings.max_notes:
                break
        return resources

    async def inline_attachments(self, resource: dict) -> dict:
        """A copy of the DocumentReference with `attachment.url` Binaries fetched into `data`
        (the note parser reads inline data; `#contained` references are left to it)."""
        contents = resource.get("content") or []
        if not any(isinstance(c, dict) and isinstance(c.get("attachment"), dict) and "data" not in c["attachment"]
                   and str(c["attachment"].get("url") or "")[:1] not in ("", "#") for c in contents):
            return resource
        copied = {**resource, "content": []}
        for content in contents:
            attachment = content.get("attachment") if isinstance(content, dict) else None
            if isinstance(attachment, dict) and "data" not in attachment and str(attachment.get("url") or "")[:1] not in ("", "#"):
                binary = await self.get(attachment["url"], "attachment")
                if binary.get("resourceType") != "Binary" or not isinstance(binary.get("data"), str):
                    raise ApiError(502, "structure", "attachment: the FHIR server did not answer with a Binary")
                attachment = {**{k: v for k, v in attachment.items() if k != "url"}, "data": binary["data"],
                              "contentType": attachment.get("contentType") or binary.get("contentType")}
                content = {**content, "attachment": attachment}
            copied["content"].append(content)
        return copied
