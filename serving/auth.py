"""Bearer authentication for the lang1-ops API: hashed API keys and JWTs from allow-listed issuers.

Every endpoint except health, readiness, metrics, FHIR ``metadata`` and CDS Hooks discovery
takes ``Authorization: Bearer <credential>``, where the credential is either

* an API key, stored in the settings only as its SHA-256 hex digest (``hash_api_key``) and
  compared in constant time, or
* a JWT access token from an allow-listed issuer, verified with PyJWT against that issuer's
  JWKS (inline, or fetched with httpx, cached for ``jwks_ttl_s`` and refetched once, rate
  limited, when a token names an unknown ``kid``, i.e. after a key rotation).

JWT rules: only asymmetric algorithms (never ``none`` or ``HS*``, so a public key can never be
used as an HMAC secret); the token's ``iss`` must be allow-listed before any key is looked up;
``kid`` is required and selects the key, whose type (and curve) must match ``alg``; ``exp``,
``iat``, ``iss`` and ``aud`` are required; ``jku``, ``x5u`` and embedded ``jwk`` headers are
ignored (keys only ever come from the configured JWKS); tokens with ``crit`` are refused.
Roles come from the issuer's ``roles_claim`` (space-separated scopes or a list), keeping the
entries that start with ``scope_prefix`` (``lang1ops/scorer`` -> ``scorer``).

Errors never contain the token; ``AuthError.message`` is a short fixed phrase that is safe to
return to the client, and ``AuthError.www_authenticate`` is an RFC 6750 challenge.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lang1ops.settings.auth import (
    _REQUIRED_CLAIMS,
    _SUBJECT_RE,
    DEFAULT_SCOPE_PREFIX,
    MAX_CREDENTIAL_CHARS,
    MAX_JWKS_BYTES,
    REALM,
    ApiKey,
    AuthSettings,
    JwtIssuer,
    Role,
    _JwkKey,
    parse_jwks,
)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Principal:
    """Who is calling: never PHI, only a key name or a token's sub/client_id."""

    subject: str
    roles: frozenset[Role]
    method: str  # "api-key:<name>", "jwt:<iss>" or "unauthenticated"

    def has_role(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles


class AuthError(Exception):
    """401 (no valid credential) or 403 (valid credential, missing role). Safe to show."""

    code = "security"  # FHIR OperationOutcome issue code

    def __init__(self, status_code: int, message: str, *, error: str | None = None, scope: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error = error
        self.www_authenticate = _challenge(error, message, scope)


def _challenge(error: str | None, description: str, scope: str | None) -> str:
    params = [f'realm="{REALM}"']
    if error:  # RFC 6750 §3: no error code when the request had no credentials at all
        params.append(f'error="{error}"')
        params.append(f'error_description="{_quote_safe(description)}"')
    if scope:
        params.append(f'scope="{_quote_safe(scope)}"')
    return "Bearer " + ", ".join(params)


def _quote_safe(text: str) -> str:
    return "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F and ch not in '"\\')


def _unauthorized(message: str, error: str = "invalid_token") -> AuthError:
    return AuthError(401, message, error=error)


class KeyFetchClient:
    """The HTTP client that fetches JWKS documents: created on first use (most deployments verify
    against configured keys only), shared by threads, closed only if it was made here."""

    def __init__(self, http: httpx.Client | None = None):
        self._http = http
        self._owns_http = http is None
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=httpx.Timeout(5.0), follow_redirects=False)
            return self._http

    def close(self) -> None:
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None


def decode_signed(token: str, candidates: list, alg: str, audience: str | list[str], issuer: str, leeway: float,
                  required: list[str]) -> dict[str, Any]:
    """The claims of `token`, verified against the first candidate key whose signature matches
    (a JWKS may hold several keys under one kid during a rotation). Every refusal is a 401
    AuthError that names the failed check, never the token's content."""
    for candidate in candidates:
        try:
            return jwt.decode(token, candidate.key, algorithms=[alg], audience=audience, issuer=issuer, leeway=leeway,
                              options={"require": required, "verify_signature": True, "verify_iat": True})
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("token not yet valid (iat or nbf in the future)") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in required else "a claim"
            raise _unauthorized(f"token lacks required claim {claim}") from None
        except jwt.PyJWTError:
            raise _unauthorized("invalid token") from None
    raise _unauthorized("token signature invalid")


def check_lifetime(claims: dict[str, Any], max_lifetime_s: int) -> None:
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise _unauthorized("token exp and iat must be numbers")
    if exp - iat > max_lifetime_s:
        raise _unauthorized(f"token lifetime over {max_lifetime_s} s")


class ReplayLog(Protocol):
    """Where single-use tokens' jtis are remembered until they expire."""

    def first_use(self, issuer: str, jti: str, forget_after: float) -> bool: ...


class TokenReplayLog:
    """Signed tokens' jtis in the store, shared by every replica and process: `first_use` is
    False for a jti seen before (from the same issuer) while its token is unexpired."""

    def __init__(self, store: Any):
        self.store = store

    def first_use(self, issuer: str, jti: str, forget_after: float) -> bool:
        from datetime import UTC, datetime

        return self.store.first_token_use(issuer, jti, datetime.fromtimestamp(forget_after, UTC))


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored in the settings in place of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str]:
    """A new random API key and its digest: hand out the key, store only the digest."""
    key = "l1o_" + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


