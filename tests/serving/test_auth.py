"""Bearer authentication: hashed API keys and JWTs (RS384/ES384) from allow-listed issuers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from serving.auth import (
    ApiKey,
    Authenticator,
    AuthError,
    AuthSettings,
    JwtIssuer,
    Principal,
    Role,
    hash_api_key,
    parse_jwks,
    require_role,
)

ISSUER = "https://idp.hospital.example/realms/clinical"
OTHER_ISSUER = "https://idp.hospital.example/realms/roles"
AUDIENCE = "lang1-ops-api"
JWKS_URL = "https://idp.hospital.example/realms/clinical/protocol/openid-connect/certs"
RSA_KID, EC_KID = "rsa-2025", "ec-2025"
SCORER_KEY, READER_KEY = "l1o_scorer-key-for-tests-0123456789", "l1o_reader-key-for-tests-9876543210"


# --- keys, JWKS and tokens ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": "RS384"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": "ES384"}


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key) -> dict[str, Any]:
    return {"keys": [rsa_jwk(rsa_key, RSA_KID), ec_jwk(ec_key, EC_KID)]}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "svc-epic-bridge",
        "iat": now,
        "exp": now + 300,
        "scope": "openid lang1ops/scorer lang1ops/reader",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}  # None removes a claim


def make_token(key: Any, alg: str = "RS384", kid: str | None = RSA_KID, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b64url(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def settings_with(issuers: list[JwtIssuer] | None = None, **kwargs: Any) -> AuthSettings:
    api_keys = [
        ApiKey(name="scoring-batch", key_sha256=hash_api_key(SCORER_KEY), roles={Role.SCORER}),
        ApiKey(name="dashboard", key_sha256=hash_api_key(READER_KEY), roles={Role.READER}),
    ]
    return AuthSettings(api_keys=api_keys, issuers=issuers or [], **kwargs)


@pytest.fixture(scope="module")
def inline_auth(jwks) -> Authenticator:
    issuers = [
        JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE),
        JwtIssuer(issuer=OTHER_ISSUER, jwks=jwks, audience=AUDIENCE, roles_claim="roles"),
    ]
    return Authenticator(settings_with(issuers))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """An httpx transport serving a mutable JWKS and counting requests."""

    def __init__(self, jwks: dict[str, Any]):
        self.jwks = jwks
        self.calls = 0
        self.status = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        assert str(request.url) == JWKS_URL
        if self.status != 200:
            return httpx.Response(self.status, text="unavailable")
        return httpx.Response(200, json=self.jwks)

    def authenticator(self, clock: FakeClock) -> Authenticator:
        issuer = JwtIssuer(issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE, jwks_ttl_s=3600)
        http = httpx.Client(transport=httpx.MockTransport(self.handler))
        return Authenticator(settings_with([issuer]), http=http, clock=clock)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def rejected(auth: Authenticator, header: str | None, token: str | None = None) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    error = info.value
    assert error.status_code == 401
    assert error.code == "security"
    assert error.www_authenticate.startswith('Bearer realm="lang1-ops"')
    if token:  # the token never leaks into what the client or the logs see
        for text in (str(error), error.message, error.www_authenticate):
            assert token not in text
            assert token.split(".")[0] not in text
    return error


# --- valid tokens ---------------------------------------------------------------------------


def test_valid_rs384_token_gives_principal_with_scope_roles(inline_auth, rsa_key):
    principal = inline_auth.authenticate(
        bearer(make_token(rsa_key, scope="lang1ops/scorer lang1ops/reader x/admin"))
    )
    assert principal == Principal("svc-epic-bridge", frozenset({Role.SCORER, Role.READER}), f"jwt:{ISSUER}")


def test_valid_es384_token_with_list_roles_claim(inline_auth, ec_key):
    token = make_token(
        ec_key,
        "ES384",
        EC_KID,
        iss=OTHER_ISSUER,
        roles=["lang1ops/admin", "admin"],
        sub=None,
        client_id="dashboard-client",
    )
    principal = inline_auth.authenticate(bearer(token))
    assert principal.roles == frozenset({Role.ADMIN})  # bare "admin" does not carry the prefix
    assert principal.subject == "dashboard-client"
    assert principal.method == f"jwt:{OTHER_ISSUER}"


def test_audience_list_containing_ours_is_accepted(inline_auth, rsa_key):
    assert inline_auth.authenticate(bearer(make_token(rsa_key, aud=["other-api", AUDIENCE]))).subject


def test_scheme_is_case_insensitive(inline_auth, rsa_key):
    assert inline_auth.authenticate("bearer " + make_token(rsa_key)).subject == "svc-epic-bridge"


# --- rejected tokens ------------------------------------------------------------------------


def test_missing_header_is_401_without_error_code(inline_auth):
    error = rejected(inline_auth, None)
    assert error.www_authenticate == 'Bearer realm="lang1-ops"'
    rejected(inline_auth, "   ")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer a b"])
def test_malformed_header_is_401_invalid_request(inline_auth, header):
    assert 'error="invalid_request"' in rejected(inline_auth, header).www_authenticate


@pytest.mark.parametrize("token", ["garbage", "not.a.jwt", "eyJhbGciOiJSUzM4NCJ9.e30.c2ln", "a" * 20_000])
def test_garbage_token_is_401(inline_auth, token):
    assert 'error="invalid_token"' in rejected(inline_auth, bearer(token), token).www_authenticate


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # times relative to when the test runs (a long suite runs it many minutes after collection)
        ({"exp": -120}, "token expired"),
        ({"nbf": 600}, "token not yet valid (iat or nbf in the future)"),
        ({"iat": 600}, "token not yet valid (iat or nbf in the future)"),
        ({"aud": "some-other-api"}, "token audience not accepted"),
        ({"iss": "https://evil.example/"}, "token issuer not accepted"),
        ({"exp": None}, "token lacks required claim exp"),
        ({"iat": None}, "token lacks required claim iat"),
        ({"aud": None}, "token lacks required claim aud"),
        ({"iss": None}, "token issuer not accepted"),
        ({"sub": None}, "token has no usable subject"),
    ],
)
def test_invalid_claims_are_401(inline_auth, rsa_key, overrides, message):
    now = int(time.time())
    overrides = {k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v for k, v in overrides.items()}
    token = make_token(rsa_key, **overrides)
    assert rejected(inline_auth, bearer(token), token).message == message


def test_expiry_within_leeway_is_accepted(inline_auth, rsa_key):
    assert inline_auth.authenticate(bearer(make_token(rsa_key, exp=int(time.time()) - 5))).subject


def test_unknown_kid_is_401(inline_auth, rsa_key):
    token = make_token(rsa_key, kid="never-published")
    assert rejected(inline_auth, bearer(token), token).message == "token signing key not recognised"


def test_missing_kid_is_401(inline_auth, rsa_key):
    assert rejected(inline_auth, bearer(make_token(rsa_key, kid=None))).message == "token has no key id"


def test_other_key_with_same_kid_is_401(inline_auth, other_rsa_key):
    token = make_token(other_rsa_key, kid=RSA_KID)
    assert rejected(inline_auth, bearer(token), token).message == "token signature invalid"


def test_alg_none_is_401(inline_auth):
    token = forged_token({"alg": "none", "typ": "JWT", "kid": RSA_KID}, claims())
    assert rejected(inline_auth, bearer(token), token).message == "token algorithm not accepted"


def test_hs256_signed_with_the_public_key_is_401(inline_auth, rsa_key):
    """The classic confusion attack: the RSA public key (PEM or JWK) used as an HMAC secret."""
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(rsa_jwk(rsa_key, RSA_KID)).encode()):
        token = forged_token(
            {"alg": "HS256", "typ": "JWT", "kid": RSA_KID},
            claims(),
            sign=lambda data, secret=secret: hmac.new(secret, data, hashlib.sha256).digest(),
        )
        assert rejected(inline_auth, bearer(token), token).message == "token algorithm not accepted"


def test_alg_not_configured_for_issuer_is_401(inline_auth, rsa_key):
    token = make_token(rsa_key, alg="RS256")  # a valid RS256 signature, but the issuer allows RS384/ES384
    assert rejected(inline_auth, bearer(token), token).message == "token algorithm not accepted"


def test_key_type_must_match_alg(inline_auth, ec_key):
    token = make_token(ec_key, "ES384", kid=RSA_KID)  # ES384 header pointing at the RSA key
    assert rejected(inline_auth, bearer(token), token).message == "token signing key not recognised"


def test_jku_and_embedded_jwk_headers_are_not_trusted(inline_auth, other_rsa_key):
    attacker_jwk = rsa_jwk(other_rsa_key, RSA_KID)
    token = jwt.encode(
        claims(),
        other_rsa_key,
        algorithm="RS384",
        headers={"kid": RSA_KID, "jku": "https://evil.example/jwks", "jwk": attacker_jwk},
    )
    assert rejected(inline_auth, bearer(token), token).message == "token signature invalid"


def test_crit_header_is_401(inline_auth, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS384", headers={"kid": RSA_KID, "crit": ["exp"]})
    # PyJWT refuses unknown critical extensions itself; the Authenticator refuses any `crit` as a backstop.
    assert rejected(inline_auth, bearer(token), token).message in {
        "invalid token",
        "token uses unsupported critical headers",
    }


# --- roles ----------------------------------------------------------------------------------


def test_reader_cannot_score_and_admin_passes_everything(inline_auth, rsa_key):
    reader = inline_auth.authenticate(bearer(make_token(rsa_key, scope="lang1ops/reader")))
    inline_auth.require(reader, Role.READER)
    with pytest.raises(AuthError) as info:
        inline_auth.require(reader, Role.SCORER)
    assert info.value.status_code == 403
    assert 'error="insufficient_scope"' in info.value.www_authenticate
    assert 'scope="lang1ops/scorer"' in info.value.www_authenticate

    admin = inline_auth.authenticate(bearer(make_token(rsa_key, scope="lang1ops/admin")))
    for role in Role:
        inline_auth.require(admin, role)


def test_valid_token_without_roles_is_authenticated_but_forbidden(inline_auth, rsa_key):
    nobody = inline_auth.authenticate(bearer(make_token(rsa_key, scope="openid profile")))
    assert nobody.roles == frozenset()
    with pytest.raises(AuthError) as info:
        inline_auth.require(nobody, Role.READER)
    assert info.value.status_code == 403


# --- API keys -------------------------------------------------------------------------------


def test_api_key_good_and_bad(inline_auth):
    principal = inline_auth.authenticate(bearer(SCORER_KEY))
    assert principal == Principal("scoring-batch", frozenset({Role.SCORER}), "api-key:scoring-batch")
    assert inline_auth.authenticate(bearer(READER_KEY)).roles == frozenset({Role.READER})
    for bad in (SCORER_KEY + "x", SCORER_KEY[:-1], hash_api_key(SCORER_KEY), SCORER_KEY.upper()):
        assert rejected(inline_auth, bearer(bad), bad).message == "invalid credentials"


def test_api_keys_are_configured_only_as_digests():
    with pytest.raises(ValidationError):
        ApiKey(name="oops", key_sha256=SCORER_KEY, roles={Role.SCORER})
    with pytest.raises(ValidationError):
        ApiKey(name="no-roles", key_sha256=hash_api_key(SCORER_KEY), roles=set())
    upper = ApiKey(name="upper", key_sha256=hash_api_key(SCORER_KEY).upper(), roles={"scorer"})
    assert upper.key_sha256 == hash_api_key(SCORER_KEY)
    assert hash_api_key("abc") == hashlib.sha256(b"abc").hexdigest()


def test_settings_from_json_like_env_values():
    settings = AuthSettings.model_validate(
        {
            "api_keys": [
                {"name": "batch", "key_sha256": hash_api_key(SCORER_KEY), "roles": ["scorer", "reader"]}
            ]
        }
    )
    assert settings.api_keys[0].roles == {Role.SCORER, Role.READER}
    with pytest.raises(ValidationError):
        AuthSettings.model_validate({"allow_unauthenticted": True})  # typos in security settings fail loudly


def test_unauthenticated_only_when_explicitly_allowed(rsa_key, jwks):
    demo = Authenticator(
        settings_with([JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE)], allow_unauthenticated=True)
    )
    anonymous = demo.authenticate(None)
    assert anonymous.method == "unauthenticated" and anonymous.has_role(Role.ADMIN)
    rejected(demo, bearer("wrong-key"))  # a bad credential is still refused, never downgraded


# --- settings validation --------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [["none"], ["HS256"], ["RS384", "HS512"], []])
def test_symmetric_and_none_algorithms_cannot_be_configured(jwks, algorithms):
    with pytest.raises(ValidationError):
        JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE, algorithms=algorithms)


def test_issuer_settings_validation(jwks):
    with pytest.raises(ValidationError):  # neither source
        JwtIssuer(issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValidationError):  # both sources
        JwtIssuer(issuer=ISSUER, jwks=jwks, jwks_url=JWKS_URL, audience=AUDIENCE)
    with pytest.raises(ValidationError):  # key material over plain http
        JwtIssuer(issuer=ISSUER, jwks_url="http://idp.hospital.example/certs", audience=AUDIENCE)
    with pytest.raises(ValidationError):  # an inline JWKS with only a symmetric key
        JwtIssuer(
            issuer=ISSUER, jwks={"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}, audience=AUDIENCE
        )
    with pytest.raises(ValidationError):
        AuthSettings(issuers=[JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE)] * 2)
    assert JwtIssuer(issuer=ISSUER, jwks_url="http://localhost:8080/certs", audience=AUDIENCE).jwks_url


def test_symmetric_keys_in_a_jwks_are_ignored(rsa_key):
    """An `oct` key published under the token's kid must never become an HMAC secret."""
    secret = b"shared-secret-shared-secret-shared-secret"
    jwks = {"keys": [rsa_jwk(rsa_key, RSA_KID), {"kty": "oct", "kid": "hmac", "k": b64url(secret)}]}
    assert set(parse_jwks(jwks)) == {RSA_KID}
    auth = Authenticator(settings_with([JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE)]))
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "hmac"})
    assert rejected(auth, bearer(token), token).message == "token algorithm not accepted"
    token = forged_token(
        {"alg": "RS384", "kid": "hmac"}, claims(), sign=lambda d: hmac.new(secret, d, "sha384").digest()
    )
    assert rejected(auth, bearer(token), token).message == "token signing key not recognised"


