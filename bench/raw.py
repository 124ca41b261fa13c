"""The raw twins: plain Temporal workflows and activities, written as one would by hand.

They use the same pydantic converter, server, worker settings, activity timeouts and retry
policies as Fireline's defaults (60 s start-to-close, 3 attempts from 1 s doubling to 30 s;
5 attempts for compensations), so the only difference the bench sees is Fireline itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from bench import clock
    from bench.modules import FAILURE_TYPE, Token

SEQUENTIAL = "BenchRawSequential"
GATE = "BenchRawGate"
SAGA = "BenchRawSaga"
SIGNAL_APPROVE = "approve"
UPDATE_APPROVE = "approve_update"
QUERY_WAITING = "waiting"
INCIDENT = "BenchRawIncident"
LADDER = "BenchRawLadder"
SIGNAL_ALERTS = "alerts"

TIMEOUT = timedelta(seconds=60)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=["InvalidInput", "TargetRefused"],
)
UNDO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=["InvalidInput", "TargetRefused"],
)


class RawRequest(BaseModel):
    steps: int
    task_queue: str


class RawResult(BaseModel):
    done: int


class RawApproval(BaseModel):
    approver: str


class RawAlerts(BaseModel):
    """What the raw incident twin is signalled with: an opaque batch of alert ids."""

    batch_id: str
    alerts: list[str] = []


class RawLadderRequest(BaseModel):
    """Page, wait ``delay_s`` on a timer, page again (to ``url``, as Fireline's webhook)."""

    url: str
    delay_s: float
    task_queue: str


class RawPage(BaseModel):
    url: str
    thread: str


_http: Any = None
"""An ``httpx.AsyncClient``, made on first use (httpx stays out of the workflow sandbox)."""


@activity.defn(name="bench.raw.page")
async def raw_page(request: RawPage) -> bool:
    """One webhook POST, as ``core.page`` sends it (one pooled client per worker)."""
    global _http
    if _http is None:
        import httpx

        _http = httpx.AsyncClient(timeout=10.0)
    response = await _http.post(
        request.url, json={"thread": request.thread}, headers={"X-Fireline-Thread": request.thread}
    )
    response.raise_for_status()
    return True


@activity.defn(name="bench.raw.noop")
async def raw_noop(request: Token) -> Token:
    clock.mark(activity.info().workflow_id)
    return Token(key=request.key, n=request.n + 1)


@activity.defn(name="bench.raw.undo")
async def raw_undo(request: Token) -> Token:
    return Token(key=request.key, n=request.n - 1)


@activity.defn(name="bench.raw.fail")
async def raw_fail(request: Token) -> Token:
    raise ApplicationError(f"bench step {request.key} fails", type=FAILURE_TYPE, non_retryable=True)


RAW_ACTIVITIES: list[Callable[..., Any]] = [raw_noop, raw_undo, raw_fail, raw_page]


async def _step(
    request: RawRequest,
    fn: Callable[[Token], Awaitable[Token]],
    key: str,
    retry: RetryPolicy = RETRY,
) -> Token:
    return await workflow.execute_activity(
        fn,
        Token(key=key),
        task_queue=request.task_queue,
        start_to_close_timeout=TIMEOUT,
        retry_policy=retry,
    )


@workflow.defn(name=SEQUENTIAL)
class RawSequential:
    """N activities, one after another."""

    @workflow.run
    async def run(self, request: RawRequest) -> RawResult:
        for i in range(request.steps):
            await _step(request, raw_noop, f"s{i + 1}")
        return RawResult(done=request.steps)


@workflow.defn(name=GATE)
class RawGate:
    """Wait for an approval signal (with a deadline, as a gate has), then act once."""

    def __init__(self) -> None:
        self._approved = False
        self._waiting = False

    @workflow.run
    async def run(self, request: RawRequest) -> RawResult:
        self._waiting = True
        await workflow.wait_condition(lambda: self._approved, timeout=timedelta(minutes=15))
        self._waiting = False
        await _step(request, raw_noop, "gated")
        return RawResult(done=1)

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, approval: RawApproval) -> None:
        self._approved = True

    @workflow.update(name=UPDATE_APPROVE)
    def approve_update(self, approval: RawApproval) -> bool:
        """The update twin of Fireline's approve update: no signature, no judge."""
        self._approved = True
        return True

    @workflow.query(name=QUERY_WAITING)
    def waiting(self) -> bool:
        return self._waiting


@workflow.defn(name=SAGA)
class RawSaga:
    """N-1 steps that each push an undo, then a failing step: undo in reverse and fail."""

    @workflow.run
    async def run(self, request: RawRequest) -> RawResult:
        undo: list[str] = []
        try:
            for i in range(request.steps - 1):
                key = f"s{i + 1}"
                await _step(request, raw_noop, key)
                undo.append(key)
            await _step(request, raw_fail, f"s{request.steps}")
        except ActivityError as err:
            for key in reversed(undo):
                await _step(request, raw_undo, key, UNDO_RETRY)
            raise ApplicationError(
                f"rolled back {len(undo)}", type="BenchCompensated", non_retryable=True
            ) from err
        return RawResult(done=request.steps)


@workflow.defn(name=INCIDENT)
class RawIncident:
    """Signal-with-start twin of an incident: wait for the alerts signal, then act once."""

    def __init__(self) -> None:
        self._alerts = 0

    @workflow.run
    async def run(self, request: RawRequest) -> RawResult:
        await workflow.wait_condition(lambda: self._alerts > 0)
        await _step(request, raw_noop, "first")
        return RawResult(done=1)

    @workflow.signal(name=SIGNAL_ALERTS)
    def alerts(self, batch: RawAlerts) -> None:
        self._alerts += 1


@workflow.defn(name=LADDER)
class RawLadder:
    """An escalation by hand: page, a timer, page again."""

    @workflow.run
    async def run(self, request: RawLadderRequest) -> RawResult:
        page = RawPage(url=request.url, thread=workflow.info().workflow_id)
        for i in range(2):
            if i:
                await workflow.sleep(timedelta(seconds=request.delay_s))
            await workflow.execute_activity(
                raw_page,
                page,
                task_queue=request.task_queue,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RETRY,
            )
        return RawResult(done=2)


RAW_WORKFLOWS = [RawSequential, RawGate, RawSaga, RawIncident, RawLadder]
