"""The incident and bulk-approval scenarios (issues 5 and 6), each against its raw twin.

Every scenario opens what it needs, measures, and terminates whatever it left open, so the
next one starts on an empty worker cache. Sizes come from :class:`ScaleSizes` (``--quick``
makes them small).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from rich.console import Console
from temporalio.client import Client, WorkflowHandle

from bench import clock, incidents, playbooks, raw
from bench.incidents import Incidents, bounded, rss_mb, server_pid, terminate_all
from bench.report import Scale, Target
from bench.sink import PageSink
from fireline.incident import IncidentState
from fireline.messages import RunResult
from fireline.plan import Plan

SCENARIO_TIMEOUT_S = 300.0
"""A scale scenario that has not finished by then is reported as not finished."""
START_CONCURRENCY = 200
"""Client calls in flight when a scenario opens many workflows (the storm opens all at once)."""
QUERY_CONCURRENCY = 50
APPROVAL_CONCURRENCY = 50
"""Approvals in flight in the bulk burst: what a busy API process would send at once."""


@dataclass(frozen=True)
class ScaleSizes:
    storm: int = 1000
    waiting: int = 1000
    timers: int = 1000
    timer_delay_s: float = 30.0
    approvals: int = 1000


QUICK_SIZES = ScaleSizes(storm=20, waiting=20, timers=20, timer_delay_s=3.0, approvals=20)


def _p(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _key(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:12]}"


@dataclass
class ScaleRig:
    client: Client
    fireline_queue: str
    raw_queue: str
    plans: dict[str, Plan]
    sink: PageSink
    console: Console

    def incidents(self, delay_s: float = 900.0) -> Incidents:
        return Incidents(
            client=self.client,
            fireline_queue=self.fireline_queue,
            raw_queue=self.raw_queue,
            catalog=incidents.catalog(delay_s),
            sink=self.sink,
        )


async def alert_to_first_step(rig: ScaleRig, side: str, opened: list[Any]) -> float:
    """One sample: signal-with-start of an incident to its run's first activity, in ms."""
    inc = rig.incidents()
    key = _key(f"alert-{side}")
    began = time.monotonic()
    if side == "fireline":
        handle = await inc.open(key, rig.plans["bench-noop-1"])
        (at,) = await incidents.until_started([handle.id], prefix=True)
    else:
        handle = await inc.open_raw(key)
        (at,) = await incidents.until_started([handle.id], prefix=False)
    opened.append(handle)
    return (at - began) * 1000.0


async def storm(rig: ScaleRig, n: int) -> list[Scale]:
    """N incidents opened at once: time until every one has started its first step."""
    inc = rig.incidents()
    figures: dict[str, tuple[float, float]] = {}
    for side in ("raw", "fireline"):
        keys = [_key(f"storm-{side}") for _ in range(n)]
        began = time.monotonic()
        if side == "fireline":
            plan = rig.plans["bench-noop-1"]
            handles = await bounded(START_CONCURRENCY, [partial(inc.open, k, plan) for k in keys])
        else:
            handles = await bounded(START_CONCURRENCY, [partial(inc.open_raw, k) for k in keys])
        opened = time.monotonic()
        starts = await incidents.until_started([h.id for h in handles], prefix=side == "fireline")
        figures[side] = ((max(starts) - began) * 1000.0, n / (opened - began))
        rig.console.print(
            f"  storm {side}: {n} opened in {opened - began:.1f} s, "
            f"all first steps after {figures[side][0] / 1000:.1f} s"
        )
        if side == "fireline":
            await terminate_all(handles)
    return [
        Scale(
            name="storm_all_first_steps",
            label=f"storm: {n} incidents opened at once, until every first step started",
            unit="ms",
            fireline=figures["fireline"][0],
            raw=figures["raw"][0],
            target=Target(kind="ratio", limit=1.2),
        ),
        Scale(
            name="storm_open_rate",
            label=f"storm: signal-with-start calls/s while opening {n}",
            unit="/s",
            fireline=figures["fireline"][1],
            raw=figures["raw"][1],
            target=Target(kind="none"),
        ),
    ]


