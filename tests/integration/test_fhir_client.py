"""The FHIR client against the real Node FHIR server, and its retry rules on a mock transport."""

from __future__ import annotations

import httpx
import pytest

from integration.fhir_client import FhirClient, FhirNotFound, FhirRequestRefused, FhirUnavailable
from tests.integration.fhir_server import fhir_server  # noqa: F401  (fixture)

SECRET = "ZEBRA-PHI-7731"


def risk(value: str) -> dict:
    return {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/p1"},
            "identifier": [{"system": "urn:lang1-ops:risk-assessment", "value": value}]}


def test_create_read_vread_search_with_paging_and_conditional_create(fhir_server):  # noqa: F811
    with FhirClient(fhir_server.base_url) as client:
        made = [client.create(risk(f"r{i}")) for i in range(5)]
        assert client.read("RiskAssessment", made[0]["id"])["identifier"][0]["value"] == "r0"
        version = made[1]["meta"]["versionId"]
        assert client.read("RiskAssessment", made[1]["id"], version)["id"] == made[1]["id"]
        found = list(client.search("RiskAssessment", {"_count": 2}))  # three pages
        assert sorted(r["id"] for r in found) == sorted(r["id"] for r in made)
        first, created = client.conditional_create(risk("once"), {"identifier": "urn:lang1-ops:risk-assessment|once"})
        again, created_again = client.conditional_create(risk("once"), {"identifier": "urn:lang1-ops:risk-assessment|once"})
        assert created and not created_again and first["id"] == again["id"]
        assert len(list(client.search("RiskAssessment", {"identifier": "urn:lang1-ops:risk-assessment|once"}))) == 1
        with pytest.raises(FhirNotFound):
            client.read("DocumentReference", "does-not-exist")


def test_server_down_is_unavailable_after_retries(fhir_server):  # noqa: F811
    base = fhir_server.base_url
    fhir_server.stop()
    with FhirClient(base, retries=1, retry_backoff_s=0.01) as client, pytest.raises(FhirUnavailable):
        client.read("DocumentReference", "d1")


def counting_transport(statuses: list[int], body: dict | None = None):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        status = statuses[min(len(calls) - 1, len(statuses) - 1)]
        return httpx.Response(status, json=body or risk("x") | {"id": "r1"})

    return httpx.MockTransport(handler), calls


def test_only_safe_calls_are_retried():
    transport, calls = counting_transport([503, 503, 201])
    with FhirClient("http://fhir.test", retries=2, retry_backoff_s=0, transport=transport) as client:
        _, created = client.conditional_create(risk("k"), {"identifier": "s|k"})
    assert created and calls == ["POST"] * 3
    transport, calls = counting_transport([503, 201])
    with FhirClient("http://fhir.test", retries=2, retry_backoff_s=0, transport=transport) as client:
        with pytest.raises(FhirUnavailable):
            client.create(risk("k"))  # a plain create could write twice: never retried
    assert calls == ["POST"]
    transport, calls = counting_transport([400])
    with FhirClient("http://fhir.test", retries=2, retry_backoff_s=0, transport=transport) as client:
        with pytest.raises(FhirRequestRefused):
            client.read("RiskAssessment", "r1")  # a 4xx will not get better
    assert calls == ["GET"]


def test_errors_carry_issue_codes_but_never_the_servers_free_text():
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": f"bad note {SECRET}",
         "details": {"text": SECRET}, "expression": ["DocumentReference.content"]}]}
    transport, _ = counting_transport([422], outcome)
    with FhirClient("http://fhir.test", transport=transport) as client, pytest.raises(FhirRequestRefused) as caught:
        client.create({"resourceType": "DocumentReference", "status": "current"})
    assert caught.value.status == 422 and caught.value.issues == [("error", "invalid", "DocumentReference.content")]
    assert SECRET not in str(caught.value)
