"""Who may call the service: API keys (stored as digests), allow-listed JWT issuers, roles,
and the JWKS parsing that validates an issuer's inline keys (a section of the settings;
serving.auth verifies requests against it)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)

REALM = "lang1-ops"
DEFAULT_SCOPE_PREFIX = "lang1ops/"
MAX_CREDENTIAL_CHARS = 16_384
MAX_JWKS_BYTES = 1_048_576
MIN_RSA_BITS = 2048

# Algorithm -> (JWK kty, required crv or None). Only asymmetric algorithms exist here, so
# "none" and HS* can never be configured, and a key is only used with an algorithm of its type.
_ALGORITHM_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
SUPPORTED_ALGORITHMS = frozenset(_ALGORITHM_KEY_TYPES)
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud"]
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_SUBJECT_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,255}$")


class Role(StrEnum):
    SCORER = "scorer"
    READER = "reader"
    CARE_MANAGER = "care_manager"  # sets worklist outreach status; reads nothing by itself
    ADMIN = "admin"  # implies every other role


class ApiKey(BaseModel):
    """One API key, stored only as the SHA-256 hex digest of the key (see ``hash_api_key``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Shown as the principal's subject.")
    key_sha256: str = Field(description="hash_api_key(key): 64 hex digits; the key itself is never stored.")
    roles: set[Role] = Field(min_length=1)

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("key_sha256 must be a SHA-256 hex digest (64 hex digits), not the key itself")
        return value


class JwtIssuer(BaseModel):
    """One allow-listed token issuer and how to verify its tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, description="The exact `iss` value allowed.")
    jwks_url: str | None = Field(None, description="HTTPS URL of the issuer's JWKS (http only for loopback).")
    jwks: dict[str, Any] | None = Field(None, description="Inline JWKS (tests, air-gapped sites).")
    audience: str = Field(min_length=1, description="Required `aud` value.")
    roles_claim: str = Field("scope", min_length=1, description="Claim holding scopes or roles.")
    scope_prefix: str = Field(DEFAULT_SCOPE_PREFIX, description="Only scopes with this prefix grant roles.")
    algorithms: list[str] = Field(default_factory=lambda: ["RS384", "ES384"], min_length=1)
    leeway_s: int = Field(30, ge=0, le=300)
    max_token_lifetime_s: int = Field(3600, ge=1, le=86_400,
                                      description="exp - iat above this is refused: a stolen token is short-lived.")
    single_use: bool = Field(
        False, description="Each request carries a freshly signed JWT (a client assertion): `jti` is required and "
        "a second use is refused, across replicas (the store remembers jtis until exp). False for access tokens "
        "from an identity provider, which are reused until they expire.")
    jwks_ttl_s: int = Field(3600, ge=1, description="How long a fetched JWKS is used before refetching.")
    jwks_refetch_min_interval_s: int = Field(
        30,
        ge=0,
        description="Minimum time between JWKS fetches (unknown `kid` floods cannot hammer the IdP).",
    )

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in SUPPORTED_ALGORITHMS]
        if bad:
            raise ValueError(
                f"unsupported JWT algorithms {bad}; allowed: {sorted(SUPPORTED_ALGORITHMS)} (never none or HS*)"
            )
        return list(dict.fromkeys(value))

    @field_validator("jwks_url")
    @classmethod
    def _secure_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise ValueError("jwks_url must be an https URL (plain http is only allowed for loopback)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuer:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError(f"issuer {self.issuer!r}: set exactly one of jwks_url or jwks")
        if self.jwks is not None and not parse_jwks(self.jwks):
            raise ValueError(f"issuer {self.issuer!r}: the inline jwks has no usable signing key")
        return self


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: list[ApiKey] = Field(default_factory=list)
    issuers: list[JwtIssuer] = Field(default_factory=list)
    allow_unauthenticated: bool = Field(
        False,
        description="Requests without credentials act as an anonymous admin. Never in production; local demos only.",
    )
    failed_auth_limit: int = Field(
        20, ge=1, description="Failed authentications one client may make in `failed_auth_window_s` before its "
        "requests are refused with 429 for the rest of the window (per process).")
    failed_auth_window_s: float = Field(60.0, gt=0, description="The window of `failed_auth_limit`, in seconds.")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Peer addresses (the ingress) whose X-Forwarded-For names the client "
        "for the failed-authentication limit; any other peer is the client itself.")

    @model_validator(mode="after")
    def _unique(self) -> AuthSettings:
        for what, values in (
            ("api key name", [k.name for k in self.api_keys]),
            ("api key digest", [k.key_sha256 for k in self.api_keys]),
            ("issuer", [i.issuer for i in self.issuers]),
        ):
            if len(values) != len(set(values)):
                raise ValueError(f"duplicate {what} in auth settings")
        return self


# --- JWKS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _JwkKey:
    kid: str
    kty: str
    crv: str | None
    alg: str | None  # the JWK's declared `alg`, if any
    key: Any  # a cryptography public key

    def fits(self, alg: str) -> bool:
        kty, crv = _ALGORITHM_KEY_TYPES[alg]
        return self.kty == kty and (crv is None or self.crv == crv) and self.alg in (None, alg)


def parse_jwks(data: Any) -> dict[str, list[_JwkKey]]:
    """Usable public signing keys of a JWKS by `kid`; unusable entries are skipped, never fatal.

    Skipped: no `kid`, `use` other than "sig", symmetric ("oct") or unknown key types, curves
    without a configured algorithm, RSA keys under 2048 bits. Private members are dropped, so
    only public keys are ever built.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("a JWKS is an object with a 'keys' list")
    keys: dict[str, list[_JwkKey]] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict):
            continue
        kid, kty, crv, alg = entry.get("kid"), entry.get("kty"), entry.get("crv"), entry.get("alg")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        if alg is not None and alg not in SUPPORTED_ALGORITHMS:
            continue
        parse_alg = next(
            (a for a, (t, c) in _ALGORITHM_KEY_TYPES.items() if t == kty and c in (None, crv)), None
        )
        if parse_alg is None or (kty == "OKP" and crv not in {"Ed25519", "Ed448"}):
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_JWK_MEMBERS}
        try:
            key = jwt.PyJWK(public, algorithm=parse_alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            logger.warning("skipping an unparseable JWKS key (kid %.64r)", kid)
            continue
        if kty == "RSA" and getattr(key, "key_size", 0) < MIN_RSA_BITS:
            logger.warning("skipping an RSA JWKS key under %d bits (kid %.64r)", MIN_RSA_BITS, kid)
            continue
        keys.setdefault(kid, []).append(_JwkKey(kid, kty, crv, alg, key))
    return keys
