"""Every input the security review found answered with a 500 now gets a 4xx OperationOutcome
(each case as it was sent), and nothing is lost from the audit trail on the way."""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import time

import pytest

from tests.security.helpers import KEYS, SECRET, note, post

SCORE = "/fhir/DocumentReference/$score"


def parameters(*parts) -> dict:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def assert_outcome(r, status: int | tuple[int, ...] | None = None) -> dict:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert 400 <= r.status_code, r.status_code
    if status is not None:
        assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text[:300])
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"], body
    assert SECRET not in r.text
    return body


def with_attachment(**attachment) -> dict:
    resource = note(doc_id="att")
    resource["content"] = [{"attachment": attachment}]
    return resource


DEEP = b"[" * 100_000 + b"]" * 100_000
BIG_INT = b'{"resourceType": "DocumentReference", "id": ' + b"9" * 5000 + b"}"

CASES = {
    "nested-100000-deep": DEEP,
    "5000-digit-integer": BIG_INT,
    "parameters-parameter-is-a-number": parameters() | {"parameter": 5},
    "parameters-entry-not-an-object": parameters(5, "x", None),
    "parameters-resource-is-a-number": parameters({"name": "resource", "resource": 5}),
    "task-code-is-a-number": parameters({"name": "resource", "resource": note(doc_id="t1")},
                                        {"name": "task", "valueCode": 5}),
    "task-code-is-a-list": parameters({"name": "resource", "resource": note(doc_id="t2")},
                                      {"name": "task", "valueCode": ["los", "cci"]}),
    "attachment-null": note(doc_id="an") | {"content": [{"attachment": None}]},
    "content-not-a-list": note(doc_id="cn") | {"content": 7},
    "charset-punycode": with_attachment(contentType="text/plain; charset=punycode",
                                        data=base64.b64encode(b"HPI: fever").decode()),
    "charset-unknown": with_attachment(contentType="text/plain; charset=x-no-such-codec",
                                       data=base64.b64encode(b"HPI: fever").decode()),
    "charset-binary-codec": with_attachment(contentType="text/plain; charset=base64",
                                            data=base64.b64encode(b"HPI: fever").decode()),
    "lone-surrogate-resource-type": b'{"resourceType": "Doc\\ud800Ref", "id": "x"}',
    "subject-is-a-string": note(doc_id="ss") | {"subject": "Patient/A"},
    "date-9999": note(doc_id="d9999", date="9999-12-31T00:00:00Z"),
    "date-0001": note(doc_id="d0001", date="0001-01-01"),
    "not-an-object": b"[1, 2, 3]",
    "null": b"null",
    "string": b'"DocumentReference"',
}


@pytest.mark.parametrize("body", list(CASES.values()), ids=list(CASES))
def test_score_answers_4xx_operation_outcome(api, body):
    assert_outcome(post(api, SCORE, body))


def test_repeated_task_30_times_is_answered_and_stored(api):
    r = post(api, SCORE + "?task=" + ",".join(["los"] * 30), note(doc_id="rep30"))
    assert r.status_code == 200, r.text
    assert len(r.json()["entry"]) == 1


@pytest.mark.parametrize("bundle", [
    {"resourceType": "Bundle", "type": "batch", "entry": 5},
    {"resourceType": "Bundle", "type": "batch", "entry": [5, None, "x"]},
    {"resourceType": "Bundle", "type": "batch", "entry": {"resource": {}}},
    {"resourceType": "Bundle", "type": ["batch"]},
], ids=["entry-number", "entries-not-objects", "entry-object", "type-list"])
def test_batch_answers_4xx_or_per_entry_outcomes(api, bundle):
    r = post(api, "/fhir", bundle)
    if r.status_code == 200:  # entries are answered one by one
        assert all(e["response"]["status"].startswith("4") for e in r.json()["entry"])
    else:
        assert_outcome(r)


def test_lone_surrogate_error_is_answered_and_audited(api):
    r = post(api, SCORE, b'{"resourceType": "Doc\\ud800Ref"}', headers={"X-Request-Id": "surrogate-1"})
    assert_outcome(r, (400, 422))
    records = [a for a in api.store.audit_records(limit=200) if a["request_id"] == "surrogate-1"]
    assert records and records[0]["http_status"] == r.status_code


@pytest.mark.parametrize("method, path", [("GET", SCORE), ("DELETE", "/fhir"), ("GET", "/no/such/path"),
                                          ("POST", "/fhir/Patient/$everything"), ("PUT", "/v1/score")])
def test_404_and_405_are_operation_outcomes(api, method, path):
    r = api.request(method, path, headers={"Authorization": f"Bearer {KEYS['admin']}"})
    body = assert_outcome(r, (404, 405))
    assert body["issue"][0]["code"] in ("not-found", "not-supported")


@pytest.mark.parametrize("body", [
    {"text": "x", "patient_id": "p", "tasks": [5]},
    {"text": "x", "patient_id": "p", "tasks": "los"},
    {"text": "x", "patient_id": "p1 with space"},
    {"text": "x", "patient_id": "p", "note_type": "admission_hp", "tasks": ["los"] * 30},
    {"text": "\udcff", "patient_id": "p"},
], ids=["task-number", "tasks-string", "bad-patient-id", "repeated-tasks", "surrogate-text"])
def test_plain_json_bad_input(api, body):
    r = api.post("/v1/score", content=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {KEYS['scorer']}", "Content-Type": "application/json"})
    if body.get("tasks") == ["los"] * 30:
        assert r.status_code == 200, r.text
    else:
        assert_outcome(r)


def test_implausible_note_dates_are_refused_and_never_stored(api):
    for date in ("9999-12-31T00:00:00Z", "1066-10-14T00:00:00Z"):
        r = post(api, SCORE, note(doc_id="when", date=date, patient="W"))
        assert_outcome(r, 422)
    assert not (api.store.scores_between(*_all_time())["patient_id"] == "W").any()


def _all_time():
    from datetime import UTC, datetime

    return datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def live(api):
    """The same app behind a real uvicorn server on 127.0.0.1 (TestClient buffers request bodies)."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(5)
    sock.close()


@pytest.mark.parametrize("path", [SCORE, "/v1/score", "/fhir"])
def test_a_100_mb_chunked_body_is_refused_without_being_read(live, path):
    """1 MB chunks, no Content-Length, up to 100 MB: the answer (413) comes after the first chunk
    over the limit (200 kB here), and the rest is never read."""
    chunk = b" " * 1_000_000
    sent, answer = 0, b""
    with socket.create_connection(live, timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEYS['scorer']}\r\n"
                     "Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(100):
            if select.select([conn], [], [], 0.2)[0]:
                break  # the server has answered
            try:
                conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server closed the connection after answering
                break
            sent += 1
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in answer and (data := conn.recv(65536)):
                answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent <= 5, f"{sent} MB sent before the answer"


def test_a_lying_content_length_is_refused_up_front(api):
    r = api.post("/v1/score", content=b"{}", headers={"Authorization": f"Bearer {KEYS['scorer']}",
                                                      "Content-Type": "application/json",
                                                      "Content-Length": str(10**9), "X-Request-Id": "huge-1"})
    assert_outcome(r, 413)
    [record] = [a for a in api.store.audit_records(limit=500) if a["request_id"] == "huge-1"]
    assert record["http_status"] == 413 and record["outcome"] == "too-long"
