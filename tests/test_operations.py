"""The operations layer against a real dev server, real workers and a real HTTP target.

The fixtures here (``playbooks_dir``, ``fl_settings``, ``workers``) are shared with
tests/test_cli.py and tests/test_api.py, which import them.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from fireline.errors import CompileError
from fireline.messages import (
    SA_PHASE,
    SA_PLAYBOOK,
    SA_REQUESTED_BY,
    SA_RISK,
    DecisionAction,
    RunPhase,
    RunState,
    StepStatus,
)
from fireline.operator import operations
from fireline.plan import ActivityCall, IncludeNode, ParallelNode, Plan, Risk, StepNode
from fireline.runtime.settings import Settings
from fireline.runtime.workers import run_workers
from tests.support import target as target_support
from tests.support.target import Reply, Target

target = target_support.target
"""The recording HTTP server fixture, re-exported for this module and its importers."""

CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice, bob]}
  observers: {tier: 1, members: [mallory, carol, dave, erin]}
"""

PLAYBOOKS: dict[str, str] = {
    "gated.yaml": """
        name: gated
        version: 2
        owner: sre-oncall
        description: Settle, then call the target once someone on call approves.
        inputs:
          base: {type: string, required: true}
          ticket: {type: integer, default: 0}
        steps:
          - id: settle
            uses: core.wait
            with: {seconds: 0}
          - id: poke
            uses: core.http_request
            approval: {role: sre-oncall}
            with:
              url: "${{ inputs.base }}/poke"
              json: {ticket: "${{ inputs.ticket }}"}
              compensation: {url: "${{ inputs.base }}/undo/poke"}
    """,
    "quick.yaml": """
        name: quick
        steps:
          - id: pause
            uses: core.wait
            with: {seconds: 0}
    """,
    "refused.yaml": """
        name: refused
        inputs:
          base: {type: string, required: true}
        steps:
          - id: pause
            uses: core.wait
            with: {seconds: 0}
          - id: call
            uses: core.http_request
            with:
              url: "${{ inputs.base }}/refuse"
              compensation: {url: "${{ inputs.base }}/undo/refuse"}
    """,
    "asking.yaml": """
        name: asking
        inputs:
          base: {type: string, required: true}
        steps:
          - id: flaky
            uses: core.http_request
            on_failure: ask
            with:
              url: "${{ inputs.base }}/flaky"
              compensation: {url: "${{ inputs.base }}/undo/flaky"}
    """,
    "broken.yaml": """
        name: broken
        steps:
          - id: first
            uses: core.wait
            with: {seconds: 0}
          - id: nope
            uses: core.nope
    """,
}


