"""The incident API and CLI against the real dev server, real workers and a real uvicorn.

An incident is opened the way ingress opens one (signal-with-start with its search
attributes); the operator acts through the API with a bearer token, and the person recorded is
always the one the token proves. The CLI runs in a worker thread (its HTTP client is
synchronous) against the same server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from fireline.catalog.model import Catalog
from fireline.identity.keys import load_decision_key
from fireline.identity.tokens import TokenStore
from fireline.incident import (
    INCIDENT_WORKFLOW,
    QUERY_STATUS,
    SIGNAL_ALERTS,
    UPDATE_COMMAND,
    UPDATE_RESOLVE,
    AlertBatch,
    Command,
    IncidentState,
    Resolve,
    incident_start,
    incident_workflow_id,
    search_attributes,
)
from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.messages import QUERY_STATUS as RUN_QUERY
from fireline.messages import RunState
from fireline.operator.api import create_app
from fireline.operator.cli import app as cli_app
from fireline.runtime.settings import Settings
from tests.support.target import Reply, Target
from tests.support.workers import compile_playbooks, fireline_workers
from tests.test_incident_workflow import state_of

CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice, bob]}
  sre-senior: {tier: 2, members: [carol]}
  lead: {tier: 3, members: [dana]}
  incident-commander: {tier: 3, members: [erin]}
services:
  checkout:
    escalation:
      levels:
        - {tier: 1, delay: 5m, targets: [{role: sre-oncall}]}
        - {tier: 3, delay: 10m, targets: [{role: lead}]}
"""


@pytest.fixture
def settings(
    env: WorkflowEnvironment,
    task_queue_prefix: str,
    tmp_path: Path,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "catalog.yaml").write_text(textwrap.dedent(CATALOG))
    target.route("POST", "/page", Reply(200))
    monkeypatch.setenv(
        "FIRELINE_TARGETS", json.dumps({"webhook": {"default": {"url": target.url("/page")}}})
    )
    return Settings(
        temporal_address=env.client.service_client.config.target_host,
        task_queue_prefix=task_queue_prefix,
        playbooks_dir=folder,
        data_dir=tmp_path / "data",
    )


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    store = TokenStore.of(settings)
    return {p: store.issue(p)[0] for p in ("alice", "bob", "carol", "dana", "erin")}


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped during start-up"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def open_incident(
    client: Client, settings: Settings, service: str = "checkout", key: str | None = None
) -> str:
    catalog = Catalog.model_validate(yaml.safe_load(CATALOG))
    key = key or f"am/{service}/{uuid.uuid4().hex[:8]}"
    # As ingress opens it: the incident trusts the API's decision key.
    start = incident_start(
        catalog,
        service,
        key,
        severity="critical",
        task_queue_prefix=settings.task_queue_prefix,
        trusted_keys=load_decision_key(settings).trusted(),
    )
    alert = Alert(
        source=AlertSource.alertmanager,
        notification_id=uuid.uuid4().hex,
        group_key=key,
        status=AlertStatus.firing,
        name="CheckoutErrors",
        received_at=datetime.now(UTC),
    )
    handle = await client.start_workflow(
        INCIDENT_WORKFLOW,
        start,
        id=incident_workflow_id(key),
        task_queue=settings.task_queue_prefix,
        start_signal=SIGNAL_ALERTS,
        start_signal_args=[AlertBatch(batch_id=uuid.uuid4().hex, alerts=[alert])],
        search_attributes=search_attributes(start),
    )
    for _ in range(200):
        state = await handle.query(QUERY_STATUS, result_type=IncidentState)
        if len(state.pages) == 2:
            break
        await asyncio.sleep(0.05)
    return handle.id


def invoke(*args: str, env: dict[str, str]) -> Any:
    return CliRunner().invoke(cli_app, list(args), env={"COLUMNS": "80", **env})