async def waiting_at_gates(rig: ScaleRig, n: int) -> list[Scale]:
    """N open incidents, each with its run waiting at a gate and its ladder's timer armed:
    worker (this process) and server RSS. The raw twin, measured first: N gates waiting."""
    pid = server_pid()

    def server() -> float:
        return rss_mb(pid) if pid else 0.0

    def worker() -> float:
        return rss_mb(os.getpid())

    base_w, base_s = worker(), server()
    raw_handles = await bounded(
        START_CONCURRENCY,
        [partial(_start_raw_gate, rig, _key("wait-raw")) for _ in range(n)],
    )
    await bounded(QUERY_CONCURRENCY, [partial(_until_raw_waiting, h) for h in raw_handles])
    raw_w, raw_s = worker(), server()
    raw_growth = (raw_w - base_w, raw_s - base_s)
    await terminate_all(raw_handles)

    inc = rig.incidents()
    plan = rig.plans["bench-gate"]
    base_w, base_s = worker(), server()
    began = time.monotonic()
    handles = await bounded(
        START_CONCURRENCY, [partial(inc.open, _key("wait"), plan) for _ in range(n)]
    )
    # Held: the run waits at its gate, the ladder has paged its first rung and armed the next.
    states: list[IncidentState] = await bounded(
        QUERY_CONCURRENCY,
        [partial(incidents.until_incident, h, _run_started) for h in handles],
    )
    runs = [rig.client.get_workflow_handle(s.run.workflow_id) for s in states if s.run.workflow_id]
    await bounded(
        QUERY_CONCURRENCY,
        [partial(incidents.until_run_gate, r, playbooks.GATED_STEP) for r in runs],
    )
    await incidents.until_paged(rig.sink, [h.id for h in handles], 1)
    held = time.monotonic() - began
    fl_w, fl_s = worker(), server()
    rig.console.print(
        f"  {n} incidents at their gates after {held:.1f} s: worker RSS {fl_w:.0f} MB, "
        f"server RSS {fl_s:.0f} MB"
    )
    await terminate_all([*handles, *runs])
    return [
        Scale(
            name="waiting_worker_rss",
            label=f"{n} incidents waiting at gates: worker process RSS (raw: {n} bare gates)",
            unit="MB",
            fireline=fl_w,
            raw=raw_w,
            target=Target(kind="none"),
            note=f"grew {fl_w - base_w:+.0f} MB vs raw {raw_growth[0]:+.0f} MB; "
            "one process holds both sides' workers and the client",
        ),
        Scale(
            name="waiting_server_rss",
            label=f"{n} incidents waiting at gates: server RSS (raw: {n} bare gates)",
            unit="MB",
            fireline=fl_s,
            raw=raw_s,
            target=Target(kind="none"),
            note=f"grew {fl_s - base_s:+.0f} MB vs raw {raw_growth[1]:+.0f} MB",
        ),
        Scale(
            name="waiting_all_held",
            label=f"{n} incidents opened until every run waits at its gate, first rung paged",
            unit="ms",
            fireline=held * 1000.0,
            raw=None,
            target=Target(kind="none"),
        ),
    ]


async def _start_raw_gate(rig: ScaleRig, key: str) -> WorkflowHandle[Any, Any]:
    """The raw gate twin: waits for an approval (signal or update) under a 15-minute timer."""
    return await rig.client.start_workflow(
        raw.GATE,
        raw.RawRequest(steps=1, task_queue=f"{rig.raw_queue}-core"),
        id=key,
        task_queue=rig.raw_queue,
        result_type=raw.RawResult,
    )


def _run_started(state: IncidentState) -> bool:
    return state.run.workflow_id is not None and state.escalation.next_at is not None


async def _until_raw_waiting(handle: WorkflowHandle[Any, Any]) -> None:
    deadline = time.monotonic() + incidents.TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if await handle.query(raw.QUERY_WAITING, result_type=bool):
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{handle.id} never waited")


