"""A module's declared checks and compensation over inputs the playbook leaves out, end to end.

The run resolves ``input.*`` in a step's checks and compensation against the step's inputs;
the compiler writes in the defaults of the inputs those read, so a check over an optional
input sees the value the module itself validates, instead of failing "not found" mid-run.
These run real workers on the dev server with test-only modules defined here.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from fireline import errors
from fireline.compile.compiler import PlaybookLibrary
from fireline.messages import QUERY_STATUS, DecisionAction, RunPhase, RunState, StepStatus
from fireline.modules import (
    CheckRef,
    CheckResult,
    CompensationRef,
    Registry,
    check,
    load_registry,
    module,
)
from fireline.plan import Plan, Risk
from tests.support.workers import CATALOG, decide, fireline_workers, start_run

HEALTHY = {"web": 3, "tiny": 1}
"""Healthy servers per pool, as the capacity check sees them."""


class DrainInput(BaseModel):
    pool: str
    keep_healthy: int = Field(default=2, ge=0)
    wait_s: float = 1.5


class DrainOutput(BaseModel):
    pool: str


@module(
    "test.drain_pool",
    domain="core",
    risk=Risk.medium,
    mutates=True,
    preconditions=[
        CheckRef(
            check="test.capacity",
            with_={"pool": "${{ input.pool }}", "min_healthy": "${{ input.keep_healthy }}"},
        )
    ],
    postconditions=[
        CheckRef(
            check="test.capacity",
            with_={
                "pool": "${{ input.pool }}",
                "min_healthy": "${{ input.keep_healthy }}",
                "note": "kept ${{ input.keep_healthy }}",
            },
        )
    ],
    compensation=CompensationRef(
        module="test.undrain_pool",
        with_={"pool": "${{ input.pool }}", "wait_s": "${{ input.wait_s }}"},
    ),
    description="Drain a pool, keeping keep_healthy servers (2 unless the playbook says).",
)
async def drain_pool(request: DrainInput) -> DrainOutput:
    return DrainOutput(pool=request.pool)


class UndrainInput(BaseModel):
    pool: str
    wait_s: float
    """Required here: the undo fails validation unless the drain's default reached it."""


@module(
    "test.undrain_pool",
    domain="core",
    risk=Risk.medium,
    mutates=True,
    compensation=CompensationRef(module="test.drain_pool", with_={"pool": "${{ input.pool }}"}),
    description="Put a drained pool back.",
)
async def undrain_pool(request: UndrainInput) -> DrainOutput:
    return DrainOutput(pool=request.pool)


class CapacityInput(BaseModel):
    pool: str
    min_healthy: int
    note: str = ""


@check("test.capacity", domain="core", description="Enough healthy servers in the pool.")
async def capacity(request: CapacityInput) -> CheckResult:
    healthy = HEALTHY.get(request.pool, 0)
    return CheckResult(
        satisfied=healthy >= request.min_healthy,
        observed=healthy,
        expected=request.min_healthy,
        detail=request.note or f"{healthy} healthy, need {request.min_healthy}",
    )


class PoolInput(BaseModel):
    pool: str


@check("test.never", domain="core", description="Never satisfied: makes a run roll back.")
async def never(request: PoolInput) -> CheckResult:
    return CheckResult(satisfied=False, detail=f"{request.pool} is never fine")


REGISTRY: Registry = load_registry(["core"]).extended(drain_pool, undrain_pool, capacity, never)


def _plan(tmp_path: Path, text: str) -> Plan:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "p.yaml").write_text(textwrap.dedent(text))
    library = PlaybookLibrary.load(folder, catalog=CATALOG, registry=REGISTRY)
    return library.compile("drain")


async def _status(handle: WorkflowHandle[Any, Any]) -> RunState:
    return await handle.query(QUERY_STATUS, result_type=RunState)


