"""CDS Hooks 2.0 service: discovery, prefetch and FHIR-fetch paths, cards, stored scores, errors,
feedback, and the docs' examples run as written (JWTs signed by keys made here)."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from integration.cds_hooks import cds_hooks_router
from integration.cds_hooks.tables import CdsTables
from lang1ops.settings.cds_hooks import CdsClient, CdsHooksSettings
from lang1ops.settings.serving import ApiSettings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.api import create_api
from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
from serving.backends import LocalBackend, ResolvedModel
from serving.store import Store
from tests.postgres import postgres_url  # noqa: F401
from tests.support import require_binary, stored_score_of
from training.artifacts import zero_shot_artifact

ROOT = Path(__file__).resolve().parents[2]
EHR = "https://ehr.hospital.example"
PUBLIC = "https://lang1.hospital.example"
KID = "ehr-es384-1"
SECRET = "ZEBRA-PHI-4417"  # in every note's text; must never come back out
FHIR_TOKEN = "ehr-access-token-123"
API_KEY = "l1o_scorer-key-for-cds-tests-0123456789"


# --------------------------------------------------------------------------------------------- helpers


def note(doc_id: str, loinc: str, patient: str = "p1", encounter: str | None = "e1", date: str = "2024-03-01T10:00:00Z",
         text: str | None = None, version: str | None = "1", url: str | None = None) -> dict:
    text = text or f"CC: dyspnea. HPI: 70 yo M {SECRET} with CHF and CKD, admitted for volume overload."
    attachment = {"contentType": "text/plain"}
    if url:
        attachment["url"] = url
    else:
        attachment["data"] = base64.b64encode(text.encode()).decode()
    resource = {"resourceType": "DocumentReference", "id": doc_id, "status": "current",
                "type": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                "subject": {"reference": f"Patient/{patient}"}, "date": date, "content": [{"attachment": attachment}]}
    if encounter:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{encounter}"}]}
    if version:
        resource["meta"] = {"versionId": version}
    return resource


def searchset(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def hook_request(hook: str = "patient-view", patient: str = "p1", encounter: str | None = "e1", **extra) -> dict:
    context = {"userId": "Practitioner/dr1", "patientId": patient}
    if encounter:
        context["encounterId"] = encounter
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, **extra}


class Backend:
    """LocalBackend that counts scoring calls and can be made to fail."""

    def __init__(self, inner: LocalBackend):
        self.inner, self.calls, self.fail = inner, 0, False

    async def score(self, text, tasks):
        self.calls += 1
        if self.fail:
            raise RuntimeError("scorer replica died")
        return await self.inner.score(text, tasks)

    async def model_info(self):
        return await self.inner.model_info()

    async def contract_for(self, version):
        return await self.inner.contract_for(version)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve_in_thread(app: FastAPI):
    """A real uvicorn server on a free 127.0.0.1 port; yields its base URL."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


class FakeEhrFhir:
    """A small FHIR server: DocumentReference search (patient, encounter, type) and Binary read,
    bearer token checked, with an outage switch."""

    def __init__(self):
        self.documents: list[dict] = []
        self.binaries: dict[str, dict] = {}
        self.requests: list[tuple[str, dict, str | None]] = []
        self.status = 200
        app = FastAPI()

        @app.get("/fhir/DocumentReference")
        async def search(request: Request):
            params = dict(request.query_params)
            self.requests.append(("search", params, request.headers.get("authorization")))
            if self.status != 200:
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=self.status)
            if request.headers.get("authorization") != f"Bearer {FHIR_TOKEN}":
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
            codes = {c.split("|")[-1] for c in params.get("type", "").split(",") if c}
            hits = [d for d in self.documents
                    if d["subject"]["reference"] == f"Patient/{params.get('patient')}"
                    and (not codes or d["type"]["coding"][0]["code"] in codes)
                    and ("encounter" not in params
                         or d.get("context", {}).get("encounter", [{}])[0].get("reference") == f"Encounter/{params['encounter']}")]
            return JSONResponse(searchset(*hits))

        @app.get("/fhir/Binary/{binary_id}")
        async def binary(binary_id: str, request: Request):
            self.requests.append(("binary", {"id": binary_id}, request.headers.get("authorization")))
            if request.headers.get("authorization") != f"Bearer {FHIR_TOKEN}":
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
            return JSONResponse(self.binaries[binary_id])

        self.app = app


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ehr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def ehr_jwks(ehr_key) -> dict:
    return {"keys": [{**ECAlgorithm.to_jwk(ehr_key.public_key(), as_dict=True), "kid": KID, "alg": "ES384", "use": "sig"}]}