# --- JWKS fetching, caching and rotation ----------------------------------------------------


def test_jwks_url_fetched_once_and_cached(rsa_key, ec_key, jwks):
    server, clock = JwksServer(jwks), FakeClock()
    auth = server.authenticator(clock)
    assert server.calls == 0  # nothing fetched until a token needs it
    for _ in range(3):
        auth.authenticate(bearer(make_token(rsa_key)))
        auth.authenticate(bearer(make_token(ec_key, "ES384", EC_KID)))
        clock.now += 60
    assert server.calls == 1

    clock.now += 3600  # TTL expired: the next token refetches
    auth.authenticate(bearer(make_token(rsa_key)))
    assert server.calls == 2


def test_unknown_issuer_causes_no_jwks_traffic(rsa_key, jwks):
    server = JwksServer(jwks)
    auth = server.authenticator(FakeClock())
    token = make_token(rsa_key, iss="https://evil.example/")
    assert rejected(auth, bearer(token), token).message == "token issuer not accepted"
    assert server.calls == 0


def test_unknown_kid_refetches_once_then_refuses(rsa_key, jwks):
    server, clock = JwksServer(jwks), FakeClock()
    auth = server.authenticator(clock)
    auth.authenticate(bearer(make_token(rsa_key)))
    assert server.calls == 1

    clock.now += 120
    token = make_token(rsa_key, kid="rotated-away")
    assert rejected(auth, bearer(token), token).message == "token signing key not recognised"
    assert server.calls == 2  # exactly one refetch for the unknown kid

    for kid in ("flood-1", "flood-2", "flood-3"):  # a flood of unknown kids cannot hammer the IdP
        rejected(auth, bearer(make_token(rsa_key, kid=kid)))
    assert server.calls == 2


