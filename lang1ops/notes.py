"""One FHIR resource in, one clinical note out.

`note_from_resource` reads a DocumentReference, DiagnosticReport or Composition (FHIR R4),
picks the best text rendition of the note, decodes it to plain text and returns it with the
metadata scoring needs (patient, encounter, date, note type). Whatever goes wrong becomes a
`NoteError` with a machine reason, a FHIR issue code and an HTTP status.

Note text is PHI. No message built here contains it, and no NoteError is raised while a
library exception (a pydantic ValidationError, a UnicodeDecodeError) is being handled:
those quote their input, and Python would chain them onto ours as `__context__`.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from typing import Any

from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.composition import Composition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import ValidationError
from striprtf.striprtf import rtf_to_text as _strip_rtf

from lang1ops.tasks import DEFAULT_CONTRACT, LOINC, NoteType, TaskContract

# reason -> (OperationOutcome issue.code, HTTP status)
NOTE_ERRORS: dict[str, tuple[str, int]] = {
    "invalid-resource": ("invalid", 400),
    "not-a-note": ("not-supported", 422),
    "no-content": ("required", 422),
    "unsupported-content-type": ("not-supported", 415),
    "undecodable-text": ("value", 400),
    "unresolvable-attachment": ("not-found", 422),
    "empty-text": ("value", 422),
    "too-large": ("too-long", 413),
    "fhir-r5": ("not-supported", 422),
}


class NoteError(Exception):
    """Why a resource yields no usable note. Used by the batch pipeline (counted by `reason`)
    and by the HTTP API (turned into an OperationOutcome with `issue_code` and `http_status`)."""

    def __init__(self, reason: str, message: str):
        self.issue_code, self.http_status = NOTE_ERRORS[reason]
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class ClinicalNote:
    resource_type: str
    resource_id: str | None
    version_id: str | None
    patient_id: str | None
    encounter_id: str | None
    date: datetime | None
    type_codes: tuple[tuple[str, str], ...]
    note_type: NoteType | None
    content_type: str
    text: str
    text_sha256: str


_MODELS = {
    "DocumentReference": DocumentReference,
    "DiagnosticReport": DiagnosticReport,
    "Composition": Composition,
}
_XHTML = "application/xhtml+xml"


def note_from_resource(
    resource: dict,
    *,
    contract: TaskContract = DEFAULT_CONTRACT,
    resolve: Callable[[str], dict | None] | None = None,
    max_bytes: int = 2_000_000,
) -> ClinicalNote:
    """The note in `resource`. `resolve` maps an attachment url that is not "#id" (a relative
    "Binary/1", an absolute URL) to a Binary resource dict, or None when there is none; its own
    exceptions (a network failure, say) propagate unchanged."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise NoteError(
            "invalid-resource", "not a FHIR resource: a JSON object with a resourceType is required"
        )
    resource_type = resource["resourceType"]
    if resource_type not in _MODELS:
        raise NoteError(
            "not-a-note", f"{resource_type[:64]} is not a note; expected one of {', '.join(_MODELS)}"
        )
    if _looks_like_r5(resource):
        raise NoteError("fhir-r5", f"{resource_type} looks like FHIR R5 (context is a list of references); "
                                   "lang1-ops reads FHIR R4: export R4 resources")
    model = _validate(_MODELS[resource_type], resource, resource_type)

    if isinstance(model, Composition):
        text, content_type = _finish(_composition_text(model), max_bytes), _XHTML
    else:
        if isinstance(model, DocumentReference):
            attachments = [c.attachment for c in model.content]
        else:
            attachments = model.presentedForm or []
        contained = {r.id: r for r in model.contained or [] if isinstance(r, Binary) and r.id}
        text, content_type = _text_of_attachments(attachments, contained, resolve, max_bytes, resource_type)
    encounter, when, kind = _encounter_date_and_type(model)
    type_codes = tuple((c.system or "", c.code) for c in (kind.coding or [] if kind else []) if c.code)
    return ClinicalNote(
        resource_type=resource_type,
        resource_id=model.id,
        version_id=model.meta.versionId if model.meta else None,
        patient_id=reference_id(model.subject.reference if model.subject else None, "Patient"),
        encounter_id=reference_id(encounter.reference if encounter else None, "Encounter"),
        date=aware_datetime(when),
        type_codes=type_codes,
        note_type=_note_type(type_codes, contract),
        content_type=content_type,
        text=text,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def _encounter_date_and_type(model: Any) -> tuple[Any, Any, Any]:
    """The encounter Reference, the date (any FHIR date form) and the document type concept."""
    if isinstance(model, DocumentReference):
        context = model.context
        encounter = context.encounter[0] if context and context.encounter else None
        period_start = context.period.start if context and context.period else None
        return encounter, model.date or period_start, model.type
    if isinstance(model, DiagnosticReport):
        period_start = model.effectivePeriod.start if model.effectivePeriod else None
        return model.encounter, model.effectiveDateTime or period_start or model.issued, model.code
    return model.encounter, model.date, model.type


LOINC_SYSTEMS = frozenset({LOINC, "urn:oid:2.16.840.1.113883.6.1"})  # LOINC by URL or by its OID


def _note_type(type_codes: Iterable[tuple[str, str]], contract: TaskContract) -> NoteType | None:
    for system, code in type_codes:
        if system in LOINC_SYSTEMS and (note_type := contract.note_type_of_loinc(code)):
            return note_type
    return None


def reference_id(ref: str | None, resource_type: str) -> str | None:
    """The id in a reference to `resource_type`: "Patient/123", "https://x/fhir/Patient/123"
    and "Patient/123/_history/2" all give "123"; other types, "#contained" and urn: give None."""
    if not ref:
        return None
    parts = ref.split("?", 1)[0].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


# --- validation ---------------------------------------------------------------------------------


def _validate(model: type, resource: dict, what: str) -> Any:
    try:
        return model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        failure = None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # fhir.resources raises a bare KeyError for an unknown contained resourceType.
        errors, failure = [], type(exc).__name__
    if failure:
        raise NoteError("invalid-resource", f"{what} could not be parsed ({failure})")
    where = _locations(errors)
    if all(e["type"] == "base64_decode" for e in errors):
        # The models decode attachment data, so bad base64 surfaces here rather than later.
        raise NoteError("undecodable-text", f"{what}: invalid base64 at {where}")
    raise NoteError("invalid-resource", f"{what} failed validation at {where}")


def _locations(errors: Sequence[Any], limit: int = 10) -> str:
    """Places and kinds of failure, never values: content[0].attachment.data (base64_decode), ..."""

    def path(loc: Iterable[str | int]) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(resource)"

    shown = [f"{path(e['loc'])} ({e['type']})" for e in errors[:limit]]
    more = f" and {len(errors) - limit} more" if len(errors) > limit else ""
    return ", ".join(shown) + more


# --- attachments --------------------------------------------------------------------------------

# Preferred renditions first: plain text needs no conversion that could lose structure.
_CDA_TYPES = ("application/xml", "text/xml", "application/hl7-cda+xml")  # C-CDA documents: their narrative is read
_RANK = {"text/plain": 0, "text/html": 1, _XHTML: 1, "text/rtf": 2, "application/rtf": 2,
         **dict.fromkeys(_CDA_TYPES, 3)}
_UNDECLARED = len(set(_RANK.values()))  # no contentType on the attachment: learn it from its Binary


def _text_of_attachments(
    attachments: Sequence[Any],
    contained: dict[str, Binary],
    resolve: Callable[[str], dict | None] | None,
    max_bytes: int,
    what: str,
) -> tuple[str, str]:
    """(text, mime type) of the most preferred attachment that yields text. A failing rendition
    falls back to the next one; if none works, the best one's error is raised."""
    with_content = [a for a in attachments if a is not None and (a.data is not None or a.url)]
    if not with_content:
        raise NoteError("no-content", f"{what} has no attachment with data or a url")
    candidates = sorted(
        (a for a in with_content if not a.contentType or _mime(a.contentType)[0] in _RANK),
        key=lambda a: _RANK.get(_mime(a.contentType)[0], _UNDECLARED),
    )
    if not candidates:
        found = sorted({_mime(a.contentType)[0] for a in with_content})
        raise NoteError(
            "unsupported-content-type", f"{what} has no text attachment (found {', '.join(found)})"
        )
    first_error: NoteError | None = None
    for attachment in candidates:
        try:
            return _text_of_attachment(attachment, contained, resolve, max_bytes)
        except NoteError as error:
            first_error = first_error or error
    assert first_error is not None
    raise first_error


def _text_of_attachment(
    attachment: Any,
    contained: dict[str, Binary],
    resolve: Callable[[str], dict | None] | None,
    max_bytes: int,
) -> tuple[str, str]:
    data, content_type = _payload(attachment, contained, resolve)
    mime, charset = _mime(content_type)
    if mime not in _RANK:
        raise NoteError("unsupported-content-type", f"attachment content type {mime or '(none)'} is not text")
    text = _decode(data, charset)
    if mime in ("text/html", _XHTML):
        text = html_to_text(text)
    elif mime in _CDA_TYPES:
        text = cda_narrative(text)
    elif mime in ("text/rtf", "application/rtf"):
        text = _converted_rtf(text)
    return _finish(text, max_bytes), mime


def _converted_rtf(rtf: str) -> str:
    try:
        return rtf_to_text(rtf)
    except Exception as exc:  # a UnicodeDecodeError from a \'xx escape, or a parser slip
        failure = type(exc).__name__
    raise NoteError("undecodable-text", f"RTF could not be converted ({failure})")


def _payload(
    attachment: Any, contained: dict[str, Binary], resolve: Callable[[str], dict | None] | None
) -> tuple[bytes, str | None]:
    """The attachment's bytes and content type: inline data, a contained Binary ("#id"), or a
    Binary that `resolve` finds. A Binary's own contentType describes its bytes, so it wins."""
    if attachment.data is not None:
        return attachment.data, attachment.contentType
    url: str = attachment.url
    if url.startswith("#"):
        binary = contained.get(url[1:])
        if binary is None:
            raise NoteError("unresolvable-attachment", f"attachment url {url} names no contained Binary")
    else:
        found = resolve(url) if resolve else None
        if found is None:
            raise NoteError("unresolvable-attachment", f"attachment url {url} could not be resolved")
        if not isinstance(found, dict) or found.get("resourceType") != "Binary":
            raise NoteError("unresolvable-attachment", f"attachment url {url} did not resolve to a Binary")
        binary = _validate(Binary, found, f"Binary at {url}")
    if binary.data is None:
        raise NoteError("no-content", f"the Binary at attachment url {url} has no data")
    return binary.data, binary.contentType or attachment.contentType


def _mime(content_type: str | None) -> tuple[str, str | None]:
    """("text/plain", "ISO-8859-1") from "text/plain; charset=ISO-8859-1"."""
    mime, *params = (content_type or "").split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return mime.strip().lower(), charset


def _decode(data: bytes, charset: str | None) -> str:
    if charset is None:
        # no charset declared: UTF-8 if the bytes are UTF-8, else Windows-1252, the usual
        # encoding of text exported from Windows systems, when they read as text (no control
        # characters: binary data decodes in Windows-1252 too, but is full of them)
        try:
            return data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            pass
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = None
        if text is None or _CONTROL.search(text):
            raise NoteError("undecodable-text", "attachment text has no charset and is neither UTF-8 nor "
                                                "Windows-1252 text")
        return text
    encoding = charset
    try:
        if not codecs.lookup(encoding)._is_text_encoding:  # e.g. "punycode", "rot13": not a charset
            raise LookupError(encoding)
        text = data.decode(encoding)
    except (LookupError, UnicodeError):  # unknown charset, or bytes not in it
        text = None
    if text is None:
        raise NoteError("undecodable-text", f"attachment text is not decodable as {encoding}")
    return text.removeprefix("\ufeff")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _finish(text: str, max_bytes: int) -> str:
    """Normalised newlines, no surrounding blank space; empty and oversized text rejected."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise NoteError("empty-text", "the note text is empty")
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise NoteError("too-large", f"the note text is {size} bytes; the limit is {max_bytes}")
    return text


def _composition_text(composition: Composition) -> str:
    """Each section's title and narrative, nested sections after their parent, in order.
    Titles alone are no note: without narrative text the result is empty."""
    blocks: list[str] = []
    narratives: list[str] = []

    def walk(sections: Sequence[Any] | None) -> None:
        for section in sections or []:
            narrative = ""
            if section.text and section.text.div:
                narrative = html_to_text(section.text.div)
                narratives.append(narrative)
            block = "\n".join(part for part in ((section.title or "").strip(), narrative) if part)
            if block:
                blocks.append(block)
            walk(section.section)

    walk(composition.section)
    if not narratives and composition.text and composition.text.div:  # the narrative of the whole document
        return html_to_text(composition.text.div)
    if not narratives:
        raise NoteError("no-content", "Composition has no section narrative")
    return "\n\n".join(blocks) if any(narratives) else ""


def aware_datetime(value: datetime | date | str | None) -> datetime | None:
    """A timezone-aware datetime. FHIR dateTimes with a time carry a zone; a bare date or a
    partial one ("2024", "2024-03") is taken as the start of that day/month/year in UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    match = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", value)
    try:
        if match:
            return datetime(int(match[1]), int(match[2] or 1), 1, tzinfo=UTC)
        # a full FHIR dateTime/instant string, e.g. a Bulk Data manifest's transactionTime
        return aware_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:  # "2024-13", "2024-02-30": no such time
        return None


# --- markup to text -----------------------------------------------------------------------------

# Line breaks each block element ensures before and after it: 2 leaves a blank line.
_BLOCKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "dl", "blockquote"), 2),
    **dict.fromkeys(
        ("div", "li", "tr", "dt", "dd", "pre", "hr", "section", "article", "header", "footer"), 1
    ),
}
_CELLS = {"td", "th"}
_DROPPED = {"script", "style", "title"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.parts: list[str] = []
        self._pending_breaks = 0  # line breaks owed before the next text
        self._dropped = 0  # depth inside script/style
        self._pre = 0  # depth inside <pre>, where whitespace is content

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _DROPPED:
            self._dropped += 1
        elif tag == "br":
            self._pending_breaks += 1
        elif tag in _CELLS:
            self._write(" ")
        self._block(tag, +1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED:
            self._dropped = max(0, self._dropped - 1)
        self._block(tag, -1)

    def handle_data(self, data: str) -> None:
        if not self._dropped:
            self._write(data)

    def _block(self, tag: str, step: int) -> None:
        if tag in _BLOCKS:
            self._pending_breaks = max(self._pending_breaks, _BLOCKS[tag])
        if tag == "pre":
            self._pre = max(0, self._pre + step)

    def _write(self, data: str) -> None:
        if not self._pre:
            data = re.sub(r"\s+", " ", data)
            at_line_start = self._pending_breaks or not self.parts or self.parts[-1].endswith("\n")
            if at_line_start or self.parts[-1].endswith(" "):
                data = data.lstrip(" ")
        if not data:
            return
        if self._pending_breaks and self.parts:
            self.parts.append("\n" * min(self._pending_breaks, 2))
        self._pending_breaks = 0
        self.parts.append(data)


def _looks_like_r5(resource: dict) -> bool:
    """An R5 DocumentReference's `context` is a list of References (R4: one object)."""
    return resource.get("resourceType") == "DocumentReference" and isinstance(resource.get("context"), list)


_CDA = "{urn:hl7-org:v3}"


def cda_narrative(xml: str) -> str:
    """The human-readable narrative of a C-CDA document: each section's title and text, nested
    sections after their parent (the coded entries are not the note)."""
    import xml.etree.ElementTree as ElementTree

    if "<!ENTITY" in xml[:4096] or "<!DOCTYPE" in xml[:4096]:
        raise NoteError("undecodable-text", "C-CDA with a DTD or entity declarations is refused")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise NoteError("undecodable-text", f"C-CDA is not well-formed XML (line {exc.position[0]})") from None
    blocks = []
    for section in root.iter(f"{_CDA}section"):
        title = section.find(f"{_CDA}title")
        text = section.find(f"{_CDA}text")
        body = " ".join(" ".join(text.itertext()).split()) if text is not None else ""
        heading = " ".join("".join(title.itertext()).split()) if title is not None else ""
        if body:
            blocks.append(f"{heading}\n{body}" if heading else body)
    if not blocks:
        raise NoteError("no-content", "C-CDA document has no section narrative")
    return "\n\n".join(blocks)


def html_to_text(html: str) -> str:
    """Plain text of HTML/XHTML: block elements become line breaks, script/style are dropped,
    entities unescaped, runs of whitespace collapsed (except inside <pre>)."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return re.sub(r"[ \t]+\n", "\n", "".join(extractor.parts)).strip()


def rtf_to_text(rtf: str) -> str:
    """Plain text of an RTF document. Raises ValueError (UnicodeDecodeError among them) when
    an escape cannot be decoded in the document's code page."""
    text = _strip_rtf(rtf).replace("\r\n", "\n")
    return re.sub(r"[ \t]+\n", "\n", text).strip()