class TestIncidentApi:
    async def test_list_show_act_and_read(
        self, env: WorkflowEnvironment, settings: Settings, tokens: dict[str, str]
    ) -> None:
        """List by service, ack as the token's person (not the body's), command, timeline."""
        client = env.client
        async with fireline_workers(client, settings.task_queue_prefix):
            incident = await open_incident(client, settings)
            async with serving(settings) as url:
                alice = httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {tokens['alice']}"}
                )
                anonymous = httpx.AsyncClient(base_url=url)
                try:
                    assert (await anonymous.get("/v1/incidents")).status_code == 401
                    assert (
                        await anonymous.post(f"/v1/incidents/{incident}/ack")
                    ).status_code == 401
                    rows: list[dict[str, Any]] = []
                    for _ in range(100):  # visibility is eventually consistent
                        rows = (
                            await alice.get("/v1/incidents", params={"service": "checkout"})
                        ).json()
                        if any(r["incident_id"] == incident for r in rows):
                            break
                        await asyncio.sleep(0.1)
                    row = next(r for r in rows if r["incident_id"] == incident)
                    assert (row["service"], row["severity"], row["open"]) == (
                        "checkout",
                        "critical",
                        True,
                    )
                    hostile = await alice.get(
                        "/v1/incidents", params={"service": "x' OR WorkflowType != '"}
                    )
                    assert hostile.status_code == 422
                    acked = await alice.post(
                        f"/v1/incidents/{incident}/ack", json={"comment": "on it", "by": "mallory"}
                    )
                    assert acked.status_code == 200, acked.text
                    assert acked.json()["acknowledged_by"] == "alice"
                    took = await alice.post(f"/v1/incidents/{incident}/command", json={})
                    assert took.json()["commander"] == "alice"
                    refused = await alice.post(
                        f"/v1/incidents/{incident}/command", json={"action": "handover"}
                    )
                    assert refused.status_code == 409
                    shown = (await alice.get(f"/v1/incidents/{incident}")).json()
                    assert shown["commander"] == "alice"
                    events = (await alice.get(f"/v1/incidents/{incident}/timeline")).json()
                    assert [
                        e["kind"] for e in events if e["kind"] in ("page", "ack", "command")
                    ] == [
                        "page",
                        "page",
                        "ack",
                        "command",
                    ]
                    markdown = await alice.get(
                        f"/v1/incidents/{incident}/timeline", params={"format": "markdown"}
                    )
                    assert markdown.headers["content-type"].startswith("text/markdown")
                    assert "| ack | alice |" in markdown.text
                    assert (await alice.get("/v1/incidents/no-such")).status_code == 404

                    cli_env = {"FIRELINE_API_URL": url, "FIRELINE_TOKEN": tokens["bob"]}
                    listed = await asyncio.to_thread(
                        invoke, "incidents", "--service", "checkout", env=cli_env
                    )
                    assert listed.exit_code == 0, listed.output
                    assert all(len(line) <= 80 for line in listed.output.splitlines())
                    assert "checkout" in listed.output
                    handover = await asyncio.to_thread(
                        invoke, "command", incident, "--handover", "dana", env=cli_env
                    )
                    assert handover.exit_code == 1, "only the commander can hand over"
                    assert "only the commander (alice)" in handover.output
                    shown_cli = await asyncio.to_thread(invoke, "incident", incident, env=cli_env)
                    assert shown_cli.exit_code == 0, shown_cli.output
                    assert all(len(line) <= 80 for line in shown_cli.output.splitlines())
                    timeline_cli = await asyncio.to_thread(
                        invoke, "timeline", incident, "--json", env=cli_env
                    )
                    assert json.loads(timeline_cli.output)[0]["kind"] in ("alert", "opened")
                    resolved = await asyncio.to_thread(
                        invoke, "resolve", incident, "-m", "fixed upstream", env=cli_env
                    )
                    assert resolved.exit_code == 0, resolved.output
                    handle = client.get_workflow_handle(incident, result_type=IncidentState)
                    final = await handle.result()
                    assert final.resolved_by == "bob"
                    postmortem = await asyncio.to_thread(
                        invoke, "postmortem", incident, env=cli_env
                    )
                    assert "## Decisions" in postmortem.output
                    assert "alice" in postmortem.output
                    report = await asyncio.to_thread(
                        invoke, "report", "--service", "checkout", "--json", env=cli_env
                    )
                    assert report.exit_code == 0, report.output
                    figures = json.loads(report.output)
                    assert figures["incidents"] >= 1
                    assert figures["time_to_acknowledge"]["count"] >= 1
                finally:
                    await alice.aclose()
                    await anonymous.aclose()


