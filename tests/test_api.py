"""The operator HTTP API against a real dev server, real workers and a real HTTP target.

Runs are driven through a real uvicorn server on 127.0.0.1; the smaller checks (auth, health,
listings) call the ASGI app in-process through httpx's ASGITransport.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from temporalio.client import Client

from fireline.messages import RunPhase, RunState, StepState, StepStatus
from fireline.operator.api import create_app
from fireline.runtime.settings import Settings
from tests import test_operations as shared
from tests.test_operations import Reply, Target, finished, step_is, until

# Fixtures shared with the operations tests (a real dev server, workers and HTTP target).
playbooks_dir = shared.playbooks_dir
fl_settings = shared.fl_settings
workers = shared.workers
target = shared.target


def in_process(settings: Settings) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(settings))
    return httpx.AsyncClient(transport=transport, base_url="http://fireline.test")


@pytest.fixture
async def api(workers: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A real uvicorn server on a free 127.0.0.1 port, and a client pointed at it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(workers), log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped during start-up"
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task
        sock.close()


class TestHealth:
    async def test_reachable(self, api: httpx.AsyncClient, workers: Settings) -> None:
        """/healthz answers 200 and names the Temporal address it checked."""
        response = await api.get("/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert response.json()["temporal"] == workers.temporal_address

    async def test_unreachable(self, fl_settings: Settings) -> None:
        """With Temporal down the app still serves, and /healthz says 503 with the cause."""
        down = fl_settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
        async with in_process(down) as http:
            response = await http.get("/healthz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert "127.0.0.1:1" in response.json()["detail"]
            runs = await http.get("/runs")
            assert runs.status_code == 503


class TestAuth:
    async def test_bearer_token_required_when_configured(self, fl_settings: Settings) -> None:
        """Without or with a wrong token: 401; with the right one: 200; /healthz stays open."""
        locked = Settings.model_validate({**fl_settings.model_dump(), "api_token": "s3cret"})
        async with in_process(locked) as http:
            assert (await http.get("/modules")).status_code == 401
            wrong = await http.get("/modules", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert wrong.headers["www-authenticate"] == "Bearer"
            right = await http.get("/modules", headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200
            assert (await http.get("/healthz")).status_code != 401

    async def test_open_without_token(self, fl_settings: Settings) -> None:
        """No token configured: operator routes answer without Authorization."""
        async with in_process(fl_settings) as http:
            assert (await http.get("/modules")).status_code == 200


class TestListings:
    async def test_playbooks_report_what_compiles(self, fl_settings: Settings) -> None:
        """Each playbook is listed with its inputs and risk, or with its problems."""
        async with in_process(fl_settings) as http:
            listed = {p["name"]: p for p in (await http.get("/playbooks")).json()}
        gated = listed["gated"]
        assert (gated["ok"], gated["version"], gated["max_risk"]) == (True, "2", "medium")
        assert [i["name"] for i in gated["inputs"]] == ["base", "ticket"]
        broken = listed["broken"]
        assert broken["ok"] is False
        assert broken["problems"][0]["step"] == "nope"

    async def test_modules(self, fl_settings: Settings) -> None:
        """Modules come with schemas; a domain filter narrows them; a bad domain is 400."""
        async with in_process(fl_settings) as http:
            names = {m["name"] for m in (await http.get("/modules?domain=core")).json()}
            assert {"core.http_request", "core.wait"} <= names
            assert (await http.get("/modules?domain=kitchen")).status_code == 400


class TestRuns:
    async def test_start_approve_and_finish(
        self, api: httpx.AsyncClient, client: Client, target: Target
    ) -> None:
        """POST /runs is 201; a refused approval is 409 with the reason; alice's passes."""
        target.route("POST", "/poke", Reply(200, {}))
        body = {"playbook": "gated", "inputs": {"base": target.base_url}, "requested_by": "erin"}
        created = await api.post("/runs", json=body)
        assert created.status_code == 201, created.text
        wid = created.json()["workflow_id"]
        assert created.json()["ui_url"].endswith(wid)
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))

        shown = RunState.model_validate((await api.get(f"/runs/{wid}")).json())
        assert (shown.phase, shown.requested_by) == (RunPhase.awaiting_approval, "erin")

        refused = await api.post(f"/runs/{wid}/steps/poke/approve", json={"by": "mallory"})
        assert refused.status_code == 409
        assert "mallory may not decide for role sre-oncall" in refused.json()["detail"]

        approved = await api.post(
            f"/runs/{wid}/steps/poke/approve", json={"by": "alice", "comment": "fine"}
        )
        assert approved.status_code == 200, approved.text
        step = StepState.model_validate(approved.json())
        assert [(a.by, a.comment) for a in step.approvals] == [("alice", "fine")]
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.succeeded
        assert len(target.hits("POST", "/poke")) == 1

        listed = (await api.get("/runs", params={"limit": 1000})).json()
        assert wid in {r["workflow_id"] for r in listed}

    async def test_reject_and_cancel(
        self, api: httpx.AsyncClient, client: Client, target: Target
    ) -> None:
        """Rejecting compensates; cancel is 202, and 409 once the run is over."""
        body = {"playbook": "gated", "inputs": {"base": target.base_url}, "requested_by": "erin"}
        first = (await api.post("/runs", json=body)).json()["workflow_id"]
        second = (await api.post("/runs", json=body)).json()["workflow_id"]
        for wid in (first, second):
            await until(client, wid, step_is("poke", StepStatus.awaiting_approval))

        rejected = await api.post(f"/runs/{first}/steps/poke/reject", json={"by": "bob"})
        assert rejected.status_code == 200, rejected.text
        assert (await until(client, first, finished)).phase == RunPhase.compensated

        cancelled = await api.post(f"/runs/{second}/cancel", json={"reason": "drill"})
        assert cancelled.status_code == 202
        assert (await until(client, second, finished)).phase == RunPhase.cancelled
        again = await api.post(f"/runs/{second}/cancel")
        assert again.status_code == 409
        assert "already finished" in again.json()["detail"]

    async def test_decide(self, api: httpx.AsyncClient, client: Client, target: Target) -> None:
        """A run paused for a decision continues on retry; a wrong decision is 409."""
        target.route("POST", "/flaky", Reply(409, {}), Reply(200, {}))
        body = {"playbook": "asking", "inputs": {"base": target.base_url}, "requested_by": "erin"}
        wid = (await api.post("/runs", json=body)).json()["workflow_id"]
        await until(client, wid, step_is("flaky", StepStatus.awaiting_decision))
        wrong = await api.post(
            f"/runs/{wid}/steps/flaky/decide",
            json={"by": "alice", "action": "skip", "inputs": {"url": "x"}},
        )
        assert wrong.status_code == 409
        retry = await api.post(
            f"/runs/{wid}/steps/flaky/decide", json={"by": "alice", "action": "retry"}
        )
        assert retry.status_code == 200, retry.text
        assert (await until(client, wid, finished)).phase == RunPhase.succeeded

    async def test_errors(self, api: httpx.AsyncClient) -> None:
        """Unknown run 404, playbook that does not compile 422 with problems, bad inputs 400."""
        assert (await api.get("/runs/fireline-nobody-20000101T000000-000000")).status_code == 404
        broken = await api.post(
            "/runs", json={"playbook": "broken", "inputs": {}, "requested_by": "erin"}
        )
        assert broken.status_code == 422
        (problem,) = broken.json()["detail"]["problems"]
        assert (problem["step"], problem["line"]) == ("nope", 7)
        missing = await api.post(
            "/runs", json={"playbook": "gated", "inputs": {}, "requested_by": "erin"}
        )
        assert missing.status_code == 400
        assert "missing required input 'base'" in missing.json()["detail"]
        nobody = await api.post("/runs", json={"playbook": "gated", "requested_by": ""})
        assert nobody.status_code == 422
        bad_action = await api.post(
            "/runs/x/steps/y/decide", json={"by": "alice", "action": "ignore"}
        )
        assert bad_action.status_code == 422