def make_jwt(key, aud: str, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": EHR, "sub": "epic-cds-client", "aud": aud, "iat": now, "exp": now + 120, "jti": str(uuid.uuid4()),
              **overrides}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, tmp_path_factory):
    return zero_shot_artifact(tiny_llama_dir, tmp_path_factory.mktemp("cds") / "artifact", DEFAULT_CONTRACT,
                              max_note_tokens=64)


def build_app(artifact, store: Store, settings: CdsHooksSettings, backend: Backend, extra_routers=()):
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name="scorer", key_sha256=hash_api_key(API_KEY),
                                                       roles={Role.SCORER})]))
    return create_api(backend, store, auth, ApiSettings(max_body_bytes=500_000),
                      routers=[cds_hooks_router(settings), *extra_routers])


@pytest.fixture(scope="module")
def closed_fhir_url():
    """A loopback port that is bound but not listening: connections are refused."""
    with free_socket() as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"


@pytest.fixture(scope="module")
def cds(artifact, ehr_jwks, ehr_key, tmp_path_factory, fhir_server, closed_fhir_url):
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('cds-store') / 'store.sqlite'}")
    backend = Backend(LocalBackend(ResolvedModel("v0001", artifact), dtype="float32"))
    allowed = [fhir_server.url, closed_fhir_url, "http://ehr.example/fhir"]
    settings = CdsHooksSettings(public_base_url=PUBLIC, clients=[CdsClient(issuer=EHR, jwks=ehr_jwks, fhir_servers=allowed)],
                                model_card_url="https://models.example/{model_name}/{model_version}/card")
    prefixed = cds_hooks_router(CdsHooksSettings(base_path="/cds", clients=[CdsClient(issuer=EHR, jwks=ehr_jwks)]))
    app = build_app(artifact, store, settings, backend, [prefixed])
    with TestClient(app, raise_server_exceptions=False) as client:
        client.store, client.backend, client.key = store, backend, ehr_key
        yield client


@pytest.fixture(scope="module")
def fhir_server():
    server = FakeEhrFhir()
    with serve_in_thread(server.app) as url:
        server.url = url + "/fhir"
        yield server


def call(client, service_id: str, body: dict, token: str | None = "auto"):
    headers = {"Content-Type": "application/json"}
    if token == "auto":
        token = make_jwt(client.key, f"{PUBLIC}/cds-services/{service_id}")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(f"/cds-services/{service_id}", content=json.dumps(body), headers=headers)


def card_of(response) -> dict:
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    return card


# --------------------------------------------------------------------------------------------- discovery


def test_discovery_lists_both_services_with_prefetch_templates_at_a_configurable_base(cds):
    r = cds.get("/cds-services")
    assert r.status_code == 200
    services = {s["id"]: s for s in r.json()["services"]}
    assert set(services) == {"lang1-patient-risk", "lang1-discharge-risk"}
    pv, dis = services["lang1-patient-risk"], services["lang1-discharge-risk"]
    assert pv["hook"] == "patient-view" and dis["hook"] == "encounter-discharge"
    for service in services.values():
        assert service["title"] and service["description"] and service["usageRequirements"]
        assert service["prefetch"]["notes"].startswith("DocumentReference?patient={{context.patientId}}")
        assert "_sort=-date" in service["prefetch"]["notes"]
    # patient-view reads both note types; discharge narrows the search to the encounter
    assert "http://loinc.org|34117-2" in pv["prefetch"]["notes"] and "http://loinc.org|18842-5" in pv["prefetch"]["notes"]
    assert "encounter={{context.encounterId}}" in dis["prefetch"]["notes"]
    assert "encounter=" not in pv["prefetch"]["notes"]
    assert cds.get("/cds/cds-services").json() == r.json()