class TestPreviousIncident:
    async def test_an_incident_opened_unlinked_is_shown_linked_to_the_one_before(
        self, env: WorkflowEnvironment, settings: Settings, tokens: dict[str, str]
    ) -> None:
        """Ingress links a key's new incident to the one before from memory; one opened by an
        API that never saw the first (restarted, or another replica) starts unlinked, and
        the API finds the link when it shows the incident and drafts its postmortem. The
        first incident is linked to nothing (not to itself)."""
        client = env.client
        key = f"am/checkout/{uuid.uuid4().hex[:8]}"
        async with fireline_workers(client, settings.task_queue_prefix):
            incident = await open_incident(client, settings, key=key)
            handle = client.get_workflow_handle(incident)
            first_run = (await handle.describe()).run_id
            await handle.execute_update(UPDATE_RESOLVE, Resolve(by="alice", comment="fixed"))
            await handle.result()
            async with serving(settings) as url:
                alice = httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {tokens['alice']}"}
                )
                try:
                    alone = (await alice.get(f"/v1/incidents/{incident}")).json()
                    await open_incident(client, settings, key=key)
                    opened = await state_of(client.get_workflow_handle(incident))
                    shown = (await alice.get(f"/v1/incidents/{incident}")).json()
                    draft = (await alice.get(f"/v1/incidents/{incident}/postmortem")).text
                    # The id goes into the lookup's visibility query: one that would widen it
                    # is refused before any lookup.
                    widened = await alice.get("/v1/incidents/x' OR WorkflowId != 'y")
                finally:
                    await alice.aclose()
            await client.get_workflow_handle(incident).terminate("test over")

        assert alone["previous_incident"] is None
        assert opened.previous_incident is None
        assert shown["previous_incident"] == first_run
        assert "This key had an incident before" in draft
        assert widened.status_code == 422


