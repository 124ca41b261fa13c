"""The worker process: one Temporal worker for workflows, one per domain.

Domains get their own task queues so each can run where its credentials live (the database
worker next to the database, say) and be scaled or stopped without touching the others. The
workflow worker also serves every *local* check, because a local activity runs in the worker
that runs the workflow task. ``worker.py`` at the repository root is the command-line entry;
:func:`run_workers` is the same thing in-process, for the dev-server runner and the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import structlog
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from fireline.incident import GUARD_QUEUE_SUFFIX
from fireline.modules import ModuleSet, Registry, bind_activities, load_registry
from fireline.runtime.client import make_client
from fireline.runtime.interceptors import LogContextInterceptor
from fireline.runtime.logging import configure_logging
from fireline.runtime.settings import DOMAINS, Settings, get_settings

__all__ = [
    "GRACEFUL_SHUTDOWN",
    "SDK_DEFAULTS",
    "TUNED",
    "WorkerTuning",
    "build_workers",
    "exit_process",
    "main",
    "parse_domains",
    "run_workers",
    "served_task_queues",
]

GRACEFUL_SHUTDOWN = timedelta(seconds=10)
"""How long running activities get to finish after a stop before they are cancelled."""
GUARD_POLLERS = 2
"""Guards are few (one per service) and their tasks small: two pollers keep one ready."""

log = structlog.get_logger("fireline.worker")


@dataclass(frozen=True)
class WorkerTuning:
    """Poller, cache and sticky-queue settings of the workers (``bench/`` storm scenario).

    - ``workflow_task_polls=8`` (SDK: 5): a storm of new incidents puts hundreds of workflow
      tasks on the shared (non-sticky) queue at once; each poll is a long-poll round trip to
      the server, so more pollers keep the worker fed while the queue is full. Not many more:
      on two cores the worker's own CPU (one interpreter running every activation) is the
      limit, and each extra poller is one more concurrent activation competing for it.
    - ``workflow_task_slots=None`` (SDK: 100 at once), deliberately not lower: an incident's
      ``core.guard_admit`` is a local activity, which keeps its workflow task (and slot) open
      while it waits for an update on the GuardWorkflow, whose task needs a slot on this same
      worker. With 8 slots a storm of 20 incidents starved the guards and stalled until the
      local activity's 30 s timeout.
    - ``max_cached_workflows=2500`` (SDK: 1000): an open incident with a run is two workflows
      (plus a guard per service), so a thousand open incidents are over two thousand; a
      smaller cache evicts and replays whole histories on every signal, timer and poll. The
      cost is memory, which the bench reports (RSS with incidents waiting at gates).
    - ``sticky_queue_schedule_to_start_timeout=3 s`` (SDK: 10 s): after a worker dies
      (SIGKILL, OOM) the server keeps offering a decision of a run it had cached to that
      worker's sticky queue until this passes; 10 s is ten seconds of an incident standing
      still. Much lower would fall back (and replay from scratch) whenever a busy worker on two
      cores is slow to poll in a storm, so 3 s, not 1 s.
    - ``activity_task_polls=8`` (SDK: 5): the domain queues get the same burst (a first step per
      run, a page per incident); the activities are short, so polling is what limits them.
    """

    workflow_task_polls: int | None = 8
    workflow_task_slots: int | None = None
    max_cached_workflows: int = 2500
    sticky_queue_schedule_to_start_timeout: timedelta = timedelta(seconds=3)
    activity_task_polls: int | None = 8

    def workflow_worker(self) -> dict[str, Any]:
        """Keyword arguments for a workflow worker (``Worker(**...)``)."""
        return {
            "max_concurrent_workflow_task_polls": self.workflow_task_polls,
            "max_concurrent_workflow_tasks": self.workflow_task_slots,
            "max_cached_workflows": self.max_cached_workflows,
            "sticky_queue_schedule_to_start_timeout": self.sticky_queue_schedule_to_start_timeout,
            "max_concurrent_activity_task_polls": self.activity_task_polls,
        }

    def activity_worker(self) -> dict[str, Any]:
        """Keyword arguments for an activity-only worker."""
        return {"max_concurrent_activity_task_polls": self.activity_task_polls}


TUNED = WorkerTuning()
"""What the product runs with (see :class:`WorkerTuning` for why)."""
SDK_DEFAULTS = WorkerTuning(
    workflow_task_polls=None,
    workflow_task_slots=None,
    max_cached_workflows=1000,
    sticky_queue_schedule_to_start_timeout=timedelta(seconds=10),
    activity_task_polls=None,
)
"""The SDK's own defaults, for the bench's before/after comparison."""


def parse_domains(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"platform, database"`` -> ``("platform", "database")``, refusing unknown names."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise ValueError(f"no domain given; choose from {', '.join(DOMAINS)}")
    unknown = [name for name in names if name not in DOMAINS]
    if unknown:
        raise ValueError(
            f"unknown domain {', '.join(map(repr, unknown))}; choose from {', '.join(DOMAINS)}"
        )
    return tuple(dict.fromkeys(names))


def served_task_queues(
    settings: Settings, domains: Sequence[str], *, workflows: bool = True
) -> list[str]:
    """The queues :func:`run_workers` will poll: domains without activities are left out."""
    domains = parse_domains(domains) if domains else ()
    registry = load_registry(DOMAINS if workflows else domains)
    queues = [settings.workflow_task_queue] if workflows else []
    queues += [
        settings.domain_task_queue(d)
        for d in domains
        if registry.for_worker([d], local_checks=False)
    ]
    return queues


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """Temporal's sandbox only where settings ask for it (``FIRELINE_WORKFLOW_SANDBOX``): it
    re-imports the workflow's modules for every new run, tens of milliseconds on each first
    task, which an incident storm pays a thousand times."""
    return SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()


def build_workers(
    client: Client,
    settings: Settings,
    domains: Sequence[str],
    *,
    workflows: bool = True,
    registry: Registry | None = None,
    tuning: WorkerTuning = TUNED,
) -> tuple[list[Worker], list[ModuleSet]]:
    """Construct (not start) the workers, and the module sets they hold for closing later.

    ``registry`` defaults to the installed domain packages; the bench passes its own (and
    ``tuning``, to compare with the SDK's defaults)."""
    domains = parse_domains(domains) if domains else ()
    # The workflow worker serves the local checks of every domain, so it loads them all.
    if registry is None:
        registry = load_registry(DOMAINS if workflows else domains)
    interceptors = [LogContextInterceptor()]
    workers: list[Worker] = []
    instances: list[ModuleSet] = []
    if workflows:
        from workflows import WORKFLOWS
        from workflows.guard import GuardWorkflow

        checks, sets = bind_activities(registry.for_worker([], local_checks=True), settings)
        instances += sets

        workers.append(
            Worker(
                client,
                task_queue=settings.workflow_task_queue,
                workflows=WORKFLOWS,
                activities=checks,
                workflow_runner=workflow_runner(settings),
                interceptors=interceptors,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                **tuning.workflow_worker(),
            )
        )
        workers.append(
            Worker(
                client,
                task_queue=settings.workflow_task_queue + GUARD_QUEUE_SUFFIX,
                workflows=[GuardWorkflow],
                workflow_runner=workflow_runner(settings),
                interceptors=interceptors,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                max_concurrent_workflow_task_polls=GUARD_POLLERS,
            )
        )
    for domain in domains:
        activities, sets = bind_activities(
            registry.for_worker([domain], local_checks=False), settings
        )
        instances += sets
        if not activities:
            # Temporal refuses a worker with nothing to serve; an empty domain is not an error.
            log.warning("domain has no activities; not polling", domain=domain)
            continue
        workers.append(
            Worker(
                client,
                task_queue=settings.domain_task_queue(domain),
                activities=activities,
                interceptors=interceptors,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                **tuning.activity_worker(),
            )
        )
    if not workers:
        raise ValueError("nothing to run: no workflows and no domain with activities")
    return workers, instances


async def run_workers(
    settings: Settings,
    domains: Sequence[str] = DOMAINS,
    *,
    workflows: bool = True,
    stop: asyncio.Event | None = None,
    client: Client | None = None,
) -> None:
    """Run the workers until ``stop`` is set (or one fails), then drain and close everything.

    A worker that fails fatally stops the others too, and its error is raised: a half-running
    worker process would leave some task queues silently unserved.
    """
    stop = stop or asyncio.Event()
    client = client or await make_client(settings)
    workers, instances = build_workers(client, settings, domains, workflows=workflows)
    tokens = structlog.contextvars.bind_contextvars(worker=client.identity)
    queues = [w.task_queue for w in workers]
    tasks = [asyncio.create_task(w.run(), name=f"worker:{w.task_queue}") for w in workers]
    stopped = asyncio.create_task(stop.wait())
    try:
        log.info("workers started", task_queues=queues, namespace=client.namespace)
        await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not stopped.done():
            log.error("a worker stopped unexpectedly; shutting the others down")
    finally:
        stopped.cancel()
        log.info("draining workers", task_queues=queues)
        # Shielded: a cancelled caller still gets its activities drained, not abandoned.
        results = await asyncio.shield(_drain(workers, tasks, instances))
        structlog.contextvars.reset_contextvars(**tokens)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise failures[0]
    log.info("workers stopped", task_queues=queues)


async def _drain(
    workers: list[Worker], tasks: list[asyncio.Task[None]], instances: list[ModuleSet]
) -> list[BaseException | None]:
    await asyncio.gather(*(w.shutdown() for w in workers))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for instance in instances:
        try:
            await instance.aclose()
        except Exception:
            log.exception("closing module set failed", module_set=type(instance).__name__)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker.py", description="Run Fireline's Temporal workers."
    )
    parser.add_argument(
        "--domains",
        default=",".join(DOMAINS),
        help=f"comma-separated domains to serve (default: {','.join(DOMAINS)})",
    )
    parser.add_argument(
        "--no-workflows",
        dest="workflows",
        action="store_false",
        help="do not run the workflow worker (domain activities only)",
    )
    return parser


