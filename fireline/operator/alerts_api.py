"""Alert webhooks: ``POST /v1/alerts/{alertmanager,grafana,pagerduty}`` and ``POST /v1/alerts``.

Each request goes through the same door, in an order that spends nothing on a stranger:
credentials that live in headers (bearer, basic) are checked before the body is read; the
body is read in chunks and refused with 413 the moment it passes the source's limit; signed
sources (Grafana HMAC, PagerDuty) are checked against the raw bytes; then the JSON is parsed
(400 when it is not JSON), validated (422 naming the field path), normalised, routed and
group-committed. The answer is 202 only once every alert is durable (in Temporal, or in the
unrouted log); when the queue is full or the deadline (below PagerDuty's 5 s) passes, 503 with
``Retry-After``, so the sender retries instead of timing out.

``GET /v1/alerts/stats`` and ``GET /v1/alerts/unrouted`` are what ``fireline alerts`` shows;
they take the operator API's credentials (or, when configured, the ingress ``read`` scheme).
Sources without configured credentials refuse everything, except in dev mode on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from fireline.ingress import alertmanager, generic, grafana, pagerduty
from fireline.ingress.alert import Alert
from fireline.ingress.auth import HEADER_SCHEMES, AuthTable, Unauthorized, parse_auth
from fireline.ingress.config import IngressSettings
from fireline.ingress.delivery import Ingress, IngressStats, Starter, TemporalStarter
from fireline.ingress.group_commit import CommitTimeout, Overloaded
from fireline.ingress.routing import RoutingTable
from fireline.ingress.unrouted import UnroutedSummary
from fireline.operator.auth import bound_to_loopback
from fireline.operator.limits import JsonDepth
from fireline.runtime.settings import Settings

log = structlog.get_logger("fireline.ingress.api")

READ = "read"
"""The pseudo-source whose credentials the two GET routes take."""
UNROUTED_LIMIT = 64
"""Unrouted alerts listed when the caller does not say how many."""


class _Refusal(Exception):
    """A request turned away with a status of its own (400, 413, 422), before any write."""

    def __init__(self, code: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def auth_table(config: IngressSettings) -> AuthTable:
    """Sources without an entry are closed (the door opens them only in dev mode on loopback)."""
    return parse_auth(config.auth, open_by_default=False)


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (before reading the rest),
    or with 400 once it nests deeper than any alert does (counted before any parser recurses)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _Refusal(413, f"the body is over the {limit}-byte limit")
        except ValueError:
            raise _Refusal(400, "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    depth = JsonDepth()
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"the body is over the {limit}-byte limit")
        if not depth.feed(chunk):
            raise _Refusal(400, f"the body nests more than {depth.limit} levels deep")
        chunks.append(chunk)
    return b"".join(chunks)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors without the offending input (which may be huge or hostile)."""
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)[:50]
    ]


Parse = Callable[[dict[str, Any], datetime, Request, str], list[Alert]]


def _am(doc: dict[str, Any], at: datetime, _: Request, __: str) -> list[Alert]:
    return alertmanager.normalise(alertmanager.AlertmanagerPayload.model_validate(doc), at)


def _grafana(doc: dict[str, Any], at: datetime, _: Request, __: str) -> list[Alert]:
    return grafana.normalise(grafana.GrafanaPayload.model_validate(doc), at)


def _pd(doc: dict[str, Any], at: datetime, request: Request, digest: str) -> list[Alert]:
    payload = pagerduty.PagerDutyPayload.model_validate(doc)
    return pagerduty.normalise(payload, at, request.headers.get("x-webhook-id"), digest)


def _generic(doc: dict[str, Any], at: datetime, _: Request, digest: str) -> list[Alert]:
    return generic.normalise(generic.GenericPayload.model_validate(doc), at, digest)


