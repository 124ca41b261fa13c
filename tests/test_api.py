"""The operator HTTP API against a real dev server, real workers and a real HTTP target.

Runs are driven through a real uvicorn server on 127.0.0.1, each request with the bearer token
of the person acting; the smaller checks (auth, health, listings) call the ASGI app in-process
through httpx's ASGITransport, whose server address is not loopback (so development mode never
applies there).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from temporalio.client import Client

from fireline.identity import signing
from fireline.identity.tokens import TokenStore
from fireline.messages import Approval, RunPhase, RunRequest, RunState, StepState, StepStatus
from fireline.operator.api import create_app
from fireline.runtime.settings import Settings
from tests import test_operations as shared
from tests.test_operations import Reply, Target, finished, step_is, until

# Fixtures shared with the operations tests (a real dev server, workers and HTTP target).
playbooks_dir = shared.playbooks_dir
fl_settings = shared.fl_settings
workers = shared.workers
target = shared.target


PEOPLE = ("alice", "bob", "carol", "dave", "erin", "mallory")


def in_process(settings: Settings) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(settings))
    return httpx.AsyncClient(transport=transport, base_url="http://fireline.test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(fl_settings: Settings) -> dict[str, str]:
    """A token per catalog person, plus one for ``zed``, whom the catalog does not list."""
    store = TokenStore.of(fl_settings)
    return {person: store.issue(person)[0] for person in (*PEOPLE, "zed")}


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """A real uvicorn server for ``settings`` on a free 127.0.0.1 port; yields its base URL."""
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


As = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def api(workers: Settings, tokens: dict[str, str]) -> AsyncIterator[As]:
    """``api("alice")`` is a client of the real server carrying alice's token."""
    async with serving(workers) as url:
        clients: list[httpx.AsyncClient] = []

        def as_(person: str) -> httpx.AsyncClient:
            http = httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(tokens[person]))
            clients.append(http)
            return http

        try:
            yield as_
        finally:
            for http in clients:
                await http.aclose()


async def run_request(client: Client, workflow_id: str) -> RunRequest:
    """The workflow's input as Temporal recorded it (what the API really sent)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (request,) = await client.data_converter.decode(started.input.payloads, [RunRequest])
    assert isinstance(request, RunRequest)
    return request


class TestHealth:
    async def test_reachable(self, workers: Settings) -> None:
        """/healthz answers 200 without a credential and names the Temporal address."""
        async with serving(workers) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert response.json()["temporal"] == workers.temporal_address

    async def test_unreachable(self, fl_settings: Settings, tokens: dict[str, str]) -> None:
        """With Temporal down the app still serves, and /healthz says 503 with the cause."""
        down = fl_settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
        async with in_process(down) as http:
            response = await http.get("/healthz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert "127.0.0.1:1" in response.json()["detail"]
            runs = await http.get("/runs", headers=bearer(tokens["alice"]))
            assert runs.status_code == 503


OPERATOR_ROUTES = [
    ("GET", "/whoami", None),
    ("GET", "/playbooks", None),
    ("GET", "/modules", None),
    ("GET", "/runs", None),
    ("GET", "/runs/fireline-x", None),
    ("GET", "/runs/fireline-x/execution", None),
    ("POST", "/runs", {"playbook": "quick"}),
    ("POST", "/runs/fireline-x/steps/poke/approve", {}),
    ("POST", "/runs/fireline-x/steps/poke/reject", {}),
    ("POST", "/runs/fireline-x/steps/poke/decide", {"action": "retry"}),
    ("POST", "/runs/fireline-x/cancel", {}),
]


class TestAuth:
    @pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ROUTES)
    async def test_every_operator_route_needs_a_credential(
        self, fl_settings: Settings, tokens: dict[str, str], method: str, path: str, body: object
    ) -> None:
        """No credential, a wrong token, or not a bearer: 401 on every route but /healthz."""
        wrong = tokens["alice"][:-2] + "xx"
        async with in_process(fl_settings) as http:
            for headers in ({}, bearer(wrong), {"Authorization": f"Basic {tokens['alice']}"}):
                response = await http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
            assert (await http.get("/healthz")).status_code != 401

    async def test_a_token_proves_its_person(
        self, fl_settings: Settings, tokens: dict[str, str]
    ) -> None:
        """alice's token is alice, verified; a revoked one is 401; someone not listed 403."""
        async with in_process(fl_settings) as http:
            me = await http.get("/whoami", headers=bearer(tokens["alice"]))
            assert me.json() == {"person": "alice", "verified": True, "method": "token"}
            assert (await http.get("/modules", headers=bearer(tokens["bob"]))).status_code == 200

            zed = await http.get("/whoami", headers=bearer(tokens["zed"]))
            assert zed.status_code == 403
            assert "'zed' is not a person in the catalog" in zed.json()["detail"]

            store = TokenStore.of(fl_settings)
            (bobs,) = [r for r in store.records() if r.person == "bob"]
            store.revoke(bobs.id)
            revoked = await http.get("/whoami", headers=bearer(tokens["bob"]))
            assert revoked.status_code == 401
            assert "unknown or revoked" in revoked.json()["detail"]

    async def test_a_claimed_name_is_never_believed(
        self, fl_settings: Settings, tokens: dict[str, str]
    ) -> None:
        """bob's token with "I am alice" (header or --as): 400; without a token: 401."""
        async with in_process(fl_settings) as http:
            claimed = {"X-Fireline-Unverified-As": "alice"}
            both = await http.get("/whoami", headers={**bearer(tokens["bob"]), **claimed})
            assert both.status_code == 400
            assert "proves 'bob', not 'alice'" in both.json()["detail"]
            alone = await http.get("/whoami", headers=claimed)
            assert alone.status_code == 401
            assert "development-mode API on loopback" in alone.json()["detail"]

    async def test_a_catalog_that_does_not_load_is_503(
        self, fl_settings: Settings, tokens: dict[str, str]
    ) -> None:
        """Nobody can be recognised without a catalog: 503 with the fix, never a 500."""
        (fl_settings.playbooks_dir / "catalog.yaml").write_text("roles: [not: a mapping\n")
        async with in_process(fl_settings) as http:
            answer = await http.get("/whoami", headers=bearer(tokens["alice"]))
        assert answer.status_code == 503
        assert "the catalog does not load" in answer.json()["detail"]

    async def test_development_mode_applies_only_on_loopback(self, fl_settings: Settings) -> None:
        """FIRELINE_DEV_MODE on an API reached at a non-loopback address still needs a token."""
        dev = fl_settings.model_copy(update={"dev_mode": True})
        async with in_process(dev) as http:
            assert (await http.get("/whoami")).status_code == 401


