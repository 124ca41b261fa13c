# ruff: noqa: F811  (fixtures imported from tests.support are parameters of the tests here)
"""The degraded-API playbook end to end: real Temporal, Redis, Prometheus and HTTP servers.

``playbooks/degraded-api.yaml`` as shipped is compiled against the shipped catalog and run by
Fireline's workers: shed load by flag, flush the bad cache (approved at its gate by a senior),
verify the error rate with PromQL and the API with probes, lift the shedding. One run
succeeds; in the other the last verification fails and the flag is put back exactly as it was
(the flush is irreversible and stays done, which the run's record says). Assertions read Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The driver is imported lazily by the workers; importing it here first keeps the workflow
# sandbox from seeing it arrive mid-run (a warning, in tests only: production has no sandbox).
import redis.asyncio  # noqa: F401
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from activities.application.redis_client import JOURNAL_PREFIX
from fireline import errors
from fireline.compile.compiler import PlaybookLibrary
from fireline.messages import QUERY_STATUS, RunState, StepStatus
from fireline.plan import Plan
from fireline.runtime.settings import Settings
from tests.support.prometheus import Prometheus, prometheus  # noqa: F401
from tests.support.redis import RedisServer, redis_db, redis_server  # noqa: F401
from tests.support.target import Reply, Target
from tests.support.workers import approve, compile_playbooks, fireline_workers, start_run

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
DOMAINS = ("core", "application")
ERR_RATE_5S = 'sum(rate(app_requests_total{code=~"5.."}[5s])) / sum(rate(app_requests_total[5s]))'


@pytest.fixture(scope="module")
def plan() -> Plan:
    return PlaybookLibrary.load(PLAYBOOKS).compile("degraded-api")


def settings_for(redis: RedisServer, prom: Prometheus) -> Settings:
    return Settings(
        targets={"redis": {"cache": redis.target()}, "prometheus": {"main": prom.target()}}
    )


def inputs_for(target: Target) -> dict[str, Any]:
    return {
        "redis": "cache",
        "cache_pattern": "api:v2:*",
        "max_keys": 1000,
        "settle_seconds": 0,
        "prometheus": "main",
        "error_rate_query": ERR_RATE_5S,
        "max_error_rate": 0.01,
        "health_url": target.url("/health"),
        "probe_samples": 5,
        "max_latency_ms": 5000,
    }


async def status(handle: WorkflowHandle[Any, Any]) -> RunState:
    return await handle.query(QUERY_STATUS, result_type=RunState)


async def until(
    handle: WorkflowHandle[Any, Any], predicate: Callable[[RunState], bool], timeout_s: float = 30
) -> RunState:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await status(handle)
        if predicate(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached; last state: {state.model_dump_json(indent=1)}")
        await asyncio.sleep(0.1)


async def approve_flush(handle: WorkflowHandle[Any, Any]) -> RunState:
    """Approve the flush once its gate is open; the state at the gate (with its preview)."""
    state = await until(
        handle, lambda s: s.step("flush_cache").status is StepStatus.awaiting_approval
    )
    await approve(handle, "flush_cache", "carol")
    return state


def seed(db: Any) -> None:
    with db.pipeline() as pipe:
        for n in range(300):
            pipe.set(f"api:v2:user:{n}", "stale")
        for n in range(10):
            pipe.set(f"api:v3:user:{n}", "fresh")
        pipe.execute()


class TestDegradedApi:
    async def test_a_run_that_recovers(
        self,
        client: Client,
        task_queue_prefix: str,
        target: Target,
        redis_db: RedisServer,
        prometheus: Prometheus,
        plan: Plan,
    ) -> None:
        """Flag set then lifted (absent again), bad keys flushed, PromQL and probe satisfied."""
        db = redis_db.client()
        seed(db)
        target.route("GET", "/health", Reply(200))
        prometheus.app.set_rates(200, 0)
        prometheus.wait_for(
            ERR_RATE_5S, lambda d: bool(d["result"]) and float(d["result"][0]["value"][1]) == 0
        )
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=settings_for(redis_db, prometheus)
        ):
            handle = await start_run(client, task_queue_prefix, plan, inputs_for(target))
            at_gate = await approve_flush(handle)
            result = await handle.result()
            state = await status(handle)

        assert db.keys("api:v2:*") == []
        assert len(db.keys("api:v3:*")) == 10
        assert db.exists("flag:api.shed_load") == 0  # lifted: absent, as it was before
        assert state.step("shed_load").outputs["value"] == "on"
        assert result.outputs["flag_before"] is None
        assert result.outputs["keys_flushed"] == 300
        preview = at_gate.step("flush_cache").preview
        assert preview is not None  # what the approver saw is what the step then did
        assert preview.blast_radius == {"keys": result.outputs["keys_flushed"]}
        assert "irreversible" in preview.rollback
        assert result.outputs["error_rate"] == 0.0
        assert len(target.hits("GET", "/health")) == 5
        checks = {c.check: c for c in state.step("flush_cache").checks}
        assert checks["application.cache_keys"].satisfied is True

    async def test_a_late_failure_puts_the_flag_back(
        self,
        client: Client,
        task_queue_prefix: str,
        target: Target,
        redis_db: RedisServer,
        prometheus: Prometheus,
        plan: Plan,
    ) -> None:
        """The probe fails after PromQL passed: the flag is 'off' again, exactly as found; the
        irreversible flush stays done."""
        db = redis_db.client()
        seed(db)
        db.set("flag:api.shed_load", "off")
        target.route("GET", "/health", Reply(503, {"error": "still sick"}))
        prometheus.app.set_rates(200, 0)
        prometheus.wait_for(
            ERR_RATE_5S, lambda d: bool(d["result"]) and float(d["result"][0]["value"][1]) == 0
        )
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=settings_for(redis_db, prometheus)
        ):
            handle = await start_run(client, task_queue_prefix, plan, inputs_for(target))
            await approve_flush(handle)
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await status(handle)

        failure = caught.value.cause
        assert isinstance(failure, ApplicationError)
        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert db.get("flag:api.shed_load") == "off"
        assert db.keys("api:v2:*") == []
        assert state.step("error_rate").status is StepStatus.succeeded
        assert state.step("latency").status is StepStatus.failed
        assert state.step("shed_load").status is StepStatus.compensated
        assert state.step("lift_shedding").status is StepStatus.pending
        [undo] = state.compensations
        assert (undo.step, undo.module, undo.status) == (
            "shed_load",
            "application.restore_flag",
            "succeeded",
        )
        assert undo.input["value"] == "off"


GUARDED = """
name: guarded-flag
inputs:
  expect: {type: string, required: true}
  health_url: {type: string, required: true}
