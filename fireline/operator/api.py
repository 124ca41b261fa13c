"""The operator HTTP API: the same operations as the CLI, over JSON.

Every route but ``/healthz`` needs a credential (``Authorization: Bearer``: a Fireline token
or an OIDC JWT, see :mod:`fireline.operator.auth`); the person acting is the one it proves,
and each decision they make is signed for the workflow to verify. Failures map to status codes
the way an operator expects: a refused decision is 409 with the workflow's reason, an unknown
run or playbook 404, a playbook that does not compile 422 with every problem, bad inputs 400,
an unreachable Temporal 503. Alert webhooks live on their own router
(:mod:`fireline.operator.alerts_api`), reached through a lane of their own
(:mod:`fireline.operator.alerts_fast_path`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client

from fireline import __version__
from fireline.errors import CompileError
from fireline.messages import DecisionAction, RunState, StepState
from fireline.operator import alerts_api, alerts_fast_path, incidents_api, limits, operations
from fireline.operator.auth import Authenticator, Principal
from fireline.operator.decision_signing import Signer, step_inputs
from fireline.operator.plan_preview import PlanPreview
from fireline.plan import InputSpec
from fireline.runtime.client import make_client
from fireline.runtime.settings import DOMAINS, Settings

log = structlog.get_logger("fireline.operator.api")

_HEALTH_TIMEOUT = timedelta(seconds=5)

RunId = Annotated[str, Path(min_length=1, max_length=1000)]
StepId = Annotated[str, Path(min_length=1, max_length=200)]


_NAME = 200
_COMMENT = 2000
_INPUTS = 100
_Forbid = ConfigDict(extra="forbid")
"""Request bodies refuse unknown fields: a ``by`` or ``requested_by`` is never read, and a
client that still sends one learns so (422) instead of believing it was used."""


class StartRunBody(BaseModel):
    model_config = _Forbid

    playbook: str = Field(min_length=1, max_length=_NAME, description="a library name")
    inputs: dict[str, Any] = Field(default_factory=dict, max_length=_INPUTS)


_DIGEST = Field(
    default=None,
    pattern=r"^[0-9a-f]{64}$",
    description=(
        "optional: the inputs digest of the step as the decider saw it; when the run now shows "
        "other inputs the decision is refused (409) instead of signed"
    ),
)


class GateBody(BaseModel):
    model_config = _Forbid

    comment: str = Field(default="", max_length=_COMMENT)
    seen_digest: str | None = _DIGEST


class DecideBody(BaseModel):
    model_config = _Forbid

    action: DecisionAction
    comment: str = Field(default="", max_length=_COMMENT)
    inputs: dict[str, Any] | None = Field(default=None, max_length=_INPUTS)
    seen_digest: str | None = _DIGEST


class CancelBody(BaseModel):
    model_config = _Forbid

    reason: str = Field(default="", max_length=_COMMENT)


class CancelAnswer(BaseModel):
    workflow_id: str
    cancel_requested: bool = True


class Health(BaseModel):
    status: str
    temporal: str
    detail: str = ""


class PlaybookInfo(BaseModel):
    """A playbook of the library as it compiles now; ``problems`` is empty when it does."""

    name: str
    ok: bool
    version: str | None = None
    description: str = ""
    owner: str = ""
    outage_class: str = ""
    max_risk: str | None = None
    plan_hash: str | None = None
    inputs: list[InputSpec] = Field(default_factory=list)
    problems: list[dict[str, Any]] = Field(default_factory=list)


class _Temporal:
    """The one shared client: connected at start-up, or on first use if Temporal was down."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Client | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> Client:
        async with self._lock:
            if self.client is None:
                self.client = await make_client(self.settings)
            return self.client

    async def get(self) -> Client:
        if self.client is not None:
            return self.client
        try:
            return await self.connect()
        except Exception as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"cannot reach Temporal at {self.settings.temporal_address}: {exc}",
            ) from exc


async def _client(request: Request) -> Client:
    temporal: _Temporal = request.app.state.temporal
    return await temporal.get()


Temporal = Annotated[Client, Depends(_client)]
"""The app's shared client, as a route parameter (module level, so annotations resolve)."""


async def _principal(request: Request) -> Principal:
    authenticate: Authenticator = request.app.state.authenticate
    return await authenticate(request)


