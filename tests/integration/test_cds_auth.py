"""Verification of the EHR's CDS Hooks JWT: every kind of bad token refused, good ones accepted
(inline JWKS, JWKS file, allow-listed jku served by a real local HTTP server)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from integration.cds_auth import CdsJwtVerifier, JtiReplayCache
from lang1ops.settings.cds_hooks import CdsClient, CdsHooksSettings
from serving.auth import AuthError

EHR = "https://ehr.hospital.example"
SANDBOX = "https://sandbox.example"
AUD = "https://lang1.hospital.example/cds-services/lang1-patient-risk"
RSA_KID, EC_KID, JKU_KID = "ehr-rsa", "ehr-ec", "sandbox-ec"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP384R1()),
            "jku": ec.generate_private_key(ec.SECP384R1()),
            "intruder": ec.generate_private_key(ec.SECP384R1())}


def public_jwk(key, kid: str) -> dict:
    if isinstance(key, rsa.RSAPrivateKey):
        return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS384", "use": "sig"}
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "ES384", "use": "sig"}


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving one JWK Set, counting fetches."""

    def __init__(self, jwks: dict):
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.fetches += 1
                body = json.dumps(jwks).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def jwks_server(keys):
    server = JwksServer({"keys": [public_jwk(keys["jku"], JKU_KID)]})
    yield server
    server.close()


@pytest.fixture
def verifier(keys, jwks_server, tmp_path) -> CdsJwtVerifier:
    jwks_file = tmp_path / "ehr-ec.json"
    jwks_file.write_text(json.dumps({"keys": [public_jwk(keys["ec"], EC_KID)]}))
    settings = CdsHooksSettings(clients=[
        CdsClient(issuer=EHR, jwks={"keys": [public_jwk(keys["rsa"], RSA_KID)]}),
        CdsClient(issuer=SANDBOX, jwks_file=jwks_file, jku_allow_list=[jwks_server.url]),
    ])
    v = CdsJwtVerifier(settings)
    yield v
    v.close()


def claims(**overrides) -> dict:
    now = int(time.time())
    out = {"iss": EHR, "sub": "epic-cds", "aud": AUD, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def rs384(keys, headers: dict | None = None, **overrides) -> str:
    return jwt.encode(claims(**overrides), keys["rsa"], algorithm="RS384", headers={"kid": RSA_KID, **(headers or {})})


def es384(key, kid: str, headers: dict | None = None, **overrides) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="ES384", headers={"kid": kid, **(headers or {})})


def verify(verifier, token: str, audiences=(AUD,)):
    return verifier.verify([f"Bearer {token}"], list(audiences))


def refused(verifier, token: str, words: str, audiences=(AUD,)) -> None:
    with pytest.raises(AuthError) as info:
        verify(verifier, token, audiences)
    assert info.value.status_code == 401 and words in info.value.message, info.value.message
    assert token not in info.value.www_authenticate


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------------------------------- accepted


def test_valid_rs384_and_es384_tokens_are_accepted(verifier, keys, jwks_server):
    caller = verify(verifier, rs384(keys, tenant="hospital-a"))
    assert caller.issuer == EHR and caller.subject == "epic-cds" and caller.tenant == "hospital-a"
    assert caller.principal.method == f"cds-jwt:{EHR}" and {r.value for r in caller.principal.roles} == {"scorer"}
    # a key from the configured JWKS file
    assert verify(verifier, es384(keys["ec"], EC_KID, iss=SANDBOX)).issuer == SANDBOX
    # a key fetched from the allow-listed jku, cached afterwards
    before = jwks_server.fetches
    verify(verifier, es384(keys["jku"], JKU_KID, headers={"jku": jwks_server.url}, iss=SANDBOX))
    verify(verifier, es384(keys["jku"], JKU_KID, headers={"jku": jwks_server.url}, iss=SANDBOX))
    assert jwks_server.fetches == before + 1
    # aud may be a list holding the service URL; any of the endpoint's URLs is accepted
    assert verify(verifier, rs384(keys, aud=["https://other.example", AUD]))
    assert verify(verifier, rs384(keys, aud=AUD + "/feedback"), audiences=[AUD + "/feedback", AUD])


# --------------------------------------------------------------------------------------------- refused


