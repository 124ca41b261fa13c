# ruff: noqa: F811  (fixtures imported from tests.support are parameters of the tests here)
"""``fireline plan`` and the gate's preview against a real Temporal dev server and Redis.

The playbooks below use the application flag modules on a real ``redis-server``; the API is the
real ASGI app (in process, or a real uvicorn server for the CLI) in front of Fireline's workers
for the core and application domains. Every test reads Redis afterwards: a plan changes nothing,
the previews it shows are what Redis holds, and a run waiting at its gate shows the same.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# The driver is imported lazily by the workers; importing it here first keeps the workflow
# sandbox from seeing it arrive mid-run (a warning, in tests only: production has no sandbox).
import redis.asyncio  # noqa: F401
from rich.console import Console
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from fireline.identity.tokens import TokenStore
from fireline.messages import RunState, StepStatus
from fireline.operator import operations, plan_preview, render
from fireline.operator.api import create_app
from fireline.operator.cli import app as cli_app
from fireline.operator.plan_preview import PlanPreview, StepKind
from fireline.runtime.settings import Settings
from tests.support.redis import RedisServer, redis_db, redis_server  # noqa: F401
from tests.support.workers import compile_playbooks, fireline_workers
from tests.test_api import serving
from tests.test_operations import server_address, until, write_playbooks

DOMAINS = ("core", "application")

CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice, bob]}
  sre-senior: {tier: 2, members: [carol, erin]}
"""

PLAYBOOKS: dict[str, str] = {
    "shed.yaml": """
        name: shed
        owner: sre-oncall
        description: Shed load by flag, then put things back.
        inputs:
          redis: {type: string, default: cache}
          flag: {type: string, required: true}
          value: {type: string, default: "on"}
          ghost: {type: string, default: nowhere}
        steps:
          - id: look
            uses: application.flag_is
            with: {target: "${{ inputs.redis }}", flag: "${{ inputs.flag }}", value: "off"}
          - id: shed
            uses: application.set_flag
            approval: {role: sre-oncall}
            with:
              target: "${{ inputs.redis }}"
              flag: "${{ inputs.flag }}"
              value: "${{ inputs.value }}"
          - id: both
            parallel:
              - id: banner
                uses: application.set_flag
                with: {target: "${{ inputs.redis }}", flag: banner, value: degraded}
              - id: settle
                uses: core.wait
                with: {seconds: 0}
          - id: ghost
            uses: application.set_flag
            with: {target: "${{ inputs.ghost }}", flag: x, value: y}
          - id: put_back
            uses: application.restore_flag
            approval: {role: sre-senior, min_approvals: 2}
            with:
              target: "${{ inputs.redis }}"
              flag: "${{ inputs.flag }}"
              value: "${{ steps.shed.outputs.previous }}"
          - id: tidy
            playbook: tidy
            with: {redis: "${{ inputs.redis }}", note: "${{ steps.shed.outputs.value }}"}
    """,
    "tidy.yaml": """
        name: tidy
        owner: sre-oncall
        inputs:
          redis: {type: string, required: true}
          note: {type: string}
        steps:
          - id: lift
            uses: application.clear_flag
            with: {target: "${{ inputs.redis }}", flag: banner}
          - id: mark
            uses: application.set_flag
            with: {target: "${{ inputs.redis }}", flag: note, value: "${{ inputs.note }}"}
    """,
}


@pytest.fixture
def settings(
    env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path, redis_db: RedisServer
) -> Settings:
    return Settings(
        temporal_address=server_address(env),
        task_queue_prefix=task_queue_prefix,
        playbooks_dir=write_playbooks(tmp_path / "playbooks", PLAYBOOKS, CATALOG),
        data_dir=tmp_path / "data",
        temporal_ui_url="http://127.0.0.1:8233",
        targets={"redis": {"cache": redis_db.target()}},
    )


@pytest.fixture
async def workers(client: Client, settings: Settings) -> AsyncIterator[Settings]:
    async with fireline_workers(
        client, settings.task_queue_prefix, domains=DOMAINS, settings=settings
    ):
        yield settings