async def timers_firing(rig: ScaleRig, n: int, delay_s: float) -> list[Scale]:
    """N incidents page tier 1 when opened and tier 2 ``delay_s`` later, all at about the same
    time: from the first tier-2 page due to the last delivered. Raw: page, timer, page."""
    inc = rig.incidents(delay_s)
    figures: dict[str, tuple[float, float]] = {}
    for side in ("raw", "fireline"):
        keys = [_key(f"ladder-{side}") for _ in range(n)]
        if side == "fireline":
            handles = await bounded(START_CONCURRENCY, [partial(inc.open, k, None) for k in keys])
        else:
            handles = await bounded(
                START_CONCURRENCY, [partial(inc.open_ladder_raw, k, delay_s) for k in keys]
            )
        ids = [h.id for h in handles]
        first = await incidents.until_paged(rig.sink, ids, 1)
        second = await incidents.until_paged(rig.sink, ids, 2)
        due = [f + delay_s for f in first]
        span = (max(second) - min(due)) * 1000.0
        late = max(s - d for s, d in zip(second, due, strict=True)) * 1000.0
        figures[side] = (span, late)
        rig.console.print(
            f"  {n} timers {side}: all tier-2 pages {span / 1000:.2f} s after the first was due, "
            f"worst page {late:.0f} ms late"
        )
        if side == "fireline":
            await terminate_all(handles)
    return [
        Scale(
            name="timers_all_paged",
            label=f"{n} escalation timers firing together: first due -> every page sent",
            unit="ms",
            fireline=figures["fireline"][0],
            raw=figures["raw"][0],
            target=Target(kind="ratio", limit=1.2),
        ),
        Scale(
            name="timers_worst_lateness",
            label=f"{n} escalation timers: the latest page, after its own due time",
            unit="ms",
            fireline=figures["fireline"][1],
            raw=figures["raw"][1],
            target=Target(kind="none"),
        ),
    ]


async def bulk_approvals(rig: ScaleRig, start_run: Any, n: int) -> list[Scale]:
    """N runs waiting at a gate, approved in one burst of signed updates (at most
    :data:`APPROVAL_CONCURRENCY` in flight): approvals/s and p95, vs a raw update twin."""
    figures: dict[str, tuple[float, float, float]] = {}
    for side in ("raw", "fireline"):
        keys = [_key(f"approve-{side}") for _ in range(n)]
        if side == "fireline":
            handles = await bounded(START_CONCURRENCY, [partial(start_run, k) for k in keys])
            steps = await bounded(
                QUERY_CONCURRENCY,
                [partial(incidents.until_run_gate, h, playbooks.GATED_STEP) for h in handles],
            )
            jobs = [
                partial(incidents.approve_update, h, s.inputs or {})
                for h, s in zip(handles, steps, strict=True)
            ]
        else:
            handles = await bounded(
                START_CONCURRENCY,
                [partial(_start_raw_gate, rig, k) for k in keys],
            )
            await bounded(QUERY_CONCURRENCY, [partial(_until_raw_waiting, h) for h in handles])
            jobs = [partial(incidents.approve_raw_update, h) for h in handles]
        began = time.monotonic()
        latencies = await bounded(APPROVAL_CONCURRENCY, jobs)
        wall = time.monotonic() - began
        results = await asyncio.gather(*(h.result() for h in handles))
        if side == "fireline":
            bad = [r for r in results if isinstance(r, RunResult) and r.phase.value != "succeeded"]
            if bad:
                raise RuntimeError(f"{len(bad)} approved runs did not succeed: {bad[0].reason}")
        for h in handles:
            clock.forget(h.id)
        figures[side] = (n / wall, _p(latencies, 0.95), _p(latencies, 0.5))
        rig.console.print(
            f"  {n} approvals {side}: {n / wall:.0f}/s, p50 {figures[side][2]:.0f} ms, "
            f"p95 {figures[side][1]:.0f} ms"
        )
    return [
        Scale(
            name="bulk_approvals_rate",
            label=f"{n} signed approvals in a burst ({APPROVAL_CONCURRENCY} in flight): per second",
            unit="/s",
            fireline=figures["fireline"][0],
            raw=figures["raw"][0],
            target=Target(kind="none"),
        ),
        Scale(
            name="bulk_approvals_p95",
            label=f"{n} signed approvals in a burst: p95 update latency",
            unit="ms",
            fireline=figures["fireline"][1],
            raw=figures["raw"][1],
            target=Target(kind="none"),
        ),
        Scale(
            name="bulk_approvals_p50",
            label=f"{n} signed approvals in a burst: p50 update latency",
            unit="ms",
            fireline=figures["fireline"][2],
            raw=figures["raw"][2],
            target=Target(kind="none"),
        ),
    ]