steps:
  - id: shed
    uses: application.set_flag
    with: {target: cache, flag: shed, value: "on", expect_current: "${{ inputs.expect }}"}
  - id: verify
    uses: core.http_probe
    with: {url: "${{ inputs.health_url }}"}
"""


class TestFlagPreconditionsInARun:
    async def test_a_precondition_that_does_not_hold_refuses_the_step(
        self,
        client: Client,
        task_queue_prefix: str,
        tmp_path: Path,
        target: Target,
        redis_db: RedisServer,
        prometheus: Prometheus,
    ) -> None:
        """expect_current 'off' while the flag is 'on': the step never runs, the run says what
        it saw, the flag is untouched."""
        db = redis_db.client()
        db.set("flag:shed", "on")
        plan = compile_playbooks(tmp_path, {"g.yaml": GUARDED}, "guarded-flag")
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=settings_for(redis_db, prometheus)
        ):
            handle = await start_run(
                client, task_queue_prefix, plan, {"expect": "off", "health_url": target.url("/h")}
            )
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await status(handle)

        assert "precondition" in str(caught.value.cause)
        assert "flag shed on redis target cache is 'on'; expected 'off'" in (
            state.step("shed").error or ""
        )
        assert db.get("flag:shed") == "on"
        assert db.keys(f"{JOURNAL_PREFIX}*") == []  # the action never ran

    async def test_the_rollback_is_verified_by_the_precondition(
        self,
        client: Client,
        task_queue_prefix: str,
        tmp_path: Path,
        target: Target,
        redis_db: RedisServer,
        prometheus: Prometheus,
    ) -> None:
        """After the undo the step's precondition (flag is 'off') holds again: verified."""
        db = redis_db.client()
        db.set("flag:shed", "off")
        target.route("GET", "/h", Reply(503))
        plan = compile_playbooks(tmp_path, {"g.yaml": GUARDED}, "guarded-flag")
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=settings_for(redis_db, prometheus)
        ):
            handle = await start_run(
                client, task_queue_prefix, plan, {"expect": "off", "health_url": target.url("/h")}
            )
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            state = await status(handle)

        assert db.get("flag:shed") == "off"
        [undo] = state.compensations
        assert (undo.module, undo.status, undo.verified) == (
            "application.restore_flag",
            "succeeded",
            True,
        )