def test_cold_cache_with_unknown_kid_fetches_only_once(rsa_key, jwks):
    server = JwksServer(jwks)
    auth = server.authenticator(FakeClock())
    rejected(auth, bearer(make_token(rsa_key, kid="unknown")))
    assert server.calls == 1


def test_key_rotation_new_kid_is_fetched_and_accepted(rsa_key, other_rsa_key, jwks):
    server, clock = JwksServer(jwks), FakeClock()
    auth = server.authenticator(clock)
    auth.authenticate(bearer(make_token(rsa_key)))
    assert server.calls == 1

    # The IdP rotates: publishes a new key (keeping the old one for a while) and signs with it.
    server.jwks = {"keys": [*jwks["keys"], rsa_jwk(other_rsa_key, "rsa-2026")]}
    clock.now += 300
    principal = auth.authenticate(bearer(make_token(other_rsa_key, kid="rsa-2026")))
    assert principal.subject == "svc-epic-bridge"
    assert server.calls == 2
    auth.authenticate(bearer(make_token(rsa_key)))  # the old key still works, from the cache
    auth.authenticate(bearer(make_token(other_rsa_key, kid="rsa-2026")))
    assert server.calls == 2

    # The old key is withdrawn: after the TTL its tokens are refused.
    server.jwks = {"keys": [rsa_jwk(other_rsa_key, "rsa-2026")]}
    clock.now += 3600
    rejected(auth, bearer(make_token(rsa_key)))
    assert server.calls == 3


