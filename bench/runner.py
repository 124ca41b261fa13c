"""Runs every scenario on both sides, alternating which goes first, and collects the samples.

Both sides run in this process, on the same server, with the same worker settings: Fireline
through the product's own worker builder (workflow queue PREFIX, domain queue PREFIX-core),
the raw twins on a workflow queue and an activity queue of their own laid out the same way.
Every sample is checked for the outcome it should have, so a broken run cannot pass as fast.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from rich.console import Console
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from bench import clock, incidents, playbooks, raw, scale
from bench import modules as bench_modules
from bench.report import BenchReport, CpuFigures, HistoryCount, Metric, Scale, Summary, Target
from bench.server import DbName, ProfileName, dev_server
from bench.sink import PageSink, page_sink
from fireline import errors
from fireline.messages import (
    QUERY_STATUS,
    SIGNAL_APPROVE,
    WORKFLOW_NAME,
    RunPhase,
    RunRequest,
    RunResult,
    RunState,
    StepStatus,
    start_attributes,
)
from fireline.operator.operations import plan_details
from fireline.plan import Plan
from fireline.runtime.settings import Settings
from fireline.runtime.workers import (
    SDK_DEFAULTS,
    TUNED,
    WorkerTuning,
    build_workers,
    workflow_runner,
)

RUN_TIMEOUT_S = 300.0
"""No single run (or burst of runs) may take longer than this; the bench fails instead."""
GATE_POLL_S = 0.005
WARMUP_BURST = 20

Start = Callable[[str], Awaitable[WorkflowHandle[Any, Any]]]
T = TypeVar("T")


class BenchFailure(RuntimeError):
    """A run did not end the way its scenario says it must."""


@dataclass
class Options:
    profile: ProfileName = "tuned"
    db: DbName = "sqlite"
    steps: int = 20
    repeat: int = 5
    concurrent: int = 500
    quick: bool = False
    scenarios: tuple[str, ...] = ("core", "incidents", "approvals")
    """``core``: the per-step, gate, saga and concurrency figures; ``incidents``: alert to first
    step, storm, waiting incidents, timers; ``approvals``: signed approvals in bulk."""
    sizes: scale.ScaleSizes = field(default_factory=scale.ScaleSizes)
    worker_tuning: str = "tuned"
    """``tuned``: the product's :data:`TUNED`; ``sdk``: the SDK's defaults (both sides)."""

    @property
    def tuning(self) -> WorkerTuning:
        return TUNED if self.worker_tuning == "tuned" else SDK_DEFAULTS


@dataclass
class Rig:
    """The client, both sides' task queues, and the compiled plans."""

    client: Client
    fireline_queue: str
    raw_queue: str
    plans: dict[str, Plan]
    console: Console
    last: dict[str, WorkflowHandle[Any, Any]] = field(default_factory=dict)

    def fireline(self, plan_name: str) -> Start:
        plan = self.plans[plan_name]
        attributes = start_attributes(plan, "bench")
        # Trusting the bench's signing key, as a run started through the API trusts the API's.
        request = RunRequest(
            plan=plan,
            requested_by="bench",
            task_queue_prefix=self.fireline_queue,
            trusted_keys=incidents.TRUSTED,
        )
        details = plan_details(plan)

        async def start(workflow_id: str) -> WorkflowHandle[Any, Any]:
            # As `fireline run` starts a run: search attributes, summary and details included.
            return await self.client.start_workflow(
                WORKFLOW_NAME,
                request,
                id=workflow_id,
                task_queue=self.fireline_queue,
                search_attributes=attributes,
                static_summary=f"{plan.name} v{plan.version} by bench",
                static_details=details,
                result_type=RunResult,
            )

        return start

    def raw(self, workflow: str, steps: int) -> Start:
        request = raw.RawRequest(steps=steps, task_queue=f"{self.raw_queue}-core")

        async def start(workflow_id: str) -> WorkflowHandle[Any, Any]:
            return await self.client.start_workflow(
                workflow,
                request,
                id=workflow_id,
                task_queue=self.raw_queue,
                result_type=raw.RawResult,
            )

        return start


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _new_id(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:12]}"