def write_playbooks(folder: Path, files: dict[str, str], catalog: str | None = CATALOG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    if catalog is not None:
        (folder / "catalog.yaml").write_text(textwrap.dedent(catalog).lstrip())
    return folder


def server_address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


@pytest.fixture
def playbooks_dir(tmp_path: Path) -> Path:
    return write_playbooks(tmp_path / "playbooks", PLAYBOOKS)


@pytest.fixture
def fl_settings(
    env: WorkflowEnvironment, task_queue_prefix: str, playbooks_dir: Path, tmp_path: Path
) -> Settings:
    """Settings of one test: its own queues, playbooks, and data folder (tokens, keys)."""
    return Settings(
        temporal_address=server_address(env),
        task_queue_prefix=task_queue_prefix,
        playbooks_dir=playbooks_dir,
        data_dir=tmp_path / "data",
        temporal_ui_url="http://127.0.0.1:8233",
    )


@pytest.fixture
async def workers(env: WorkflowEnvironment, fl_settings: Settings) -> AsyncIterator[Settings]:
    """The real worker runtime (workflow + core queues), stopped and drained afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_workers(fl_settings, ("core",), stop=stop, client=env.client))
    try:
        yield fl_settings
    finally:
        stop.set()
        await task


async def until(
    client: Client, workflow_id: str, predicate: Callable[[RunState], bool], timeout_s: float = 30
) -> RunState:
    """Poll the status query until ``predicate`` holds; a guard against hanging, not a timing."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await operations.status(client, workflow_id)
        if predicate(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached; last state:\n{state.model_dump_json(indent=1)}")
        await asyncio.sleep(0.1)


def step_is(step: str, wanted: StepStatus) -> Callable[[RunState], bool]:
    return lambda s: s.step(step).status == wanted


def finished(state: RunState) -> bool:
    return state.phase.terminal


def _plan(nodes: list[object], name: str = "p") -> Plan:
    return Plan(name=name, nodes=nodes)  # type: ignore[arg-type]


def _step(step_id: str, risk: Risk) -> StepNode:
    return StepNode(
        id=step_id, name=step_id, risk=risk, action=ActivityCall(module="core.wait", domain="core")
    )


class TestMaxRisk:
    def test_highest_step_risk_wins(self) -> None:
        """The highest risk among plain steps is the run's risk."""
        plan = _plan([_step("a", Risk.low), _step("b", Risk.high), _step("c", Risk.medium)])
        assert plan.max_risk() == Risk.high

    def test_parallel_branches_and_includes_count(self) -> None:
        """Risks inside parallel groups and included playbooks are counted too."""
        inner = _plan([_step("x", Risk.critical)], name="inner")
        plan = _plan(
            [
                _step("a", Risk.low),
                ParallelNode(id="par", name="par", branches=[_step("b", Risk.medium)]),
                IncludeNode(id="inc", name="inc", plan=inner),
            ]
        )
        assert plan.max_risk() == Risk.critical
        assert _plan([plan.nodes[1]]).max_risk() == Risk.medium

    def test_empty_plan_is_low(self) -> None:
        """A plan of no steps counts as low risk."""
        assert _plan([]).max_risk() == Risk.low


class TestIdsAndLinks:
    def test_workflow_id_shape(self) -> None:
        """Ids read fireline-<playbook>-<utc stamp>-<6 hex> and differ between calls."""
        first = operations.new_workflow_id("db-failover")
        assert re.fullmatch(r"fireline-db-failover-\d{8}T\d{6}-[0-9a-f]{6}", first)
        assert first != operations.new_workflow_id("db-failover")

    def test_ui_link_names_namespace_and_workflow(self) -> None:
        """The UI link points at the workflow's page in the configured namespace."""
        settings = Settings(temporal_ui_url="http://ui.example:8233/", temporal_namespace="ops")
        assert (
            operations.ui_url(settings, "wf-1")
            == "http://ui.example:8233/namespaces/ops/workflows/wf-1"
        )


class TestStartRun:
    async def test_start_sets_search_attributes_and_summary(
        self, client: Client, workers: Settings, target: Target
    ) -> None:
        """A started run carries playbook, phase, max risk, requester and a readable summary."""
        started = await operations.start_run(
            client, workers, "gated", {"base": target.base_url}, "carol"
        )
        assert started.playbook == "gated"
        assert started.ui_url.endswith(f"/namespaces/default/workflows/{started.workflow_id}")
        assert len(started.plan_hash) == 64
        described = await client.get_workflow_handle(started.workflow_id).describe()
        attrs = described.typed_search_attributes
        assert attrs.get(SearchAttributeKey.for_keyword(SA_PLAYBOOK)) == "gated"
        assert attrs.get(SearchAttributeKey.for_keyword(SA_RISK)) == "medium"
        assert attrs.get(SearchAttributeKey.for_keyword(SA_REQUESTED_BY)) == "carol"
        assert attrs.get(SearchAttributeKey.for_keyword(SA_PHASE)) is not None
        assert await described.static_summary() == "gated v2 by carol"
        details = await described.static_details() or ""
        assert "`poke`" in details
        assert "gate: sre-oncall" in details
        await operations.cancel(client, started.workflow_id)
        await until(client, started.workflow_id, finished)

    async def test_string_inputs_are_coerced_to_declared_types(
        self, client: Client, workers: Settings, target: Target
    ) -> None:
        """``ticket=123`` given as text reaches the workflow, and the target, as an integer."""
        target.route("POST", "/poke", Reply(200, {}))
        started = await operations.start_run(
            client, workers, "gated", {"base": target.base_url, "ticket": "123"}, "carol"
        )
        state = await until(
            client, started.workflow_id, step_is("poke", StepStatus.awaiting_approval)
        )
        assert state.inputs["ticket"] == 123
        await operations.approve(client, started.workflow_id, "poke", "alice")
        state = await until(client, started.workflow_id, finished)
        assert state.phase == RunPhase.succeeded
        assert target.hits("POST", "/poke")[0].json == {"ticket": 123}

    async def test_bad_inputs_start_nothing(self, client: Client, fl_settings: Settings) -> None:
        """Missing and ill-typed inputs raise InvalidInputs naming each problem."""
        before = await operations.list_runs(client, 1000)
        with pytest.raises(operations.InvalidInputs) as caught:
            await operations.start_run(client, fl_settings, "gated", {"ticket": "many"}, "carol")
        assert "missing required input 'base'" in str(caught.value)
        assert "ticket" in str(caught.value)
        after = await operations.list_runs(client, 1000)
        assert [r for r in after if r.playbook == "gated"] == [
            r for r in before if r.playbook == "gated"
        ]

    async def test_compile_errors_carry_problems(
        self, client: Client, fl_settings: Settings
    ) -> None:
        """A playbook that does not compile raises CompileError with located problems."""
        with pytest.raises(CompileError) as caught:
            await operations.start_run(client, fl_settings, "broken", {}, "carol")
        problem = caught.value.problems[0]
        assert problem.step == "nope"  # type: ignore[attr-defined]
        assert problem.line == 7  # type: ignore[attr-defined]

    async def test_unknown_playbook_lists_the_known_ones(
        self, client: Client, fl_settings: Settings
    ) -> None:
        """Naming a playbook that does not exist lists the ones that do."""
        with pytest.raises(operations.UnknownPlaybook) as caught:
            await operations.start_run(client, fl_settings, "gatd", {}, "carol")
        assert caught.value.known == ["asking", "broken", "gated", "quick", "refused"]
        assert "known: asking, broken, gated" in str(caught.value)

    async def test_a_path_is_never_read(
        self, client: Client, fl_settings: Settings, tmp_path: Path
    ) -> None:
        """A file path, even of a valid playbook outside the library, is an unknown name.

        Finding 2: the server parsed any readable file and echoed its content in the error.
        """
        outside = tmp_path / "elsewhere" / "secret.yaml"
        outside.parent.mkdir()
        outside.write_text(textwrap.dedent(PLAYBOOKS["quick.yaml"]).replace("quick", "s3cr3t"))
        inside = fl_settings.playbooks_dir / "quick.yaml"
        for given in (str(outside), str(inside), "../elsewhere/secret.yaml", "/etc/passwd"):
            with pytest.raises(operations.UnknownPlaybook) as caught:
                await operations.start_run(client, fl_settings, given, {}, "carol")
            assert "s3cr3t" not in str(caught.value)
            assert "root:" not in str(caught.value)


class TestGates:
    async def test_refused_then_approved(
        self, client: Client, workers: Settings, target: Target
    ) -> None:
        """An outsider is refused with the workflow's reason; a member's approval runs the step."""
        target.route("POST", "/poke", Reply(200, {}))
        started = await operations.start_run(
            client, workers, "gated", {"base": target.base_url}, "carol"
        )
        wid = started.workflow_id
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
        with pytest.raises(operations.OperationRefused) as caught:
            await operations.approve(client, wid, "poke", "mallory")
        assert "mallory may not decide for role sre-oncall" in caught.value.reason
        with pytest.raises(operations.OperationRefused, match="not waiting for approval"):
            await operations.approve(client, wid, "settle", "alice")
        answer = await operations.approve(client, wid, "poke", "alice", "go")
        assert answer.id == "poke"
        assert [(a.by, a.decision, a.comment) for a in answer.approvals] == [
            ("alice", "approved", "go")
        ]
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.succeeded
        assert len(target.hits("POST", "/poke")) == 1
        with pytest.raises(operations.OperationRefused):
            await operations.approve(client, wid, "poke", "bob")

    async def test_reject_compensates(
        self, client: Client, workers: Settings, target: Target
    ) -> None:
        """A rejection ends the run compensated, with the rejection in the timeline."""
        started = await operations.start_run(
            client, workers, "gated", {"base": target.base_url}, "carol"
        )
        wid = started.workflow_id
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
        await operations.reject(client, wid, "poke", "bob", "not now")
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.compensated
        assert state.step("poke").status == StepStatus.rejected
        assert any(e.kind == "rejected" and e.actor == "bob" for e in state.events)
        assert target.hits("POST", "/poke") == []


class TestDecide:
    async def test_retry_after_failure(
        self, client: Client, workers: Settings, target: Target
    ) -> None:
        """A step paused by on_failure: ask runs again on retry and the run succeeds."""
        target.route("POST", "/flaky", Reply(409, {"error": "busy"}), Reply(200, {}))
        started = await operations.start_run(
            client, workers, "asking", {"base": target.base_url}, "carol"
        )
        wid = started.workflow_id
        await until(client, wid, step_is("flaky", StepStatus.awaiting_decision))
        with pytest.raises(operations.OperationRefused, match="only make sense with retry"):
            await operations.decide(
                client, wid, "flaky", DecisionAction.skip, "alice", inputs={"url": "x"}
            )
        await operations.decide(client, wid, "flaky", "retry", "alice", "try again")
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.succeeded
        assert len(target.hits("POST", "/flaky")) == 2


class TestStatusAndList:
    async def test_unknown_run(self, client: Client) -> None:
        """Status, approval and cancel of an unknown id raise RunNotFound."""
        with pytest.raises(operations.RunNotFound):
            await operations.status(client, "fireline-nothing-here")
        with pytest.raises(operations.RunNotFound):
            await operations.approve(client, "fireline-nothing-here", "x", "alice")
        with pytest.raises(operations.RunNotFound):
            await operations.cancel(client, "fireline-nothing-here")

    async def test_follow_ends_with_the_outcome(self, client: Client, workers: Settings) -> None:
        """follow yields changing states and stops at the terminal one."""
        started = await operations.start_run(client, workers, "quick", {}, "carol")
        seen = [s async for s in operations.follow(client, started.workflow_id, interval_s=0.1)]
        assert seen[-1].phase == RunPhase.succeeded
        assert all(not s.phase.terminal for s in seen[:-1])
        assert len({s.model_dump_json() for s in seen}) == len(seen)

    async def test_list_runs_shows_search_attributes(
        self, client: Client, workers: Settings
    ) -> None:
        """Listed runs carry playbook, phase, risk and requester from visibility."""
        started = await operations.start_run(client, workers, "quick", {}, "dave")
        await until(client, started.workflow_id, finished)
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # visibility is eventually consistent
            runs = {r.workflow_id: r for r in await operations.list_runs(client, 1000)}
            mine = runs.get(started.workflow_id)
            if mine and mine.status == "completed" and mine.phase == "succeeded":
                break
            assert asyncio.get_running_loop().time() < deadline, mine
            await asyncio.sleep(0.2)
        assert (mine.playbook, mine.requested_by, mine.max_risk) == ("quick", "dave", "low")
        assert mine.start_time is not None

    async def test_cancel_runs_to_cancelled(
        self, client: Client, workers: Settings, target: Target
    ) -> None:
        """Cancelling a run waiting at a gate ends it cancelled and names who (an owner, alice);
        a second cancel is refused."""
        started = await operations.start_run(
            client, workers, "gated", {"base": target.base_url}, "carol"
        )
        wid = started.workflow_id
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
        await operations.cancel(client, wid, "drill over", by="alice")
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.cancelled
        assert state.cancel_requested_by == "alice"
        (event,) = [e for e in state.events if e.kind == "cancel_requested"]
        assert (event.actor, event.message) == ("alice", "drill over")
        described = await client.get_workflow_handle(wid).describe()
        assert described.status == WorkflowExecutionStatus.CANCELED
        with pytest.raises(operations.OperationRefused, match="already finished"):
            await operations.cancel(client, wid)