def test_algorithms_other_than_rs384_es384_are_refused(verifier, keys):
    public_pem = keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    # the classic confusion attack: HS256 with the public key as the HMAC secret
    hs = _b64({"alg": "HS256", "kid": RSA_KID, "typ": "JWT"}) + "." + _b64(claims())
    forged = hs + "." + base64.urlsafe_b64encode(hmac.new(public_pem, hs.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    refused(verifier, forged, "algorithm not accepted")
    refused(verifier, _b64({"alg": "none", "kid": RSA_KID}) + "." + _b64(claims()) + ".", "algorithm not accepted")
    rs256 = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": RSA_KID})
    refused(verifier, rs256, "algorithm not accepted")


@pytest.mark.parametrize("overrides, words", [
    ({"iss": "https://evil.example"}, "issuer not accepted"),
    ({"aud": "https://lang1.hospital.example/cds-services/lang1-discharge-risk"}, "audience"),
    ({"aud": "https://attacker.example/cds-services/lang1-patient-risk"}, "audience"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 3700}, "expired"),
    ({"exp": None}, "exp"),
    ({"iat": None}, "iat"),
    ({"jti": None}, "jti"),
    ({"aud": None}, "aud"),
    ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 3660}, "not yet valid"),
    ({"exp": int(time.time()) + 7200}, "lifetime"),
])
def test_bad_claims_are_refused(verifier, keys, overrides, words):
    refused(verifier, rs384(keys, **overrides), words)


def test_replayed_jti_is_refused_until_expiry(verifier, keys):
    token = rs384(keys, jti="once-only")
    verify(verifier, token)
    refused(verifier, token, "replayed")
    refused(verifier, rs384(keys, jti="once-only"), "replayed")  # a new token reusing the jti
    # the same jti from another issuer is that issuer's own
    verify(verifier, es384(keys["ec"], EC_KID, iss=SANDBOX, jti="once-only"))


def test_bad_signature_unknown_kid_missing_kid_and_jku_not_allow_listed(verifier, keys, jwks_server):
    refused(verifier, es384(keys["intruder"], EC_KID, iss=SANDBOX), "signature invalid")
    good = rs384(keys)
    header, payload, signature = good.split(".")
    tampered = header + "." + _b64(claims(sub="someone-else")) + "." + signature
    refused(verifier, tampered, "signature invalid")
    refused(verifier, es384(keys["ec"], "no-such-kid", iss=SANDBOX), "key not recognised")
    no_kid = jwt.encode(claims(), keys["rsa"], algorithm="RS384")
    refused(verifier, no_kid, "kid")
    # jku not on the list: refused before anything is fetched
    fetches = jwks_server.fetches
    refused(verifier, es384(keys["jku"], JKU_KID, headers={"jku": "https://evil.example/jwks.json"}, iss=SANDBOX),
            "jku is not allow-listed")
    # an allowed jku of another issuer is not this issuer's
    refused(verifier, rs384(keys, headers={"jku": jwks_server.url}), "jku is not allow-listed")
    assert jwks_server.fetches == fetches
    # a key signed by the intruder but published nowhere: served jku has no such key
    refused(verifier, es384(keys["intruder"], JKU_KID, headers={"jku": jwks_server.url}, iss=SANDBOX),
            "signature invalid")
    refused(verifier, rs384(keys, headers={"crit": ["exp"]}), "token")  # PyJWT or we refuse crit headers


def test_malformed_headers_are_refused(verifier, keys):
    for headers, words in (([], "missing bearer token"), (["Basic abc"], "Bearer <JWT>"),
                           (["Bearer not-a-jwt"], "Bearer <JWT>"), (["Bearer a.b.c"], "invalid token"),
                           ([f"Bearer {rs384(keys)}", f"Bearer {rs384(keys)}"], "only one")):
        with pytest.raises(AuthError) as info:
            verifier.verify(headers, [AUD])
        assert info.value.status_code == 401 and words in info.value.message


def test_replay_cache_forgets_expired_and_refuses_when_full_of_live_tokens():
    now = [1000.0]
    cache = JtiReplayCache(max_entries=2, clock=lambda: now[0])
    assert cache.first_use("i", "a", 1010) and cache.first_use("i", "b", 1010)
    assert not cache.first_use("i", "a", 1010)
    with pytest.raises(AuthError):
        cache.first_use("i", "c", 1010)  # full of live tokens: fail closed, never forget a live jti
    now[0] = 1011
    assert cache.first_use("i", "c", 1020) and len(cache) == 1  # expired ones were purged


def test_settings_refuse_weak_configurations():
    with pytest.raises(ValidationError, match="RS384 or ES384"):
        CdsClient(issuer=EHR, jwks={"keys": []}, algorithms=["HS256"])
    with pytest.raises(ValidationError, match="https"):
        CdsClient(issuer=EHR, jku_allow_list=["http://ehr.example/jwks.json"])
    with pytest.raises(ValidationError, match="jwks"):
        CdsClient(issuer=EHR)
    with pytest.raises(ValidationError, match="duplicate"):
        CdsHooksSettings(clients=[CdsClient(issuer=EHR, jku_allow_list=["https://a.example/j"])] * 2)