class TestDevelopmentMode:
    async def test_no_credential_is_accepted_and_marked_unverified(
        self, workers: Settings, tokens: dict[str, str], client: Client
    ) -> None:
        """On loopback in dev mode: who you say (or the dev person), unverified, never signed."""
        dev = workers.model_copy(update={"dev_mode": True})
        async with serving(dev) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            me = (await http.get("/whoami")).json()
            assert me == {"person": "alice", "verified": False, "method": "development"}
            as_bob = await http.get("/whoami", headers={"X-Fireline-Unverified-As": "bob"})
            assert as_bob.json()["person"] == "bob"
            assert as_bob.json()["verified"] is False
            proxied = await http.get("/whoami", headers={"X-Forwarded-For": "203.0.113.9"})
            assert proxied.status_code == 401
            with_token = await http.get("/whoami", headers=bearer(tokens["carol"]))
            assert with_token.json() == {"person": "carol", "verified": True, "method": "token"}

            started = await http.post(
                "/runs", json={"playbook": "quick"}, headers={"X-Fireline-Unverified-As": "dave"}
            )
            assert started.status_code == 201, started.text
            request = await run_request(client, started.json()["workflow_id"])
            assert (request.requested_by, request.requested_by_verified) == ("dave", False)


class TestListings:
    async def test_playbooks_report_what_compiles(
        self, fl_settings: Settings, tokens: dict[str, str]
    ) -> None:
        """Each playbook is listed with its inputs and risk, or with its problems."""
        async with in_process(fl_settings) as http:
            found = await http.get("/playbooks", headers=bearer(tokens["alice"]))
            listed = {p["name"]: p for p in found.json()}
        gated = listed["gated"]
        assert (gated["ok"], gated["version"], gated["max_risk"]) == (True, "2", "medium")
        assert [i["name"] for i in gated["inputs"]] == ["base", "ticket"]
        broken = listed["broken"]
        assert broken["ok"] is False
        assert broken["problems"][0]["step"] == "nope"

    async def test_modules(self, fl_settings: Settings, tokens: dict[str, str]) -> None:
        """Modules come with schemas; a domain filter narrows them; a bad domain is 400."""
        async with in_process(fl_settings) as http:
            http.headers.update(bearer(tokens["alice"]))
            names = {m["name"] for m in (await http.get("/modules?domain=core")).json()}
            assert {"core.http_request", "core.wait"} <= names
            assert (await http.get("/modules?domain=kitchen")).status_code == 400


