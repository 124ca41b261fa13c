"""worker.py as a real process, run_workers in-process, and the log-context interceptor.

All of them poll the session ``env`` server on task queues with a fresh prefix, so they never
take work meant for another test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from temporalio import activity, workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from fireline.modules import Registry
from fireline.runtime.interceptors import LogContextInterceptor
from fireline.runtime.settings import DOMAINS, Settings
from fireline.runtime.workers import build_workers, parse_domains, run_workers

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
ACTIVITY = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY


async def pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> int:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return len(response.pollers)


async def wait_for_pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> bool:
    """True once the server sees a poller on the queue; False after ~60 s."""
    for _ in range(300):
        if await pollers(client, queue, kind):
            return True
        await asyncio.sleep(0.2)
    return False


def worker_env(env: WorkflowEnvironment, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "FIRELINE_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "FIRELINE_TEMPORAL_NAMESPACE": env.client.namespace,
        "FIRELINE_TASK_QUEUE_PREFIX": prefix,
        "FIRELINE_LOG_FORMAT": "json",
    }


async def start_worker(
    env: WorkflowEnvironment, prefix: str, cwd: Path, *args: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        *args,
        cwd=cwd,  # away from any fireline.toml in the repository
        env=worker_env(env, prefix),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def json_lines(stderr: bytes) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.decode().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.fixture
async def stop_on_exit() -> Any:
    """Collects worker processes and kills any the test left running (by its own PID)."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


class TestParseDomains:
    def test_splits_and_trims(self) -> None:
        """Comma-separated names with spaces and repeats become an ordered tuple."""
        assert parse_domains(" platform, database ,platform") == ("platform", "database")

    def test_refuses_unknown_domain(self) -> None:
        """An unknown name is refused with the list of valid ones."""
        with pytest.raises(ValueError, match="unknown domain 'storage'; choose from core"):
            parse_domains("platform,storage")

    def test_refuses_empty(self) -> None:
        """An empty list would run nothing: refused."""
        with pytest.raises(ValueError, match="no domain given"):
            parse_domains(" , ")


class TestWorkflowSandbox:
    @pytest.mark.parametrize(
        ("sandbox", "runner"),
        [(True, SandboxedWorkflowRunner), (False, UnsandboxedWorkflowRunner)],
    )
    async def test_setting_chooses_the_workflow_runner(self, client: Client, sandbox, runner):
        """FIRELINE_WORKFLOW_SANDBOX decides whether production workflow code runs sandboxed."""
        settings = Settings(
            task_queue_prefix=f"sb-{uuid.uuid4().hex[:8]}", workflow_sandbox=sandbox
        )
        workers, sets = build_workers(client, settings, ["core"])
        try:
            assert type(workers[0].config()["workflow_runner"]) is runner
            assert workers[0].task_queue == settings.workflow_task_queue
        finally:
            for module_set in sets:
                await module_set.aclose()


