"""Every endpoint the service mounts × every caller: no credentials, a wrong key, and one API key
per role. The table below is the access policy; a route missing from it fails the test, so a new
endpoint cannot ship without a decision about who may call it."""

from __future__ import annotations

import pytest

from tests.security.helpers import ALERTMANAGER_TOKEN, KEYS, note

OPEN = "open"
EHR_JWT = "ehr-jwt"  # CDS Hooks: only a signed EHR JWT (tests/integration/test_cds_auth.py), never an API key
SANDBOX = "sandbox"  # a CDS mount with require_jwt=False (test-only): no credentials pass, wrong ones do not
SCORER, READER, WRITER, ADMIN = {"scorer", "admin"}, {"reader", "admin"}, {"care_manager", "admin"}, {"admin"}

# (method, path, allowed) for every route of the app; request bodies are minimal valid ones
POLICY = [
    ("POST", "/fhir/DocumentReference/$score", SCORER),
    ("POST", "/fhir", SCORER),
    ("GET", "/fhir/metadata", OPEN),
    ("POST", "/v1/score", SCORER),
    ("GET", "/healthz", OPEN),
    ("GET", "/readyz", OPEN),
    ("GET", "/metrics", OPEN),
    ("POST", "/alerts/alertmanager", ADMIN),
    ("GET", "/alerts", ADMIN),
    ("GET", "/cds-services", OPEN),
    ("POST", "/cds-services/{service_id}", EHR_JWT),
    ("POST", "/cds-services/{service_id}/feedback", EHR_JWT),
    ("GET", "/sandbox/cds-services", OPEN),
    ("POST", "/sandbox/cds-services/{service_id}", SANDBOX),
    ("POST", "/sandbox/cds-services/{service_id}/feedback", SANDBOX),
    ("POST", "/fhir/subscription-notification", SCORER),
    ("GET", "/views/api/worklist", READER),
    ("GET", "/views/api/worklist.csv", READER),
    ("GET", "/views/api/worklist/fhir", READER),
    ("PUT", "/views/api/worklist/{encounter_id}/outreach", WRITER),
    ("GET", "/views/api/worklist/{encounter_id}/outreach", READER),
    ("GET", "/views/api/beds", READER),
    ("GET", "/views/api/mlops", READER),
    ("GET", "/views/api/drift/{run_id}/report", READER),
    ("GET", "/openapi.json", OPEN),
    ("GET", "/docs", OPEN),
]
BODIES = {
    "/fhir/DocumentReference/$score": note(doc_id="auth-matrix"),
    "/fhir": {"resourceType": "Bundle", "type": "batch", "entry": []},
    "/v1/score": {"text": "HPI: cough.", "patient_id": "m1", "note_type": "admission_hp"},
    "/alerts/alertmanager": {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "Lang1OpsTest"}, "startsAt": "2025-01-01T00:00:00Z",
         "fingerprint": "abc123"}]},
    "/views/api/worklist/{encounter_id}/outreach": {"status": "reached"},
    "/fhir/subscription-notification": {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "heartbeat"}]}}]},
}
CALLERS = [None, "wrong", *KEYS]


def concrete(path: str) -> str:
    return (path.replace("{service_id}", "lang1-patient-risk").replace("{encounter_id}", "e-matrix")
            .replace("{run_id}", "1"))