async def _outcome(handle: WorkflowHandle[Any, Any], failure_type: str | None) -> None:
    """Wait for the end of a run and insist it ended as expected."""
    try:
        result = await asyncio.wait_for(handle.result(), RUN_TIMEOUT_S)
    except WorkflowFailureError as err:
        cause = err.cause
        if (
            failure_type is not None
            and isinstance(cause, ApplicationError)
            and cause.type == failure_type
        ):
            return
        raise BenchFailure(f"{handle.id} failed unexpectedly: {cause}") from err
    if failure_type is not None:
        raise BenchFailure(f"{handle.id} succeeded but should have failed with {failure_type}")
    if isinstance(result, RunResult) and result.phase is not RunPhase.succeeded:
        raise BenchFailure(f"{handle.id} ended {result.phase.value}: {result.reason}")


@dataclass(frozen=True)
class Timing:
    """One sample: wall time, time to the first activity start, and this process's CPU time.

    The CPU time covers the client and every worker (they all live in this process) but not
    the server: it is the Python-side cost, and far less sensitive to other load on the
    machine than the wall time.
    """

    wall_ms: float
    cpu_ms: float
    first_ms: float | None = None


async def timed_run(rig: Rig, key: str, start: Start, failure_type: str | None = None) -> Timing:
    """Run once from the client's side and insist the first activity started."""
    workflow_id = _new_id(key)
    cpu, began = time.process_time(), time.monotonic()
    handle = await start(workflow_id)
    await _outcome(handle, failure_type)
    ended, cpu = time.monotonic(), time.process_time() - cpu
    first = clock.first_start(workflow_id)
    clock.forget(workflow_id)
    if first is None:
        raise BenchFailure(f"{workflow_id} never started an activity")
    rig.last[key] = handle
    return Timing(wall_ms=_ms(ended - began), cpu_ms=_ms(cpu), first_ms=_ms(first - began))