def test_idp_outage_keeps_cached_keys(rsa_key, jwks):
    server, clock = JwksServer(jwks), FakeClock()
    auth = server.authenticator(clock)
    auth.authenticate(bearer(make_token(rsa_key)))
    server.status = 503
    clock.now += 7200
    assert auth.authenticate(bearer(make_token(rsa_key))).subject == "svc-epic-bridge"
    assert server.calls == 2


def test_idp_down_from_the_start_refuses(rsa_key, jwks):
    server = JwksServer(jwks)
    server.status = 500
    auth = server.authenticator(FakeClock())
    assert rejected(auth, bearer(make_token(rsa_key))).message == "token signing key not recognised"


# --- FastAPI dependency ---------------------------------------------------------------------


@pytest.fixture
def client(inline_auth) -> TestClient:
    app = FastAPI()
    app.state.authenticator = inline_auth

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/score")
    def score(principal: Principal = Depends(require_role(Role.SCORER))) -> dict[str, Any]:
        return {"subject": principal.subject, "method": principal.method}

    @app.post("/admin/promote")
    def promote(principal: Principal = Depends(require_role(Role.ADMIN))) -> dict[str, str]:
        return {"subject": principal.subject}

    return TestClient(app)


def test_dependency_end_to_end(client, rsa_key):
    assert client.get("/health").status_code == 200

    response = client.post("/score")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="lang1-ops"'

    ok = client.post("/score", headers={"Authorization": bearer(SCORER_KEY)})
    assert ok.status_code == 200
    assert ok.json() == {"subject": "scoring-batch", "method": "api-key:scoring-batch"}

    ok = client.post(
        "/score", headers={"Authorization": bearer(make_token(rsa_key, scope="lang1ops/scorer"))}
    )
    assert ok.status_code == 200 and ok.json()["method"] == f"jwt:{ISSUER}"

    forbidden = client.post("/score", headers={"Authorization": bearer(READER_KEY)})
    assert forbidden.status_code == 403
    assert 'error="insufficient_scope"' in forbidden.headers["WWW-Authenticate"]

    assert client.post("/admin/promote", headers={"Authorization": bearer(SCORER_KEY)}).status_code == 403
    admin_token = make_token(rsa_key, scope="lang1ops/admin")
    assert client.post("/admin/promote", headers={"Authorization": bearer(admin_token)}).status_code == 200
    assert client.post("/score", headers={"Authorization": bearer(admin_token)}).status_code == 200


