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

JWK Set parsing, key-type/alg matching and the cached JWKS fetch are serving.auth's; this module
adds what differs for CDS Hooks (per-endpoint audience, jku allow-list, jti replay). Every refusal
is an `AuthError(401, ...)` with a short fixed message that never contains the token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from lang1ops.settings.cds_hooks import CdsClient, CdsHooksSettings
from serving.auth import (
    MAX_CREDENTIAL_CHARS,
    AuthError,
    IssuerKeys,
    JwtIssuer,
    KeyFetchClient,
    Principal,
    Role,
    decode_signed,
)

logger = logging.getLogger(__name__)

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
        try:
            return self._verify(token, list(audiences))
        except AuthError:
            raise
        except Exception as exc:  # fail closed on anything unexpected from parsing or crypto
            logger.warning("CDS JWT rejected: unexpected %s", type(exc).__name__)
            raise _refused("invalid token") from None

    def _verify(self, token: str, audiences: list[str]) -> CdsCaller:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refused("invalid token") from None
        alg = header.get("alg")
        iss = unverified.get("iss")
        client = self._clients.get(iss) if isinstance(iss, str) else None
        if client is None:  # before any key lookup: unknown issuers cause no jku traffic
            raise _refused("token issuer not accepted")
        if not isinstance(alg, str) or alg not in client.config.algorithms:
            raise _refused("token algorithm not accepted (CDS Hooks requires RS384 or ES384)")
        if "crit" in header:
            raise _refused("token uses unsupported critical headers")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise _refused("token has no key id (kid)")
        jku = header.get("jku")
        if jku is not None:
            keys = client.by_jku.get(jku) if isinstance(jku, str) else None
            if keys is None:
                raise _refused("token jku is not allow-listed for this issuer")
        elif client.configured is not None:
            keys = client.configured
        else:
            raise _refused("token has no jku and no JWK Set is configured for this issuer")
        candidates = [k for k in keys.keys_for(kid, self._keys_http.get, time.monotonic()) if k.fits(alg)]
        if not candidates:
            raise _refused("token signing key not recognised")
        claims = decode_signed(token, candidates, alg, audience=audiences, issuer=iss, leeway=self.settings.leeway_s,
                               required=_REQUIRED_CLAIMS)
        return self._accept(claims, iss)

    def _accept(self, claims: dict[str, Any], iss: str) -> CdsCaller:
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
            raise _refused("token jti must be a string of 1 to 256 characters")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise _refused("token exp and iat must be numbers")
        if exp - iat > self.settings.max_token_lifetime_s:
            raise _refused(f"token lifetime over {self.settings.max_token_lifetime_s} s")
        # checked last: only a verified token may take a place in the replay cache
        if not self.replays.first_use(iss, jti, float(exp) + self.settings.leeway_s):
            raise _refused("token replayed (jti already used)")
        sub = claims.get("sub")
        tenant = claims.get("tenant")
        return CdsCaller(
            issuer=iss,
            subject=sub if isinstance(sub, str) and 0 < len(sub) <= 256 else iss,
            tenant=tenant if isinstance(tenant, str) and len(tenant) <= 256 else None,
            jti=jti,
        )