async def _until_fireline_gate(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """Wait for the gate; the gated step's inputs, which a decision is signed over."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = await handle.query(QUERY_STATUS, result_type=RunState)
        step = state.step(playbooks.GATED_STEP)
        if step.status is StepStatus.awaiting_approval:
            return step.inputs or {}
        await asyncio.sleep(GATE_POLL_S)
    raise BenchFailure(f"{handle.id} never reached its gate")


async def _until_raw_gate(handle: WorkflowHandle[Any, Any]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if await handle.query(raw.QUERY_WAITING, result_type=bool):
            return
        await asyncio.sleep(GATE_POLL_S)
    raise BenchFailure(f"{handle.id} never reached its gate")


async def gate_sample(rig: Rig, side: str) -> float:
    """Time from sending the approval signal to the gated activity starting, in ms.

    Fireline's approval is signed as the API signs it (before the clock starts: that is the
    API's cost), so the run's judge checks the approver's rights and the Ed25519 signature.
    """
    workflow_id = _new_id(f"gate-{side}")
    if side == "fireline":
        handle = await rig.fireline("bench-gate")(workflow_id)
        inputs = await _until_fireline_gate(handle)
        approval = incidents.signed_approval(workflow_id, playbooks.GATED_STEP, inputs)
        sent = time.monotonic()
        await handle.signal(SIGNAL_APPROVE, approval)
    else:
        handle = await rig.raw(raw.GATE, 1)(workflow_id)
        await _until_raw_gate(handle)
        sent = time.monotonic()
        await handle.signal(raw.SIGNAL_APPROVE, raw.RawApproval(approver="bench"))
    await _outcome(handle, None)
    started = clock.first_start(workflow_id)
    clock.forget(workflow_id)
    if started is None:
        raise BenchFailure(f"{workflow_id} never ran its gated step")
    rig.last[f"gate-{side}"] = handle
    return _ms(started - sent)


async def burst(start: Start, count: int, failure_type: str | None = None) -> Timing:
    """Start ``count`` runs at once and wait for all of them."""
    ids = [_new_id("burst") for _ in range(count)]
    cpu, began = time.process_time(), time.monotonic()
    handles = await asyncio.gather(*(start(i) for i in ids))
    await asyncio.gather(*(_outcome(h, failure_type) for h in handles))
    ended, cpu = time.monotonic(), time.process_time() - cpu
    for workflow_id in ids:
        clock.forget(workflow_id)
    return Timing(wall_ms=_ms(ended - began), cpu_ms=_ms(cpu))


def _ordered(round_: int, jobs: list[T]) -> list[T]:
    """Alternate which side goes first, so warm caches and drift favour neither."""
    return jobs if round_ % 2 == 0 else list(reversed(jobs))


async def _history(handle: WorkflowHandle[Any, Any]) -> tuple[Counter[str], list[float]]:
    """Events by type, and how long each workflow task took (started -> completed) in ms."""
    history = await handle.fetch_history()
    counts: Counter[str] = Counter()
    task_ms: list[float] = []
    started: float | None = None
    for event in history.events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        counts[kind] += 1
        at = event.event_time.ToNanoseconds() / 1e6
        if kind == "WORKFLOW_TASK_STARTED":
            started = at
        elif kind == "WORKFLOW_TASK_COMPLETED" and started is not None:
            task_ms.append(at - started)
            started = None
    return counts, task_ms


async def count_history(
    rig: Rig, scenario: str, steps: int, fl_key: str, raw_key: str
) -> HistoryCount:
    fl, fl_tasks = await _history(rig.last[fl_key])
    rw, rw_tasks = await _history(rig.last[raw_key])
    return HistoryCount(
        scenario=scenario,
        steps=steps,
        fireline_events=sum(fl.values()),
        raw_events=sum(rw.values()),
        fireline_workflow_tasks=len(fl_tasks),
        raw_workflow_tasks=len(rw_tasks),
        fireline_task_ms=sum(fl_tasks) / max(len(fl_tasks), 1),
        raw_task_ms=sum(rw_tasks) / max(len(rw_tasks), 1),
        fireline_by_type=dict(sorted(fl.items())),
        raw_by_type=dict(sorted(rw.items())),
    )


@asynccontextmanager
async def workers(
    client: Client, fireline_queue: str, raw_queue: str, sink: PageSink, tuning: WorkerTuning
) -> AsyncIterator[None]:
    """Fireline's workers as the product builds them, and the raw twins' laid out alike, with
    the same tuning and the same workflow runner (the sandbox alone costs a new run tens of
    milliseconds). Fireline pages by webhook to the sink, as the raw twins do."""
    settings = Settings(task_queue_prefix=fireline_queue, notify_webhook_url=sink.url)
    fireline_workers, module_sets = build_workers(
        client, settings, ["core"], registry=bench_modules.REGISTRY, tuning=tuning
    )
    raw_workers = [
        Worker(
            client,
            task_queue=raw_queue,
            workflows=raw.RAW_WORKFLOWS,
            workflow_runner=workflow_runner(settings),
            **tuning.workflow_worker(),
        ),
        Worker(
            client,
            task_queue=f"{raw_queue}-core",
            activities=raw.RAW_ACTIVITIES,
            **tuning.activity_worker(),
        ),
    ]
    async with AsyncExitStack() as stack:
        for module_set in module_sets:
            stack.push_async_callback(module_set.aclose)
        for worker in [*fireline_workers, *raw_workers]:
            await stack.enter_async_context(worker)
        yield


async def measure(rig: Rig, options: Options) -> tuple[dict[str, Metric], list[HistoryCount]]:
    n, say = options.steps, rig.console.print
    noop, checks = f"bench-noop-{n}", f"bench-checks-{n}"
    saga = "bench-saga-10"
    fl_noop, fl_checks = rig.fireline(noop), rig.fireline(checks)
    raw_seq = rig.raw(raw.SEQUENTIAL, n)
    fl_saga, raw_saga = rig.fireline(saga), rig.raw(raw.SAGA, 10)
    fl_burst, raw_burst = rig.fireline("bench-noop-5"), rig.raw(raw.SEQUENTIAL, 5)
    compensated = errors.PLAYBOOK_COMPENSATED

    say("warming up both sides")
    await timed_run(rig, "raw-seq", raw_seq)
    await timed_run(rig, "fl-noop", fl_noop)
    await timed_run(rig, "fl-checks", fl_checks)
    await gate_sample(rig, "raw")
    await gate_sample(rig, "fireline")
    await timed_run(rig, "raw-saga", raw_saga, "BenchCompensated")
    await timed_run(rig, "fl-saga", fl_saga, compensated)
    await burst(raw_burst, min(options.concurrent, WARMUP_BURST))
    await burst(fl_burst, min(options.concurrent, WARMUP_BURST))

    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    async def sequential(key: str, start: Start) -> None:
        timing = await timed_run(rig, key, start)
        add(f"{key}/step", timing.wall_ms / n)
        add(f"{key}/step/cpu", timing.cpu_ms / n)
        assert timing.first_ms is not None  # timed_run always measures it
        add(f"{key}/first", timing.first_ms)

    async def gate(side: str) -> None:
        add(f"gate-{side}", await gate_sample(rig, side))

    async def saga_run(key: str, start: Start, failure: str) -> None:
        timing = await timed_run(rig, key, start, failure)
        add(key, timing.wall_ms)
        add(f"{key}/cpu", timing.cpu_ms)

    async def concurrent(key: str, start: Start) -> None:
        timing = await burst(start, options.concurrent)
        add(key, timing.wall_ms)
        add(f"{key}/cpu", timing.cpu_ms)

    for r in range(options.repeat):
        say(f"round {r + 1}/{options.repeat}: {n} sequential steps")
        for job in _ordered(
            r,
            [
                partial(sequential, "raw-seq", raw_seq),
                partial(sequential, "fl-noop", fl_noop),
                partial(sequential, "fl-checks", fl_checks),
            ],
        ):
            await job()
    for r in range(options.repeat):
        for side in _ordered(r, ["raw", "fireline"]):
            await gate(side)
    say("approval gates done; 10-step runs that roll back 9")
    for r in range(options.repeat):
        for job in _ordered(
            r,
            [
                partial(saga_run, "raw-saga", raw_saga, "BenchCompensated"),
                partial(saga_run, "fl-saga", fl_saga, compensated),
            ],
        ):
            await job()
    for r in range(options.repeat):
        say(f"round {r + 1}/{options.repeat}: {options.concurrent} concurrent runs of 5 steps")
        for job in _ordered(
            r,
            [
                partial(concurrent, "raw-burst", raw_burst),
                partial(concurrent, "fl-burst", fl_burst),
            ],
        ):
            await job()

    def metric(name: str, label: str, fl: str, rw: str, target: Target) -> Metric:
        cpu = None
        if f"{fl}/cpu" in samples:
            cpu = CpuFigures(
                fireline=Summary(samples_ms=samples[f"{fl}/cpu"]),
                raw=Summary(samples_ms=samples[f"{rw}/cpu"]),
            )
        return Metric(
            name=name,
            label=label,
            fireline=Summary(samples_ms=samples[fl]),
            raw=Summary(samples_ms=samples[rw]),
            target=target,
            cpu=cpu,
        )

    metrics = [
        metric(
            "per_step_noop",
            f"per step, {n} no-op steps",
            "fl-noop/step",
            "raw-seq/step",
            Target(kind="ratio", limit=1.1),
        ),
        metric(
            "per_step_checks",
            f"per step, {n} steps with pre+post check",
            "fl-checks/step",
            "raw-seq/step",
            Target(kind="ratio", limit=1.5),
        ),
        metric(
            "start_to_first_step",
            "start -> first step",
            "fl-noop/first",
            "raw-seq/first",
            Target(kind="none"),
        ),
        metric(
            "signal_to_next_step",
            "approval signal -> next step",
            "gate-fireline",
            "gate-raw",
            Target(kind="delta", limit=10),
        ),
        metric(
            "saga_compensation",
            "10 steps, last fails, 9 compensated",
            "fl-saga",
            "raw-saga",
            Target(kind="ratio", limit=1.2),
        ),
        metric(
            "concurrent_runs",
            f"{options.concurrent} concurrent runs of 5 steps (wall)",
            "fl-burst",
            "raw-burst",
            Target(kind="ratio", limit=1.2),
        ),
    ]
    say("counting history events")
    history = [
        await count_history(rig, "no-op steps", n, "fl-noop", "raw-seq"),
        await count_history(rig, "checked steps", n, "fl-checks", "raw-seq"),
        await count_history(rig, "approval gate", 1, "gate-fireline", "gate-raw"),
        await count_history(rig, "saga of 10", 10, "fl-saga", "raw-saga"),
    ]
    return {m.name: m for m in metrics}, history


async def _guarded(
    name: str, work: Awaitable[list[Scale]], say: Callable[[str], None]
) -> list[Scale]:
    """Run one scale scenario; one that fails or overruns is reported as such, not hidden."""
    try:
        return await asyncio.wait_for(work, scale.SCENARIO_TIMEOUT_S)
    except Exception as err:  # a scenario's failure is a figure too
        why = "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}"
        say(f"  [red]{name} did not finish[/red]: {why}")
        return [
            Scale(
                name=f"{name}_failed",
                label=f"{name}: did not finish within {scale.SCENARIO_TIMEOUT_S:.0f} s",
                unit="ms",
                fireline=None,
                raw=None,
                target=Target(kind="none"),
                note=why[:300],
            )
        ]


async def measure_scale(
    rig: Rig, sink: PageSink, options: Options
) -> tuple[dict[str, Metric], list[Scale]]:
    """The incident scenarios (issue 6) and signed approvals in bulk (issue 5)."""
    say = rig.console.print
    srig = scale.ScaleRig(
        client=rig.client,
        fireline_queue=rig.fireline_queue,
        raw_queue=rig.raw_queue,
        plans=rig.plans,
        sink=sink,
        console=rig.console,
    )
    sizes = options.sizes
    metrics: dict[str, Metric] = {}
    figures: list[Scale] = []
    if "approvals" in options.scenarios:
        say(f"approvals: {sizes.approvals} signed approvals in a burst")
        figures += await _guarded(
            "bulk_approvals",
            scale.bulk_approvals(srig, rig.fireline("bench-gate"), sizes.approvals),
            say,
        )
    if "incidents" in options.scenarios:
        say("incidents: alert -> first playbook step")
        opened: list[WorkflowHandle[Any, Any]] = []
        for side in ("raw", "fireline"):  # warm-up
            await scale.alert_to_first_step(srig, side, opened)
        samples: dict[str, list[float]] = {"raw": [], "fireline": []}
        for r in range(options.repeat):
            for side in _ordered(r, ["raw", "fireline"]):
                samples[side].append(await scale.alert_to_first_step(srig, side, opened))
        await incidents.terminate_all([h for h in opened if not h.id.startswith("raw-")])
        metrics["alert_to_first_step"] = Metric(
            name="alert_to_first_step",
            label="alert (signal-with-start) -> first playbook step",
            fireline=Summary(samples_ms=samples["fireline"]),
            raw=Summary(samples_ms=samples["raw"]),
            target=Target(kind="delta", limit=15),
        )
        # Heaviest last: a scenario that wedges the workflow worker would spoil the ones after.
        say(f"incidents: {sizes.timers} escalation timers ({sizes.timer_delay_s:g} s)")
        figures += await _guarded(
            "timers", scale.timers_firing(srig, sizes.timers, sizes.timer_delay_s), say
        )
        say(f"incidents: {sizes.waiting} waiting at gates")
        figures += await _guarded("waiting", scale.waiting_at_gates(srig, sizes.waiting), say)
    if "incidents" in options.scenarios or "storm" in options.scenarios:
        say(f"incidents: a storm of {sizes.storm}")
        figures += await _guarded("storm", scale.storm(srig, sizes.storm), say)
    return metrics, figures


async def run_bench(options: Options, console: Console) -> BenchReport:
    began = time.monotonic()
    n = options.steps
    docs = [
        playbooks.noop(n),
        playbooks.checked(n),
        playbooks.gated(),
        playbooks.saga(10),
    ]
    docs += [playbooks.noop(k) for k in (5, 1) if k != n]
    plans = await asyncio.to_thread(playbooks.compile_all, docs)
    console.print(
        f"starting a {options.profile}/{options.db} dev server (load {os.getloadavg()[0]:.2f})"
    )
    metrics: dict[str, Metric] = {}
    history: list[HistoryCount] = []
    figures: list[Scale] = []
    async with dev_server(options.profile, options.db) as (env, profile), page_sink() as sink:
        suffix = uuid.uuid4().hex[:8]
        rig = Rig(
            client=env.client,
            fireline_queue=f"bench-fl-{suffix}",
            raw_queue=f"bench-raw-{suffix}",
            plans=plans,
            console=console,
        )
        async with workers(env.client, rig.fireline_queue, rig.raw_queue, sink, options.tuning):
            if "core" in options.scenarios:
                metrics, history = await measure(rig, options)
            more, figures = await measure_scale(rig, sink, options)
            metrics.update(more)
    clock.reset()
    return BenchReport(
        server=profile,
        python=platform.python_version(),
        temporalio=importlib.metadata.version("temporalio"),
        bytecode_cache=not sys.dont_write_bytecode,
        steps=n,
        repeat=options.repeat,
        concurrent=options.concurrent,
        quick=options.quick,
        metrics=metrics,
        history=history,
        scale=figures,
        worker_tuning=options.worker_tuning,
        scenarios=list(options.scenarios),
        duration_s=time.monotonic() - began,
        load_average_end=os.getloadavg(),
    )
