"""The ``fireline`` command: argument handling, validate, modules, and runs end to end.

End-to-end commands run through typer's CliRunner in a worker thread (each command calls
``asyncio.run`` itself), against the shared dev server (the ``env`` fixture), with the real
worker runtime serving the test's own task queues and playbooks from a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console
from temporalio.client import Client
from typer.testing import CliRunner, Result

from fireline.identity.keys import read_key
from fireline.messages import (
    ApprovalRecord,
    AuditEvent,
    CheckObservation,
    CompensationRecord,
    RunPhase,
    RunState,
    StepState,
    StepStatus,
)
from fireline.operator import render
from fireline.operator.cli import app, parse_assignments
from fireline.plan import GateSpec
from fireline.runtime.settings import Settings
from tests import test_api
from tests import test_operations as shared
from tests.test_api import serving
from tests.test_operations import (
    PLAYBOOKS,
    Reply,
    Target,
    finished,
    step_is,
    until,
    write_playbooks,
)

# Fixtures shared with the operations tests (a real dev server, workers and HTTP target).
playbooks_dir = shared.playbooks_dir
fl_settings = shared.fl_settings
workers = shared.workers
target = shared.target
tokens = test_api.tokens

WIDE = {"COLUMNS": "200"}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**WIDE, **(env or {})})


class TestInputParsing:
    def test_pairs_split_at_the_first_equals_sign(self) -> None:
        """Values keep later '=' signs and may be empty."""
        assert parse_assignments(["a=1", "url=http://x/?q=1", "empty="]) == {
            "a": "1",
            "url": "http://x/?q=1",
            "empty": "",
        }

    @pytest.mark.parametrize(
        ("given", "complaint"),
        [
            (["novalue"], "is not key=value"),
            (["=1"], "is not key=value"),
            (["a=1", "a=2"], "twice"),
        ],
    )
    def test_bad_pairs_are_usage_errors(self, given: list[str], complaint: str) -> None:
        """A malformed or repeated --input exits 2 before anything connects to the API."""
        args = [arg for pair in given for arg in ("--input", pair)]
        result = invoke("run", "gated", *args, env={"FIRELINE_API_URL": "http://127.0.0.1:1"})
        assert result.exit_code == 2
        assert complaint in result.stderr
        assert "cannot reach" not in result.stderr

    def test_inputs_only_with_retry(self) -> None:
        """decide refuses new inputs for skip and compensate as a usage error."""
        result = invoke("decide", "wf", "step", "skip", "--input", "a=1")
        assert result.exit_code == 2
        assert "only retry takes new inputs" in result.stderr

    def test_unknown_decision_is_a_usage_error(self) -> None:
        """Only retry, skip and compensate are decisions."""
        result = invoke("decide", "wf", "step", "ignore")
        assert result.exit_code == 2

    def test_unreachable_api_is_a_failure(self) -> None:
        """An API that does not answer gives exit 1 and says where it looked."""
        result = invoke("status", "wf", env={"FIRELINE_API_URL": "http://127.0.0.1:1"})
        assert result.exit_code == 1
        assert "cannot reach the Fireline API at http://127.0.0.1:1" in result.stderr


BROKEN = {
    "ok.yaml": PLAYBOOKS["quick.yaml"],
    "bad.yaml": """
        name: bad
        steps:
          - id: first
            uses: core.wait
            with: {seconds: 0}
          - id: second
            uses: core.wiat
            with: {seconds: 0}
    """,
}


class TestValidate:
    def test_errors_are_located_and_exit_nonzero(self, tmp_path: Path) -> None:
        """Each problem reads file:line: step 'x': message, under a ✗; good files get a ✓."""
        folder = write_playbooks(tmp_path / "pb", BROKEN)
        result = invoke("validate", str(folder))
        assert result.exit_code == 1
        bad, ok = folder / "bad.yaml", folder / "ok.yaml"
        assert f"✗ {bad}" in result.stdout
        assert f"✓ {ok}" in result.stdout
        assert f"{bad}:7: step 'second': unknown module or check 'core.wiat'" in result.stdout

    def test_json(self, tmp_path: Path) -> None:
        """--json lists every file with its problems as data."""
        folder = write_playbooks(tmp_path / "pb", BROKEN)
        result = invoke("validate", str(folder), "--json")
        assert result.exit_code == 1
        data = json.loads(result.stdout)
        assert data["ok"] is False
        files = {Path(f["file"]).name: f for f in data["files"]}
        assert files["ok.yaml"] == {"file": str(folder / "ok.yaml"), "ok": True, "problems": []}
        (problem,) = files["bad.yaml"]["problems"]
        assert (problem["line"], problem["step"], problem["field"]) == (7, "second", "uses")

    def test_clean_folder_from_settings(self, tmp_path: Path) -> None:
        """Without paths it checks FIRELINE_PLAYBOOKS_DIR and exits 0 when all is well."""
        folder = write_playbooks(tmp_path / "pb", {"ok.yaml": PLAYBOOKS["quick.yaml"]})
        result = invoke("validate", env={"FIRELINE_PLAYBOOKS_DIR": str(folder)})
        assert result.exit_code == 0, result.output
        assert "0 with errors" in result.stdout

    def test_missing_path_is_a_usage_error(self, tmp_path: Path) -> None:
        """A path that does not exist exits 2."""
        result = invoke("validate", str(tmp_path / "nowhere"))
        assert result.exit_code == 2
        assert "no such file or directory" in result.stderr


class TestModules:
    def test_json_lists_contracts_with_schemas(self) -> None:
        """--json describes every module, input schema included."""
        result = invoke("modules", "--json")
        assert result.exit_code == 0
        described = {d["name"]: d for d in json.loads(result.stdout)}
        http = described["core.http_request"]
        assert (http["kind"], http["domain"], http["mutates"]) == ("module", "core", True)
        assert "url" in http["input_schema"]["properties"]
        assert described["core.http_probe"]["kind"] == "check"

    def test_domain_filter(self) -> None:
        """--domain keeps only that domain; an unknown domain is a usage error."""
        result = invoke("modules", "--json", "--domain", "core")
        assert {d["domain"] for d in json.loads(result.stdout)} == {"core"}
        assert invoke("modules", "--domain", "kitchen").exit_code == 2

    def test_one_module_in_detail(self) -> None:
        """NAME shows one module with its input fields; an unknown name exits 2."""
        result = invoke("modules", "core.http_request")
        assert result.exit_code == 0
        assert "input fields" in result.stdout
        assert "health_url" in result.stdout
        assert json.loads(invoke("modules", "core.wait", "--json").stdout)["name"] == "core.wait"
        assert invoke("modules", "core.nothing").exit_code == 2

    def test_table(self) -> None:
        """The table shows name, risk and compensation."""
        result = invoke("modules")
        row = next(line for line in result.stdout.splitlines() if "core.http_request" in line)
        assert "medium" in row
        assert row.count("core.http_request") == 2  # compensated by itself


def _state(phase: RunPhase, *steps: StepState) -> RunState:
    return RunState(
        workflow_id="wf-1",
        playbook="p",
        version="1",
        plan_hash="ab" * 32,
        phase=phase,
        steps=list(steps),
    )


AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class TestRender:
    def test_changes_one_line_each_with_the_run_last(self) -> None:
        """Only what changed is printed; a terminal phase comes after the steps that caused it."""
        waiting = StepState(
            id="poke",
            name="poke",
            status=StepStatus.awaiting_approval,
            gate=GateSpec(role="sre-oncall"),
        )
        first = _state(RunPhase.awaiting_approval, StepState(id="a", name="a"), waiting)
        assert render.changes(None, first) == [
            "run awaiting_approval",
            "step poke: awaiting_approval (needs sre-oncall)",
        ]
        failed = waiting.model_copy(update={"status": StepStatus.failed, "error": "boom [x]"})
        last = _state(RunPhase.compensated, StepState(id="a", name="a"), failed)
        assert render.changes(first, last) == ["step poke: failed: boom [x]", "run compensated"]
        assert render.changes(last, last) == []

    def test_status_view_shows_checks_approvals_and_compensations(self) -> None:
        """The status page carries what each check observed and who approved."""
        step = StepState(
            id="poke",
            name="poke",
            module="core.http_request",
            status=StepStatus.compensated,
            attempts=2,
            approvals=[ApprovalRecord(by="alice", decision="approved", comment="go", at=AT)],
            checks=[
                CheckObservation(
                    check="core.http_probe",
                    stage="post",
                    satisfied=False,
                    observed=503,
                    expected=200,
                    detail="[still down]",
                    attempts=3,
                    at=AT,
                )
            ],
        )
        state = _state(RunPhase.compensated, step)
        state.reason = "poke failed"
        state.compensations = [
            CompensationRecord(
                step="poke",
                module="core.http_request",
                domain="core",
                status="succeeded",
                verified=True,
            )
        ]
        console = Console(record=True, width=250)
        console.print(render.run_view(state))
        text = console.export_text()
        checks_row = next(line for line in text.splitlines() if "core.http_probe" in line)
        for cell in ("post", "✗", "3", "503", "200", "[still down]"):
            assert cell in checks_row
        assert "✓ alice (go)" in text
        assert "reason: poke failed" in text
        assert "compensations" in text


class TestIdentityMarks:
    def test_timeline_and_approvals_say_who_was_proven(self) -> None:
        """Signed decisions read [verified], unsigned ones [unverified]; old records neither."""
        step = StepState(
            id="poke",
            name="poke",
            approvals=[
                ApprovalRecord(by="alice", decision="approved", at=AT, verified=True),
                ApprovalRecord(by="dave", decision="approved", at=AT, verified=False),
            ],
        )
        state = _state(RunPhase.succeeded, step)
        state.events = [
            AuditEvent(at=AT, actor="alice", kind="approved", step="poke", verified=True),
            AuditEvent(at=AT, actor="dave", kind="approved", step="poke", verified=False),
            AuditEvent(at=AT, actor="fireline", kind="run_started"),
        ]
        console = Console(record=True, width=250)
        console.print(render.run_view(state))
        text = console.export_text()
        assert "✓ alice, ✓ dave [unverified]" in text
        assert "alice [verified]" in text
        assert "dave [unverified]" in text
        assert "fireline [" not in text


class TestKeyInit:
    def test_makes_the_key_once_and_keeps_it(self, tmp_path: Path) -> None:
        """``key init`` (what docker-compose's identity-setup runs) makes a 0600 key where
        FIRELINE_DECISION_KEY_FILE says, prints ``id=public``, and keeps it on a second run."""
        path = tmp_path / "identity" / "decision-key"
        env = {"FIRELINE_DECISION_KEY_FILE": str(path)}
        first = invoke("key", "init", env=env)
        assert first.exit_code == 0, first.output
        key = read_key(path)
        assert first.stdout.strip().splitlines()[-1] == f"{key.key_id}={key.public}"
        assert path.stat().st_mode & 0o777 == 0o600
        again = invoke("key", "init", "--json", env=env)
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["key_id"] == key.key_id
        assert read_key(path) == key

    def test_a_file_that_is_no_key_is_an_error_not_replaced(self, tmp_path: Path) -> None:
        path = tmp_path / "decision-key"
        path.write_text("not a key\n")
        result = invoke("key", "init", env={"FIRELINE_DECISION_KEY_FILE": str(path)})
        assert result.exit_code == 2
        assert "is unreadable" in result.stderr
        assert path.read_text() == "not a key\n"


class TestSchema:
    def test_schema_describes_playbooks(self) -> None:
        """The printed JSON Schema requires a name and steps."""
        schema = json.loads(invoke("schema").stdout)
        assert {"name", "steps"} <= set(schema["required"])


@pytest.fixture
async def api_url(workers: Settings) -> AsyncIterator[str]:
    """The operator API on a real uvicorn server, in front of the test's Temporal and workers."""
    async with serving(workers) as url:
        yield url


@pytest.fixture
def cli_env(
    api_url: str, workers: Settings, tokens: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    """Environment that points the CLI at the test's API, as carol (by her token)."""
    return {
        "FIRELINE_API_URL": api_url,
        "FIRELINE_TOKEN": tokens["carol"],
        "FIRELINE_CREDENTIALS_FILE": str(tmp_path / "no-login" / "credentials"),
        "FIRELINE_DATA_DIR": str(tmp_path / "cli-data"),
        "FIRELINE_PLAYBOOKS_DIR": str(workers.playbooks_dir),
    }


def as_person(cli_env: dict[str, str], tokens: dict[str, str], person: str) -> dict[str, str]:
    return {**cli_env, "FIRELINE_TOKEN": tokens[person]}


async def cli(cli_env: dict[str, str], *args: str) -> Result:
    """Run one command off the event loop, which the in-process API and workers need."""
    return await asyncio.to_thread(invoke, *args, env=cli_env)


def started_id(result: Result) -> str:
    found = re.search(r"started (fireline-\S+)", result.stdout)
    assert found, result.output
    return found.group(1)


class TestRunsEndToEnd:
    async def test_run_status_approve(
        self, client: Client, cli_env: dict[str, str], tokens: dict[str, str], target: Target
    ) -> None:
        """run prints id and link; approve refuses mallory (exit 1) and lets alice through."""
        target.route("POST", "/poke", Reply(200, {}))
        result = await cli(cli_env, "run", "gated", "--input", f"base={target.base_url}")
        assert result.exit_code == 0, result.output
        wid = started_id(result)
        assert f"/namespaces/default/workflows/{wid}" in result.stdout
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))

        shown = await cli(cli_env, "status", wid, "--json")
        state = RunState.model_validate_json(shown.stdout)
        assert (state.phase, state.requested_by) == (RunPhase.awaiting_approval, "carol")

        mallory = as_person(cli_env, tokens, "mallory")
        refused = await cli(mallory, "approve", wid, "poke")
        assert refused.exit_code == 1
        assert "refused: mallory may not decide for role sre-oncall" in refused.stderr

        alice = as_person(cli_env, tokens, "alice")
        approved = await cli(alice, "approve", wid, "poke", "--comment", "ok")
        assert approved.exit_code == 0, approved.output
        assert "approved step poke" in approved.stdout
        await until(client, wid, finished)

        table = await cli(cli_env, "status", wid)
        assert table.exit_code == 0
        assert "succeeded" in table.stdout
        assert "✓ alice (ok)" in table.stdout
        assert "timeline" in table.stdout

        listed = await cli(cli_env, "runs", "--json", "--limit", "1000")
        assert wid in {r["workflow_id"] for r in json.loads(listed.stdout)}

    async def test_follow_success_exits_zero(self, cli_env: dict[str, str]) -> None:
        """--follow prints each change when not a terminal and ends with the outcome."""
        result = await cli(cli_env, "run", "quick", "--follow")
        assert result.exit_code == 0, result.output
        assert "step pause: succeeded" in result.stdout
        assert result.stdout.rstrip().endswith("outcome: succeeded")

    async def test_follow_failure_exits_one(self, cli_env: dict[str, str], target: Target) -> None:
        """A followed run that ends compensated exits 1 and says why."""
        target.route("POST", "/refuse", Reply(409, {"error": "no"}))
        result = await cli(
            cli_env, "run", "refused", "--follow", "--input", f"base={target.base_url}"
        )
        assert result.exit_code == 1, result.output
        assert "outcome: compensated" in result.stdout
        assert "step call: failed" in result.stdout

    async def test_follow_json(self, cli_env: dict[str, str]) -> None:
        """--follow --json prints one document: the start and the final state."""
        result = await cli(cli_env, "run", "quick", "--follow", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["playbook"] == "quick"
        assert data["final"]["phase"] == "succeeded"

    async def test_compile_and_input_errors_exit_two(
        self, cli_env: dict[str, str], workers: Settings
    ) -> None:
        """A playbook that does not compile, missing inputs, or a path: exit 2 with the reason."""
        broken = await cli(cli_env, "run", "broken")
        assert broken.exit_code == 2
        assert "broken.yaml:7: step 'nope': unknown module or check 'core.nope'" in broken.stderr
        missing = await cli(cli_env, "run", "gated")
        assert missing.exit_code == 2
        assert "missing required input 'base'" in missing.stderr
        path = await cli(cli_env, "run", str(workers.playbooks_dir / "quick.yaml"))
        assert path.exit_code == 2
        assert "no playbook named" in path.stderr
        assert "known: asking, broken, gated, quick, refused" in path.stderr

    async def test_cancel(self, client: Client, cli_env: dict[str, str], target: Target) -> None:
        """cancel ends a waiting run cancelled, recorded under the credential's person (carol
        started it); cancelling it again fails."""
        wid = started_id(await cli(cli_env, "run", "gated", "-i", f"base={target.base_url}"))
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
        done = await cli(cli_env, "cancel", wid, "--reason", "drill")
        assert done.exit_code == 0, done.output
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.cancelled
        assert state.cancel_requested_by == "carol"
        (event,) = [e for e in state.events if e.kind == "cancel_requested"]
        assert (event.actor, event.verified, event.message) == ("carol", True, "drill")
        again = await cli(cli_env, "cancel", wid)
        assert again.exit_code == 1
        assert "already finished" in again.stderr

    async def test_unknown_run(self, cli_env: dict[str, str]) -> None:
        """status of an id nobody started exits 1."""
        result = await cli(cli_env, "status", "fireline-nobody-20000101T000000-000000")
        assert result.exit_code == 1
        assert "no run" in result.stderr