# --------------------------------------------------------------------------------------------- prefetch path


def test_patient_view_from_prefetch_gives_one_card_with_all_five_risks(cds):
    notes = searchset(
        note("hp1", "34117-2", date="2024-03-01T10:00:00Z"),
        note("ds1", "18842-5", date="2024-03-06T10:00:00Z"),
        note("hp-old", "34117-2", encounter="e0", date="2023-01-01T10:00:00Z"),  # an earlier admission
        note("pn1", "11506-3", date="2024-03-03T10:00:00Z"),  # progress note: no task reads it
    )
    before = cds.backend.calls
    r = call(cds, "lang1-patient-risk", hook_request(prefetch={"notes": notes}))
    card = card_of(r)
    assert cds.backend.calls == before + 2  # the H&P and the discharge summary of e1, nothing else
    assert len(card["summary"]) < 140 and card["summary"].startswith("Lang1 risk: ")
    assert card["indicator"] in ("info", "warning", "critical")
    uuid.UUID(card["uuid"])
    stored = stored_score_of(cds.store, "DocumentReference/hp1/_history/1")
    assert card["source"]["url"] == f"https://models.example/{stored.model_name}/v0001/card"
    detail = card["detail"]
    for title in ("30-day all-cause readmission", "In-hospital mortality", "Length of stay",
                  "Charlson comorbidity index", "Insurance claim denial"):
        assert title in detail
    assert "DocumentReference/hp1" in detail and "DocumentReference/ds1" in detail and "hp-old" not in detail
    assert "version v0001" in detail and "not a diagnosis" in detail
    # every LOS class is shown with the stored probability
    for option, p in zip(DEFAULT_CONTRACT.task("los").options, stored.probabilities["los"], strict=True):
        shown = f"{100 * p:.1f}%" if p < 0.1 else f"{100 * p:.0f}%"
        assert f"{option.text}: {shown}" in detail
    # the indicator follows the thresholds on the stored mortality probability
    p_death = stored.probabilities["mortality"][1]
    expected = "critical" if p_death >= 0.15 else "warning" if p_death >= 0.05 else "info"
    assert "In-hospital mortality | during this admission | **" in detail
    assert expected in re.search(r"In-hospital mortality \|[^\n]*", detail)[0]
    assert SECRET not in r.text
    # the card is remembered (ids only) for feedback
    cards = CdsTables(cds.store.engine).cards()
    assert any(c["uuid"] == card["uuid"] and c["patient_id"] == "p1" and c["service_id"] == "lang1-patient-risk"
               for c in cards)


def test_a_second_call_answers_from_stored_scores_without_scoring(cds):
    notes = searchset(note("hp2", "34117-2", patient="p2", encounter="e2"))
    first = card_of(call(cds, "lang1-patient-risk", hook_request(patient="p2", encounter="e2", prefetch={"notes": notes})))
    calls = cds.backend.calls
    again = card_of(call(cds, "lang1-patient-risk", hook_request(patient="p2", encounter="e2", prefetch={"notes": notes})))
    assert cds.backend.calls == calls  # no new scoring
    # the stored path is what keeps cards within CDS Hooks' ~500 ms budget; its speed is a
    # benchmark's business (a timed assertion would fail on a busy CI machine), not this test's
    assert "stored score" in again["detail"] and "scored now" in first["detail"]
    assert again["summary"] == first["summary"] and again["uuid"] != first["uuid"]
    # no discharge summary yet: said so, not silently dropped
    assert "30-day all-cause readmission: not available" in again["detail"]


