"""The alert webhooks' own lane through the API: plain ASGI in front of FastAPI's stack.

An alert storm is thousands of small POSTs a second. Through FastAPI's exception, telemetry,
exit-stack and routing layers, each one cost about twice the CPU of the webhook's own work
(parse, route, group-commit), so one API process topped out near 550 notifications a second
with nothing behind it. :class:`AlertsFastPath` sits outermost among the app's middleware and
hands the four webhook POSTs straight to :class:`~fireline.operator.alerts_api.AlertsDoor`,
which already checks credentials, bounds the body, validates and answers every outcome itself
(its own 4xx and 503, never an unhandled exception); everything else, the webhooks' GET
routes included, goes on through the app untouched. The webhook routes stay declared on
the router too, so the OpenAPI schema documents them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.requests import Request

from fireline.operator.alerts_api import WEBHOOKS, AlertsDoor

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AlertsFastPath:
    """``POST /v1/alerts[/source]`` to the door; any other request to ``app``."""

    def __init__(self, app: ASGIApp, door: AlertsDoor, prefix: str = "/v1/alerts") -> None:
        self.app = app
        self.door = door
        self.lanes = {prefix + suffix: hook for suffix, hook in WEBHOOKS.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = None
        if scope["type"] == "http" and scope.get("method") == "POST":
            hook = self.lanes.get(scope.get("path", ""))
        if hook is None:
            await self.app(scope, receive, send)
            return
        source, parse = hook
        code, body, headers = await self.door.answer(source, Request(scope, receive), parse)
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": code, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def mount(app: FastAPI, router: APIRouter) -> None:
    """Include the alert ``router`` (from ``alerts_router``) and put its lane in front of ``app``.

    Call it after every other ``add_middleware``: the lane must be the outermost of them.
    """
    app.include_router(router)
    app.add_middleware(AlertsFastPath, door=router.door)  # type: ignore[attr-defined]