class TestRuns:
    async def test_start_approve_and_finish(
        self, api: As, client: Client, target: Target, workers: Settings
    ) -> None:
        """The requester is whoever the token proves; bob cannot approve as alice; alice can.

        A known person without the right is refused with the reason (409) and audited.
        """
        target.route("POST", "/poke", Reply(200, {}))
        carol, bob, mallory, alice = api("carol"), api("bob"), api("mallory"), api("alice")
        body = {"playbook": "gated", "inputs": {"base": target.base_url}}
        forged = await carol.post("/runs", json={**body, "requested_by": "alice"})
        assert forged.status_code == 422
        assert forged.json()["detail"][0]["loc"] == ["body", "requested_by"]
        created = await carol.post("/runs", json=body)
        assert created.status_code == 201, created.text
        wid = created.json()["workflow_id"]
        assert created.json()["ui_url"].endswith(wid)
        await until(client, wid, step_is("poke", StepStatus.awaiting_approval))

        shown = RunState.model_validate((await carol.get(f"/runs/{wid}")).json())
        assert (shown.phase, shown.requested_by) == (RunPhase.awaiting_approval, "carol")
        request = await run_request(client, wid)
        assert (request.requested_by, request.requested_by_verified) == ("carol", True)
        assert len(request.trusted_keys) == 1

        as_alice = await bob.post(f"/runs/{wid}/steps/poke/approve", json={"by": "alice"})
        assert as_alice.status_code == 422
        claimed = await bob.post(
            f"/runs/{wid}/steps/poke/approve",
            json={},
            headers={"X-Fireline-Unverified-As": "alice"},
        )
        assert claimed.status_code == 400

        refused = await mallory.post(f"/runs/{wid}/steps/poke/approve", json={})
        assert refused.status_code == 409
        assert "mallory may not decide for role sre-oncall" in refused.json()["detail"]

        approved = await alice.post(f"/runs/{wid}/steps/poke/approve", json={"comment": "fine"})
        assert approved.status_code == 200, approved.text
        step = StepState.model_validate(approved.json())
        assert [(a.by, a.comment) for a in step.approvals] == [("alice", "fine")]
        state = await until(client, wid, finished)
        assert state.phase == RunPhase.succeeded
        assert len(target.hits("POST", "/poke")) == 1
        assert not any(e.actor == "bob" for e in state.events)
        audited = [e for e in state.events if e.actor == "mallory"]
        assert audited, "the refused attempt of a known person is in the timeline"
        assert all("refused" in e.kind for e in audited)

        listed = (await carol.get("/runs", params={"limit": 1000})).json()
        assert wid in {r["workflow_id"] for r in listed}
        execution = (await carol.get(f"/runs/{wid}/execution")).json()
        assert execution["status"] == "completed"

    async def test_decisions_carry_the_apis_signature(
        self, api: As, client: Client, target: Target
    ) -> None:
        """The signal the API sends is signed for alice, over the inputs the run showed her."""
        target.route("POST", "/poke", Reply(200, {}))
        body = {"playbook": "gated", "inputs": {"base": target.base_url, "ticket": 7}}
        wid = (await api("carol").post("/runs", json=body)).json()["workflow_id"]
        shown = await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
        stale = await api("alice").post(
            f"/runs/{wid}/steps/poke/approve", json={"seen_digest": signing.inputs_digest({})}
        )
        assert stale.status_code == 409
        assert "changed since you looked" in stale.json()["detail"]
        seen = signing.inputs_digest(shown.step("poke").inputs or {})
        approved = await api("alice").post(
            f"/runs/{wid}/steps/poke/approve", json={"seen_digest": seen}
        )
        assert approved.status_code == 200, approved.text
        (record,) = StepState.model_validate(approved.json()).approvals
        assert (record.by, record.verified) == ("alice", True)
        assert record.inputs_digest == seen
        await until(client, wid, finished)

        history = await client.get_workflow_handle(wid).fetch_history()
        updates = [
            e.workflow_execution_update_accepted_event_attributes.accepted_request.input
            for e in history.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        (approval,) = [
            (await client.data_converter.decode(u.args.payloads, [Approval]))[0] for u in updates
        ]
        assert isinstance(approval, Approval)
        assert approval.approver == "alice"
        assert approval.signed is not None
        claim = approval.signed.claim
        assert (claim.workflow_id, claim.step, claim.action, claim.person) == (
            wid,
            "poke",
            "approve",
            "alice",
        )
        assert claim.inputs_digest == signing.inputs_digest(shown.step("poke").inputs or {})
        keys = (await run_request(client, wid)).trusted_keys
        assert signing.verify_decision(approval.signed, keys, datetime.now(UTC)) is None
        late = claim.expires_at + timedelta(seconds=1)
        assert "expired" in (signing.verify_decision(approval.signed, keys, late) or "")

    async def test_reject_and_cancel(self, api: As, client: Client, target: Target) -> None:
        """Rejecting compensates; cancel is a signed decision: 409 for someone with no say over
        the run (audited), 202 for its starter (recorded with who and why), 409 once over."""
        erin = api("erin")
        body = {"playbook": "gated", "inputs": {"base": target.base_url}}
        first = (await erin.post("/runs", json=body)).json()["workflow_id"]
        second = (await erin.post("/runs", json=body)).json()["workflow_id"]
        for wid in (first, second):
            await until(client, wid, step_is("poke", StepStatus.awaiting_approval))

        rejected = await api("bob").post(f"/runs/{first}/steps/poke/reject", json={})
        assert rejected.status_code == 200, rejected.text
        state = await until(client, first, finished)
        assert state.phase == RunPhase.compensated
        assert any(e.kind == "rejected" and e.actor == "bob" for e in state.events)

        no_say = await api("mallory").post(f"/runs/{second}/cancel", json={"reason": "mine"})
        assert no_say.status_code == 409
        assert "mallory may not cancel this run" in no_say.json()["detail"]
        stranger = await api("zed").post(f"/runs/{second}/cancel", json={})
        assert stranger.status_code == 403
        cancelled = await erin.post(f"/runs/{second}/cancel", json={"reason": "drill"})
        assert cancelled.status_code == 202
        state = await until(client, second, finished)
        assert state.phase == RunPhase.cancelled
        assert state.cancel_requested_by == "erin"
        said = [
            (e.kind, e.actor, e.verified, e.message) for e in state.events if e.actor != "fireline"
        ]
        assert said[1][:3] == ("cancel_refused", "mallory", True)
        assert ("cancel_requested", "erin", True, "drill") in said
        assert ("run_cancelled", "erin", True, "cancelled by erin: drill: rolling back") in said
        again = await erin.post(f"/runs/{second}/cancel")
        assert again.status_code == 409
        assert "already finished" in again.json()["detail"]

    async def test_decide(self, api: As, client: Client, target: Target) -> None:
        """A run paused for a decision continues on retry; a wrong decision is 409."""
        target.route("POST", "/flaky", Reply(409, {}), Reply(200, {}))
        alice = api("alice")
        body = {"playbook": "asking", "inputs": {"base": target.base_url}}
        wid = (await api("erin").post("/runs", json=body)).json()["workflow_id"]
        await until(client, wid, step_is("flaky", StepStatus.awaiting_decision))
        wrong = await alice.post(
            f"/runs/{wid}/steps/flaky/decide", json={"action": "skip", "inputs": {"url": "x"}}
        )
        assert wrong.status_code == 409
        forged = await alice.post(
            f"/runs/{wid}/steps/flaky/decide", json={"action": "retry", "by": "carol"}
        )
        assert forged.status_code == 422
        retry = await alice.post(f"/runs/{wid}/steps/flaky/decide", json={"action": "retry"})
        assert retry.status_code == 200, retry.text
        assert (await until(client, wid, finished)).phase == RunPhase.succeeded

    async def test_errors(self, api: As) -> None:
        """Unknown run 404, playbook that does not compile 422 with problems, bad inputs 400."""
        erin = api("erin")
        assert (await erin.get("/runs/fireline-nobody-20000101T000000-000000")).status_code == 404
        broken = await erin.post("/runs", json={"playbook": "broken", "inputs": {}})
        assert broken.status_code == 422
        (problem,) = broken.json()["detail"]["problems"]
        assert (problem["step"], problem["line"]) == ("nope", 7)
        missing = await erin.post("/runs", json={"playbook": "gated", "inputs": {}})
        assert missing.status_code == 400
        assert "missing required input 'base'" in missing.json()["detail"]
        nothing = await erin.post("/runs", json={"playbook": ""})
        assert nothing.status_code == 422
        bad_action = await erin.post("/runs/x/steps/y/decide", json={"action": "ignore"})
        assert bad_action.status_code == 422
        long_comment = await erin.post("/runs/x/steps/y/approve", json={"comment": "c" * 5000})
        assert long_comment.status_code == 422

    async def test_playbooks_start_by_library_name_only(
        self, api: As, workers: Settings, tmp_path: Path
    ) -> None:
        """A path, inside the library or not, is 404 listing the known names; nothing is read.

        Finding 2: the server parsed any file it could read and echoed its content.
        """
        secret = tmp_path / "secret.yaml"
        secret.write_text("name: s3cr3t-content\nsteps: []\n")
        inside = workers.playbooks_dir / "quick.yaml"
        for given in (str(secret), str(inside), "/etc/passwd", "../../etc/shadow", "gatd"):
            answer = await api("erin").post("/runs", json={"playbook": given})
            assert answer.status_code == 404, answer.text
            detail = answer.json()["detail"]
            assert detail["known"] == ["asking", "broken", "gated", "quick", "refused"]
            assert "s3cr3t" not in answer.text
            assert "root:" not in answer.text