class TestIncidentRights:
    async def test_ack_command_cancel_are_signed_and_judged(
        self, env: WorkflowEnvironment, settings: Settings, tokens: dict[str, str]
    ) -> None:
        """The API signs each decision for the token's person; the incident verifies and
        judges it: carol (not on checkout's ladder) may neither ack nor command, and her
        attempts are in the timeline; an unsigned command sent straight to Temporal is refused;
        erin (incident commander) takes command, alice acks, bob (neither) may not cancel."""
        client = env.client
        async with fireline_workers(client, settings.task_queue_prefix):
            incident = await open_incident(client, settings)
            async with serving(settings) as url:
                people = {
                    p: httpx.AsyncClient(
                        base_url=url, headers={"Authorization": f"Bearer {tokens[p]}"}
                    )
                    for p in ("alice", "bob", "carol", "erin")
                }
                try:
                    carol_ack = await people["carol"].post(f"/v1/incidents/{incident}/ack")
                    assert carol_ack.status_code == 409
                    assert "carol may not acknowledge" in carol_ack.json()["detail"]
                    carol_cmd = await people["carol"].post(f"/v1/incidents/{incident}/command")
                    assert carol_cmd.status_code == 409
                    assert "carol (tier 2) may not command" in carol_cmd.json()["detail"]
                    with pytest.raises(WorkflowUpdateFailedError) as forged:
                        await client.get_workflow_handle(incident).execute_update(
                            UPDATE_COMMAND, Command(action="take", by="erin")
                        )
                    assert "unsigned command claiming erin" in str(forged.value.cause)
                    acked = await people["alice"].post(
                        f"/v1/incidents/{incident}/ack", json={"comment": "looking"}
                    )
                    assert acked.status_code == 200, acked.text
                    assert acked.json()["acks"][-1]["verified"] is True
                    took = await people["erin"].post(f"/v1/incidents/{incident}/command")
                    assert took.status_code == 200, took.text
                    assert took.json()["commander"] == "erin"
                    handed = await people["erin"].post(
                        f"/v1/incidents/{incident}/command",
                        json={"action": "handover", "to": "carol"},
                    )
                    assert handed.status_code == 409, "carol may not hold command"
                    bob_cancel = await people["bob"].post(f"/v1/incidents/{incident}/cancel")
                    assert bob_cancel.status_code == 409
                    assert "bob may not cancel" in bob_cancel.json()["detail"]
                    cancelled = await people["alice"].post(
                        f"/v1/incidents/{incident}/cancel", json={"comment": "false alarm"}
                    )
                    assert cancelled.status_code == 200, cancelled.text
                finally:
                    for c in people.values():
                        await c.aclose()
            final = await client.get_workflow_handle(incident, result_type=IncidentState).result()

        assert final.resolved_by == "alice"
        assert final.commander == "erin"
        refused = [(e.kind, e.actor) for e in final.timeline if e.kind.endswith("_refused")]
        assert refused == [
            ("ack_refused", "carol"),
            ("command_refused", "carol"),
            ("command_refused", "erin"),  # the unsigned one sent straight to Temporal
            ("command_refused", "erin"),  # the handover to carol
            ("cancel_refused", "bob"),
        ]
        commands = [e.message for e in final.timeline if e.kind == "command"]
        assert commands == ["erin took command"]


GATED = """
name: fix-checkout
inputs: {base: {type: string, required: true}}
steps:
  - id: restart
    uses: core.http_request
    with: {url: "${{ inputs.base }}/restart", compensation: {url: "${{ inputs.base }}/unrestart"}}
    approval: {role: sre-senior, timeout: 2h}
"""


class TestGuardGateThroughTheIncident:
    async def test_guard_decisions_are_signed_and_judged(
        self,
        env: WorkflowEnvironment,
        settings: Settings,
        tokens: dict[str, str],
        target: Target,
        tmp_path: Path,
    ) -> None:
        """The guard holds the run (budget 0): carol, not on the service's ladder, may not let it
        go; alice's signed approval starts it; erin (incident commander) cancels."""
        client = env.client
        plan = compile_playbooks(tmp_path, {"p.yaml": GATED}, "fix-checkout")
        raw = yaml.safe_load(CATALOG)
        # A service of its own: the guard's ledger is one workflow per service on the shared
        # server, bound to the task queue of the test that first used it.
        service = f"guarded-{uuid.uuid4().hex[:8]}"
        raw["services"][service] = {**raw["services"]["checkout"], "guard": {"blast_budget": 0}}
        key = f"am/{service}/{uuid.uuid4().hex[:8]}"
        start = incident_start(
            Catalog.model_validate(raw),
            service,
            key,
            plan=plan,
            inputs={"base": target.base_url},
            task_queue_prefix=settings.task_queue_prefix,
            trusted_keys=load_decision_key(settings).trusted(),
        ).model_copy(update={"run_poll_s": 1.0, "run_poll_max_s": 2.0})
        async with fireline_workers(client, settings.task_queue_prefix):
            handle = await client.start_workflow(
                INCIDENT_WORKFLOW,
                start,
                id=incident_workflow_id(key),
                task_queue=settings.task_queue_prefix,
                result_type=IncidentState,
            )
            for _ in range(300):
                state = await handle.query(QUERY_STATUS, result_type=IncidentState)
                if state.escalation.gate_step == "guard":
                    break
                await asyncio.sleep(0.05)
            assert state.escalation.gate_step == "guard"
            async with serving(settings) as url:
                people = {
                    p: httpx.AsyncClient(
                        base_url=url, headers={"Authorization": f"Bearer {tokens[p]}"}
                    )
                    for p in ("alice", "carol", "erin")
                }
                try:
                    carol = await people["carol"].post(
                        f"/v1/incidents/{handle.id}/approve", json={"step": "guard"}
                    )
                    assert carol.status_code == 409
                    assert "may not decide at the guard's gate" in carol.json()["detail"]
                    alice = await people["alice"].post(
                        f"/v1/incidents/{handle.id}/approve",
                        json={"step": "guard", "comment": "budget is for bulk changes"},
                    )
                    assert alice.status_code == 200, alice.text
                    for _ in range(300):
                        state = await handle.query(QUERY_STATUS, result_type=IncidentState)
                        if state.run.workflow_id is not None:
                            break
                        await asyncio.sleep(0.05)
                    erin = await people["erin"].post(
                        f"/v1/incidents/{handle.id}/cancel", json={"comment": "drill over"}
                    )
                    assert erin.status_code == 200, erin.text
                finally:
                    for c in people.values():
                        await c.aclose()
            final = await handle.result()

        assert final.guard_approved_by == "alice"
        assert final.run.workflow_id is not None
        assert final.resolved_by == "erin"
        refused = [(e.kind, e.actor) for e in final.timeline if e.kind.endswith("_refused")]
        assert refused == [("approve_refused", "carol")]


