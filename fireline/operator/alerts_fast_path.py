"""The alert webhooks' own lane through the API, in front of FastAPI's stack.

An alert storm is thousands of small POSTs a second. Through FastAPI's telemetry, exception,
exit-stack and routing layers, each one cost about twice the CPU of the webhook's own work
(parse, route, group-commit), so one API process topped out near 550 notifications a second
with nothing behind it. :class:`LaneApp` is the FastAPI app with one change: the four webhook
POSTs go straight from its ``__call__`` to :class:`~fireline.operator.alerts_api.AlertsDoor`,
which checks credentials, bounds the body, validates and answers every refusal itself (its own
4xx and 503). Everything else, the webhooks' GET routes included, goes through the app as
before, and the webhook routes stay declared on the router too, so the OpenAPI schema documents
them. An unexpected error in the lane is answered 500 and logged, as the app would.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from starlette.requests import Request

from fireline.operator.alerts_api import WEBHOOKS, AlertsDoor, Parse

log = structlog.get_logger("fireline.ingress.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/v1/alerts"


class AlertsLane:
    """Serves ``POST /v1/alerts[/source]`` with the door; :meth:`hook` says which it takes."""

    def __init__(self, door: AlertsDoor, prefix: str = PREFIX) -> None:
        self.door = door
        self.hooks = {prefix + suffix: hook for suffix, hook in WEBHOOKS.items()}

    def hook(self, scope: Scope) -> tuple[str, Parse] | None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        return self.hooks.get(scope.get("path", ""))

    async def serve(
        self, hook: tuple[str, Parse], scope: Scope, receive: Receive, send: Send
    ) -> None:
        source, parse = hook
        try:
            code, body, headers = await self.door.answer(source, Request(scope, receive), parse)
        except Exception:
            log.exception("alert lane failed", source=source)
            code, body, headers = 500, json.dumps({"detail": "internal error"}).encode(), {}
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": code, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class LaneApp(FastAPI):
    """FastAPI, with the alert webhooks' POSTs taken before its middleware (see the module)."""

    lane: AlertsLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        hook = lane.hook(scope) if lane is not None else None
        if hook is None or lane is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what Starlette sets: the door reads the app's state through it
        await lane.serve(hook, scope, receive, send)


def mount(app: LaneApp, router: APIRouter) -> None:
    """Include the alert ``router`` (from ``alerts_router``) and open its lane in ``app``."""
    app.include_router(router)
    app.lane = AlertsLane(router.door)  # type: ignore[attr-defined]