class IssuerKeys:
    """One issuer's keys: inline, or fetched and cached with a TTL; thread safe, single flight."""

    def __init__(self, config: JwtIssuer):
        self.config = config
        self._lock = threading.Lock()
        self._keys: dict[str, list[_JwkKey]] = parse_jwks(config.jwks) if config.jwks is not None else {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None

    def keys_for(self, kid: str, http: Callable[[], httpx.Client], now: float) -> list[_JwkKey]:
        if self.config.jwks_url is None:
            return self._keys.get(kid, [])
        with self._lock:
            if self._fetched_at is None or now - self._fetched_at >= self.config.jwks_ttl_s:
                self._refresh(http, now)
            if kid not in self._keys:  # key rotation: refetch once (rate limited) before refusing
                self._refresh(http, now)
            return self._keys.get(kid, [])

    def _refresh(self, http: Callable[[], httpx.Client], now: float) -> None:
        if (
            self._last_attempt is not None
            and now - self._last_attempt < self.config.jwks_refetch_min_interval_s
        ):
            return
        self._last_attempt = now
        url = self.config.jwks_url
        try:
            response = http().get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("JWKS response too large")
            keys = parse_jwks(response.json())
            if not keys:
                raise ValueError("JWKS has no usable signing key")
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the previous keys (if any): an IdP outage must not lock out valid tokens.
            logger.warning(
                "JWKS fetch failed for issuer %r from %s: %s", self.config.issuer, url, type(exc).__name__
            )
            return
        self._keys = keys
        self._fetched_at = now
        logger.info("JWKS for issuer %r fetched: %d key ids", self.config.issuer, len(keys))


# --- JWT verification (API access tokens here, CDS Hooks client JWTs in integration.cds_auth) --


@dataclass(frozen=True)
class JwtRules:
    """What one allow-listed issuer's tokens must satisfy: each caller's policy for `verify_jwt`."""

    issuer: str
    algorithms: Collection[str]
    keys: Callable[[dict[str, Any]], IssuerKeys]  # the key set the token's header may use, or an AuthError
    audience: str | list[str]  # `aud` must be (or hold) this, or one of these
    required: list[str]  # claims that must be present; "jti" among them when single_use
    leeway_s: float
    max_lifetime_s: int
    single_use: bool  # the jti is remembered until exp and a second use refused
    alg_refused: str = "token algorithm not accepted"  # messages the client sees
    kid_missing: str = "token has no key id"


def verify_jwt(token: str, rules_for: Callable[[str], JwtRules | None], *, keys_http: KeyFetchClient,
               clock: Callable[[], float], replays: ReplayLog | None, what: str = "JWT",
               ) -> tuple[JwtRules, dict[str, Any]]:
    """The token issuer's rules and the token's verified claims, or a 401 AuthError naming the
    failed check, never the token's content.

    In order: the unverified header and ``iss``; the issuer's rules (``rules_for``: None refuses
    it before any key lookup); ``alg`` on its list; no ``crit``; a ``kid``; the key set the header
    may use (``rules.keys``) and its keys of that kid fitting ``alg``; signature and claims
    (``decode_signed``); lifetime; for single-use tokens the jti, last. Anything unexpected from
    parsing or crypto fails closed ("invalid token", logged as `what` rejected).
    """
    try:
        return _verify_jwt(token, rules_for, keys_http, clock, replays)
    except AuthError:
        raise
    except Exception as exc:  # fail closed on anything unexpected from parsing/crypto
        logger.warning("%s rejected: unexpected %s", what, type(exc).__name__)
        raise _unauthorized("invalid token") from None


def _verify_jwt(token: str, rules_for: Callable[[str], JwtRules | None], keys_http: KeyFetchClient,
                clock: Callable[[], float], replays: ReplayLog | None) -> tuple[JwtRules, dict[str, Any]]:
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _unauthorized("invalid token") from None
    iss = unverified.get("iss")
    rules = rules_for(iss) if isinstance(iss, str) else None
    if rules is None:  # before any key lookup: unknown issuers cause no JWKS traffic
        raise _unauthorized("token issuer not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        raise _unauthorized(rules.alg_refused)
    if "crit" in header:
        raise _unauthorized("token uses unsupported critical headers")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise _unauthorized(rules.kid_missing)
    candidates = [k for k in rules.keys(header).keys_for(kid, keys_http.get, clock()) if k.fits(alg)]
    if not candidates:
        raise _unauthorized("token signing key not recognised")
    claims = decode_signed(token, candidates, alg, audience=rules.audience, issuer=rules.issuer,
                           leeway=rules.leeway_s, required=rules.required)
    check_lifetime(claims, rules.max_lifetime_s)
    if rules.single_use:  # checked last: only a verified token may take a place in the replay log
        jti = claims["jti"]
        if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
            raise _unauthorized("token jti must be a string of 1 to 256 characters")
        if replays is None:
            raise _unauthorized("single-use tokens need the replay log (no store configured)")
        if not replays.first_use(rules.issuer, jti, float(claims["exp"]) + rules.leeway_s):
            raise _unauthorized("token replayed (jti already used)")
    return rules, claims


# --- Authenticator --------------------------------------------------------------------------


class FailedAuthLimiter:
    """Counts failed authentications per client in a sliding window; a client over the limit is
    refused (429) until its oldest failure leaves the window. Guessing keys or tokens then costs
    an attacker a window per `limit` guesses. Thread-safe; per process."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000):
        self.limit, self.window_s, self.clock, self.max_clients = limit, window_s, clock, max_clients
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> collections.deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return collections.deque()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it is not blocked."""
        now = self.clock()
        with self._lock:
            failures = self._recent(client, now)
            if len(failures) < self.limit:
                return 0
            return max(1, math.ceil(failures[0] + self.window_s - now))

    def failed(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))  # bounded memory: forget the oldest client
            self._recent(client, now)
            self._failures.setdefault(client, collections.deque()).append(now)


class Authenticator:
    """Turns an ``Authorization`` header into a Principal, or raises AuthError."""

    def __init__(
        self,
        settings: AuthSettings,
        http: httpx.Client | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self._keys_http = KeyFetchClient(http)
        self._clock = clock
        self._issuers = {config.issuer: config for config in settings.issuers}
        self._jwt_rules = {config.issuer: self._rules_of(config) for config in settings.issuers}
        self.failures = FailedAuthLimiter(settings.failed_auth_limit, settings.failed_auth_window_s, clock)
        self.replays: TokenReplayLog | None = None  # set by create_api: the store every replica shares
        if settings.allow_unauthenticated:
            logger.warning("authentication is OFF for requests without credentials (allow_unauthenticated)")

    def close(self) -> None:
        self._keys_http.close()

    def authenticate(self, authorization_header: str | None) -> Principal:
        if authorization_header is None or not authorization_header.strip():
            if self.settings.allow_unauthenticated:
                return Principal("anonymous", frozenset(Role), "unauthenticated")
            raise AuthError(401, "missing bearer token")
        scheme, _, credential = authorization_header.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or any(ch.isspace() for ch in credential):
            raise _unauthorized("authorization must be 'Bearer <token>'", error="invalid_request")
        if len(credential) > MAX_CREDENTIAL_CHARS:
            raise _unauthorized("invalid credentials")
        principal = self._api_key_principal(credential)
        if principal is not None:
            return principal
        if self._issuers and credential.count(".") == 2:
            return self._jwt_principal(credential)
        raise _unauthorized("invalid credentials")

    def require(self, principal: Principal, role: Role) -> None:
        if not principal.has_role(role):
            raise AuthError(
                403,
                f"requires the {role.value} role",
                error="insufficient_scope",
                scope=DEFAULT_SCOPE_PREFIX + role.value,
            )

    def _api_key_principal(self, credential: str) -> Principal | None:
        digest = hash_api_key(credential)
        match: ApiKey | None = None
        for api_key in self.settings.api_keys:  # no early exit: time does not depend on which key
            if hmac.compare_digest(digest, api_key.key_sha256):
                match = api_key
        if match is None:
            return None
        return Principal(match.name, frozenset(match.roles), f"api-key:{match.name}")

    @staticmethod
    def _rules_of(config: JwtIssuer) -> JwtRules:
        keys = IssuerKeys(config)
        return JwtRules(
            issuer=config.issuer, algorithms=config.algorithms, keys=lambda _header: keys, audience=config.audience,
            required=_REQUIRED_CLAIMS + (["jti"] if config.single_use else []), leeway_s=config.leeway_s,
            max_lifetime_s=config.max_token_lifetime_s, single_use=config.single_use,
        )

    def _jwt_principal(self, token: str) -> Principal:
        rules, claims = verify_jwt(token, self._jwt_rules.get, keys_http=self._keys_http, clock=self._clock,
                                   replays=self.replays)
        config = self._issuers[rules.issuer]
        return Principal(self._subject(claims), self._roles(claims, config), f"jwt:{config.issuer}")

    @staticmethod
    def _subject(claims: dict[str, Any]) -> str:
        for name in ("sub", "client_id"):
            value = claims.get(name)
            if isinstance(value, str) and _SUBJECT_RE.match(value):
                return value
        raise _unauthorized("token has no usable subject")

    @staticmethod
    def _roles(claims: dict[str, Any], config: JwtIssuer) -> frozenset[Role]:
        value = claims.get(config.roles_claim)
        if isinstance(value, str):
            entries = value.split()
        elif isinstance(value, list):
            entries = [v for v in value if isinstance(v, str)]
        else:
            entries = []
        prefix = config.scope_prefix
        names = {e[len(prefix) :] for e in entries if e.startswith(prefix)}
        return frozenset(role for role in Role if role.value in names)


# --- FastAPI --------------------------------------------------------------------------------

# Declared so OpenAPI shows the bearer scheme; the header itself is parsed by the Authenticator.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key or a JWT access token from an allowed issuer.",
)


def client_address(request: Request, trusted_proxies: list[str]) -> str:
    """The caller's address: the peer, or the nearest untrusted hop of X-Forwarded-For when the
    peer is a trusted proxy (the ingress)."""
    peer = request.client.host if request.client else "unknown"
    if peer not in trusted_proxies:
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop[:64]
    return peer


def require_role(role: Role) -> Callable[..., Principal]:
    """A FastAPI dependency: the authenticated Principal holding `role` (admin holds every role).

    Uses the Authenticator on ``request.app.state.authenticator``; failures become an
    HTTPException (401 or 403) with a ``WWW-Authenticate: Bearer ...`` challenge. The
    principal is also left on ``request.state.principal`` for audit logging.
    """

    def dependency(
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Security(_bearer_scheme),
    ) -> Principal:
        authenticator = getattr(request.app.state, "authenticator", None)
        if not isinstance(authenticator, Authenticator):
            logger.error("no Authenticator on app.state.authenticator: refusing the request")
            raise HTTPException(500, "authentication is not configured")
        headers = request.headers.getlist("authorization")
        client = client_address(request, authenticator.settings.trusted_proxies)
        wait = authenticator.failures.retry_after(client)
        if wait:
            raise HTTPException(429, "too many failed authentication attempts from this client; retry later",
                                headers={"Retry-After": str(wait)})
        try:
            if len(headers) > 1:
                raise _unauthorized("only one authorization header is allowed", error="invalid_request")
            principal = authenticator.authenticate(headers[0] if headers else None)
            request.state.principal = principal  # known even when refused (403): the audit names the caller
            authenticator.require(principal, role)
        except AuthError as exc:
            if exc.status_code == 401:
                authenticator.failures.failed(client)
            raise HTTPException(
                exc.status_code, exc.message, headers={"WWW-Authenticate": exc.www_authenticate}
            ) from None
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency
