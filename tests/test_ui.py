"""A run as a person sees it in the real Temporal Web UI, rendered by a real headless Chromium.

The dev server here is started with its UI (the session ``env`` has none); workers run in
this process; the browser is Debian's Chromium, driven over the DevTools protocol. What is
asserted is the text the page renders, Markdown frames included, and a screenshot is kept.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from fireline.messages import RunPhase, RunState
from fireline.operator import operations
from fireline.runtime.settings import Settings
from tests.support.browser import (
    Browser,
    dev_server_with_ui,
    png_colours,
)
from tests.support.target import Reply, Target
from tests.support.workers import fireline_workers

T = TypeVar("T")

PLAYBOOK = """
name: ui-check
version: 1
description: Probe the service, then hold until someone on call signs off.
inputs:
  base: {type: string, required: true}
steps:
  - id: probe
    name: Probe health
    uses: core.http_probe
    with: {url: "${{ inputs.base }}/health"}
  - id: hold
    name: Hold for sign-off
    uses: core.wait
    approval: {role: sre-oncall}
    with: {seconds: 0}
"""
CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice]}
"""


@pytest.fixture(scope="module")
async def ui_env(chromium: str) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """Its own dev server with the Web UI on a free port, Fireline's search attributes added."""
    async with dev_server_with_ui() as served:
        yield served


async def _reach(client: Client, workflow_id: str, phase: RunPhase) -> RunState:
    """The run's state once it reaches ``phase``; fails if it ends elsewhere or stalls."""
    last: RunState | None = None
    async with asyncio.timeout(20):
        async for state in operations.follow(client, workflow_id, interval_s=0.1):
            last = state
            if state.phase is phase:
                return state
    raise AssertionError(f"run ended in {last.phase if last else None}, not {phase}")


async def _in_thread(call: Callable[[], T]) -> T:
    """Browser calls block; the workers on this event loop must keep running meanwhile."""
    return await asyncio.to_thread(call)


class TestRunInTemporalUI:
    async def test_gate_and_outcome_are_readable_in_the_web_ui(
        self,
        ui_env: tuple[WorkflowEnvironment, str],
        target: Target,
        task_queue_prefix: str,
        tmp_path: Path,
    ) -> None:
        """The UI shows the summary, the waiting banner with its approve command, the step's
        activity summary, and after approval the succeeded banner."""
        environment, ui_url = ui_env
        client = environment.client
        target.route("GET", "/health", Reply(200))
        playbooks = tmp_path / "playbooks"
        playbooks.mkdir()
        (playbooks / "ui-check.yaml").write_text(textwrap.dedent(PLAYBOOK).lstrip())
        (playbooks / "catalog.yaml").write_text(textwrap.dedent(CATALOG).lstrip())
        settings = Settings(
            task_queue_prefix=task_queue_prefix, playbooks_dir=playbooks, temporal_ui_url=ui_url
        )

        async with fireline_workers(client, task_queue_prefix):
            run = await operations.start_run(
                client, settings, "ui-check", {"base": target.base_url}, "alice"
            )
            wid = run.workflow_id
            await _reach(client, wid, RunPhase.awaiting_approval)
            browser = await _in_thread(lambda: Browser(tmp_path / "chromium-profile"))
            try:

                def while_waiting() -> tuple[str, str, str]:
                    browser.goto(run.ui_url)
                    browser.wait_for_text(wid, "RUNNING", "PlaybookWorkflow")
                    browser.click_text("User Metadata")
                    metadata = browser.wait_for_text(
                        "ui-check v1 by alice", "ui-check v1 — AWAITING_APPROVAL"
                    )
                    browser.screenshot(tmp_path / "1-waiting-metadata.png")
                    browser.click_text("Event History")
                    history = browser.wait_for_text("Local Activity", "Summary")
                    browser.screenshot(tmp_path / "2-waiting-history.png")
                    browser.click_text("Search Attributes")
                    attributes = browser.wait_for_text('"FirelinePhase"')
                    return metadata, history, attributes

                metadata, history, attributes = await _in_thread(while_waiting)
                assert "Waiting for approval of hold" in metadata
                assert f"fireline approve {wid} hold" in metadata
                assert "--as NAME" not in metadata
                assert "Probe health (core.http_probe)" in history
                assert '"FirelinePhase": "awaiting_approval"' in attributes

                await operations.approve(client, wid, "hold", "alice")
                await client.get_workflow_handle(wid).result()

                def after_approval() -> tuple[str, str, bytes]:
                    browser.goto(run.ui_url)
                    browser.wait_for_text(wid, "COMPLETED")
                    browser.click_text("Search Attributes")
                    attributes = browser.wait_for_text('"FirelinePhase"')
                    browser.click_text("User Metadata")
                    metadata = browser.wait_for_text("ui-check v1 — ")
                    png = browser.screenshot(tmp_path / "3-succeeded-metadata.png")
                    return metadata, attributes, png

                finished, attributes, png = await _in_thread(after_approval)
            finally:
                await _in_thread(browser.close)

        assert "ui-check v1 — SUCCEEDED" in finished
        assert "Waiting for approval of" not in finished
        assert "approved by alice" in finished
        assert '"FirelinePhase": "succeeded"' in attributes
        assert png_colours(png) > 8, "the final screenshot is blank"