class AlertsDoor:
    """State shared by the routes of one app: credentials, the ingress engine, its client."""

    def __init__(
        self,
        settings: Settings,
        config: IngressSettings,
        starter: Starter | None = None,
        trusted_keys: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.trusted_keys = dict(trusted_keys or {})
        self.auth = auth_table(config)
        self._starter = starter
        self._ingress: Ingress | None = None
        self._own_client: Any = None
        self._lock = asyncio.Lock()

    def ingress(self, request: Request) -> Ingress:
        if self._ingress is None:
            starter = self._starter or TemporalStarter(
                lambda: self._client(request), self.settings.workflow_task_queue
            )
            table = RoutingTable(
                self.settings, self.config.reload_seconds, trusted_keys=self.trusted_keys
            )
            self._ingress = Ingress(self.settings, self.config, starter, table)
        return self._ingress

    async def _client(self, request: Request) -> Any:
        shared = getattr(request.app.state, "temporal", None)
        if shared is not None and hasattr(shared, "get"):
            return await shared.get()
        async with self._lock:
            if self._own_client is None:
                from fireline.runtime.client import make_client

                self._own_client = await make_client(self.settings)
            return self._own_client

    def _development(self, source: str, request: Request) -> bool:
        """No credentials configured for ``source``, dev mode, both ends on loopback: open."""
        return (
            source not in self.auth.schemes
            and self.settings.dev_mode
            and bound_to_loopback(request)
        )

    def check_headers(self, source: str, request: Request) -> None:
        if self._development(source, request):
            return
        scheme = self.auth.scheme(source)
        if isinstance(scheme, HEADER_SCHEMES):
            self.auth.check(source, request.headers, b"")

    def check_signature(self, source: str, request: Request, body: bytes) -> None:
        if self._development(source, request):
            return
        scheme = self.auth.scheme(source)
        if not isinstance(scheme, HEADER_SCHEMES):
            self.auth.check(source, request.headers, body)

    async def receive(self, source: str, request: Request, parse: Parse) -> Response:
        """The answer as a response (the FastAPI routes; the fast path uses :meth:`answer`)."""
        code, body, headers = await self.answer(source, request, parse)
        return Response(body, code, headers, media_type="application/json")

    async def answer(
        self, source: str, request: Request, parse: Parse
    ) -> tuple[int, bytes, dict[str, str]]:
        """(status, JSON body, extra headers) for one notification: every refusal (401, 400,
        413, 422, 503) is an answer here, never an exception for the caller to map."""
        deadline = time.monotonic() + self.config.deadline_seconds
        ingress = self.ingress(request)
        try:
            self.check_headers(source, request)
            body = await read_capped(request, self.config.body_limit(source))
            self.check_signature(source, request, body)
            try:
                doc = json.loads(body)
            except (
                ValueError,
                RecursionError,
            ) as exc:  # bad UTF-8 or JSON, absurd nesting or digits
                raise _Refusal(400, f"the body is not JSON: {str(exc)[:200]}") from None
            if not isinstance(doc, dict):
                raise _Refusal(400, "the body must be a JSON object")
            digest = hashlib.sha256(body).hexdigest()[:32]
            try:
                alerts = parse(doc, datetime.now(UTC), request, digest)
            except ValidationError as exc:
                raise _Refusal(422, _errors(exc)) from None
            accepted = await ingress.accept(source, alerts, deadline, len(body))
        except Unauthorized as exc:
            ingress.refused(401)
            log.warning("alert refused: credentials", source=source, reason=str(exc))
            challenge = {"WWW-Authenticate": exc.challenge} if exc.challenge else {}
            return _answer(401, {"detail": str(exc)}, challenge)
        except _Refusal as exc:
            ingress.refused(exc.code)
            return _answer(exc.code, {"detail": exc.detail}, exc.headers)
        except (Overloaded, CommitTimeout) as exc:
            ingress.refused(503)
            log.warning("alert deferred: busy", source=source, reason=str(exc))
            retry = str(self.config.retry_after_seconds)
            return _answer(503, {"detail": str(exc), "retry_after": retry}, {"Retry-After": retry})
        except Exception as exc:  # Temporal unreachable or refusing: the sender retries
            ingress.refused(503)
            log.error("alert not written", source=source, error=str(exc))
            retry = str(self.config.retry_after_seconds)
            return _answer(
                503, {"detail": f"not written: {exc}", "retry_after": retry}, {"Retry-After": retry}
            )
        return _answer(202, accepted.model_dump(mode="json"))

    async def check_read(self, request: Request) -> JSONResponse | None:
        """Operator credentials when mounted in the operator app, else the ``read`` scheme."""
        authenticate = getattr(request.app.state, "authenticate", None)
        if authenticate is not None and READ not in self.auth.schemes:
            await authenticate(request)  # raises HTTPException 401/403 itself
            return None
        try:
            self.check_headers(READ, request)
        except Unauthorized as exc:
            challenge = {"WWW-Authenticate": exc.challenge} if exc.challenge else {}
            return JSONResponse({"detail": str(exc)}, 401, challenge)
        return None

    async def aclose(self) -> None:
        if self._ingress is not None:
            await self._ingress.aclose()


def _answer(
    code: int, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """JSON encoded as Starlette's JSONResponse encodes it."""
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return code, text.encode(), headers or {}


WEBHOOKS: dict[str, tuple[str, Parse]] = {
    "/alertmanager": ("alertmanager", _am),
    "/grafana": ("grafana", _grafana),
    "/pagerduty": ("pagerduty", _pd),
    "": ("generic", _generic),
}
"""Path under ``/v1/alerts`` -> (source, parser): the webhook POSTs, for both lanes."""


class StatsAnswer(BaseModel):
    stats: IngressStats
    unrouted_total: int


def alerts_router(
    settings: Settings,
    config: IngressSettings | None = None,
    *,
    starter: Starter | None = None,
    trusted_keys: dict[str, str] | None = None,
) -> APIRouter:
    """The alert routes; ``create_app`` includes them. ``starter`` replaces Temporal in tests.

    ``trusted_keys`` are the decision keys the API signs with: the routed playbook runs of the
    incidents these routes open accept signed decisions from this API."""
    door = AlertsDoor(settings, config or IngressSettings(), starter, trusted_keys)
    router = APIRouter(prefix="/v1/alerts", tags=["alerts"])
    router.door = door  # type: ignore[attr-defined]  # for tests and the bench

    responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing or wrong credentials"},
        400: {"description": "not JSON"},
        413: {"description": "over the body limit"},
        422: {"description": "invalid, with the field path"},
        503: {"description": "busy or Temporal unreachable: retry after Retry-After"},
    }

    @router.post("/alertmanager", status_code=status.HTTP_202_ACCEPTED, responses=responses)
    async def from_alertmanager(request: Request) -> Response:
        """Prometheus Alertmanager webhook (version 4)."""
        return await door.receive("alertmanager", request, _am)

    @router.post("/grafana", status_code=status.HTTP_202_ACCEPTED, responses=responses)
    async def from_grafana(request: Request) -> Response:
        """Grafana alerting webhook contact point (version 1)."""
        return await door.receive("grafana", request, _grafana)

    @router.post("/pagerduty", status_code=status.HTTP_202_ACCEPTED, responses=responses)
    async def from_pagerduty(request: Request) -> Response:
        """PagerDuty v3 webhook subscription."""
        return await door.receive("pagerduty", request, _pd)

    @router.post("", status_code=status.HTTP_202_ACCEPTED, responses=responses)
    async def from_generic(request: Request) -> Response:
        """The generic JSON alert (see fireline.ingress.generic for its fields)."""
        return await door.receive("generic", request, _generic)

    @router.get("/stats", response_model=StatsAnswer)
    async def stats(request: Request) -> Any:
        """Counters of this API process since it started, and the unrouted total on disk."""
        refused = await door.check_read(request)
        if refused is not None:
            return refused
        ingress = door.ingress(request)
        summary = await asyncio.to_thread(ingress.unrouted.summary, 0)
        return StatsAnswer(stats=ingress.stats(), unrouted_total=summary.total)

    @router.get("/unrouted", response_model=UnroutedSummary)
    async def unrouted(
        request: Request, limit: Annotated[int, Query(ge=0, le=1000)] = UNROUTED_LIMIT
    ) -> Any:
        """Alerts no route claimed: counts, and the newest ``limit`` of them."""
        refused = await door.check_read(request)
        if refused is not None:
            return refused
        ingress = door.ingress(request)
        return await asyncio.to_thread(ingress.unrouted.summary, limit)

    return router
