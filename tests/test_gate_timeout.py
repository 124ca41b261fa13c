"""Long timers on the time-skipping test server: a gate nobody answers, a decision nobody makes.

The time-skipping server jumps over the hour-long deadlines, so these tests see the real
timeout paths without waiting; each test gets its own server because skipping is global.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from fireline import errors
from fireline.messages import (
    QUERY_STATUS,
    RunPhase,
    RunState,
    StepStatus,
)
from tests.support.target import Reply
from tests.support.workers import approve, compile_playbooks, fireline_workers, start_run

GATED = """
name: slow-gate
inputs: {base: {type: string, required: true}}
steps:
  - id: prepare
    uses: core.http_request
    with: {url: "${{ inputs.base }}/prepare", compensation: {url: "${{ inputs.base }}/unprepare"}}
  - id: failover
    uses: core.http_request
    with: {url: "${{ inputs.base }}/failover"}
    approval: {role: sre-oncall, timeout: 2h}
  - id: risky
    uses: core.http_request
    on_failure: ask
    decision_timeout: 3h
    with: {url: "${{ inputs.base }}/risky", compensation: {url: "${{ inputs.base }}/unrisky"}}
"""


class TestTimeouts:
    async def test_gate_timeout_ends_in_rollback_not_a_hang(
        self, time_skipping_env, task_queue_prefix, target, tmp_path: Path
    ):
        """Nobody approves within two hours: the gate times out and earlier steps roll back."""
        target.route("POST", "/prepare", Reply(200))
        target.route("POST", "/unprepare", Reply(200))
        client = time_skipping_env.client
        plan = compile_playbooks(tmp_path, {"s.yaml": GATED}, "slow-gate")
        async with fireline_workers(client, task_queue_prefix):
            handle = await start_run(
                client, task_queue_prefix, plan, {"base": target.base_url}, search_attributes=False
            )
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await handle.query(QUERY_STATUS, result_type=RunState)

        cause = caught.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == errors.PLAYBOOK_COMPENSATED
        assert "gate timed out" in str(cause)
        assert "not approved by role sre-oncall (alice, bob) within 7200s" in str(cause)
        assert [f"{r.method} {r.path}" for r in target.hits()] == [
            "POST /prepare",
            "POST /unprepare",
        ]
        assert state.step("failover").status is StepStatus.rejected
        assert any(e.kind == "gate_timed_out" for e in state.events)

    async def test_unanswered_failure_question_compensates(
        self, time_skipping_env, task_queue_prefix, target, tmp_path: Path
    ):
        """A step waiting under on_failure: ask for longer than its decision timeout rolls back."""
        playbook = GATED.replace(
            "approval: {role: sre-oncall, timeout: 2h}", "approval: {role: anyone}"
        )
        target.route("POST", "/prepare", Reply(200))
        target.route("POST", "/unprepare", Reply(200))
        target.route("POST", "/failover", Reply(200))
        target.route("POST", "/risky", Reply(400, {"error": "bad request"}))
        client = time_skipping_env.client
        plan = compile_playbooks(tmp_path, {"s.yaml": playbook}, "slow-gate")
        async with fireline_workers(client, task_queue_prefix):
            handle = await start_run(
                client, task_queue_prefix, plan, {"base": target.base_url}, search_attributes=False
            )

            # The gate still needs a person; approve it, then leave the failure unanswered.
            async def approve_when_waiting() -> None:
                while True:
                    state = await handle.query(QUERY_STATUS, result_type=RunState)
                    if state.step("failover").status is StepStatus.awaiting_approval:
                        await approve(handle, "failover", "alice")
                        return
                    await asyncio.sleep(0.05)

            await approve_when_waiting()
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await handle.query(QUERY_STATUS, result_type=RunState)

        assert isinstance(caught.value.cause, ApplicationError)
        assert caught.value.cause.type == errors.PLAYBOOK_COMPENSATED
        assert state.phase is RunPhase.compensated
        assert any(e.kind == "decision_timed_out" for e in state.events)
        assert [f"{r.method} {r.path}" for r in target.hits()] == [
            "POST /prepare",
            "POST /failover",
            "POST /risky",
            "POST /unprepare",
        ]
