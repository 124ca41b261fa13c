"""OpenID Connect: a bearer JWT from the team's identity provider names a catalog person.

Verified with PyJWT against the issuer's JWKS (fetched and cached by ``jwt.PyJWKClient``,
which refetches at most once per cooldown when a token names an unknown key). Pinned
algorithms, asymmetric only: ``none`` and ``HS*`` are refused at configuration time, because
an HMAC "verified" with a public key lets anyone holding the public key mint tokens. ``exp``,
``iss`` and ``aud`` are required and checked, ``nbf`` and ``iat`` when present, with a small
leeway for clock skew.

The person is the value of one claim (``Settings.oidc_person_claim``, ``preferred_username``
by default: short names like the catalog's; ``email`` is the other common choice).
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt

from fireline.runtime.settings import Settings

ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class OidcError(Exception):
    """The token is not one this deployment accepts (the reason is safe to show the caller)."""


class OidcConfigError(ValueError):
    """The OIDC settings are incomplete or unsafe; the API refuses to start with them."""


class OidcVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str,
        person_claim: str = "preferred_username",
        algorithms: list[str] | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        algorithms = list(algorithms or ["RS256", "ES256", "EdDSA"])
        unsafe = sorted(set(algorithms) - ASYMMETRIC)
        if unsafe:
            raise OidcConfigError(
                f"OIDC algorithms {', '.join(unsafe)} are not accepted: only asymmetric "
                f"signatures ({', '.join(sorted(ASYMMETRIC))}) prove the issuer signed"
            )
        self.issuer = issuer
        self.audience = audience
        self.person_claim = person_claim
        self.algorithms = algorithms
        self.leeway_s = leeway_s
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcVerifier | None:
        """The configured verifier, None when OIDC is off; half a configuration is an error."""
        given = {
            "FIRELINE_OIDC_ISSUER": settings.oidc_issuer,
            "FIRELINE_OIDC_AUDIENCE": settings.oidc_audience,
            "FIRELINE_OIDC_JWKS_URL": settings.oidc_jwks_url,
        }
        if not any(given.values()):
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise OidcConfigError(f"OIDC needs {', '.join(missing)} as well")
        return cls(
            issuer=str(settings.oidc_issuer),
            audience=str(settings.oidc_audience),
            jwks_url=str(settings.oidc_jwks_url),
            person_claim=settings.oidc_person_claim,
            algorithms=settings.oidc_algorithms,
            leeway_s=settings.oidc_leeway_seconds,
        )

    def verify(self, token: str) -> str:
        """The person the token names; raises :class:`OidcError` with the reason.

        Blocking (the JWKS may be fetched): call :meth:`averify` from async code.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError(f"not a JWT: {exc}") from None
        if header.get("alg") not in self.algorithms:
            raise OidcError(f"algorithm {header.get('alg')!r} is not accepted")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise OidcError(f"cannot fetch the issuer's keys: {exc}") from None
        except jwt.PyJWTError as exc:
            raise OidcError(f"no matching issuer key: {exc}") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"token refused: {exc}") from None
        person = claims.get(self.person_claim)
        if not isinstance(person, str) or not person or len(person) > 200:
            raise OidcError(f"token has no usable {self.person_claim!r} claim")
        return person

    async def averify(self, token: str) -> str:
        return await asyncio.to_thread(self.verify, token)
