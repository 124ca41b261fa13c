"""The CLI's credentials against a real API server: FIRELINE_TOKEN, the login file, the
development credential of ``fireline up``, ``--as`` (development only), and ``fireline token``.

The API is a real uvicorn server on 127.0.0.1 in front of the session's dev server; each
command runs through typer's CliRunner in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from typer.testing import CliRunner, Result

from fireline.identity.dev import ensure_dev_identity
from fireline.identity.tokens import TokenStore, tokens_path
from fireline.messages import StepStatus
from fireline.operator.cli import app
from fireline.runtime.settings import Settings
from tests import test_api
from tests import test_operations as shared
from tests.test_api import serving
from tests.test_operations import Reply, Target, step_is, until

playbooks_dir = shared.playbooks_dir
fl_settings = shared.fl_settings
workers = shared.workers
target = shared.target
tokens = test_api.tokens


def invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env}, input=stdin)


async def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return await asyncio.to_thread(invoke, env, *args, stdin=stdin)


def json_out(result: Result) -> Any:
    """The command's JSON document; in-process workers may log lines to the same stdout."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line[:1] in ("{", "["))
    return json.loads("\n".join(lines[start:]))


def file_facts(path: Path) -> tuple[int, int, str] | None:
    """(mode, folder mode, text) of a file, or None when it does not exist."""
    if not path.exists():
        return None
    return (
        stat.S_IMODE(path.stat().st_mode),
        stat.S_IMODE(path.parent.stat().st_mode),
        path.read_text(),
    )


@pytest.fixture
async def api_url(workers: Settings) -> AsyncIterator[str]:
    async with serving(workers) as url:
        yield url


@pytest.fixture
def bare_env(workers: Settings, tmp_path: Path) -> dict[str, str]:
    """No credential at all: no token, a login file that does not exist, an empty data folder."""
    return {
        "FIRELINE_TOKEN": "",
        "FIRELINE_API_URL": "",
        "FIRELINE_CREDENTIALS_FILE": str(tmp_path / "config" / "fireline" / "credentials"),
        "FIRELINE_DATA_DIR": str(tmp_path / "cli-data"),
        "FIRELINE_PLAYBOOKS_DIR": str(workers.playbooks_dir),
    }


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    """CliRunner unsets variables whose value is None."""
    return {**env, **dict.fromkeys(names)}  # type: ignore[dict-item]


class TestCredentials:
    async def test_fireline_token_is_the_person(
        self, api_url: str, bare_env: dict[str, str], tokens: dict[str, str]
    ) -> None:
        """FIRELINE_TOKEN=bob's token: the API says bob, verified."""
        env = {**bare_env, "FIRELINE_API_URL": api_url, "FIRELINE_TOKEN": tokens["bob"]}
        result = await cli(env, "whoami")
        assert result.exit_code == 0, result.output
        assert "bob (verified, token)" in result.stdout

    async def test_no_credential_is_refused_with_a_hint(
        self, api_url: str, bare_env: dict[str, str]
    ) -> None:
        """Nothing configured: exit 1, 401's reason and how to get a credential."""
        result = await cli({**bare_env, "FIRELINE_API_URL": api_url}, "runs")
        assert result.exit_code == 1
        assert "not authorised: a bearer credential is required" in result.stderr
        assert "fireline login" in result.stderr

    async def test_login_keeps_the_token_in_a_private_file(
        self, api_url: str, bare_env: dict[str, str], tokens: dict[str, str]
    ) -> None:
        """login checks the token, writes it 0600 with the API URL; later commands use both."""
        env = without(bare_env, "FIRELINE_TOKEN", "FIRELINE_API_URL")
        path = Path(bare_env["FIRELINE_CREDENTIALS_FILE"])
        bad = await cli(env, "login", "--api-url", api_url, "--token-stdin", stdin="fl_nope\n")
        assert bad.exit_code == 1
        assert "not authorised" in bad.stderr
        assert file_facts(path) is None

        login = await cli(
            env, "login", "--api-url", api_url, "--token-stdin", stdin=tokens["alice"] + "\n"
        )
        assert login.exit_code == 0, login.output
        assert "as alice" in login.stdout
        facts = file_facts(path)
        assert facts is not None
        assert facts[:2] == (0o600, 0o700)
        assert json.loads(facts[2]) == {"api_url": api_url, "token": tokens["alice"]}

        me = await cli(env, "whoami", "--json")
        assert me.exit_code == 0, me.output
        assert json_out(me)["person"] == "alice"

        await asyncio.to_thread(path.chmod, 0o644)
        exposed = await cli(env, "whoami")
        assert exposed.exit_code == 1
        assert "readable by other users" in exposed.stderr

        await asyncio.to_thread(path.chmod, 0o600)
        assert (await cli(env, "logout")).exit_code == 0
        assert file_facts(path) is None

    async def test_as_is_refused_outside_development_mode(
        self, api_url: str, bare_env: dict[str, str], tokens: dict[str, str]
    ) -> None:
        """--as sends no credential: a production API answers 401 and says why."""
        env = {**bare_env, "FIRELINE_API_URL": api_url, "FIRELINE_TOKEN": tokens["bob"]}
        result = await cli(env, "approve", "fireline-x", "poke", "--as", "alice")
        assert result.exit_code == 1
        assert "accepted only by a development-mode API on loopback" in result.stderr


