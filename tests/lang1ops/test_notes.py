"""lang1ops.notes: FHIR resources in, clinical notes out, PHI kept out of errors."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from lang1ops.notes import (
    NoteError,
    html_to_text,
    note_from_resource,
    reference_id,
    rtf_to_text,
)
from lang1ops.tasks import LOINC, NoteType

# A string that must never leave the note: it stands for a patient's details.
SECRET = "Zebulon Quackenbush MRN 99812345 lives at 12 Secret Lane"


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


def attachment(text: str, content_type: str = "text/plain", encoding: str = "utf-8") -> dict:
    return {"attachment": {"contentType": content_type, "data": b64(text, encoding)}}


def document(*content: dict, **fields) -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "content": list(content), **fields}


def report(*forms: dict, **fields) -> dict:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "18842-5"}]},
        "presentedForm": list(forms),
        **fields,
    }


def composition(*sections: dict, **fields) -> dict:
    return {
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "34117-2"}]},
        "date": "2024-03-05T08:00:00+01:00",
        "author": [{"display": "Dr. Who"}],
        "title": "Admission H&P",
        "section": list(sections),
        **fields,
    }


def narrative(xhtml: str) -> dict:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{xhtml}</div>'}


def error_of(resource: dict, **kwargs) -> NoteError:
    with pytest.raises(NoteError) as caught:
        note_from_resource(resource, **kwargs)
    return caught.value


# --- DocumentReference -------------------------------------------------------------------------


def test_base64_plain_text_with_metadata():
    resource = document(
        attachment("Chief complaint: chest pain.\r\nPlan: admit.\n"),
        id="doc-1",
        meta={"versionId": "3"},
        type={
            "coding": [
                {"system": "http://example.org/local", "code": "HP"},
                {"system": LOINC, "code": "34117-2"},
            ]
        },
        subject={"reference": "Patient/p-42"},
        context={
            "encounter": [{"reference": "Encounter/e-7"}],
            "period": {"start": "2024-01-01T00:00:00Z"},
        },
        date="2024-01-02T10:30:00+02:00",
    )
    note = note_from_resource(resource)
    assert note.text == "Chief complaint: chest pain.\nPlan: admit."
    assert note.content_type == "text/plain"
    assert (note.resource_type, note.resource_id, note.version_id) == ("DocumentReference", "doc-1", "3")
    assert (note.patient_id, note.encounter_id) == ("p-42", "e-7")
    assert note.date == datetime(2024, 1, 2, 8, 30, tzinfo=UTC)
    assert note.type_codes == (("http://example.org/local", "HP"), (LOINC, "34117-2"))
    assert note.note_type is NoteType.ADMISSION_HP
    assert note.text_sha256 == hashlib.sha256(note.text.encode("utf-8")).hexdigest()


def test_date_falls_back_to_context_period_and_unknown_type_gives_no_note_type():
    resource = document(
        attachment("text"),
        type={"coding": [{"system": LOINC, "code": "11506-3"}]},
        context={"period": {"start": "2024-01-01"}},
    )
    note = note_from_resource(resource)
    assert note.date == datetime(2024, 1, 1, tzinfo=UTC)
    assert note.note_type is None
    assert (note.patient_id, note.encounter_id, note.resource_id, note.version_id) == (None, None, None, None)


def test_loinc_code_under_another_system_is_not_a_note_type():
    resource = document(attachment("text"), type={"coding": [{"system": "http://other", "code": "18842-5"}]})
    assert note_from_resource(resource).note_type is None


def test_latin1_charset_is_honoured():
    note = note_from_resource(
        document(attachment("Café, naïve", "text/plain; charset=ISO-8859-1", "latin-1"))
    )
    assert note.text == "Café, naïve"


def test_html_attachment_becomes_text():
    html = (
        "<html><head><title>Doc</title><style>p {color: red}</style></head><body>"
        "<h1>Discharge&nbsp;summary</h1><p>BP 120/80 &amp; HR&lt;100.<br>Stable.</p>"
        "<ul><li>aspirin</li><li>statin</li></ul><script>var x = '<p>no</p>';</script></body></html>"
    )
    note = note_from_resource(document(attachment(html, "text/html; charset=utf-8")))
    assert note.text == "Discharge summary\n\nBP 120/80 & HR<100.\nStable.\n\naspirin\nstatin"
    assert note.content_type == "text/html"


def test_html_to_text_keeps_line_structure():
    assert html_to_text("<div>a\n   b</div><div>c</div>") == "a b\nc"
    assert html_to_text("<table><tr><td>Na</td><td>140</td></tr><tr><td>K</td><td>4.1</td></tr></table>") == (
        "Na 140\nK 4.1"
    )
    assert html_to_text("<pre>BP   120\nHR    80</pre>") == "BP   120\nHR    80"
    assert html_to_text("a<br><br><br><br>b") == "a\n\nb"


def test_rtf_attachment_becomes_text():
    rtf = r"{\rtf1\ansi{\fonttbl\f0\fswiss Helvetica;}\f0\pard Caf\'e9 visit\par Second \b line\b0\par}"
    note = note_from_resource(document(attachment(rtf, "application/rtf")))
    assert note.text == "Café visit\nSecond line"
    assert rtf_to_text(rtf) == "Café visit\nSecond line"


def test_contained_binary_via_fragment():
    resource = document(
        {"attachment": {"contentType": "text/plain", "url": "#b1"}},
        contained=[
            {"resourceType": "Binary", "id": "b1", "contentType": "text/plain", "data": b64("from binary")}
        ],
    )
    assert note_from_resource(resource).text == "from binary"


def test_contained_binary_content_type_wins_and_undeclared_attachment_is_tried():
    resource = document(
        {"attachment": {"url": "#b1"}},
        contained=[
            {"resourceType": "Binary", "id": "b1", "contentType": "text/html", "data": b64("<p>x</p>")}
        ],
    )
    note = note_from_resource(resource)
    assert (note.text, note.content_type) == ("x", "text/html")


def test_relative_binary_is_resolved():
    binaries = {"Binary/1": {"resourceType": "Binary", "contentType": "text/plain", "data": b64("resolved")}}
    resource = document({"attachment": {"contentType": "text/plain", "url": "Binary/1"}})
    assert note_from_resource(resource, resolve=binaries.get).text == "resolved"


def test_absolute_url_goes_to_resolve():
    asked = []

    def resolve(url):
        asked.append(url)
        return {"resourceType": "Binary", "contentType": "text/plain", "data": b64("remote")}

    resource = document(
        {"attachment": {"contentType": "text/plain", "url": "https://ehr.example/fhir/Binary/9"}}
    )
    assert note_from_resource(resource, resolve=resolve).text == "remote"
    assert asked == ["https://ehr.example/fhir/Binary/9"]


@pytest.mark.parametrize(
    "url, kwargs",
    [
        ("Binary/1", {}),  # no resolver
        ("Binary/1", {"resolve": lambda url: None}),  # resolver does not know it
        ("https://ehr.example/fhir/Binary/1", {}),
        ("#missing", {}),
        ("Binary/1", {"resolve": lambda url: {"resourceType": "Patient"}}),  # not a Binary
    ],
)
def test_unresolvable_attachment(url, kwargs):
    error = error_of(document({"attachment": {"contentType": "text/plain", "url": url}}), **kwargs)
    assert (error.reason, error.http_status, error.issue_code) == (
        "unresolvable-attachment",
        422,
        "not-found",
    )


def test_preference_plain_then_html_then_rtf():
    rtf = attachment(r"{\rtf1\ansi rtf version\par}", "text/rtf")
    html = attachment("<p>html version</p>", "application/xhtml+xml")
    plain = attachment("plain version")
    pdf = {"attachment": {"contentType": "application/pdf", "data": b64("%PDF")}}
    assert note_from_resource(document(pdf, rtf, html, plain)).text == "plain version"
    assert note_from_resource(document(pdf, rtf, html)).text == "html version"
    assert note_from_resource(document(pdf, rtf)).text == "rtf version"


def test_failing_rendition_falls_back_to_the_next():
    resource = document(
        {"attachment": {"contentType": "text/plain", "url": "Binary/gone"}},
        attachment("<p>html</p>", "text/html"),
    )
    assert note_from_resource(resource).text == "html"


# --- DiagnosticReport and Composition ----------------------------------------------------------


def test_diagnostic_report_presented_form():
    resource = report(
        {"contentType": "text/plain", "data": b64("Discharged home.")},
        id="dr-1",
        subject={"reference": "https://ehr.example/fhir/Patient/p-1/_history/2"},
        encounter={"reference": "Encounter/e-1"},
        effectiveDateTime="2024-02-01T12:00:00Z",
        issued="2024-02-02T12:00:00Z",
    )
    note = note_from_resource(resource)
    assert (note.resource_type, note.text, note.patient_id, note.encounter_id) == (
        "DiagnosticReport",
        "Discharged home.",
        "p-1",
        "e-1",
    )
    assert note.date == datetime(2024, 2, 1, 12, tzinfo=UTC)
    assert note.note_type is NoteType.DISCHARGE_SUMMARY


def test_diagnostic_report_date_falls_back_to_issued():
    note = note_from_resource(report(attachment("x")["attachment"], issued="2024-02-02T12:00:00Z"))
    assert note.date == datetime(2024, 2, 2, 12, tzinfo=UTC)


def test_composition_with_nested_sections():
    resource = composition(
        {
            "title": "History",
            "text": narrative("<p>Fever for 3 days.</p>"),
            "section": [{"title": "Medications", "text": narrative("<ul><li>paracetamol</li></ul>")}],
        },
        {"title": "Plan", "text": narrative("Admit &amp; observe.")},
        subject={"reference": "Patient/p-9"},
        encounter={"reference": "Encounter/e-9"},
    )
    note = note_from_resource(resource)
    assert note.text == "History\nFever for 3 days.\n\nMedications\nparacetamol\n\nPlan\nAdmit & observe."
    assert (note.patient_id, note.encounter_id, note.note_type) == ("p-9", "e-9", NoteType.ADMISSION_HP)
    assert note.date == datetime(2024, 3, 5, 7, tzinfo=UTC)
    assert note.content_type == "application/xhtml+xml"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource, reason, status",
    [
        ({"resourceType": "Patient", "id": "p"}, "not-a-note", 422),
        ({"status": "current"}, "invalid-resource", 400),
        (document(attachment("x"), status=123), "invalid-resource", 400),
        ({"resourceType": "DocumentReference", "content": [attachment("x")]}, "invalid-resource", 400),
        (document({"attachment": {"contentType": "text/plain"}}), "no-content", 422),
        (report(), "no-content", 422),
        (composition({"title": "Empty"}), "no-content", 422),
        (
            document({"attachment": {"contentType": "application/pdf", "data": b64("%PDF")}}),
            "unsupported-content-type",
            415,
        ),
        (
            document({"attachment": {"contentType": "text/plain", "data": "!!not base64!!"}}),
            "undecodable-text",
            400,
        ),
        (
            document(
                {
                    "attachment": {
                        "contentType": "text/plain",
                        # not UTF-8, and control characters in Windows-1252: not text at all
                        "data": base64.b64encode(b"\xff\x01\x02\xfa").decode(),
                    }
                }
            ),
            "undecodable-text",
            400,
        ),
        (document(attachment("x", "text/plain; charset=no-such-charset")), "undecodable-text", 400),
        (document(attachment(r"{\rtf1\ansi x\'81 y\par}", "text/rtf")), "undecodable-text", 400),
        (
            document({"attachment": {"contentType": "text/plain", "url": "Binary/1"}}),
            "unresolvable-attachment",
            422,
        ),
        (document(attachment(" \n\t ")), "empty-text", 422),
        (document(attachment("<p> </p><script>x()</script>", "text/html")), "empty-text", 422),
        (composition({"title": "Blank", "text": narrative("<p> </p>")}), "empty-text", 422),
    ],
)
def test_every_reason_has_its_status(resource, reason, status):
    error = error_of(resource)
    assert (error.reason, error.http_status) == (reason, status)
    assert error.issue_code and error.message and str(error).startswith(reason)


def test_too_large():
    error = error_of(document(attachment("é" * 600)), max_bytes=1000)
    assert (error.reason, error.http_status, error.issue_code) == ("too-large", 413, "too-long")
    assert note_from_resource(document(attachment("é" * 500)), max_bytes=1000).text == "é" * 500


def test_invalid_resource_lists_locations_not_values():
    error = error_of(document(attachment("x"), status=["current", SECRET], date=SECRET))
    assert error.reason == "invalid-resource"
    assert "status" in error.message and "date" in error.message
    assert SECRET not in str(error)


def test_unknown_contained_resource_type_is_invalid():
    error = error_of(document(attachment("x"), contained=[{"resourceType": "NoSuchThing", "id": "a"}]))
    assert error.reason == "invalid-resource"


@pytest.mark.parametrize(
    "resource, kwargs",
    [
        (document(attachment(SECRET + "é", "text/plain; charset=ascii")), {}),
        (document(attachment(SECRET), status={"text": SECRET}), {}),
        (document(attachment(SECRET)), {"max_bytes": 10}),
        (document({"attachment": {"contentType": "text/plain", "data": b64(SECRET)[:-3] + "!"}}), {}),
        (document(attachment(r"{\rtf1\ansi " + SECRET + r"\'81\par}", "text/rtf")), {}),
        (
            document(
                {"attachment": {"url": "#b"}},
                contained=[
                    {"resourceType": "Binary", "id": "b", "contentType": "text/plain", "data": SECRET}
                ],
            ),
            {},
        ),
        (
            document({"attachment": {"contentType": "text/plain", "url": "Binary/1"}}),
            {
                "resolve": lambda url: {
                    "resourceType": "Binary",
                    "contentType": "text/plain",
                    "data": 7,
                    "x": SECRET,
                }
            },
        ),
    ],
)
def test_note_text_never_appears_in_errors(resource, kwargs):
    error = error_of(resource, **kwargs)
    assert SECRET not in str(error) and SECRET not in error.message and SECRET not in repr(error)
    # No library exception (they quote their input) rides along as cause or context.
    assert error.__cause__ is None and error.__context__ is None


def test_reference_id():
    assert reference_id("Patient/123", "Patient") == "123"
    assert reference_id("http://x/fhir/Patient/123/_history/4", "Patient") == "123"
    assert reference_id("Encounter/1", "Patient") is None
    assert reference_id("#p1", "Patient") is None
    assert reference_id("urn:uuid:0f3a", "Patient") is None
    assert reference_id(None, "Patient") is None
