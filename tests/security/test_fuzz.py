"""Property-based fuzzing of every HTTP endpoint: whatever arrives, the answer is never a 5xx,
never a hang, and every refusal is an OperationOutcome.

Two generators: schemathesis from the OpenAPI document (every operation, its parameters and
bodies, valid and invalid), and FHIR-shaped mutations of real requests (a note, Parameters, a
batch Bundle, a CDS Hooks call with prefetch, a Subscription notification, an Alertmanager
payload) with random JSON put in, taken out or retyped at random places. Seeded (derandomized),
so `make test` runs the same sample every time; `make fuzz` sets FUZZ_EXAMPLES high
(at least 10,000 requests in all) and prints the count.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.helpers import KEYS, SECRET, note

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
SLOW_S = 10.0  # a request that takes this long on a tiny model is a hang
SENT = {"requests": 0}


@pytest.fixture(scope="module", autouse=True)
def report_count():
    yield
    print(f"\nfuzz: {SENT['requests']} generated requests (FUZZ_EXAMPLES={EXAMPLES})", file=sys.__stdout__)


def content_type(response) -> str:
    value = response.headers.get("content-type") or response.headers.get("Content-Type") or ""
    return (value[0] if isinstance(value, list) else value).lower()  # schemathesis' headers are lists


def check(response, elapsed: float, what: str) -> None:
    SENT["requests"] += 1
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    assert elapsed < SLOW_S, (what, elapsed)
    assert SECRET not in response.text
    if response.status_code >= 400:  # every refusal, 404 and 405 included, explains itself in FHIR
        assert content_type(response).startswith("application/fhir+json"), (what, response.status_code)
        body = response.json()
        assert body.get("resourceType") == "OperationOutcome" and body["issue"][0]["code"], (what, body)


# --------------------------------------------------------------------------------------------- OpenAPI


def test_openapi_operations_never_fail_the_server(full_api):
    """Each operation of /openapi.json with schemathesis' cases (valid and invalid parameters and
    bodies), called as an admin so that the requests reach the handlers."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", full_api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        @FUZZ
        @given(case=operation.as_strategy())
        def run(case):
            started = time.perf_counter()
            response = case.call(headers=ADMIN)
            check(response, time.perf_counter() - started, f"{case.method} {case.path}")

        run()


# --------------------------------------------------------------------------------------------- FHIR-shaped

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.sampled_from(["", "\ud800", "Patient/", "urn:uuid:x", "9999-12-31", "0001-01-01",
                                             "text/plain; charset=punycode", "DocumentReference", "#x", "-1"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


def paths(value, prefix=()):
    """Every place in a JSON document: (path, value) pairs, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*prefix, index))


def apply(document, path, action, new):
    if not path:
        return new if action != "delete" else None
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "wrap":
        parent[last] = [parent[last]]
    else:
        parent[last] = new
    return document


@st.composite
def mutated(draw, base: dict):
    document = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = list(paths(document))
        path, _ = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["replace", "delete", "wrap"]))
        document = apply(document, path, action, draw(JSON_VALUES))
    return document


def cds_call() -> dict:
    return {"hook": "patient-view", "hookInstance": str(uuid.UUID(int=7)),
            "context": {"userId": "Practitioner/1", "patientId": "A", "encounterId": "e1"},
            "prefetch": {"notes": {"resourceType": "Bundle", "type": "searchset",
                                   "entry": [{"resource": note(doc_id="fz"), "search": {"mode": "match"}}]}}}


BASES = {
    "/fhir/DocumentReference/$score": note(doc_id="fuzz"),
    "/fhir/DocumentReference/$score#parameters": {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": note(doc_id="fuzz-p")}, {"name": "task", "valueCode": "los"}]},
    "/fhir": {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": note(doc_id="fuzz-b"), "request": {"method": "POST", "url": "DocumentReference/$score"}}]},
    "/sandbox/cds-services/lang1-patient-risk": cds_call(),
    "/fhir/subscription-notification": {"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": {"resourceType": "Parameters", "parameter": [
            {"name": "type", "valueCode": "event-notification"},
            {"name": "notification-event", "part": [{"name": "event-number", "valueString": "1"},
                                                    {"name": "focus", "valueReference": {
                                                        "reference": "DocumentReference/fz"}}]}]}},
        {"fullUrl": "DocumentReference/fz", "resource": note(doc_id="fz")}]},
    "/alerts/alertmanager": {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "Lang1OpsFuzz", "action": "retrain"},
         "startsAt": "2025-01-01T00:00:00Z", "fingerprint": "abcdef"}]},
    "/v1/score": {"text": f"HPI: {SECRET} fuzz.", "patient_id": "F1", "note_type": "admission_hp", "note_id": "f1"},
}


@pytest.mark.parametrize("target", list(BASES), ids=list(BASES))
def test_fhir_shaped_mutations_never_fail_the_server(full_api, target):
    path = target.split("#")[0]
    content_type = "application/json" if path in ("/v1/score", "/alerts/alertmanager") or "cds" in path \
        else "application/fhir+json"

    @FUZZ
    @given(body=mutated(BASES[target]))
    def run(body):
        started = time.perf_counter()
        r = full_api.post(path, content=json.dumps(body).encode(), headers={**ADMIN, "Content-Type": content_type})
        check(r, time.perf_counter() - started, target)

    run()


@FUZZ
@given(raw=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_raw_bytes_never_fail_the_server(full_api, raw):
    for path in ("/fhir/DocumentReference/$score", "/fhir", "/v1/score", "/sandbox/cds-services/lang1-patient-risk"):
        started = time.perf_counter()
        r = full_api.post(path, content=raw, headers={**ADMIN, "Content-Type": "application/fhir+json"})
        check(r, time.perf_counter() - started, f"raw {path}")
