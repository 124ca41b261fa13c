"""Limits that keep bad input from stalling the operator API.

:class:`BodyLimit` is plain ASGI middleware, so it sees the body as it streams in: a declared
``Content-Length`` over the limit is refused before a byte of the body is read, and a body
without one (chunked) is counted message by message and cut off at the limit, never read
whole. It also refuses JSON nested deeper than any request needs (counted on the raw bytes,
before any parser recurses). :func:`install` adds it and the handler that turns request
validation errors into 400 (malformed JSON) or 422 (with each field's path), and
:func:`head_deadline_protocol` bounds how long a client may take to send a request's head.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from fireline.runtime.settings import Settings

__all__ = [
    "HEAD_TIMEOUT_S",
    "MAX_JSON_DEPTH",
    "BodyLimit",
    "JsonDepth",
    "head_deadline_protocol",
    "install",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a request body may have; run inputs need a few."""

_SPECIAL = re.compile(rb'["\\\[\]{}]')


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body larger than {limit} bytes (FIRELINE_API_MAX_BODY_BYTES)",
        )


class JsonTooDeep(HTTPException):
    """Raised from ``receive`` when the body nests deeper than :data:`MAX_JSON_DEPTH`."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_400_BAD_REQUEST, f"JSON body nested more than {limit} levels deep"
        )


class JsonDepth:
    """Nesting depth of JSON text fed in pieces, strings and escapes skipped; no parsing."""

    def __init__(self, limit: int = MAX_JSON_DEPTH) -> None:
        self.limit = limit
        self.depth = 0
        self._in_string = False
        self._carry_escape = False

    def feed(self, chunk: bytes) -> bool:
        """False as soon as the depth so far passes the limit."""
        skip_at = 0 if self._carry_escape else -1  # the byte after a backslash is escaped
        self._carry_escape = False
        for match in _SPECIAL.finditer(chunk):
            at, char = match.start(), match.group()
            if at == skip_at:
                continue
            if self._in_string:
                if char == b"\\":
                    if at == len(chunk) - 1:
                        self._carry_escape = True
                    skip_at = at + 1
                elif char == b'"':
                    self._in_string = False
            elif char == b'"':
                self._in_string = True
            elif char in (b"[", b"{"):
                self.depth += 1
                if self.depth > self.limit:
                    return False
            else:
                self.depth -= 1
        return True


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) or JSON deeper than ``max_depth`` (400)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            try:
                sizes = {int(v) for v in declared}
            except ValueError:
                await _answer(send, status.HTTP_400_BAD_REQUEST, "invalid Content-Length")
                return
            if len(sizes) != 1:
                await _answer(send, status.HTTP_400_BAD_REQUEST, "conflicting Content-Length")
                return
            if sizes.pop() > self.max_bytes:
                await _answer(
                    send,
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    BodyTooLarge(self.max_bytes).detail,
                )
                return
        received = 0
        depth = JsonDepth(self.max_depth)
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                body: bytes = message.get("body", b"")
                received += len(body)
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                if not depth.feed(body):
                    raise JsonTooDeep(self.max_depth)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except (BodyTooLarge, JsonTooDeep) as exc:
            # Raised where no exception handler was in the way (a route reading the raw body).
            if started:
                raise
            await _answer(send, exc.status_code, str(exc.detail))


async def _answer(send: Send, code: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "inputs", "x", 0)`` -> ``"inputs.x[0]"`` (where the caller wrote it)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where, parts = parts[0], parts[1:]
    else:
        where = ""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or where


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = [e for e in errors if e.get("type") in ("json_invalid", "json_type")]
    if malformed:
        ctx = malformed[0].get("ctx") or {}
        return JSONResponse(
            status_code=status.HTTP_400_BAD_REQUEST,
            content={"detail": f"malformed JSON body: {ctx.get('error', 'cannot be parsed')}"},
        )
    detail = [
        {
            "loc": list(e.get("loc", ())),
            "field": _field(e.get("loc", ())),
            "msg": str(e.get("msg", ""))[:300],
            "type": str(e.get("type", "")),
        }
        for e in errors[:20]
    ]
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail}
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Add the body limit and the validation-error answers to ``app``.

    Values the caller sent are never echoed back in a validation error: a 1 MiB string would
    otherwise come back in the answer (and in any log of it).
    """
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)


HEAD_TIMEOUT_S = 10.0
"""How long a client has to send a request's line and headers once it connects (or after the
previous response): a client sending its head a byte at a time holds a connection no longer."""


def head_deadline_protocol(seconds: float = HEAD_TIMEOUT_S) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing connections whose request head comes too slowly.

    uvicorn bounds idle keep-alive connections but not a request head that trickles in, so a
    few hundred slow clients would hold every connection the server allows. Built on uvicorn's
    httptools parser (C; an alert storm spends a fifth of the API's CPU in h11's pure-Python
    one).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadDeadline(HttpToolsProtocol):
        """Armed while a request head is awaited: on connect, and after each response that
        leaves no pipelined request behind; disarmed when a head is complete."""

        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._disarm()  # a request head arrived in time
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            waiting = bool(self.pipeline)  # the next request's head is already in
            super().on_response_complete()
            if not waiting and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadline
