"""Outbound authentication to the hospital FHIR server (httpx.Auth flows).

SMART Backend Services (client_credentials grant with a private_key_jwt client
assertion, RS384/ES384) for production, a static bearer token for local servers.
Both are ``httpx.Auth`` subclasses so every outbound client (FHIR REST, Bulk
Data, outcomes feed) shares one way to authenticate.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator, Iterable
from typing import Any

import httpx
import jwt

#: The client assertion type fixed by RFC 7523 / SMART Backend Services.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SUPPORTED_ALGORITHMS = ("RS384", "ES384")
#: SMART caps the client assertion lifetime at five minutes.
MAX_ASSERTION_LIFETIME_S = 300


class TokenRequestError(RuntimeError):
    """The token endpoint refused or answered something that is not a token."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class StaticBearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request (local/test servers)."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("a static bearer token must not be empty")
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: client_credentials with a signed client assertion.

    The access token is cached until ``refresh_margin_s`` before it expires and
    shared by all threads using this object; a 401 from the resource server
    drops the cached token and retries the request once with a fresh one.
    The token request goes through its own short-lived ``httpx.Client``
    (``token_client_factory``), so this works for sync clients; async clients
    are supported through the same code path run in the event loop's thread
    (token requests are rare thanks to the cache).
    """

    requires_response_body = False

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_pem: str | bytes,
        kid: str,
        alg: str = "RS384",
        scopes: str | Iterable[str] = "system/DocumentReference.rs system/RiskAssessment.c",
        *,
        assertion_lifetime_s: int = MAX_ASSERTION_LIFETIME_S,
        refresh_margin_s: float = 30.0,
        timeout_s: float = 10.0,
        token_client_factory: Any = None,
    ):
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"alg must be one of {SUPPORTED_ALGORITHMS}, got {alg!r}")
        if not 0 < assertion_lifetime_s <= MAX_ASSERTION_LIFETIME_S:
            raise ValueError("the client assertion lifetime must be within (0, 300] seconds")
        self.token_url = token_url
        self.client_id = client_id
        self.kid = kid
        self.alg = alg
        self.scopes = scopes if isinstance(scopes, str) else " ".join(scopes)
        self._key = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        self._assertion_lifetime_s = assertion_lifetime_s
        self._refresh_margin_s = refresh_margin_s
        self._timeout_s = timeout_s
        self._token_client_factory = token_client_factory or (lambda: httpx.Client(timeout=timeout_s))
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        #: How many tokens were fetched (observable for tests and metrics).
        self.token_requests = 0

    # -- the client assertion ---------------------------------------------
    def client_assertion(self) -> str:
        """A fresh signed JWT: iss = sub = client_id, aud = token_url, unique jti."""
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + self._assertion_lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.kid, "typ": "JWT", "alg": self.alg}
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=headers)

    def _request_token(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scopes,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        with self._token_client_factory() as client:
            try:
                response = client.post(self.token_url, data=form, headers={"Accept": "application/json"})
            except httpx.HTTPError as exc:
                raise TokenRequestError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        self.token_requests += 1
        if response.status_code != 200:
            # The OAuth error code is safe to surface; the body may hold more.
            code = _oauth_error(response)
            raise TokenRequestError(
                f"token endpoint refused the client assertion: HTTP {response.status_code} {code}",
                status_code=response.status_code,
            )
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenRequestError("token endpoint answered without an access_token") from exc
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise TokenRequestError(f"unsupported token_type {body.get('token_type')!r}")
        self._token = token
        self._expires_at = time.monotonic() + expires_in

    def access_token(self, *, force_refresh: bool = False) -> str:
        """The cached access token, fetched anew when missing, near expiry or forced."""
        with self._lock:
            fresh_enough = self._token is not None and time.monotonic() < self._expires_at - self._refresh_margin_s
            if force_refresh or not fresh_enough:
                self._request_token()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._expires_at = 0.0

    # -- httpx.Auth ------------------------------------------------------
    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # The server may have revoked or rotated the token: refresh once.
            with self._lock:
                stale = self._token == token
            new_token = self.access_token(force_refresh=stale)
            request.headers["Authorization"] = f"Bearer {new_token}"
            yield request


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:64]
    return ""


def outbound_auth(settings: Any) -> httpx.Auth | None:
    """The ``httpx.Auth`` described by a ``FhirClientSettings`` (or None for no auth).

    ``settings.auth`` is ``"none"``, ``"static"`` (``bearer_token``) or
    ``"smart"`` (``token_url``, ``client_id``, ``private_key_path``, ``kid``,
    ``alg``, ``scopes``).
    """
    mode = getattr(settings, "auth", "none")
    if mode == "none":
        return None
    if mode == "static":
        token = settings.bearer_token
        token = token.get_secret_value() if hasattr(token, "get_secret_value") else token
        if not token:
            raise ValueError("auth 'static' needs bearer_token")
        return StaticBearerAuth(token)
    if mode == "smart":
        missing = [name for name in ("token_url", "client_id", "private_key_path", "kid") if not getattr(settings, name)]
        if missing:
            raise ValueError(f"auth 'smart' needs {', '.join(missing)}")
        from pathlib import Path

        return SmartBackendAuth(
            token_url=settings.token_url,
            client_id=settings.client_id,
            private_key_pem=Path(settings.private_key_path).read_bytes(),
            kid=settings.kid,
            alg=settings.alg,
            scopes=settings.scopes,
            timeout_s=settings.timeout_s,
        )
    raise ValueError(f"unknown outbound auth mode {mode!r}")
