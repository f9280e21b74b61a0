"""SMART Backend Services auth against the real Node FHIR server's token endpoint, which
verifies the client assertion's signature (RS384 and ES384) and requires its tokens."""

from __future__ import annotations

import json

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from integration.fhir_client import FhirAuthError, FhirClient
from integration.smart_auth import SmartBackendAuth, StaticBearerAuth, TokenRequestError, outbound_auth
from lang1ops.settings.fhir_client import FhirClientSettings
from tests.integration.fhir_server import fhir_server_factory  # noqa: F401  (fixture)

CLIENT_ID = "lang1-ops"


def key_pair(alg: str):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS384" \
        else ec.generate_private_key(ec.SECP384R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(private.public_key()))
    jwk.update(kid=f"{alg.lower()}-key-1", alg=alg, use="sig")
    return pem, jwk


def auth_config(jwk: dict, lifetime_s: int = 300) -> dict:
    return {"clients": {CLIENT_ID: {"jwks": {"keys": [jwk]}}}, "token_lifetime_s": lifetime_s}


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_token_is_obtained_once_and_reused_for_many_calls(fhir_server_factory, alg):  # noqa: F811
    pem, jwk = key_pair(alg)
    server = fhir_server_factory(auth_config(jwk))
    # without a token the server refuses: the auth below is what lets the calls through
    assert httpx.get(f"{server.base_url}/DocumentReference").status_code == 401
    auth = SmartBackendAuth(server.token_url, CLIENT_ID, pem, jwk["kid"], alg=alg)
    with FhirClient(server.base_url, auth) as client:
        created = client.create({"resourceType": "DocumentReference", "status": "current",
                                 "content": [{"attachment": {"contentType": "text/plain"}}]})
        for _ in range(5):
            assert client.read("DocumentReference", created["id"])["id"] == created["id"]
        assert len(list(client.search("DocumentReference"))) == 1
    assert auth.token_requests == 1
    assert server.stats()["tokens_issued"] == 1


def test_client_assertion_claims_follow_smart_backend_services():
    pem, jwk = key_pair("ES384")
    auth = SmartBackendAuth("https://ehr.example.org/token", CLIENT_ID, pem, jwk["kid"], alg="ES384")
    first, second = auth.client_assertion(), auth.client_assertion()
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(first, public, algorithms=["ES384"], audience="https://ehr.example.org/token")
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert jwt.get_unverified_header(first)["kid"] == jwk["kid"]
    assert claims["jti"] != jwt.decode(second, public, algorithms=["ES384"], audience=auth.token_url)["jti"]
    with pytest.raises(ValueError):
        SmartBackendAuth(auth.token_url, CLIENT_ID, pem, "k", alg="HS256")


def test_a_401_refreshes_the_token_once(fhir_server_factory):  # noqa: F811
    pem, jwk = key_pair("RS384")
    server = fhir_server_factory(auth_config(jwk))
    auth = SmartBackendAuth(server.token_url, CLIENT_ID, pem, jwk["kid"])
    with FhirClient(server.base_url, auth) as client:
        assert list(client.search("RiskAssessment")) == []
        # a restarted server has forgotten every token it issued: the cached one now gets 401
        server.stop()
        server.start()
        assert list(client.search("RiskAssessment")) == []
    assert auth.token_requests == 2 and server.stats()["tokens_issued"] == 1


def test_token_endpoint_refuses_an_assertion_signed_by_another_key(fhir_server_factory):  # noqa: F811
    _, registered = key_pair("ES384")
    other_pem, _ = key_pair("ES384")
    server = fhir_server_factory(auth_config(registered))
    auth = SmartBackendAuth(server.token_url, CLIENT_ID, other_pem, registered["kid"], alg="ES384")
    with pytest.raises(TokenRequestError, match="invalid_client"):
        auth.access_token()
    with FhirClient(server.base_url, auth, retries=0) as client, pytest.raises(FhirAuthError):
        client.read("DocumentReference", "x")
    assert server.stats()["tokens_issued"] == 0


def test_static_bearer_and_outbound_auth_from_settings(tmp_path):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    settings = FhirClientSettings(base_url="http://fhir.test", auth="static", bearer_token="t-123")
    with FhirClient.from_settings(settings, transport=httpx.MockTransport(handler)) as client:
        assert list(client.search("DocumentReference")) == []
    assert seen == ["Bearer t-123"]
    assert isinstance(outbound_auth(settings), StaticBearerAuth)
    assert outbound_auth(FhirClientSettings()) is None
    pem, jwk = key_pair("RS384")
    (tmp_path / "key.pem").write_bytes(pem)
    smart = outbound_auth(FhirClientSettings(auth="smart", token_url="https://ehr/token", client_id=CLIENT_ID,
                                             private_key_path=str(tmp_path / "key.pem"), kid=jwk["kid"]))
    assert isinstance(smart, SmartBackendAuth) and smart.alg == "RS384"
    with pytest.raises(ValueError, match="token_url"):
        outbound_auth(FhirClientSettings(auth="smart"))