def test_a_note_scored_through_the_fhir_api_is_not_scored_again_for_a_card(cds):
    document = note("hp3", "34117-2", patient="p3", encounter="e3")
    r = cds.post("/fhir/DocumentReference/$score", content=json.dumps(document),
                 headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    calls = cds.backend.calls
    card = card_of(call(cds, "lang1-patient-risk", hook_request(patient="p3", encounter="e3",
                                                               prefetch={"notes": searchset(document)})))
    assert cds.backend.calls == calls and "stored score" in card["detail"]


def test_another_patients_note_with_the_same_text_is_scored_for_this_patient(cds):
    template = f"CC: fall. HPI: {SECRET} templated admission note, identical for both patients."
    card_of(call(cds, "lang1-patient-risk", hook_request(
        patient="pa", encounter="ea", prefetch={"notes": searchset(note("hp-pa", "34117-2", "pa", "ea", text=template))})))
    calls = cds.backend.calls
    card = card_of(call(cds, "lang1-patient-risk", hook_request(
        patient="pb", encounter="eb", prefetch={"notes": searchset(note("hp-pb", "34117-2", "pb", "eb", text=template))})))
    assert cds.backend.calls == calls + 1 and "scored now" in card["detail"]
    assert stored_score_of(cds.store, "DocumentReference/hp-pb/_history/1").patient_id == "pb"
    # the same document id about another patient is refused, never answered from the first patient's score
    calls = cds.backend.calls
    card = card_of(call(cds, "lang1-patient-risk", hook_request(
        patient="pc", encounter="ec", prefetch={"notes": searchset(note("hp-pa", "34117-2", "pc", "ec", text=template))})))
    assert cds.backend.calls == calls and "could not be read: conflict" in card["detail"]
    assert "stored score" not in card["detail"]


def test_no_notes_gives_an_explicit_info_card_not_an_empty_list(cds):
    card = card_of(call(cds, "lang1-patient-risk", hook_request(patient="p9", encounter=None,
                                                               prefetch={"notes": searchset()})))
    assert card["indicator"] == "info" and "not available" in card["summary"]


# --------------------------------------------------------------------------------------------- fetch path


def test_discharge_fetches_notes_from_fhir_server_with_the_access_token(cds, fhir_server):
    text = f"Hospital course: diuresed. {SECRET} Discharged home with follow up."
    fhir_server.documents[:] = [
        note("f-hp", "34117-2", patient="p5", encounter="e5", date="2024-04-01T08:00:00Z"),
        note("f-ds", "18842-5", patient="p5", encounter="e5", date="2024-04-05T08:00:00Z", url="Binary/b1"),
        note("f-ds-other", "18842-5", patient="p5", encounter="e4", date="2024-04-09T08:00:00Z"),
    ]
    fhir_server.binaries["b1"] = {"resourceType": "Binary", "contentType": "text/plain",
                                  "data": base64.b64encode(text.encode()).decode()}
    fhir_server.requests.clear()
    body = hook_request("encounter-discharge", patient="p5", encounter="e5", fhirServer=fhir_server.url,
                        fhirAuthorization={"access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                           "scope": "patient/DocumentReference.rs", "subject": "lang1"})
    r = call(cds, "lang1-discharge-risk", body)
    card = card_of(r)
    kind, params, auth = fhir_server.requests[0]
    assert kind == "search" and auth == f"Bearer {FHIR_TOKEN}"
    assert params["patient"] == "p5" and params["encounter"] == "e5" and "18842-5" in params["type"]
    assert ("binary", {"id": "b1"}, f"Bearer {FHIR_TOKEN}") in fhir_server.requests
    assert "30-day all-cause readmission" in card["detail"] and "Length of stay" in card["detail"]
    assert "In-hospital mortality" not in card["detail"]  # the discharge service shows its two tasks only
    assert "DocumentReference/f-ds" in card["detail"] and "f-ds-other" not in card["detail"]
    assert SECRET not in r.text


def test_fhir_server_failures_are_errors_the_ehr_sees(cds, fhir_server, closed_fhir_url):
    fhir_server.documents[:] = [note("g-hp", "34117-2", patient="p6", encounter="e6")]
    body = hook_request(patient="p6", encounter="e6", fhirServer=fhir_server.url,
                        fhirAuthorization={"access_token": FHIR_TOKEN, "token_type": "Bearer"})
    fhir_server.status = 503
    try:
        r = call(cds, "lang1-patient-risk", body)
    finally:
        fhir_server.status = 200
    assert r.status_code == 502 and "cards" not in r.json()
    assert "HTTP 503" in r.json()["issue"][0]["diagnostics"] and "no risk" in r.json()["issue"][0]["diagnostics"]
    refused = {**body, "fhirAuthorization": {"access_token": "stale-token", "token_type": "Bearer"}}
    r = call(cds, "lang1-patient-risk", refused)
    assert r.status_code == 502 and "refused fhirAuthorization" in r.json()["issue"][0]["diagnostics"]
    r = call(cds, "lang1-patient-risk", {**body, "fhirServer": closed_fhir_url})
    assert r.status_code == 502 and "could not be reached" in r.json()["issue"][0]["diagnostics"]
    r = call(cds, "lang1-patient-risk", {**body, "fhirServer": "http://ehr.example/fhir"})
    assert r.status_code == 400 and "https" in r.json()["issue"][0]["diagnostics"]
    # the access token goes only to servers configured for this EHR
    for elsewhere in ("https://attacker.example/fhir", fhir_server.url + "-evil", "https://ehr.example/fhir"):
        r = call(cds, "lang1-patient-risk", {**body, "fhirServer": elsewhere})
        assert r.status_code == 403 and "fhirServer" in r.json()["issue"][0]["diagnostics"], elsewhere
    no_source = hook_request(patient="p6", encounter="e6")
    assert call(cds, "lang1-patient-risk", no_source).status_code == 412


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("mutate, status, words", [
    (lambda b: b.update(hook="order-select"), 400, "patient-view hook"),
    (lambda b: b["context"].pop("patientId"), 400, "context.patientId"),
    (lambda b: b["context"].pop("userId"), 400, "context.userId"),
    (lambda b: b["context"].update(patientId="bad id/../x"), 400, "context.patientId"),
    (lambda b: b.update(hookInstance="not-a-uuid"), 400, "hookInstance"),
    (lambda b: b.pop("context"), 400, "context"),
    (lambda b: b.update(fhirAuthorization={"access_token": "t"}), 400, "fhirServer"),
])
def test_bad_requests_are_refused_with_a_clear_message(cds, mutate, status, words):
    body = hook_request(prefetch={"notes": searchset()})
    mutate(body)
    r = call(cds, "lang1-patient-risk", body)
    assert r.status_code == status and words in r.json()["issue"][0]["diagnostics"], r.text


def test_unknown_service_malformed_json_other_patients_note_and_missing_token(cds):
    assert call(cds, "no-such-service", hook_request()).status_code == 404
    token = make_jwt(cds.key, f"{PUBLIC}/cds-services/lang1-patient-risk")
    r = cds.post("/cds-services/lang1-patient-risk", content=b"{not json",
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    assert r.status_code == 400
    foreign = searchset(note("x1", "34117-2", patient="someone-else"))
    r = call(cds, "lang1-patient-risk", hook_request(prefetch={"notes": foreign}))
    assert r.status_code == 422 and "not about context.patientId" in r.text
    r = call(cds, "lang1-patient-risk", hook_request(prefetch={"notes": searchset()}), token=None)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    wrong_aud = make_jwt(cds.key, f"{PUBLIC}/cds-services/lang1-discharge-risk")
    r = call(cds, "lang1-patient-risk", hook_request(prefetch={"notes": searchset()}), token=wrong_aud)
    assert r.status_code == 401 and "audience" in r.json()["issue"][0]["diagnostics"]


def test_the_audience_comes_from_settings_never_from_the_host_header(cds):
    # the "/cds" router has no public_base_url: its audience is serving.api.base_url's origin
    spoofed = make_jwt(cds.key, "http://attacker.example/cds/cds-services/lang1-patient-risk")
    body = json.dumps(hook_request(prefetch={"notes": searchset()}))
    r = cds.post("/cds/cds-services/lang1-patient-risk", content=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {spoofed}", "Host": "attacker.example"})
    assert r.status_code == 401 and "audience" in r.json()["issue"][0]["diagnostics"]
    configured = make_jwt(cds.key, "http://127.0.0.1:8000/cds/cds-services/lang1-patient-risk")
    r = cds.post("/cds/cds-services/lang1-patient-risk", content=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {configured}", "Host": "attacker.example"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("prefetch", [
    {"resourceType": "Bundle", "type": "searchset", "entry": 7},
    searchset(note("sub", "34117-2") | {"subject": "Patient/p1"}),
    searchset(note("ctx", "34117-2") | {"context": "Encounter/e1", "type": "H&P"}),
    searchset(note("att", "34117-2") | {"content": [{"attachment": None}]}),
    searchset(note("dat", "34117-2", date="2024-13-45")),
    {"resourceType": "Bundle", "entry": [{"resource": note("srch", "34117-2"), "search": "match"}]},
], ids=["entry-number", "subject-string", "context-string", "attachment-null", "bad-date", "search-string"])
def test_malformed_prefetch_is_a_4xx_or_a_card_never_a_5xx(cds, prefetch):
    r = call(cds, "lang1-patient-risk", hook_request(prefetch={"notes": prefetch}))
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"
    assert SECRET not in r.text


def test_a_jwt_replayed_to_another_replica_is_refused(cds, artifact, ehr_jwks):
    """Replay memory lives in the store: a second ingress replica (its own app and verifier,
    the same database) refuses a token the first one accepted."""
    settings = CdsHooksSettings(public_base_url=PUBLIC, clients=[CdsClient(issuer=EHR, jwks=ehr_jwks)])
    other = build_app(artifact, cds.store, settings, cds.backend)
    body = json.dumps(hook_request(patient="p-rep", encounter="e-rep", prefetch={"notes": searchset()}))
    token = make_jwt(cds.key, f"{PUBLIC}/cds-services/lang1-patient-risk")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    assert cds.post("/cds-services/lang1-patient-risk", content=body, headers=headers).status_code == 200
    with TestClient(other, raise_server_exceptions=False) as replica:
        r = replica.post("/cds-services/lang1-patient-risk", content=body, headers=headers)
    assert r.status_code == 401 and "replayed" in r.json()["issue"][0]["diagnostics"]


def test_scorer_failure_is_an_http_error_not_an_empty_card_list(cds):
    cds.backend.fail = True
    try:
        r = call(cds, "lang1-patient-risk", hook_request(patient="p7", encounter="e7",
                                                         prefetch={"notes": searchset(note("s1", "34117-2", patient="p7",
                                                                                           encounter="e7"))}))
    finally:
        cds.backend.fail = False
    assert r.status_code == 503 and "cards" not in r.json()
    assert "no risk was computed" in r.json()["issue"][0]["diagnostics"]


# --------------------------------------------------------------------------------------------- feedback


def test_feedback_is_stored_once_with_codes_only(cds):
    card = card_of(call(cds, "lang1-patient-risk", hook_request(prefetch={"notes": searchset(note("hp1", "34117-2"))})))
    url = f"{PUBLIC}/cds-services/lang1-patient-risk/feedback"
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2024-03-06T12:00:00Z",
            "overrideReason": {"reason": card["overrideReasons"][0], "userComment": f"free text {SECRET}"}}

    def send(items, aud=url):
        return cds.post("/cds-services/lang1-patient-risk/feedback", content=json.dumps({"feedback": items}),
                        headers={"Content-Type": "application/json", "Authorization": f"Bearer {make_jwt(cds.key, aud)}"})

    r = send([item])
    assert r.status_code == 200 and r.json() == {}
    assert send([item], aud=f"{PUBLIC}/cds-services/lang1-patient-risk").status_code == 200  # resent, service-URL aud
    rows = CdsTables(cds.store.engine).feedback(card["uuid"])
    assert len(rows) == 1
    row = rows[0]
    assert row["outcome"] == "overridden" and row["override_reason_code"] == card["overrideReasons"][0]["code"]
    assert row["client"] == EHR and row["outcome_at"].isoformat().startswith("2024-03-06T12:00:00")
    assert SECRET not in json.dumps([{k: str(v) for k, v in r.items()} for r in rows])
    accepted = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2024-03-06T12:05:00Z"}
    assert send([accepted]).status_code == 200 and len(CdsTables(cds.store.engine).feedback(card["uuid"])) == 2
    assert send([{**item, "card": str(uuid.uuid4())}]).status_code == 404
    bad_reason = {**item, "overrideReason": {"reason": {"code": "made-up"}}}
    assert send([bad_reason]).status_code == 400
    assert send([{**item, "outcome": "ignored"}]).status_code == 400


# --------------------------------------------------------------------------------------------- the docs, run


def doc_example(name: str) -> str:
    for path in (ROOT / "docs" / "integration.md",):
        if path.exists():
            match = re.search(rf"<!-- example: {name} -->\s*```\w*\n(.*?)```", path.read_text(), re.S)
            if match:
                return match[1]
    raise AssertionError(f"docs example {name!r} not found")


def test_docs_settings_and_claims_examples_are_valid():
    settings = CdsHooksSettings.model_validate(json.loads(doc_example("cds-settings")))
    assert settings.clients[1].jku_allow_list and settings.thresholds["los"].upper_classes == [3]
    claims = json.loads(doc_example("jwt-claims"))
    assert claims["aud"] == f"{claims['aud'].split('/cds-services')[0]}/cds-services/lang1-patient-risk"
    assert {"iss", "aud", "exp", "iat", "jti"} <= set(claims) and claims["exp"] - claims["iat"] <= 300


def test_docs_curl_examples_run_against_a_live_server(artifact, ehr_key, ehr_jwks, tmp_path):
    curl = require_binary("curl")
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    backend = Backend(LocalBackend(ResolvedModel("v0001", artifact), dtype="float32"))
    sock_probe = free_socket()  # the public URL must be known before the app is built (JWT aud)
    port = sock_probe.getsockname()[1]
    sock_probe.close()
    settings = CdsHooksSettings(public_base_url=f"http://127.0.0.1:{port}", clients=[CdsClient(issuer=EHR, jwks=ehr_jwks)])
    app = build_app(artifact, store, settings, backend)
    request = json.loads(doc_example("patient-view-request"))
    (tmp_path / "patient-view-request.json").write_text(json.dumps(request))
    (tmp_path / "feedback.json").write_text(doc_example("feedback"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        env = {"BASE": base, "PATH": str(Path(curl).parent) + ":/usr/bin:/bin",
               "JWT": make_jwt(ehr_key, f"{base}/cds-services/lang1-patient-risk")}
        discovery = subprocess.run(["bash", "-c", 'curl -s "$BASE/cds-services"'], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=30)
        assert len(json.loads(discovery.stdout)["services"]) == 2
        out = subprocess.run(["bash", "-c", doc_example("call-service")], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        [card] = json.loads(out.stdout)["cards"]
        assert "DocumentReference/hp-123" in card["detail"] and "DocumentReference/ds-9" in card["detail"]
        env.update(CARD_UUID=card["uuid"], FEEDBACK_JWT=make_jwt(ehr_key, f"{base}/cds-services/lang1-patient-risk/feedback"))
        out = subprocess.run(["bash", "-c", doc_example("send-feedback")], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and json.loads(out.stdout) == {}, out.stdout + out.stderr
        [row] = CdsTables(store.engine).feedback(card["uuid"])
        assert row["override_reason_code"] == "already-addressed"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_card_and_feedback_tables_work_on_both_databases(backend, request, tmp_path):
    from datetime import UTC, datetime

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 's.sqlite'}"
    store = Store(url)
    try:
        tables = CdsTables(store.engine)
        card_uuid = str(uuid.uuid4())
        tables.record_card(uuid=card_uuid, service_id="lang1-patient-risk", hook_instance=str(uuid.uuid4()),
                           patient_id="p1", encounter_id=None, indicator="warning", model_version="v0001",
                           basis=["DocumentReference/d1"], issued_at=datetime.now(UTC))
        assert tables.card_service(card_uuid) == "lang1-patient-risk"
        row = {"card_uuid": card_uuid, "service_id": "lang1-patient-risk", "outcome": "accepted",
               "override_reason_code": None, "outcome_at": datetime(2024, 3, 1, 12, tzinfo=UTC),
               "received_at": datetime.now(UTC), "client": EHR}
        assert tables.record_feedback([row]) == 1 and tables.record_feedback([row]) == 0
        [stored] = tables.feedback(card_uuid)
        assert stored["outcome_at"] == datetime(2024, 3, 1, 12, tzinfo=UTC)
        assert CdsTables(store.engine).cards()[0]["basis"] == ["DocumentReference/d1"]
    finally:
        store.dispose()
