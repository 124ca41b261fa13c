"""Durability: the worker process dies mid-run, a new one takes over, nothing runs twice.

The worker is the real ``worker.py`` in its own process, killed with SIGKILL while a step's
HTTP call is in flight, exactly as an OOM kill or a lost node would do it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from fireline.messages import QUERY_STATUS, RunPhase, RunState, StepStatus
from tests.support.target import Reply
from tests.support.workers import compile_playbooks, start_run
from tests.test_worker_process import ACTIVITY, WORKFLOW, start_worker, wait_for_pollers

PLAYBOOK = """
name: survive
inputs: {base: {type: string, required: true}}
steps:
  - id: one
    uses: core.http_request
    with: {url: "${{ inputs.base }}/one", compensation: {url: "${{ inputs.base }}/undo/one"}}
  - id: two
    uses: core.http_request
    heartbeat: 1s
    with: {url: "${{ inputs.base }}/two", compensation: {url: "${{ inputs.base }}/undo/two"}}
  - id: three
    uses: core.http_request
    with: {url: "${{ inputs.base }}/three", compensation: {url: "${{ inputs.base }}/undo/three"}}
"""


class TestWorkerCrash:
    async def test_run_completes_on_a_new_worker_without_repeating_completed_steps(
        self, env, client, task_queue_prefix, target, tmp_path: Path
    ):
        """SIGKILL mid-step: the new worker replays, retries only the in-flight step, finishes."""
        for path in ("/one", "/two", "/three"):
            target.route("POST", path, Reply(200, {"done": path}))
        release = target.hold("POST", "/two")
        plan = compile_playbooks(tmp_path, {"s.yaml": PLAYBOOK}, "survive")

        first = await start_worker(env, task_queue_prefix, tmp_path)
        second = None
        try:
            assert await wait_for_pollers(client, task_queue_prefix, WORKFLOW)
            handle = await start_run(client, task_queue_prefix, plan, {"base": target.base_url})
            await target.wait_for_hits_async("POST", "/two", 1)
            os.kill(first.pid, signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
            release.set()  # the dead worker's request may now finish: nobody hears the answer

            second = await start_worker(env, task_queue_prefix, tmp_path)
            assert await wait_for_pollers(client, f"{task_queue_prefix}-core", ACTIVITY)
            result = await handle.result()
            state = await handle.query(QUERY_STATUS, result_type=RunState)
        finally:
            for proc in (first, second):
                if proc is not None and proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await proc.wait()

        assert result.phase is RunPhase.succeeded
        assert len(target.hits("POST", "/one")) == 1
        assert len(target.hits("POST", "/three")) == 1
        retried = target.hits("POST", "/two")
        assert len(retried) == 2  # the in-flight call is delivered again...
        assert {r.headers["idempotency-key"] for r in retried} == {
            f"{handle.id}/two"
        }  # ...same key
        assert target.hits("POST", "/undo/one") == []
        assert [s.status for s in state.steps] == [StepStatus.succeeded] * 3
