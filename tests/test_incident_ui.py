"""Incidents as a person finds them in the real Temporal Web UI, rendered by headless Chromium.

A dev server of this module's own runs with its UI and Fireline's search attributes (as
``fireline up`` registers them); incidents are opened the way ingress opens them
(signal-with-start with their search attributes); the browser is Debian's Chromium over the
DevTools protocol. What is asserted is the text the UI renders: the workflow list filtered by
``FirelineService`` and ``FirelineIncidentKey``, and the incident's banner (its current
details) with its phase, who is paged, who must act and the command to do it. Screenshots are
kept in /tmp/fireline-incident-ui/.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from fireline.catalog.model import Catalog
from fireline.incident import (
    INCIDENT_WORKFLOW,
    QUERY_STATUS,
    SIGNAL_ALERTS,
    AlertBatch,
    IncidentState,
    incident_start,
    incident_workflow_id,
    search_attributes,
)
from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from tests.support.browser import (
    Browser,
    BrowserError,
    dev_server_with_ui,
    png_colours,
)
from tests.support.target import Reply, Target
from tests.support.workers import fireline_workers

T = TypeVar("T")
SHOTS = Path("/tmp/fireline-incident-ui")

CATALOG = Catalog.model_validate(
    {
        "roles": {
            "sre-oncall": {"tier": 1, "members": ["alice", "bob"]},
            "search-oncall": {"tier": 1, "members": ["sam"]},
        },
        "services": {
            "checkout": {
                "escalation": {
                    "levels": [{"tier": 1, "delay": "5m", "targets": [{"role": "sre-oncall"}]}]
                }
            },
            "search": {
                "escalation": {
                    "levels": [{"tier": 1, "delay": "5m", "targets": [{"role": "search-oncall"}]}]
                }
            },
        },
    }
)


@pytest.fixture(scope="module")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture(scope="module")
async def ui_env(chromium: str) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    async with dev_server_with_ui() as served:
        yield served


async def _in_thread(call: Callable[[], T]) -> T:
    """Browser calls block; the workers on this event loop must keep running meanwhile."""
    return await asyncio.to_thread(call)


async def _open(client: Client, prefix: str, service: str, title: str) -> tuple[str, str]:
    """Open an incident as ingress does; returns its workflow id and incident key."""
    key = f"am/{service}/{uuid.uuid4().hex[:8]}"
    start = incident_start(
        CATALOG, service, key, severity="critical", title=title, task_queue_prefix=prefix
    )
    alert = Alert(
        source=AlertSource.alertmanager,
        notification_id=uuid.uuid4().hex,
        group_key=key,
        status=AlertStatus.firing,
        name="HighErrorRate",
        summary=title,
        received_at=datetime.now(UTC),
    )
    handle = await client.start_workflow(
        INCIDENT_WORKFLOW,
        start,
        id=incident_workflow_id(key),
        task_queue=prefix,
        start_signal=SIGNAL_ALERTS,
        start_signal_args=[AlertBatch(batch_id=uuid.uuid4().hex, alerts=[alert])],
        search_attributes=search_attributes(start),
    )
    return handle.id, key


async def _paged(client: Client, workflow_id: str, count: int) -> IncidentState:
    handle = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(30):
        while True:
            state: IncidentState = await handle.query(QUERY_STATUS, result_type=IncidentState)
            if len([p for p in state.pages if p.delivered]) >= count:
                return state
            await asyncio.sleep(0.1)


async def _visible(client: Client, query: str, workflow_id: str) -> None:
    """Visibility is eventually consistent: wait until the server's list has it."""
    async with asyncio.timeout(30):
        while True:
            ids = [w.id async for w in client.list_workflows(query)]
            if workflow_id in ids:
                return
            await asyncio.sleep(0.2)


def _list_url(ui_url: str, query: str) -> str:
    return f"{ui_url}/namespaces/default/workflows?query={quote(query)}"


class TestIncidentsInTemporalUI:
    async def test_list_filters_by_search_attributes_and_the_banner_says_who_acts(
        self,
        ui_env: tuple[WorkflowEnvironment, str],
        target: Target,
        task_queue_prefix: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        shots: Path,
    ) -> None:
        """Filtered by FirelineService="checkout" the list shows checkout's incident and not
        search's; by FirelineIncidentKey it shows exactly that one; the incident's page
        shows the banner: phase, who is paged, who must act with the ack command."""
        environment, ui_url = ui_env
        client = environment.client
        target.route("POST", "/page", Reply(200))
        monkeypatch.setenv(
            "FIRELINE_TARGETS", json.dumps({"webhook": {"default": {"url": target.url("/page")}}})
        )
        async with fireline_workers(client, task_queue_prefix):
            checkout, checkout_key = await _open(
                client, task_queue_prefix, "checkout", "checkout answers 5xx"
            )
            search, _ = await _open(client, task_queue_prefix, "search", "search is slow")
            state = await _paged(client, checkout, 2)
            await _paged(client, search, 1)
            by_service = 'FirelineService="checkout"'
            by_key = f'FirelineIncidentKey="{checkout_key}"'
            await _visible(client, by_service, checkout)
            await _visible(client, 'FirelineService="search"', search)
            browser = await _in_thread(lambda: Browser(tmp_path / "chromium-profile"))
            try:

                def look() -> tuple[str, str, str, bytes]:
                    browser.goto(_list_url(ui_url, by_service))
                    listed = browser.wait_for_text(checkout, INCIDENT_WORKFLOW, "RUNNING")
                    browser.screenshot(shots / "1-list-by-service.png")
                    browser.goto(_list_url(ui_url, by_key))
                    keyed = browser.wait_for_text(checkout, INCIDENT_WORKFLOW)
                    browser.goto(f"{ui_url}/namespaces/default/workflows/{checkout}")
                    browser.wait_for_text(checkout, "RUNNING", INCIDENT_WORKFLOW)
                    browser.click_text("User Metadata")
                    banner = browser.wait_for_text(f"Incident {checkout_key}", "Who must act")
                    png = browser.screenshot(shots / "2-incident-banner.png")
                    return listed, keyed, banner, png

                try:
                    listed, keyed, banner, png = await _in_thread(look)
                except BrowserError:
                    await _in_thread(lambda: browser.screenshot(shots / "failed.png"))
                    raise
            finally:
                await _in_thread(browser.close)

        assert search not in listed, "another service's incident is filtered out"
        assert search not in keyed
        assert f"Incident {checkout_key} — TRIAGING" in banner
        assert "Service checkout" in banner
        assert "severity critical" in banner
        assert f"Paged: {', '.join(state.escalation.paged)} (tier 1)" in banner
        assert set(state.escalation.paged) == {"alice", "bob"}
        assert f"acknowledge: fireline ack {checkout}" in banner
        assert "commander none" in banner
        assert png_colours(png) > 8, "the banner screenshot is blank"