def routes_of(router, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, the ones hidden from the OpenAPI document and those of
    included routers too."""
    found = set()
    for route in router.routes:
        if hasattr(route, "original_router"):  # an included APIRouter
            found |= routes_of(route.original_router, prefix + route.include_context.prefix)
            continue
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                found.add((method, prefix + route.path))
    return found


def test_the_policy_covers_every_route(full_api):
    mounted = {r for r in routes_of(full_api.app.router) if not r[1].startswith("/ui")}  # static pages: no data
    assert mounted == {(m, p) for m, p, _ in POLICY}


@pytest.mark.parametrize("method, path, allowed", POLICY, ids=[f"{m} {p}" for m, p, _ in POLICY])
def test_every_role_on_every_endpoint(full_api, method, path, allowed):
    for caller in CALLERS:
        headers = {} if caller is None else {"Authorization": f"Bearer {KEYS.get(caller, 'not-a-key')}"}
        body = BODIES.get(path)
        r = full_api.request(method, concrete(path), headers=headers, json=body)
        who = caller or "anonymous"
        assert r.status_code < 500, (who, r.status_code, r.text[:200])
        if allowed == OPEN:
            assert r.status_code not in (401, 403), (who, r.text[:200])
        elif allowed == EHR_JWT or (allowed == SANDBOX and caller is not None):
            assert r.status_code == 401, (who, r.status_code)  # an API key is no EHR JWT
        elif allowed == SANDBOX:
            assert r.status_code not in (401, 403), (who, r.text[:200])
        elif caller in allowed:
            assert r.status_code not in (401, 403), (who, r.status_code, r.text[:200])
        else:
            expected = 401 if caller in (None, "wrong") else 403
            assert r.status_code == expected, (who, r.status_code, r.text[:200])
            assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["code"] == "security"


def test_alertmanager_token_opens_only_the_webhook(full_api):
    token = {"Authorization": f"Bearer {ALERTMANAGER_TOKEN}"}
    assert full_api.post("/alerts/alertmanager", json=BODIES["/alerts/alertmanager"], headers=token).status_code == 200
    assert full_api.get("/alerts", headers=token).status_code == 401
    assert full_api.post("/fhir/DocumentReference/$score", json=note(doc_id="am"), headers=token).status_code == 401


def test_refusals_are_audited_with_the_caller(full_api):
    full_api.get("/views/api/worklist", headers={"Authorization": f"Bearer {KEYS['scorer']}",
                                                 "X-Request-Id": "matrix-403"})
    [record] = [a for a in full_api.store.audit_records(limit=500) if a["request_id"] == "matrix-403"]
    assert record["http_status"] == 403 and record["actor"] == "scorer"
    full_api.get("/views/api/worklist", headers={"Authorization": "Bearer nope", "X-Request-Id": "matrix-401"})
    [record] = [a for a in full_api.store.audit_records(limit=500) if a["request_id"] == "matrix-401"]
    assert record["http_status"] == 401 and "testclient" in (record["detail"] or "")


def test_docs_page_loads_nothing_from_another_origin(full_api):
    page = full_api.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        assert asset in page.text and full_api.get(asset).status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_security_headers(full_api):
    key = {"Authorization": f"Bearer {KEYS['reader']}"}
    for path in ("/views/api/worklist", "/fhir/metadata", "/healthz", "/ui/worklist"):
        r = full_api.get(path, headers=key)
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", path
        assert r.headers["cache-control"] == "no-store", path
        assert "strict-transport-security" not in r.headers  # plain http here
    page = full_api.get("/ui/worklist")
    assert page.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self';")
    assert "cache-control" not in full_api.get("/ui/static/views.js").headers or \
        full_api.get("/ui/static/views.js").headers["cache-control"] != "no-store"
    behind_tls = full_api.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert behind_tls.headers["strict-transport-security"].startswith("max-age=")


def test_guessing_keys_is_throttled_per_client(tiny_llama_dir, tmp_path):
    from fastapi.testclient import TestClient

    from serving.api import create_api
    from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
    from serving.store import Store

    now = [1000.0]
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name="reader", key_sha256=hash_api_key(KEYS["reader"]),
                                                       roles={Role.READER})], failed_auth_limit=5,
                                      failed_auth_window_s=60, trusted_proxies=["testclient"]),
                         clock=lambda: now[0])
    app = create_api(None, Store(f"sqlite:///{tmp_path / 's.sqlite'}"), auth)
    good = {"Authorization": f"Bearer {KEYS['reader']}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        def get(headers, forwarded="203.0.113.7"):  # a scorer route: the reader key is refused with 403
            return client.post("/fhir", json={}, headers={**headers, "X-Forwarded-For": forwarded})

        for _ in range(5):
            assert get({"Authorization": "Bearer guess"}).status_code == 401
        blocked = get(good)  # even the right key: the client is locked out for the window
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) <= 60
        assert blocked.json()["issue"][0]["code"] == "throttled"
        assert get(good, forwarded="203.0.113.8").status_code == 403  # another client behind the ingress: not blocked
        now[0] += 61
        assert get(good).status_code == 403  # reader may not score: authenticated again after the window