class TestDevelopmentFlow:
    async def test_fireline_up_credential_needs_no_set_up(
        self, workers: Settings, bare_env: dict[str, str], target: Target, client: Client
    ) -> None:
        """After the embedded default's set-up, run and approve work with nothing configured.

        The credential is verified (a token), so the approval is signed; --as still works in
        development mode, unverified: it may start a run, but not pass a medium-risk gate.
        """
        target.route("POST", "/poke", Reply(200, {}))
        dev = ensure_dev_identity(workers)
        async with serving(dev) as url:
            env = {**bare_env, "FIRELINE_API_URL": url, "FIRELINE_DATA_DIR": str(dev.data_dir)}
            me = await cli(env, "whoami")
            assert "alice (verified, token)" in me.stdout, me.output

            started = await cli(env, "run", "gated", "--input", f"base={target.base_url}")
            assert started.exit_code == 0, started.output
            found = re.search(r"started (fireline-\S+)", started.stdout)
            assert found
            wid = found.group(1)
            await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
            approved = await cli(env, "approve", wid, "poke", "--json")
            assert approved.exit_code == 0, approved.output
            (record,) = json_out(approved)["approvals"]
            assert (record["by"], record["verified"]) == ("alice", True)

            second = await cli(env, "run", "gated", "-i", f"base={target.base_url}", "--json")
            other = json_out(second)["workflow_id"]
            await until(client, other, step_is("poke", StepStatus.awaiting_approval))
            unsigned = await cli(env, "approve", other, "poke", "--as", "alice")
            assert unsigned.exit_code == 1
            assert "refused: unsigned decision claiming alice refused" in unsigned.stderr
            assert (await cli(env, "cancel", other)).exit_code == 0

            unverified = await cli(env, "run", "quick", "--as", "dave", "--json")
            assert unverified.exit_code == 0, unverified.output
            quick = json_out(unverified)["workflow_id"]
            shown = await cli(env, "status", quick, "--json")
            assert json_out(shown)["requested_by"] == "dave"


class TestRefusals:
    async def test_unauthorised_approval_is_refused_and_audited(
        self,
        api_url: str,
        bare_env: dict[str, str],
        tokens: dict[str, str],
        target: Target,
        client: Client,
    ) -> None:
        """mallory is in the catalog but not in the gate's role: exit 1 with the reason, and
        her attempt is in the run's timeline under her (proven) name."""
        carol = {**bare_env, "FIRELINE_API_URL": api_url, "FIRELINE_TOKEN": tokens["carol"]}
        mallory = {**carol, "FIRELINE_TOKEN": tokens["mallory"]}
        started = await cli(carol, "run", "gated", "--input", f"base={target.base_url}", "--json")
        wid = json_out(started)["workflow_id"]
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
        refused = await cli(mallory, "approve", wid, "poke")
        assert refused.exit_code == 1
        assert "refused: mallory may not decide for role sre-oncall" in refused.stderr
        events = json_out(await cli(carol, "status", wid, "--json"))["events"]
        assert any(e["actor"] == "mallory" and "refused" in e["kind"] for e in events)
        no_say = await cli(mallory, "cancel", wid)
        assert no_say.exit_code == 1
        assert "mallory may not cancel this run" in no_say.stderr
        assert (await cli(carol, "cancel", wid)).exit_code == 0


class TestTokenCommands:
    async def test_issue_list_revoke(
        self, api_url: str, bare_env: dict[str, str], workers: Settings
    ) -> None:
        """issue prints a working token once (only its hash kept); revoke makes it 401."""
        env = {**bare_env, "FIRELINE_DATA_DIR": str(workers.data_dir)}
        unknown = await cli(env, "token", "issue", "zed")
        assert unknown.exit_code == 2
        assert "'zed' is not a person" in unknown.stderr

        bad_lifetime = await cli(env, "token", "issue", "erin", "--valid-for", "soon")
        assert bad_lifetime.exit_code == 2
        issued = await cli(env, "token", "issue", "erin", "--label", "laptop", "--valid-for", "1h")
        assert issued.exit_code == 0, issued.output
        (token,) = [line for line in issued.stdout.splitlines() if line.startswith("fl_")]
        stored = file_facts(tokens_path(workers))
        assert stored is not None
        assert stored[0] == 0o600
        assert token not in stored[2]
        assert TokenStore.of(workers).person_of(token) == "erin"

        listed = json_out(await cli(env, "token", "list", "--json"))
        (record,) = [r for r in listed if r["label"] == "laptop"]
        assert record["person"] == "erin"
        assert record["expires_at"] is not None
        assert "sha256" not in record
        assert token not in json.dumps(listed)

        as_erin = {**env, "FIRELINE_API_URL": api_url, "FIRELINE_TOKEN": token}
        assert "erin (verified" in (await cli(as_erin, "whoami")).stdout
        revoked = await cli(env, "token", "revoke", record["id"])
        assert revoked.exit_code == 0, revoked.output
        after = await cli(as_erin, "whoami")
        assert after.exit_code == 1
        assert "unknown or revoked token" in after.stderr
