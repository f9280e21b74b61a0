"""Verification of the JWT a CDS Client (the EHR) signs for every CDS Hooks 2.0 call.

Rules (CDS Hooks 2.0, "Trusting CDS Clients"):
* `alg` is RS384 or ES384 (the client's allowed subset); `none`, HS* and anything else are refused
  before any key is looked up, so a public key can never serve as an HMAC secret;
* `iss` must be an allow-listed client; `kid` is required and selects the key;
* keys come from the client's configured JWK Set (inline or file) or, when the token carries a
  `jku` header, from that URL only if it is on the client's `jku_allow_list` (fetched with httpx,
  cached for `jku_ttl_s`, refetched once, rate limited, for an unknown kid);
* `aud` must equal the full URL of the endpoint called; `exp`, `iat` and `jti` are required;
  `exp - iat` may not exceed `max_token_lifetime_s`;
* a `jti` seen before (from the same `iss`, until its `exp`) is a replay and refused. The replay
  cache lives in this process's memory: with several API replicas a token could be replayed once
  against each other replica within its (short, default 5 min) lifetime.

The verification sequence (header checks, key selection by kid, the cached JWKS fetch, claims,
jti single use) is serving.auth's `verify_jwt`; this module sets the CDS Hooks rules (per-endpoint
audience, jku allow-list, jti always required, the in-memory replay cache). Every refusal is an
`AuthError(401, ...)` with a short fixed message that never contains the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lang1ops.settings.cds_hooks import CdsClient, CdsHooksSettings
from serving.auth import (
    MAX_CREDENTIAL_CHARS,
    AuthError,
    IssuerKeys,
    JwtIssuer,
    JwtRules,
    KeyFetchClient,
    Principal,
    Role,
    verify_jwt,
)

_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
_PLACEHOLDER_AUDIENCE = "cds-hooks"  # JwtIssuer needs one; the real audience is checked per request


def _refused(message: str) -> AuthError:
    return AuthError(401, message, error="invalid_token")


@dataclass(frozen=True)
class CdsCaller:
    """The verified EHR behind one call (ids only, never PHI)."""

    issuer: str
    subject: str
    tenant: str | None
    jti: str

    @property
    def principal(self) -> Principal:
        # A verified CDS Client may ask for scores: the scorer role, nothing else.
        return Principal(self.subject, frozenset({Role.SCORER}), f"cds-jwt:{self.issuer}")


class JtiReplayCache:
    """jti values seen per issuer, each remembered until its token's exp (plus leeway)."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time):
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_use(self, issuer: str, jti: str, forget_after: float) -> bool:
        """True the first time (issuer, jti) is seen; False for a replay."""
        now = self._clock()
        with self._lock:
            if len(self._seen) >= self.max_entries:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            if (issuer, jti) in self._seen and self._seen[(issuer, jti)] > now:
                return False
            if len(self._seen) >= self.max_entries:
                # full of live tokens: refusing is safer than forgetting (forgetting allows replays)
                raise _refused("too many tokens in flight; retry shortly")
            self._seen[(issuer, jti)] = forget_after
            return True

    def __len__(self) -> int:
        return len(self._seen)


class _Client:
    """One allow-listed CDS Client: its configured keys and its allowed jku key sets."""

    def __init__(self, config: CdsClient, jku_ttl_s: int):
        self.config = config
        jwks = config.configured_jwks()
        self.configured = (
            IssuerKeys(JwtIssuer(issuer=config.issuer, jwks=jwks, audience=_PLACEHOLDER_AUDIENCE,
                                  algorithms=config.algorithms))
            if jwks is not None else None
        )
        self.by_jku = {
            url: IssuerKeys(JwtIssuer(issuer=config.issuer, jwks_url=url, audience=_PLACEHOLDER_AUDIENCE,
                                       algorithms=config.algorithms, jwks_ttl_s=jku_ttl_s))
            for url in config.jku_allow_list
        }

    def keys(self, header: dict[str, Any]) -> IssuerKeys:
        """The key set a token's header may use: its `jku`, if allow-listed, else the configured one."""
        jku = header.get("jku")
        if jku is not None:
            keys = self.by_jku.get(jku) if isinstance(jku, str) else None
            if keys is None:
                raise _refused("token jku is not allow-listed for this issuer")
            return keys
        if self.configured is None:
            raise _refused("token has no jku and no JWK Set is configured for this issuer")
        return self.configured


class CdsJwtVerifier:
    """Turns the EHR's `Authorization: Bearer <JWT>` into a CdsCaller, or raises AuthError(401)."""

    def __init__(self, settings: CdsHooksSettings, http: httpx.Client | None = None, *,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._clients = {c.issuer: _Client(c, settings.jku_ttl_s) for c in settings.clients}
        self._keys_http = KeyFetchClient(http)
        self._clock = clock
        self.replays = JtiReplayCache(settings.max_remembered_jtis, clock)

    def close(self) -> None:
        self._keys_http.close()

    def verify(self, authorization_headers: Sequence[str], audiences: Sequence[str]) -> CdsCaller:
        """`audiences`: the URL(s) of the endpoint called, one of which `aud` must equal."""
        if not authorization_headers:
            raise AuthError(401, "missing bearer token: CDS Clients must send a signed JWT")
        if len(authorization_headers) > 1:
            raise AuthError(401, "only one authorization header is allowed", error="invalid_request")
        scheme, _, token = authorization_headers[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.count(".") != 2 or len(token) > MAX_CREDENTIAL_CHARS:
            raise AuthError(401, "authorization must be 'Bearer <JWT>'", error="invalid_request")
        rules, claims = verify_jwt(token, lambda iss: self._rules(iss, audiences), keys_http=self._keys_http,
                                   clock=time.monotonic, replays=self.replays, what="CDS JWT")
        sub, tenant, jti = claims.get("sub"), claims.get("tenant"), claims["jti"]
        return CdsCaller(
            issuer=rules.issuer,
            subject=sub if isinstance(sub, str) and 0 < len(sub) <= 256 else rules.issuer,
            tenant=tenant if isinstance(tenant, str) and len(tenant) <= 256 else None,
            jti=jti,
        )

    def _rules(self, iss: str, audiences: Sequence[str]) -> JwtRules | None:
        client = self._clients.get(iss)
        if client is None:
            return None
        return JwtRules(
            issuer=iss, algorithms=client.config.algorithms, keys=client.keys, audience=list(audiences),
            required=_REQUIRED_CLAIMS, leeway_s=self.settings.leeway_s,
            max_lifetime_s=self.settings.max_token_lifetime_s, single_use=True,
            alg_refused="token algorithm not accepted (CDS Hooks requires RS384 or ES384)",
            kid_missing="token has no key id (kid)",
        )