class TestRunGateThroughTheIncident:
    async def test_approve_a_run_gate_signed_as_the_token_person(
        self,
        env: WorkflowEnvironment,
        settings: Settings,
        tokens: dict[str, str],
        target: Target,
        tmp_path: Path,
    ) -> None:
        """POST /v1/incidents/{id}/approve for a run step: signed, verified, judged by the run."""
        target.route("POST", "/restart", Reply(200))
        release = target.hold("POST", "/restart")  # the run stays busy while we ask again
        client = env.client
        plan = compile_playbooks(tmp_path, {"p.yaml": GATED}, "fix-checkout")
        catalog = Catalog.model_validate(yaml.safe_load(CATALOG))
        key = f"am/checkout/{uuid.uuid4().hex[:8]}"
        start = incident_start(
            catalog,
            "checkout",
            key,
            plan=plan,
            inputs={"base": target.base_url},
            task_queue_prefix=settings.task_queue_prefix,
            trusted_keys=load_decision_key(settings).trusted(),
        ).model_copy(update={"run_poll_s": 1.0, "run_poll_max_s": 2.0})
        async with fireline_workers(client, settings.task_queue_prefix):
            handle = await client.start_workflow(
                INCIDENT_WORKFLOW,
                start,
                id=incident_workflow_id(key),
                task_queue=settings.task_queue_prefix,
                result_type=IncidentState,
            )
            for _ in range(300):
                state = await handle.query(QUERY_STATUS, result_type=IncidentState)
                if state.escalation.gate_step == "restart":
                    break
                await asyncio.sleep(0.05)
            assert state.escalation.gate_step == "restart"
            async with (
                serving(settings) as url,
                httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {tokens['carol']}"}
                ) as carol,
            ):
                answer = await carol.post(
                    f"/v1/incidents/{handle.id}/approve",
                    json={"step": "restart", "comment": "error rate 40%"},
                )
                assert answer.status_code == 200, answer.text
                again = await carol.post(
                    f"/v1/incidents/{handle.id}/approve", json={"step": "restart"}
                )
                assert again.status_code == 409, again.text
                release.set()
            run = client.get_workflow_handle(state.run.workflow_id or "")
            for _ in range(300):
                run_state = await run.query(RUN_QUERY, result_type=RunState)
                if run_state.phase.value == "succeeded":
                    break
                await asyncio.sleep(0.05)

        (approval,) = run_state.step("restart").approvals
        assert (approval.by, approval.comment, approval.verified) == (
            "carol",
            "error rate 40%",
            True,
        )
        assert run_state.phase.value == "succeeded"
        assert len(target.hits("POST", "/restart")) == 1