class TestWorkerProcess:
    async def test_rejects_unknown_domain(
        self, env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path, stop_on_exit: Any
    ) -> None:
        """--domains with a typo exits 2 before connecting, naming the valid domains."""
        process = await start_worker(env, task_queue_prefix, tmp_path, "--domains", "core,platfrom")
        stop_on_exit.append(process)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 2
        assert f"unknown domain 'platfrom'; choose from {', '.join(DOMAINS)}" in stderr.decode()

    async def test_unreachable_temporal_exits_one(
        self, env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path, stop_on_exit: Any
    ) -> None:
        """With nothing at the address the worker says so in one line and exits 1."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "worker.py"),
            cwd=tmp_path,
            env={**worker_env(env, task_queue_prefix), "FIRELINE_TEMPORAL_ADDRESS": nowhere},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stop_on_exit.append(process)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 1
        failure = next(line for line in json_lines(stderr) if line["level"] == "error")
        assert failure["event"] == "cannot reach Temporal"
        assert failure["temporal"] == nowhere
        assert "Traceback" not in stderr.decode()

    async def test_polls_then_exits_zero_on_sigterm(
        self, env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path, stop_on_exit: Any
    ) -> None:
        """Default run polls the workflow, guards and core queues; SIGTERM drains and exits 0."""
        process = await start_worker(env, task_queue_prefix, tmp_path, "--domains", "core")
        stop_on_exit.append(process)
        assert await wait_for_pollers(env.client, task_queue_prefix, WORKFLOW)
        assert await wait_for_pollers(env.client, f"{task_queue_prefix}-guards", WORKFLOW)
        assert await wait_for_pollers(env.client, f"{task_queue_prefix}-core", ACTIVITY)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()[-2000:]
        events = {line["event"]: line for line in json_lines(stderr)}
        assert events["workers started"]["task_queues"] == [
            task_queue_prefix,
            f"{task_queue_prefix}-guards",
            f"{task_queue_prefix}-core",
        ]
        assert "workers stopped" in events

    async def test_no_workflows_serves_only_the_domain(
        self, env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path, stop_on_exit: Any
    ) -> None:
        """--no-workflows runs just the domain worker; SIGINT stops it cleanly too."""
        process = await start_worker(
            env, task_queue_prefix, tmp_path, "--domains", "core", "--no-workflows"
        )
        stop_on_exit.append(process)
        assert await wait_for_pollers(env.client, f"{task_queue_prefix}-core", ACTIVITY)
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()[-2000:]
        started = next(line for line in json_lines(stderr) if line["event"] == "workers started")
        assert started["task_queues"] == [f"{task_queue_prefix}-core"]
        assert await pollers(env.client, task_queue_prefix, WORKFLOW) == 0


class TestRunWorkers:
    async def test_in_process_until_stop(self, client: Client, task_queue_prefix: str) -> None:
        """run_workers polls while running and returns once stop is set."""
        settings = Settings(task_queue_prefix=task_queue_prefix)
        stop = asyncio.Event()
        running = asyncio.create_task(
            run_workers(settings, ["core"], workflows=True, stop=stop, client=client)
        )
        assert await wait_for_pollers(client, task_queue_prefix, WORKFLOW)
        assert await wait_for_pollers(client, f"{task_queue_prefix}-core", ACTIVITY)
        assert not running.done()
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        assert running.exception() is None

    async def test_nothing_to_run_is_refused(self, client: Client, task_queue_prefix: str) -> None:
        """No workflows and only empty domains would poll nothing: refused up front."""
        settings = Settings(task_queue_prefix=task_queue_prefix)
        empty = [d for d in DOMAINS if d != "core"]
        # Every domain ships modules now, so the empty domains come from an empty registry.
        with pytest.raises(ValueError, match="nothing to run"):
            build_workers(client, settings, empty, workflows=False, registry=Registry())


@activity.defn(name="fireline_test.log_context")
async def report_log_context() -> dict[str, Any]:
    return dict(structlog.contextvars.get_contextvars())


@workflow.defn(name="LogContextProbe")
class LogContextProbe:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        return await workflow.execute_activity(
            report_log_context,
            activity_id="promote",
            start_to_close_timeout=timedelta(seconds=10),
        )


class TestLogContextInterceptor:
    async def test_binds_activity_identity(self, client: Client, task_queue_prefix: str) -> None:
        """Inside an activity, structlog's context names the workflow, run and step."""
        workflow_id = f"incident-{uuid.uuid4().hex[:8]}"
        # Bound around the worker, as run_workers does: activities inherit it.
        tokens = structlog.contextvars.bind_contextvars(worker="probe-worker")
        worker = Worker(
            client,
            task_queue=task_queue_prefix,
            workflows=[LogContextProbe],
            activities=[report_log_context],
            interceptors=[LogContextInterceptor()],
            workflow_runner=UnsandboxedWorkflowRunner(),  # the sandbox is not under test
        )
        try:
            async with worker:
                handle = await client.start_workflow(
                    LogContextProbe.run, id=workflow_id, task_queue=task_queue_prefix
                )
                bound = await handle.result()
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
        assert bound == {
            "worker": "probe-worker",
            "workflow_id": workflow_id,
            "run_id": handle.result_run_id,
            "activity_id": "promote",
            "activity_type": "fireline_test.log_context",
            "attempt": 1,
            "task_queue": task_queue_prefix,
        }
        assert "workflow_id" not in structlog.contextvars.get_contextvars()