Who = Annotated[Principal, Depends(_principal)]
"""The person the request's credential proves (FastAPI caches it per request)."""


def _problems(exc: CompileError) -> list[dict[str, Any]]:
    return [
        p.to_dict() if callable(getattr(p, "to_dict", None)) else {"message": str(p)}
        for p in exc.problems
    ]


def _playbook_info(settings: Settings) -> list[PlaybookInfo]:
    library = operations.load_library(settings)
    out: list[PlaybookInfo] = []
    for name in sorted(library.names()):
        try:
            plan = library.compile(name)
        except CompileError as exc:
            out.append(PlaybookInfo(name=name, ok=False, problems=_problems(exc)))
            continue
        out.append(
            PlaybookInfo(
                name=name,
                ok=True,
                version=plan.version,
                description=plan.description,
                owner=plan.owner,
                outage_class=plan.outage_class,
                max_risk=plan.max_risk().value,
                plan_hash=plan.hash or plan.content_hash(),
                inputs=plan.inputs,
            )
        )
    return out


def _module_list(domain: str | None) -> list[dict[str, Any]]:
    from fireline.modules import load_registry

    specs = sorted(load_registry().values(), key=lambda s: s.name)
    return [s.describe() for s in specs if domain is None or s.domain == domain]


def _install_error_handlers(app: FastAPI) -> None:
    def handler(code: int, body: Any) -> JSONResponse:
        return JSONResponse(status_code=code, content={"detail": body})

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, operations.OperationRefused)
        return handler(status.HTTP_409_CONFLICT, exc.reason)

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return handler(status.HTTP_404_NOT_FOUND, str(exc))

    async def unknown_playbook(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, operations.UnknownPlaybook)
        return handler(status.HTTP_404_NOT_FOUND, {"message": str(exc), "known": exc.known})

    async def bad_inputs(_: Request, exc: Exception) -> JSONResponse:
        return handler(status.HTTP_400_BAD_REQUEST, str(exc))

    async def compile_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CompileError)
        body = {"message": "the playbook does not compile", "problems": _problems(exc)}
        return handler(status.HTTP_422_UNPROCESSABLE_CONTENT, body)

    async def upstream(_: Request, exc: Exception) -> JSONResponse:
        log.warning("temporal operation failed", error=str(exc))
        return handler(status.HTTP_502_BAD_GATEWAY, str(exc))

    app.add_exception_handler(operations.OperationRefused, refused)
    app.add_exception_handler(operations.RunNotFound, not_found)
    app.add_exception_handler(operations.UnknownPlaybook, unknown_playbook)
    app.add_exception_handler(operations.InvalidInputs, bad_inputs)
    app.add_exception_handler(CompileError, compile_error)
    app.add_exception_handler(operations.OperationError, upstream)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; ``uvicorn`` serves it for ``fireline api`` and ``fireline up``."""
    settings = settings or Settings()
    temporal = _Temporal(settings)
    authenticate = Authenticator(settings)
    signer = Signer(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await temporal.connect()
        except Exception as exc:  # keep serving: /healthz reports it, routes retry
            log.warning(
                "temporal unreachable at start-up",
                address=settings.temporal_address,
                error=str(exc),
            )
        yield

    app = alerts_fast_path.LaneApp(title="Fireline", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.temporal = temporal
    app.state.authenticate = authenticate
    _install_error_handlers(app)
    limits.install(app, settings)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> JSONResponse:
        """Liveness plus Temporal reachability; open, so load balancers can probe it."""
        try:
            c = await temporal.get()
            ok = await c.service_client.check_health(timeout=_HEALTH_TIMEOUT)
            detail = "" if ok else "health check answered not serving"
        except Exception as exc:
            ok, detail = False, str(getattr(exc, "detail", exc))
        body = Health(
            status="ok" if ok else "unavailable", temporal=settings.temporal_address, detail=detail
        )
        code = status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE
        return JSONResponse(status_code=code, content=body.model_dump())

    ops = APIRouter(dependencies=[Depends(_principal)])

    @ops.get("/whoami", response_model=Principal)
    async def whoami(who: Who) -> Principal:
        """Who the credential proves (``fireline login`` checks a token with it)."""
        return who

    @ops.get("/playbooks", response_model=list[PlaybookInfo])
    async def playbooks() -> list[PlaybookInfo]:
        return await asyncio.to_thread(_playbook_info, settings)

    @ops.get("/modules")
    async def modules(
        domain: Annotated[str | None, Query(max_length=50)] = None,
    ) -> list[dict[str, Any]]:
        if domain is not None and domain not in DOMAINS:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown domain {domain!r}")
        return _module_list(domain)

    @ops.post("/runs", status_code=status.HTTP_201_CREATED, response_model=operations.StartedRun)
    async def start(body: StartRunBody, who: Who, c: Temporal) -> operations.StartedRun:
        return await operations.start_run(
            c,
            settings,
            body.playbook,
            body.inputs,
            who.person,
            requested_by_verified=who.verified,
            trusted_keys=signer.trusted_keys(),
        )

    @ops.post("/plans/preview", response_model=PlanPreview)
    async def plan_preview(body: StartRunBody, c: Temporal) -> PlanPreview:
        """What running the playbook now would do, per step, read from the real systems by
        each mutating module's preview; nothing is changed and no run is started."""
        return await operations.preview_plan(c, settings, body.playbook, body.inputs)

    @ops.get("/runs", response_model=list[operations.RunSummary])
    async def runs(
        c: Temporal, limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> list[operations.RunSummary]:
        return await operations.list_runs(c, limit)

    @ops.get("/runs/{workflow_id}", response_model=RunState)
    async def run_status(workflow_id: RunId, c: Temporal) -> RunState:
        return await operations.status(c, workflow_id)

    @ops.get("/runs/{workflow_id}/execution", response_model=operations.RunSummary)
    async def run_execution(workflow_id: RunId, c: Temporal) -> operations.RunSummary:
        """Whether the run is still open and how it closed (``--follow`` stops on it)."""
        return await operations.describe(c, workflow_id)

    @ops.post("/runs/{workflow_id}/steps/{step}/approve", response_model=StepState)
    async def approve(
        workflow_id: RunId, step: StepId, body: GateBody, who: Who, c: Temporal
    ) -> StepState:
        inputs = await step_inputs(c, workflow_id, step, body.seen_digest)
        signed = signer.sign(who, workflow_id, step, "approve", inputs)
        return await operations.approve(c, workflow_id, step, who.person, body.comment, signed)

    @ops.post("/runs/{workflow_id}/steps/{step}/reject", response_model=StepState)
    async def reject(
        workflow_id: RunId, step: StepId, body: GateBody, who: Who, c: Temporal
    ) -> StepState:
        inputs = await step_inputs(c, workflow_id, step, body.seen_digest)
        signed = signer.sign(who, workflow_id, step, "reject", inputs)
        return await operations.reject(c, workflow_id, step, who.person, body.comment, signed)

    @ops.post("/runs/{workflow_id}/steps/{step}/decide", response_model=StepState)
    async def decide(
        workflow_id: RunId, step: StepId, body: DecideBody, who: Who, c: Temporal
    ) -> StepState:
        shown = await step_inputs(c, workflow_id, step, body.seen_digest)
        # A retry's new values are part of what is decided: the signature covers them too.
        inputs = {**shown, **(body.inputs or {})}
        signed = signer.sign(who, workflow_id, step, body.action.value, inputs)
        return await operations.decide(
            c, workflow_id, step, body.action, who.person, body.comment, body.inputs, signed
        )

    @ops.post(
        "/runs/{workflow_id}/cancel",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=CancelAnswer,
    )
    async def cancel(
        workflow_id: RunId, who: Who, c: Temporal, body: CancelBody | None = None
    ) -> CancelAnswer:
        reason = body.reason if body else ""
        signed = signer.sign(who, workflow_id, "", "cancel", None)
        await operations.cancel(c, workflow_id, reason, by=who.person, signed=signed)
        return CancelAnswer(workflow_id=workflow_id)

    app.include_router(ops)
    app.include_router(incidents_api.router)
    # Alert storms take their own lane, past the middleware and routing of the rest.
    alerts_fast_path.mount(
        app, alerts_api.alerts_router(settings, trusted_keys=signer.trusted_keys())
    )
    return app
