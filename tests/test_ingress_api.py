"""The alert webhooks end to end: real uvicorn on 127.0.0.1, real Temporal dev server.

Incidents open in the real ``IncidentWorkflow`` (with the real workflow and core workers), so
the counts asserted are the incident's own: parsing, credentials, routing from a catalog file,
the group commit, signal-with-start and the workflow's dedupe by ``notification_id`` are all
the production path. Services page nowhere (``paging: []``), so no page leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from fireline.identity.signing import generate_key
from fireline.incident import (
    QUERY_STATUS,
    UPDATE_RESOLVE,
    AlertBatch,
    IncidentStart,
    IncidentState,
    Resolve,
    incident_workflow_id,
)
from fireline.ingress.config import IngressSettings
from fireline.operator.alerts_api import alerts_router
from fireline.operator.alerts_fast_path import LaneApp
from fireline.operator.alerts_fast_path import mount as mount_alerts
from fireline.runtime.settings import Settings
from tests.support.workers import fireline_workers

FIXTURES = Path(__file__).parent / "fixtures" / "alerts"

CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice, bob]}
services:
  checkout-quiet:
    paging: []
    routes:
      - matchers: ['service=~"checkout.*"', 'lane="no-run"']
  checkout:
    responders: [alice]
    paging: []
    routes:
      - name: checkout-errors
        matchers: ['service=~"checkout.*"', 'severity!="info"']
        playbooks: {HighErrorRate: restart-api}
        inputs: {host: "{labels.instance}"}
  orders-db:
    paging: []
    routes:
      - matchers: ['service="orders-db"']
  payments:
    paging: []
    routes:
      - matchers: ['service="Payments API"']
        sources: [pagerduty]
  storm:
    paging: []
    routes:
      - matchers: ['alertname="Storm"']
        incident_key: "storm/{labels.key}"
"""

PLAYBOOK = """
name: restart-api
inputs:
  host: {type: string, required: true}
steps:
  - id: pause
    uses: core.wait
    with: {seconds: 0}
"""

GRAFANA_SECRET = "grafana-hmac-secret"
PD_SECRET = "pagerduty-signing-secret"
TOKEN = "generic-token"
DECISION_KEY = "api-key-1"
"""The key id the API signs decisions with; incidents it opens must trust it."""
AUTH: dict[str, dict[str, Any]] = {
    "alertmanager": {"kind": "basic", "users": {"alertmanager": "am-password"}},
    "grafana": {
        "kind": "hmac",
        "secrets": [GRAFANA_SECRET],
        "timestamp_header": "X-Grafana-Alerting-Signature-Timestamp",
        "window_seconds": 300,
    },
    "pagerduty": {"kind": "pagerduty", "secrets": ["rotated-out", PD_SECRET]},
    "generic": {"kind": "bearer", "tokens": [TOKEN]},
    "read": {"kind": "bearer", "tokens": [TOKEN]},
}


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def settings(env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path) -> Settings:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "catalog.yaml").write_text(textwrap.dedent(CATALOG).lstrip())
    (folder / "restart-api.yaml").write_text(textwrap.dedent(PLAYBOOK).lstrip())
    return Settings(
        temporal_address=env.client.service_client.config.target_host,
        task_queue_prefix=task_queue_prefix,
        playbooks_dir=folder,
        data_dir=tmp_path / "data",
    )


def ingress_config(**overrides: Any) -> IngressSettings:
    return IngressSettings(**{"auth": AUTH, "max_body_bytes": 64 * 1024, **overrides})


@pytest.fixture
async def workers(client: Client, settings: Settings) -> AsyncIterator[None]:
    """The real workflow worker (IncidentWorkflow, PlaybookWorkflow, GuardWorkflow) and core."""
    async with fireline_workers(client, settings.task_queue_prefix):
        yield