def test_dependency_401_does_not_echo_the_token(client, rsa_key):
    token = make_token(rsa_key, exp=int(time.time()) - 3600)
    response = client.post("/score", headers={"Authorization": bearer(token)})
    assert response.status_code == 401
    assert response.json() == {"detail": "token expired"}
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="lang1-ops", error="invalid_token"')
    assert token not in response.text and token not in response.headers["WWW-Authenticate"]


def test_dependency_refuses_duplicate_authorization_headers(client):
    response = client.post(
        "/score", headers=[("Authorization", bearer(SCORER_KEY)), ("Authorization", "Bearer x")]
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "only one authorization header is allowed"}


def test_dependency_fails_closed_without_an_authenticator():
    app = FastAPI()

    @app.get("/x")
    def x(principal: Principal = Depends(require_role(Role.READER))) -> str:
        return principal.subject

    response = TestClient(app).get("/x", headers={"Authorization": bearer(READER_KEY)})
    assert response.status_code == 500


def test_openapi_declares_the_bearer_scheme(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# --- lifetime cap and single-use tokens (replay memory in the store, shared by replicas) -----


def test_a_token_living_longer_than_the_cap_is_refused(jwks, rsa_key):
    auth = Authenticator(settings_with([JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE,
                                                  max_token_lifetime_s=600)]))
    now = int(time.time())
    assert auth.authenticate(bearer(make_token(rsa_key, iat=now, exp=now + 600))).subject == "svc-epic-bridge"
    error = rejected(auth, bearer(make_token(rsa_key, iat=now, exp=now + 601)))
    assert "lifetime" in error.message


