"""Who is calling the operator API: the person a credential proves, never a name in a body.

A bearer credential is either a Fireline token (``fl_…``, checked against the hashed token
store) or, when OIDC is configured, a JWT from the issuer. A credential that does not verify is
401; a genuine one for someone the catalog does not list is 403. Without a credential the API
answers 401, except in the embedded default's development mode (``FIRELINE_DEV_MODE``) on a
loopback-bound API, where the caller is taken at their word (``X-Fireline-Unverified-As``, else
the development person) and recorded as unverified, so no signature is made for them.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import structlog
from fastapi import HTTPException, Request, status
from pydantic import BaseModel

from fireline.errors import CompileError
from fireline.identity.oidc import OidcError, OidcVerifier
from fireline.identity.people import People
from fireline.identity.tokens import MAX_TOKEN_LENGTH, TokenStore, looks_like_token
from fireline.runtime.settings import Settings

log = structlog.get_logger("fireline.operator.auth")

UNVERIFIED_HEADER = "X-Fireline-Unverified-As"
"""Development mode only: who a credential-less caller says they are (``fireline --as``)."""


class Principal(BaseModel):
    """The person acting on this request, and how that is known."""

    person: str
    verified: bool
    method: Literal["token", "oidc", "development"]


_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"}
    )


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bound_to_loopback(request: Request) -> bool:
    """True when the socket that took this request listens on loopback, and the peer is local.

    Read from the ASGI scope (the server's own address), so it holds however the API was
    started: ``fireline up``, ``fireline api --host``, or another ASGI server. A request that
    came through a proxy (forwarding headers) never counts as local.
    """
    server = request.scope.get("server")
    client = request.scope.get("client")
    if any(h in request.headers for h in _PROXY_HEADERS):
        return False  # a local reverse proxy may be forwarding someone from elsewhere
    return bool(server and client and is_loopback(server[0]) and is_loopback(client[0]))


class Authenticator:
    """Turns a request's credential into a :class:`Principal` (a FastAPI dependency)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = TokenStore.of(settings)
        self.oidc = OidcVerifier.from_settings(settings)
        self.people = People.of(settings)

    def _roster(self) -> set[str]:
        try:
            return self.people.names()
        except CompileError:
            log.error(
                "the catalog does not load: nobody can be recognised", path=str(self.people.path)
            )
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the catalog does not load, so no person can be recognised; run fireline validate",
            ) from None

    def _known(self, person: str, method: str) -> None:
        if person not in self._roster():
            log.warning("credential for a person the catalog does not list", method=method)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{person!r} is not a person in the catalog; ask an admin to add them",
            )

    async def _from_credential(self, credential: str) -> Principal:
        if len(credential) > MAX_TOKEN_LENGTH:
            raise _unauthorized("credential too long")
        if looks_like_token(credential):
            person = self.tokens.person_of(credential)
            if person is None:
                raise _unauthorized("unknown or revoked token")
            self._known(person, "token")
            return Principal(person=person, verified=True, method="token")
        if self.oidc is None:
            raise _unauthorized("not a Fireline token, and OIDC is not configured")
        try:
            person = await self.oidc.averify(credential)
        except OidcError as exc:
            raise _unauthorized(str(exc)) from None
        self._known(person, "oidc")
        return Principal(person=person, verified=True, method="oidc")

    def _development(self, request: Request) -> Principal:
        claimed = request.headers.get(UNVERIFIED_HEADER, "").strip()
        if len(claimed) > 200:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{UNVERIFIED_HEADER} too long")
        self._roster()
        person = claimed or self.settings.dev_person or self.people.first()
        if not person:
            raise _unauthorized("no credential, and no development person in the catalog")
        return Principal(person=person, verified=False, method="development")

    async def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        development = self.settings.dev_mode and bound_to_loopback(request)
        if header:
            if scheme.lower() != "bearer" or not credential:
                raise _unauthorized("Authorization must be 'Bearer <token>'")
            principal = await self._from_credential(credential)
            claimed = request.headers.get(UNVERIFIED_HEADER, "").strip()
            if claimed and claimed != principal.person:
                raise HTTPException(
                    status.HTTP_400_BAD_REQUEST,
                    f"the credential proves {principal.person!r}, not {claimed!r}",
                )
        elif development:
            principal = self._development(request)
        elif request.headers.get(UNVERIFIED_HEADER):
            raise _unauthorized(
                f"{UNVERIFIED_HEADER} (--as) is accepted only by a development-mode API on "
                "loopback; send a credential"
            )
        else:
            raise _unauthorized("a bearer credential is required")
        request.state.principal = principal
        return principal