async def _serve(settings: Settings, domains: tuple[str, ...], workflows: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_workers(settings, domains, workflows=workflows, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python worker.py``: 0 after a graceful SIGINT/SIGTERM stop, 1 on failure
    (Temporal unreachable, a worker's fatal error), 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        domains = parse_domains(args.domains)
    except ValueError as exc:
        parser.error(str(exc))
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    log.info(
        "starting workers",
        temporal=settings.temporal_address,
        namespace=settings.temporal_namespace,
        domains=list(domains),
        workflows=args.workflows,
    )
    try:
        asyncio.run(_serve(settings, domains, args.workflows))
    except KeyboardInterrupt:  # before the loop's own handlers were installed
        return 130
    except Exception as exc:
        if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
            # An operator's everyday mistake: say what and where, without a stack trace.
            log.error("cannot reach Temporal", temporal=settings.temporal_address, error=str(exc))
        else:
            log.exception("workers failed", temporal=settings.temporal_address)
        return 1
    return 0


def exit_process(code: int) -> NoReturn:
    """Flush logs and output, then leave without interpreter finalization.

    The Temporal SDK's Rust threads can still touch the GIL while CPython finalizes, which
    aborts the process (SIGABRT) now and then after a perfectly clean shutdown
    (temporalio/sdk-python#300). Everything that matters is done by the time this runs.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