@pytest.fixture
def token(settings: Settings) -> str:
    return TokenStore.of(settings).issue("alice")[0]


@pytest.fixture
async def http(settings: Settings, token: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://fireline.test",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as client:
        yield client


def snapshot(server: RedisServer) -> dict[str, Any]:
    """Every key and its value: what a plan must leave exactly as it found it."""
    db = server.client()
    return {key: db.get(key) for key in sorted(db.keys("*"))}


def by_id(preview: PlanPreview) -> dict[str, plan_preview.PlannedStep]:
    return {step.id: step for step in preview.steps}


def text_of(renderable: Any, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


class TestWalk:
    """The classification alone, from the compiled plan (no server involved)."""

    def test_kinds_gates_undo_and_inputs(self, tmp_path: Path) -> None:
        """Reads are read-only, changes mutating, a step fed by an earlier step's outputs (or
        an included playbook's input fed so) undetermined; parallel branches and included steps
        are all there, with their gate (rights counted) and undo, inputs resolved."""
        files = {**PLAYBOOKS, "catalog.yaml": CATALOG}
        plan = compile_playbooks(tmp_path, files, "shed")
        steps = {s.id: s for s in plan_preview.walk(plan, {"flag": "shed"})}
        assert list(steps) == [
            "look", "shed", "banner", "settle", "ghost", "put_back",
            "tidy", "tidy/lift", "tidy/mark",
        ]  # fmt: skip
        kinds = {sid: s.kind for sid, s in steps.items()}
        assert kinds == {
            "look": StepKind.read_only,
            "shed": StepKind.mutating,
            "banner": StepKind.mutating,
            "settle": StepKind.read_only,
            "ghost": StepKind.mutating,
            "put_back": StepKind.undetermined,
            "tidy": StepKind.mutating,
            "tidy/lift": StepKind.mutating,
            "tidy/mark": StepKind.undetermined,
        }
        assert steps["put_back"].depends_on == ["steps.shed"]
        assert steps["tidy/mark"].depends_on == ["inputs.note"]
        assert steps["tidy"].depends_on == ["inputs.note"]
        assert steps["banner"].within == "parallel both"
        assert steps["tidy/lift"].within == "playbook tidy"
        assert steps["shed"].inputs == {"target": "cache", "flag": "shed", "value": "on"}
        assert steps["tidy/lift"].inputs == {"target": "cache", "flag": "banner"}
        assert steps["put_back"].inputs is None
        gate = steps["shed"].gate
        assert gate is not None
        assert (gate.role, gate.min_approvals) == ("sre-oncall", 1)
        gate = steps["put_back"].gate
        assert gate is not None
        assert (gate.role, gate.min_approvals) == ("sre-senior", 2)
        assert steps["shed"].compensation == "application.restore_flag"
        assert steps["look"].compensation is None
        assert [s.id for s in plan_preview.walk(plan, {"flag": "x"}) if plan_preview.wants_preview(s)] == [
            "shed", "banner", "ghost", "tidy/lift",
        ]  # fmt: skip


class TestPlanAgainstRedis:
    async def test_plan_reads_real_state_and_changes_nothing(
        self, workers: Settings, http: httpx.AsyncClient, redis_db: RedisServer
    ) -> None:
        """POST /plans/preview: each determinable change's preview read from the real Redis
        (before -> after), the failing one says why on its own row, and Redis is unchanged."""
        db = redis_db.client()
        db.set("flag:shed", "off")
        db.set("flag:banner", "normal")
        before = snapshot(redis_db)

        response = await http.post(
            "/plans/preview", json={"playbook": "shed", "inputs": {"flag": "shed"}}
        )
        assert response.status_code == 200, response.text
        preview = PlanPreview.model_validate(response.json())

        assert snapshot(redis_db) == before
        assert preview.counts() == {"mutating": 5, "read-only": 2, "undetermined": 2}
        steps = by_id(preview)
        shed = steps["shed"].preview
        assert shed is not None
        assert steps["shed"].preview_error is None
        [change] = shed.changes
        assert (change.target, change.attribute) == ("redis:cache", "flag shed")
        assert (change.before, change.after) == ("off", "on")
        assert shed.blast_radius == {"flags": 1}
        assert "'off'" in shed.rollback
        banner = steps["banner"].preview
        assert banner is not None
        assert banner.changes[0].before == "normal"
        lift = steps["tidy/lift"].preview
        assert lift is not None
        assert (lift.changes[0].before, lift.changes[0].after) == ("normal", None)
        ghost = steps["ghost"]
        assert ghost.preview is None
        assert "nowhere" in (ghost.preview_error or "")
        for undetermined in ("put_back", "tidy/mark"):
            assert steps[undetermined].preview is None
            assert steps[undetermined].preview_error is None
        assert steps["look"].preview is None

        # And the terminal view at 80 columns says the same, no line wider than the terminal.
        shown = text_of(render.plan_view(preview), 80)
        assert max(len(line) for line in shown.splitlines()) <= 80
        assert "'off' -> 'on'" in shown
        assert "preview unavailable:" in shown
        assert "nowhere" in shown
        assert "put_back: undetermined, needs steps.shed" in shown
        assert "5 mutating, 2 read-only, 2 undetermined" in shown

    async def test_previews_without_domain_workers_say_so(
        self, client: Client, settings: Settings, redis_db: RedisServer
    ) -> None:
        """Only the workflow worker runs (no application worker): every preview answers
        "unavailable" within its timeout and the plan itself still comes back whole."""
        redis_db.client().set("flag:shed", "off")
        async with fireline_workers(client, settings.task_queue_prefix, domains=()):
            preview = await operations.preview_plan(
                client, settings, "shed", {"flag": "shed"}, timeout_s=1.0
            )
        steps = by_id(preview)
        assert len(steps) == 9
        for sid in ("shed", "banner", "ghost", "tidy/lift"):
            assert steps[sid].preview is None
            assert steps[sid].preview_error, sid
        assert redis_db.client().get("flag:shed") == "off"

    async def test_refusals(self, workers: Settings, http: httpx.AsyncClient) -> None:
        """Library names only (a path is 404 listing the known ones), inputs checked (400),
        a credential required (401), huge bodies refused (422) before anything runs."""
        response = await http.post("/plans/preview", json={"playbook": "../../etc/passwd"})
        assert response.status_code == 404
        assert response.json()["detail"]["known"] == ["shed", "tidy"]
        response = await http.post("/plans/preview", json={"playbook": "shed", "inputs": {}})
        assert response.status_code == 400
        assert "flag" in response.text
        response = await http.post(
            "/plans/preview",
            json={"playbook": "shed", "inputs": {f"k{n}": n for n in range(500)}},
        )
        assert response.status_code == 422
        response = await http.post(
            "/plans/preview",
            json={"playbook": "shed", "inputs": {"flag": "x"}},
            headers={"Authorization": "Bearer nope"},
        )
        assert response.status_code == 401

    async def test_cli_plan_through_the_api(
        self, workers: Settings, token: str, redis_db: RedisServer, tmp_path: Path
    ) -> None:
        """``fireline plan shed -i flag=shed`` against a real API server: the table at 80
        columns and ``--json``, both from the real Redis, which stays as it was."""
        redis_db.client().set("flag:shed", "off")
        before = snapshot(redis_db)
        async with serving(workers) as url:
            env = {
                "COLUMNS": "80",
                "FIRELINE_API_URL": url,
                "FIRELINE_TOKEN": token,
                "FIRELINE_CREDENTIALS_FILE": str(tmp_path / "credentials"),
                "FIRELINE_DATA_DIR": str(tmp_path / "cli-data"),
            }
            runner = CliRunner()
            table = await asyncio.to_thread(
                runner.invoke, cli_app, ["plan", "shed", "-i", "flag=shed"], env=env
            )
            as_json = await asyncio.to_thread(
                runner.invoke, cli_app, ["plan", "shed", "-i", "flag=shed", "--json"], env=env
            )
            unknown = await asyncio.to_thread(runner.invoke, cli_app, ["plan", "nope"], env=env)
        assert table.exit_code == 0, table.output
        assert "flag shed: 'off' -> 'on'" in table.stdout
        assert "rollback: application.restore_flag puts back 'off'" in table.stdout
        assert max(len(line) for line in table.stdout.splitlines()) <= 80
        assert as_json.exit_code == 0, as_json.output
        start = as_json.stdout.index("{")
        data = json.loads(as_json.stdout[start:])
        shed = next(s for s in data["steps"] if s["id"] == "shed")
        assert shed["kind"] == "mutating"
        assert shed["preview"]["changes"][0]["before"] == "off"
        assert unknown.exit_code == 2
        assert "no playbook named 'nope'" in unknown.stderr
        assert snapshot(redis_db) == before


class TestGatePreview:
    async def test_status_shows_what_the_gate_would_allow(
        self,
        client: Client,
        workers: Settings,
        http: httpx.AsyncClient,
        redis_db: RedisServer,
        token: str,
        tmp_path: Path,
    ) -> None:
        """A run waiting at ``shed``'s gate: GET /runs/{id} carries the preview read from Redis,
        and ``fireline status`` (through a real API server) shows summary, before -> after,
        blast radius and rollback. Cancelled there, the flag was never touched."""
        redis_db.client().set("flag:shed", "off")
        response = await http.post("/runs", json={"playbook": "shed", "inputs": {"flag": "shed"}})
        assert response.status_code == 201, response.text
        workflow_id = response.json()["workflow_id"]
        await until(
            client,
            workflow_id,
            lambda s: s.step("shed").status is StepStatus.awaiting_approval,
        )
        response = await http.get(f"/runs/{workflow_id}")
        state = RunState.model_validate(response.json())
        step = state.step("shed")
        assert step.preview is not None
        assert (step.preview.changes[0].before, step.preview.changes[0].after) == ("off", "on")

        shown = text_of(render.run_view(state, timeline=False), 100)
        assert "shed waits for approval" in shown
        assert "would change: flag shed: 'off' -> 'on'" in shown
        assert "redis:cache flag shed: off -> on" in shown
        assert "blast radius: flags 1" in shown
        assert "rollback: application.restore_flag puts back 'off'" in shown

        async with serving(workers) as url:
            env = {
                "COLUMNS": "100",
                "FIRELINE_API_URL": url,
                "FIRELINE_TOKEN": token,
                "FIRELINE_CREDENTIALS_FILE": str(tmp_path / "credentials"),
                "FIRELINE_DATA_DIR": str(tmp_path / "cli-data"),
            }
            result = await asyncio.to_thread(
                CliRunner().invoke, cli_app, ["status", workflow_id], env=env
            )
        assert result.exit_code == 0, result.output
        assert "would change: flag shed: 'off' -> 'on'" in result.stdout
        assert "redis:cache flag shed: off -> on" in result.stdout

        response = await http.post(f"/runs/{workflow_id}/cancel", json={"reason": "test over"})
        assert response.status_code == 202, response.text
        await until(client, workflow_id, lambda s: s.phase.terminal)
        assert redis_db.client().get("flag:shed") == "off"

    def test_preview_unavailable_is_shown(self) -> None:
        """A gate whose preview failed says so, with the reason, instead of nothing."""
        state = RunState.model_validate(
            {
                "workflow_id": "wf",
                "playbook": "p",
                "version": "1",
                "plan_hash": "0" * 64,
                "steps": [
                    {
                        "id": "shed",
                        "name": "shed",
                        "status": "awaiting_approval",
                        "preview_error": "redis target 'cache' refused the connection",
                    }
                ],
            }
        )
        shown = text_of(render.run_view(state, timeline=False), 100)
        assert "preview unavailable: redis target 'cache' refused the connection" in shown