DRAIN = """\
name: drain
owner: sre-oncall
inputs:
  pool: {type: string, required: true}
steps:
  - id: drain
    uses: test.drain_pool
    with: {pool: "${{ inputs.pool }}"%s}
%s"""


class TestDeclaredChecksOverDefaults:
    async def test_checks_see_the_default_of_an_input_left_out(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """keep_healthy is left out: both declared checks run with the module's default 2."""
        plan = _plan(tmp_path, DRAIN % ("", ""))
        async with fireline_workers(client, task_queue_prefix, registry=REGISTRY):
            handle = await start_run(client, task_queue_prefix, plan, {"pool": "web"})
            result = await handle.result()
            state = await _status(handle)

        assert result.phase is RunPhase.succeeded
        step = state.step("drain")
        assert [(c.stage, c.satisfied, c.expected) for c in step.checks] == [
            ("pre", True, 2),
            ("post", True, 2),
        ]
        assert step.checks[1].detail == "kept 2"
        assert step.inputs == {"pool": "web", "keep_healthy": 2, "wait_s": 1.5}

    async def test_a_value_the_playbook_sets_is_the_one_checked(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """keep_healthy: 5 is more than the pool has: the declared precondition refuses."""
        plan = _plan(tmp_path, DRAIN % (", keep_healthy: 5", ""))
        async with fireline_workers(client, task_queue_prefix, registry=REGISTRY):
            handle = await start_run(client, task_queue_prefix, plan, {"pool": "web"})
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await _status(handle)

        assert "test.capacity not satisfied: 3 healthy, need 5" in str(caught.value.cause)
        assert [(c.stage, c.expected) for c in state.step("drain").checks] == [("pre", 5)]

    async def test_the_compensation_gets_the_default_it_reads(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """A later failure rolls the drain back with wait_s = 1.5, the drain's default, which
        the undo requires; then the declared precondition is verified again."""
        later = """\
  - id: fail
    uses: test.never
    with: {pool: "${{ inputs.pool }}"}
"""
        plan = _plan(tmp_path, DRAIN % ("", later))
        async with fireline_workers(client, task_queue_prefix, registry=REGISTRY):
            handle = await start_run(client, task_queue_prefix, plan, {"pool": "web"})
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await _status(handle)

        assert getattr(caught.value.cause, "type", None) == errors.PLAYBOOK_COMPENSATED
        assert state.phase is RunPhase.compensated
        [undo] = state.compensations
        assert (undo.module, undo.input, undo.status) == (
            "test.undrain_pool",
            {"pool": "web", "wait_s": 1.5},
            "succeeded",
        )
        assert undo.verified is True
        assert [c["with"] for c in undo.verify] == [{"pool": "web", "min_healthy": 2}]

    async def test_a_retry_with_new_inputs_overrides_the_default_in_the_checks(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """The default 2 is more than pool 'tiny' has; a retry with keep_healthy: 1 passes,
        so the checks follow the decision's value, not the compiled default."""
        text = DRAIN.replace("steps:", "on_failure: ask\nsteps:") % ("", "")
        plan = _plan(tmp_path, text)
        async with fireline_workers(client, task_queue_prefix, registry=REGISTRY):
            handle = await start_run(client, task_queue_prefix, plan, {"pool": "tiny"})
            for _ in range(200):
                state = await _status(handle)
                if state.step("drain").status is StepStatus.awaiting_decision:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"never asked: {state.step('drain')}")
            assert [(c.stage, c.satisfied, c.expected) for c in state.step("drain").checks] == [
                ("pre", False, 2)
            ]
            await decide(handle, "drain", DecisionAction.retry, "alice", inputs={"keep_healthy": 1})
            result = await handle.result()
            state = await _status(handle)

        assert result.phase is RunPhase.succeeded
        assert [(c.stage, c.satisfied, c.expected) for c in state.step("drain").checks][-2:] == [
            ("pre", True, 1),
            ("post", True, 1),
        ]