def test_single_use_tokens_are_refused_on_their_second_use_by_any_replica(jwks, rsa_key, tmp_path):
    from serving.auth import TokenReplayLog
    from serving.store import Store

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    replicas = []
    for _ in range(2):  # two processes' worth of Authenticator and Store over one database
        auth = Authenticator(settings_with([JwtIssuer(issuer=ISSUER, jwks=jwks, audience=AUDIENCE, single_use=True)]))
        auth.replays = TokenReplayLog(Store(url))
        replicas.append(auth)
    token = make_token(rsa_key, jti="assertion-1")
    assert replicas[0].authenticate(bearer(token)).subject == "svc-epic-bridge"
    assert "replayed" in rejected(replicas[1], bearer(token)).message
    assert "replayed" in rejected(replicas[0], bearer(token)).message
    assert replicas[1].authenticate(bearer(make_token(rsa_key, jti="assertion-2"))).subject == "svc-epic-bridge"
    assert "jti" in rejected(replicas[0], bearer(make_token(rsa_key))).message  # single-use: jti required


def test_reusable_access_tokens_stay_reusable(inline_auth, rsa_key):
    token = make_token(rsa_key, jti="access-token-1")
    for _ in range(3):
        assert inline_auth.authenticate(bearer(token)).subject == "svc-epic-bridge"