async def serve(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn stopped during start-up"
        await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def api(settings: Settings, workers: None) -> AsyncIterator[httpx.AsyncClient]:
    app = LaneApp()
    keys = {DECISION_KEY: generate_key()[1]}
    mount_alerts(app, alerts_router(settings, ingress_config(), trusted_keys=keys))
    server, task, url = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def am_headers() -> dict[str, str]:
    token = base64.b64encode(b"alertmanager:am-password").decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def grafana_headers(body: bytes, stamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if stamp is None else stamp)
    signature = hmac.new(GRAFANA_SECRET.encode(), f"{ts}:".encode() + body, hashlib.sha256)
    return {
        "X-Grafana-Alerting-Signature": signature.hexdigest(),
        "X-Grafana-Alerting-Signature-Timestamp": ts,
        "Content-Type": "application/json",
    }


def pd_headers(body: bytes, webhook_id: str | None = None) -> dict[str, str]:
    signature = hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    other = hmac.new(b"some-other-secret", body, hashlib.sha256).hexdigest()
    return {
        "X-PagerDuty-Signature": f"v1={other},v1={signature}",
        "X-Webhook-Id": webhook_id or uuid.uuid4().hex,
        "X-Webhook-Subscription": "PSUB123",
        "User-Agent": "PagerDuty-Webhook/V3.0",
        "Content-Type": "application/json",
    }


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def unique_am(doc: dict[str, Any], lane: str = "no-run") -> bytes:
    """The fixture under a fresh group key, so each test has incidents of its own.

    ``lane="no-run"`` routes it to a service without a playbook, so the incident stays open
    for the dedupe tests instead of closing when its run succeeds.
    """
    doc = json.loads(json.dumps(doc))
    doc["groupKey"] = f"{doc['groupKey']}/{uuid.uuid4().hex[:8]}"
    if lane:
        doc["commonLabels"]["lane"] = lane
    return json.dumps(doc).encode()


async def state(client: Client, workflow_id: str) -> IncidentState:
    handle = client.get_workflow_handle(workflow_id)
    result: IncidentState = await handle.query(QUERY_STATUS, result_type=IncidentState)
    return result


async def start_input(client: Client, workflow_id: str) -> IncidentStart:
    """What the incident was started with (the first event of its current run)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [decoded] = await client.data_converter.decode(started.input.payloads, [IncidentStart])
    assert isinstance(decoded, IncidentStart)
    return decoded


class TestEndToEnd:
    async def test_alertmanager(self, api: httpx.AsyncClient, client: Client) -> None:
        """Basic auth, two alerts in one notification, routed to checkout with the playbook."""
        body = unique_am(fixture("alertmanager_firing.json"), lane="")
        answer = await api.post("/v1/alerts/alertmanager", content=body, headers=am_headers())
        assert answer.status_code == 202, answer.text
        data = answer.json()
        assert data["alerts"] == 2
        [incident] = data["incidents"]
        assert incident["service"] == "checkout"
        assert incident["playbook"] == "restart-api"
        assert incident["workflow_id"] == incident_workflow_id(incident["key"])
        # 202 means durable: the signal is in the workflow's history already
        got = await state(client, incident["workflow_id"])
        assert got.alerts.total == 2
        assert got.service == "checkout"
        assert got.run.playbook == "restart-api"
        start = await start_input(client, incident["workflow_id"])
        assert start.plan is not None
        assert start.plan.name == "restart-api"
        assert start.inputs == {"host": "api-7f9c:8080"}
        assert start.severity == "critical"
        # the routed run will accept decisions the API signs, and only those
        assert list(start.trusted_keys) == [DECISION_KEY]

    async def test_grafana(self, api: httpx.AsyncClient, client: Client) -> None:
        body = json.dumps(fixture("grafana_firing.json")).encode()
        answer = await api.post("/v1/alerts/grafana", content=body, headers=grafana_headers(body))
        assert answer.status_code == 202, answer.text
        [incident] = answer.json()["incidents"]
        assert incident["service"] == "orders-db"
        got = await state(client, incident["workflow_id"])
        assert got.alerts.total == 1
        assert got.run.playbook is None
        assert got.service == "orders-db"

    async def test_pagerduty_lifecycle(self, api: httpx.AsyncClient, client: Client) -> None:
        """Triggered, acknowledged and resolved land in one incident keyed by the PD incident."""
        incident_id = f"Q{uuid.uuid4().hex[:12].upper()}"
        ids = set()
        for name in ("triggered", "acknowledged", "resolved"):
            doc = fixture(f"pagerduty_{name}.json")
            doc["event"]["data"]["id"] = incident_id
            doc["event"]["id"] = uuid.uuid4().hex
            body = json.dumps(doc).encode()
            answer = await api.post("/v1/alerts/pagerduty", content=body, headers=pd_headers(body))
            assert answer.status_code == 202, answer.text
            ids.add(answer.json()["incidents"][0]["workflow_id"])
        [workflow_id] = ids
        got = await state(client, workflow_id)
        assert got.service == "payments"
        assert got.alerts.total == 3
        assert (got.alerts.firing, got.alerts.resolved) == (1, 1)
        assert [a.source for a in got.acks] == ["pd"]
        # every alert resolved and no run: the incident closes itself (a workflow task later)
        handle = client.get_workflow_handle(workflow_id, result_type=IncidentState)
        final = await asyncio.wait_for(handle.result(), timeout=20)
        assert final.phase.value == "resolved"

    async def test_generic(self, api: httpx.AsyncClient, client: Client) -> None:
        doc = fixture("generic.json")
        doc["dedup_key"] = f"orders-db/backup/{uuid.uuid4().hex[:6]}"
        answer = await api.post("/v1/alerts", json=doc, headers=bearer())
        assert answer.status_code == 202, answer.text
        [incident] = answer.json()["incidents"]
        assert incident["service"] == "orders-db"
        assert (await state(client, incident["workflow_id"])).alerts.total == 1


class TestExactlyOnce:
    async def test_redelivery_changes_nothing(self, api: httpx.AsyncClient, client: Client) -> None:
        """Alertmanager retries the same notification: the incident still holds two alerts."""
        body = unique_am(fixture("alertmanager_firing.json"))
        first = await api.post("/v1/alerts/alertmanager", content=body, headers=am_headers())
        again = await api.post("/v1/alerts/alertmanager", content=body, headers=am_headers())
        assert first.status_code == again.status_code == 202
        workflow_id = first.json()["incidents"][0]["workflow_id"]
        assert again.json()["incidents"][0]["workflow_id"] == workflow_id
        got = await state(client, workflow_id)
        assert got.alerts.total == 2
        assert got.alerts.duplicates == 2

    async def test_pagerduty_retry_same_event(self, api: httpx.AsyncClient, client: Client) -> None:
        doc = fixture("pagerduty_triggered.json")
        doc["event"]["data"]["id"] = f"Q{uuid.uuid4().hex[:12].upper()}"
        body = json.dumps(doc).encode()
        hook = uuid.uuid4().hex
        for _ in range(3):
            answer = await api.post(
                "/v1/alerts/pagerduty", content=body, headers=pd_headers(body, hook)
            )
            assert answer.status_code == 202
        got = await state(client, answer.json()["incidents"][0]["workflow_id"])
        assert got.alerts.total == 1

    async def test_ha_double_send(self, api: httpx.AsyncClient, client: Client) -> None:
        """Both members of an HA pair send the same notification at once: one incident, 2 alerts."""
        body = unique_am(fixture("alertmanager_firing.json"))
        answers = await asyncio.gather(
            *(
                api.post("/v1/alerts/alertmanager", content=body, headers=am_headers())
                for _ in range(2)
            )
        )
        assert [a.status_code for a in answers] == [202, 202]
        ids = {a.json()["incidents"][0]["workflow_id"] for a in answers}
        assert len(ids) == 1
        got = await state(client, ids.pop())
        assert got.alerts.total == 2
        # then the resolution arrives: a new notification for the same incident
        resolved = fixture("alertmanager_resolved.json")
        resolved["groupKey"] = json.loads(body)["groupKey"]
        resolved["commonLabels"]["lane"] = "no-run"
        answer = await api.post(
            "/v1/alerts/alertmanager", content=json.dumps(resolved), headers=am_headers()
        )
        got = await state(client, answer.json()["incidents"][0]["workflow_id"])
        assert got.alerts.total == 3
        assert (got.alerts.firing, got.alerts.resolved) == (2, 1)
        assert got.phase.value != "resolved"  # one of the two still fires

    async def test_ended_incident_opens_a_new_one_linked(
        self, api: httpx.AsyncClient, client: Client
    ) -> None:
        doc = fixture("generic.json")
        doc["dedup_key"] = f"k-{uuid.uuid4().hex[:6]}"
        first = await api.post("/v1/alerts", json=doc, headers=bearer())
        workflow_id = first.json()["incidents"][0]["workflow_id"]
        handle = client.get_workflow_handle(workflow_id)
        old_run = (await handle.describe()).run_id
        await handle.execute_update(UPDATE_RESOLVE, Resolve(by="alice", comment="fixed"))
        await handle.result()
        doc["summary"] = "it failed again"
        second = await api.post("/v1/alerts", json=doc, headers=bearer())
        assert second.status_code == 202
        assert second.json()["incidents"][0]["workflow_id"] == workflow_id
        new = await client.get_workflow_handle(workflow_id).describe()
        assert new.run_id != old_run
        got = await state(client, workflow_id)
        assert got.alerts.total == 1
        assert got.previous_incident == old_run

    async def test_storm_exact_counts(self, api: httpx.AsyncClient, client: Client) -> None:
        """500 notifications over 5 keys from 50 concurrent clients: 5 incidents, 500 alerts."""
        storm = uuid.uuid4().hex[:8]
        keys = [f"{storm}-{i}" for i in range(5)]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(500):
            queue.put_nowait(n)
        answers: list[dict[str, Any]] = []

        async def sender() -> None:
            async with httpx.AsyncClient(base_url=str(api.base_url), timeout=30) as http:
                while not queue.empty():
                    n = queue.get_nowait()
                    doc = {
                        "title": "storm",
                        "id": f"{storm}-{n}",
                        "dedup_key": "storm",
                        "labels": {"alertname": "Storm", "key": keys[n % 5]},
                    }
                    answer = await http.post("/v1/alerts", json=doc, headers=bearer())
                    assert answer.status_code == 202, answer.text
                    answers.append(answer.json())

        await asyncio.gather(*(sender() for _ in range(50)))
        assert len(answers) == 500
        workflow_ids = {a["incidents"][0]["workflow_id"] for a in answers}
        assert workflow_ids == {incident_workflow_id(f"storm/{k}") for k in keys}
        counts = [(await state(client, w)).alerts.total for w in sorted(workflow_ids)]
        assert counts == [100] * 5
        stats = (await api.get("/v1/alerts/stats", headers=bearer())).json()["stats"]
        assert stats["signalled_alerts"] >= 500
        assert stats["signals"] <= 500


class TestUnrouted:
    async def test_stored_counted_listed(self, api: httpx.AsyncClient, settings: Settings) -> None:
        """Nothing matches: 202, written to the unrouted log, listed by the API."""
        doc = {"title": "mystery", "labels": {"service": "nobody-owns-this"}, "id": "u-1"}
        answer = await api.post("/v1/alerts", json=doc, headers=bearer())
        assert answer.status_code == 202
        assert answer.json()["unrouted"] == 1
        assert answer.json()["incidents"] == []
        listing = await api.get("/v1/alerts/unrouted", headers=bearer())
        assert listing.status_code == 200
        body = listing.json()
        assert body["total"] == 1
        assert body["latest"][0]["labels"] == {"service": "nobody-owns-this"}
        assert (settings.data_dir / "unrouted.jsonl").read_text().count("\n") == 1
        assert (await api.get("/v1/alerts/unrouted")).status_code == 401

    async def test_pagerduty_ping_is_recorded(self, api: httpx.AsyncClient) -> None:
        body = json.dumps(
            {"event": {"id": uuid.uuid4().hex, "event_type": "pagey.ping", "data": {}}}
        ).encode()
        answer = await api.post("/v1/alerts/pagerduty", content=body, headers=pd_headers(body))
        assert answer.status_code == 202
        assert answer.json()["unrouted"] == 1


class TestRefusals:
    @pytest.mark.parametrize(
        ("path", "headers"),
        [
            ("/v1/alerts/alertmanager", {}),
            ("/v1/alerts/alertmanager", {"Authorization": "Basic YWxlcnRtYW5hZ2VyOndyb25n"}),
            ("/v1/alerts/grafana", {}),
            ("/v1/alerts/grafana", {"X-Grafana-Alerting-Signature": "00"}),
            ("/v1/alerts/pagerduty", {}),
            ("/v1/alerts/pagerduty", {"X-PagerDuty-Signature": "v1=00"}),
            ("/v1/alerts", {}),
            ("/v1/alerts", {"Authorization": "Bearer wrong"}),
        ],
    )
    async def test_missing_or_wrong_credentials(
        self, api: httpx.AsyncClient, path: str, headers: dict[str, str]
    ) -> None:
        answer = await api.post(path, content=b'{"title": "x"}', headers=headers)
        assert answer.status_code == 401, answer.text

    async def test_grafana_replay_outside_window(self, api: httpx.AsyncClient) -> None:
        """A correctly signed notification captured 10 minutes ago is refused."""
        body = json.dumps(fixture("grafana_firing.json")).encode()
        old = grafana_headers(body, stamp=int(time.time()) - 600)
        answer = await api.post("/v1/alerts/grafana", content=body, headers=old)
        assert answer.status_code == 401
        assert "replay window" in answer.json()["detail"]

    async def test_malformed(self, api: httpx.AsyncClient) -> None:
        """Not JSON, not an object, not UTF-8, nested past the parser, digits past the limit."""
        hostile = (b"[" * 50_000, b'{"title": ' + b"9" * 5000 + b"}")
        for body in (b"{not json", b"[1, 2]", b"\xff\xfe", *hostile):
            answer = await api.post("/v1/alerts", content=body, headers=bearer())
            assert answer.status_code == 400, body

    async def test_invalid_names_the_field(self, api: httpx.AsyncClient) -> None:
        doc = fixture("alertmanager_firing.json")
        doc["alerts"][1]["labels"] = "not a mapping"
        answer = await api.post("/v1/alerts/alertmanager", json=doc, headers=am_headers())
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["alerts", 1, "labels"]

    async def test_oversized(self, api: httpx.AsyncClient) -> None:
        """Over the limit: 413, whether Content-Length says so or the chunks only show it."""
        big = json.dumps({"title": "x", "summary": "a" * 70_000}).encode()
        answer = await api.post("/v1/alerts", content=big, headers=bearer())
        assert answer.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 1024

        answer = await api.post("/v1/alerts", content=chunks(), headers=bearer())
        assert answer.status_code == 413

    async def test_stranger_is_refused_before_the_body_is_read(
        self, api: httpx.AsyncClient
    ) -> None:
        """A wrong bearer token gets 401 even with a body over the limit (nothing is read)."""
        big = b" " * 200_000
        answer = await api.post("/v1/alerts", content=big, headers={"Authorization": "Bearer x"})
        assert answer.status_code == 401


class TestBackpressure:
    async def test_full_queue_and_deadline_answer_503(self, settings: Settings) -> None:
        """A stuck Temporal write: the next notification gets 503 + Retry-After, not a hang."""
        release = asyncio.Event()
        entered = asyncio.Event()

        async def stuck(key: str, start: IncidentStart, batch: AlertBatch) -> str:
            entered.set()
            await release.wait()
            return "run"

        app = LaneApp()
        config = ingress_config(max_pending=1, deadline_seconds=0.5, retry_after_seconds=3)
        mount_alerts(app, alerts_router(settings, config, starter=stuck))
        server, task, url = await serve(app)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                doc = fixture("generic.json")
                first = asyncio.create_task(http.post("/v1/alerts", json=doc, headers=bearer()))
                await entered.wait()
                doc2 = {**doc, "id": "another"}
                full = await http.post("/v1/alerts", json=doc2, headers=bearer())
                assert full.status_code == 503
                assert full.headers["retry-after"] == "3"
                late = await first  # its write never landed within the deadline
                assert late.status_code == 503
                assert late.headers["retry-after"] == "3"
                release.set()
        finally:
            server.should_exit = True
            await task

    async def test_temporal_unreachable(self, settings: Settings, tmp_path: Path) -> None:
        down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
        app = LaneApp()
        mount_alerts(app, alerts_router(down, ingress_config()))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.post("/v1/alerts", json=fixture("generic.json"), headers=bearer())
        assert answer.status_code == 503
        assert "retry-after" in answer.headers


class TestMounted:
    async def test_create_app_serves_the_alert_routes(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The operator app includes the router, configured from FIRELINE_INGRESS_*."""
        from fireline.operator.api import create_app

        without_read = {k: v for k, v in AUTH.items() if k != "read"}
        monkeypatch.setenv("FIRELINE_INGRESS_AUTH", json.dumps(without_read))
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.post("/v1/alerts", json={"title": "x"})
            assert answer.status_code == 401
            # reads take the operator's credentials (no `read` scheme configured)
            assert (await http.get("/v1/alerts/stats")).status_code == 401
            wrong = {"Authorization": "Bearer fl_not_a_real_token"}
            assert (await http.get("/v1/alerts/unrouted", headers=wrong)).status_code == 401


class TestLanes:
    """The webhook POSTs have a lane of their own in front of FastAPI's stack (for storms)."""

    @staticmethod
    async def _answers(app: FastAPI, key: str) -> list[tuple[int, Any]]:
        good = {**fixture("generic.json"), "dedup_key": key}
        deep = b'{"title": "x", "labels": ' + b'{"a": ' * 40 + b"1" + b"}" * 41
        tries: list[tuple[str, bytes, dict[str, str]]] = [
            ("/v1/alerts", json.dumps(good).encode(), bearer()),
            ("/v1/alerts", json.dumps(good).encode(), {}),
            ("/v1/alerts", b"{not json", bearer()),
            ("/v1/alerts", deep, bearer()),
            ("/v1/alerts", b'{"title": "x", "labels": "no"}', bearer()),
            ("/v1/alerts", json.dumps({"summary": "a" * 70_000}).encode(), bearer()),
            ("/v1/alerts/alertmanager", b"{}", {}),
        ]
        server, task, url = await serve(app)
        out: list[tuple[int, Any]] = []
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                for path, body, headers in tries:
                    answer = await http.post(path, content=body, headers=headers)
                    assert answer.headers["content-type"] == "application/json"
                    doc = answer.json()
                    if answer.status_code == 202:  # ids differ with the key, the shape does not
                        doc = {k: len(v) if isinstance(v, list) else v for k, v in doc.items()}
                    out.append((answer.status_code, doc))
        finally:
            server.should_exit = True
            await task
        return out

    async def test_both_lanes_answer_alike(self, settings: Settings, workers: None) -> None:
        """Every outcome (202, 401, 400 twice, 422, 413) is the same through the fast lane as
        through the router's own routes, the fast lane's JSON-depth refusal included."""
        routed = FastAPI()
        routed.include_router(alerts_router(settings, ingress_config()))
        fast = LaneApp()
        mount_alerts(fast, alerts_router(settings, ingress_config()))
        by_router = await self._answers(routed, uuid.uuid4().hex)
        by_lane = await self._answers(fast, uuid.uuid4().hex)
        assert [code for code, _ in by_lane] == [202, 401, 400, 400, 422, 413, 401]
        assert by_lane == by_router
        assert "levels deep" in by_lane[3][1]["detail"]

    async def test_create_app_lane_keeps_the_docs_and_the_source_limit(
        self, settings: Settings, workers: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The operator app documents the webhooks, serves its other routes as before, and an
        alert source's own body limit holds even above the operator API's smaller one (the
        operator limit used to cut alerts off first)."""
        from fireline.operator.api import create_app

        monkeypatch.setenv("FIRELINE_INGRESS_AUTH", json.dumps(AUTH))
        monkeypatch.setenv("FIRELINE_INGRESS_MAX_BODY_BYTES", str(64 * 1024))
        app = create_app(settings.model_copy(update={"api_max_body_bytes": 2048}))
        server, task, url = await serve(app)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                paths = (await http.get("/openapi.json")).json()["paths"]
                assert {"/v1/alerts", "/v1/alerts/alertmanager", "/v1/alerts/pagerduty"} <= set(
                    paths
                )
                doc = {**fixture("generic.json"), "dedup_key": uuid.uuid4().hex}
                doc["summary"] = "s" * 4000  # over the operator's 2 KiB, under the source's
                answer = await http.post("/v1/alerts", json=doc, headers=bearer())
                assert answer.status_code == 202, answer.text
                operator = await http.post("/runs", content=b"x" * 4096)
                assert operator.status_code == 413  # the operator routes keep their limit
                stats = await http.get("/v1/alerts/stats", headers=bearer())
                assert stats.status_code == 200
                assert stats.json()["stats"]["routed"] == 1
        finally:
            server.should_exit = True
            await task


class TestCli:
    async def test_fireline_alerts_unrouted(
        self, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """``fireline alerts --unrouted`` lists what the API stored; plain ``alerts`` counts."""
        from typer.testing import CliRunner

        from fireline.operator.cli import app

        doc = {"title": "orphan", "labels": {"team": "ghosts"}, "id": "cli-1"}
        assert (await api.post("/v1/alerts", json=doc, headers=bearer())).status_code == 202
        monkeypatch.setenv("FIRELINE_API_URL", str(api.base_url))
        monkeypatch.setenv("FIRELINE_TOKEN", TOKEN)
        monkeypatch.setenv("FIRELINE_CREDENTIALS_FILE", str(tmp_path / "none.json"))
        runner = CliRunner()
        listed = await asyncio.to_thread(
            runner.invoke, app, ["alerts", "--unrouted", "--json"], catch_exceptions=False
        )
        assert listed.exit_code == 0, listed.output
        data = json.loads(listed.output)
        assert data["total"] == 1
        assert data["latest"][0]["name"] == "orphan"
        table = await asyncio.to_thread(runner.invoke, app, ["alerts", "--unrouted"])
        assert "team=ghosts" in table.output
        counts = await asyncio.to_thread(runner.invoke, app, ["alerts"])
        assert counts.exit_code == 0, counts.output
        assert "notifications from generic" in counts.output
        monkeypatch.setenv("FIRELINE_TOKEN", "wrong")
        refused = await asyncio.to_thread(runner.invoke, app, ["alerts"])
        assert refused.exit_code == 1
        assert "401" in refused.output


class TestDevMode:
    async def test_unconfigured_source_open_only_in_dev_mode(
        self, settings: Settings, workers: None
    ) -> None:
        """No ingress credentials: closed by default, open in dev mode on loopback."""
        for dev, expected in ((False, 401), (True, 202)):
            app = LaneApp()
            local = settings.model_copy(update={"dev_mode": dev})
            mount_alerts(app, alerts_router(local, IngressSettings()))
            server, task, url = await serve(app)
            try:
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    doc = {**fixture("generic.json"), "dedup_key": uuid.uuid4().hex}
                    answer = await http.post("/v1/alerts", json=doc)
                    assert answer.status_code == expected, answer.text
            finally:
                server.should_exit = True
                await task
