"""Who may post alerts: one credential scheme per source, configured in settings.

``FIRELINE_INGRESS_AUTH`` (JSON) or ``[ingress_auth.SOURCE]`` in fireline.toml maps a source
(``alertmanager``, ``grafana``, ``pagerduty``, ``generic``) to one of:

- ``{"kind": "bearer", "tokens": ["..."]}``: ``Authorization: Bearer <token>``;
- ``{"kind": "basic", "users": {"name": "password"}}``: what Alertmanager's
  ``http_config.basic_auth`` (and Grafana's basic auth fields) send;
- ``{"kind": "hmac", "secrets": ["..."], "header": ..., "timestamp_header": ...,
  "window_seconds": 300}``: Grafana's ``hmac_config``, hex HMAC-SHA256 of
  ``TIMESTAMP:BODY`` (of the body alone when no timestamp header is configured), the
  timestamp in Unix seconds and within the replay window;
- ``{"kind": "pagerduty", "secrets": ["..."]}``: ``X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]``,
  HMAC-SHA256 of the raw body; any listed signature matching any secret passes, so a secret
  can be rotated without a gap;
- ``{"kind": "none"}``: open, on purpose.

A source without an entry is open in dev mode (the embedded default on loopback) and closed
otherwise: every request to it is refused until credentials are configured.
Several secrets are accepted everywhere so rotation never needs a window of refusals; every
comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter

GRAFANA_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"
GRAFANA_TIMESTAMP_HEADER = "X-Grafana-Alerting-Signature-Timestamp"
PAGERDUTY_SIGNATURE_HEADER = "X-PagerDuty-Signature"


class Unauthorized(Exception):
    """Missing or wrong credentials; the message says which, never what was expected."""

    def __init__(self, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge


class _Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BearerAuth(_Scheme):
    kind: Literal["bearer"]
    tokens: list[SecretStr] = Field(min_length=1)


class BasicAuth(_Scheme):
    kind: Literal["basic"]
    users: dict[str, SecretStr] = Field(min_length=1)


class HmacAuth(_Scheme):
    kind: Literal["hmac"]
    secrets: list[SecretStr] = Field(min_length=1)
    header: str = GRAFANA_SIGNATURE_HEADER
    timestamp_header: str | None = Field(
        default=GRAFANA_TIMESTAMP_HEADER,
        description="None: the body alone is signed, and nothing stops a replay",
    )
    window_seconds: float = Field(default=300.0, gt=0)


class PagerDutyAuth(_Scheme):
    kind: Literal["pagerduty"]
    secrets: list[SecretStr] = Field(min_length=1)


class OpenAuth(_Scheme):
    kind: Literal["none"]


class ClosedAuth(_Scheme):
    """What a source without configured credentials gets outside dev mode."""

    kind: Literal["closed"] = "closed"


SourceAuth = Annotated[
    BearerAuth | BasicAuth | HmacAuth | PagerDutyAuth | OpenAuth, Field(discriminator="kind")
]
_ADAPTER: TypeAdapter[SourceAuth] = TypeAdapter(SourceAuth)


AnyScheme = BearerAuth | BasicAuth | HmacAuth | PagerDutyAuth | OpenAuth | ClosedAuth
HEADER_SCHEMES = (BearerAuth, BasicAuth, OpenAuth, ClosedAuth)
"""Schemes decided by headers alone: checked before a single byte of the body is read."""


def parse_auth(raw: Mapping[str, Mapping[str, Any]], *, open_by_default: bool) -> AuthTable:
    """Validate every configured source up front, so a typo fails at start-up, not at 3 a.m."""
    schemes: dict[str, AnyScheme] = {
        source: _ADAPTER.validate_python(dict(conf)) for source, conf in raw.items()
    }
    fallback: AnyScheme = OpenAuth(kind="none") if open_by_default else ClosedAuth()
    return AuthTable(schemes, fallback)


class AuthTable:
    def __init__(self, schemes: dict[str, AnyScheme], fallback: AnyScheme) -> None:
        self.schemes = schemes
        self.fallback = fallback

    def scheme(self, source: str) -> AnyScheme:
        return self.schemes.get(source, self.fallback)

    def check(
        self, source: str, headers: Mapping[str, str], body: bytes, now: float | None = None
    ) -> None:
        """Raise :class:`Unauthorized` unless the request carries this source's credentials."""
        verify(self.scheme(source), headers, body, time.time() if now is None else now)


def _equal_any(given: bytes, expected: list[bytes]) -> bool:
    # Compare against every candidate, so timing does not reveal which one (or none) matched.
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(given, candidate)
    return found


def _sign(secret: SecretStr, message: bytes) -> bytes:
    return (
        hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest().encode()
    )


def _authorization(headers: Mapping[str, str], scheme: str) -> str:
    given_scheme, _, value = headers.get("authorization", "").partition(" ")
    if given_scheme.lower() != scheme or not value.strip():
        raise Unauthorized(f"missing {scheme} credentials", challenge=scheme.capitalize())
    return value.strip()


def verify(scheme: AnyScheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Check one request against one scheme; header names are matched case-insensitively."""
    headers = {k.lower(): v for k, v in headers.items()}
    match scheme:
        case OpenAuth():
            return
        case ClosedAuth():
            raise Unauthorized("no credentials are configured for this source (ingress auth)")
        case BearerAuth(tokens=tokens):
            given = _authorization(headers, "bearer").encode()
            if not _equal_any(given, [t.get_secret_value().encode() for t in tokens]):
                raise Unauthorized("wrong bearer token", challenge="Bearer")
        case BasicAuth(users=users):
            try:
                decoded = base64.b64decode(_authorization(headers, "basic"), validate=True)
                user, sep, password = decoded.decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized("malformed basic credentials", challenge="Basic") from None
            expected = users.get(user)
            # Always compare, even for an unknown user, to keep the timing flat.
            secret = expected.get_secret_value().encode() if expected else b"\0" * 32
            if not (sep and hmac.compare_digest(password.encode(), secret) and expected):
                raise Unauthorized("wrong user name or password", challenge="Basic")
        case HmacAuth():
            _verify_hmac(scheme, headers, body, now)
        case PagerDutyAuth(secrets=secrets):
            raw = headers.get(PAGERDUTY_SIGNATURE_HEADER.lower(), "")
            signatures = [p.strip()[3:] for p in raw.split(",") if p.strip().startswith("v1=")]
            if not signatures:
                raise Unauthorized(f"missing {PAGERDUTY_SIGNATURE_HEADER} (v1=<hex>)")
            digests = [_sign(secret, body) for secret in secrets]
            matched = False
            for signature in signatures[:10]:
                matched |= _equal_any(signature.lower().encode(), digests)
            if not matched:
                raise Unauthorized(f"no {PAGERDUTY_SIGNATURE_HEADER} matches the body")


def _verify_hmac(scheme: HmacAuth, headers: Mapping[str, str], body: bytes, now: float) -> None:
    signature = headers.get(scheme.header.lower(), "").strip().lower()
    if not signature:
        raise Unauthorized(f"missing {scheme.header}")
    message = body
    if scheme.timestamp_header is not None:
        stamp = headers.get(scheme.timestamp_header.lower(), "").strip()
        if not stamp:
            raise Unauthorized(f"missing {scheme.timestamp_header}")
        try:
            sent = float(stamp)
        except ValueError:
            raise Unauthorized(f"{scheme.timestamp_header} is not Unix seconds") from None
        if abs(now - sent) > scheme.window_seconds:
            raise Unauthorized(
                f"{scheme.timestamp_header} is outside the {scheme.window_seconds:g} s "
                "replay window"
            )
        message = stamp.encode() + b":" + body
    if not _equal_any(signature.encode(), [_sign(s, message) for s in scheme.secrets]):
        raise Unauthorized(f"{scheme.header} does not match the body")
