"""The bearer token goes only to hosts allow-listed for it, never where a request points.

A step's URL can come from a playbook input or a ``decide retry``; the token comes from the
worker's settings. Real HTTP servers on 127.0.0.1 record what they receive, so "not sent" is
observed on the wire, not inferred from a return value.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.core.http import HttpModules, HttpProbeInput, HttpRequestInput
from activities.core.runtime import credential_problem
from fireline import errors
from fireline.messages import (
    QUERY_STATUS,
    DecisionAction,
    RunState,
    StepStatus,
)
from fireline.runtime.settings import Settings
from tests.support.target import Reply, Target, start_target
from tests.support.workers import compile_playbooks, decide, fireline_workers, start_run

TOKEN = "bound-s3cret"


def host_of(target: Target) -> str:
    return target.base_url.removeprefix("http://")


@pytest.fixture
def other() -> Iterator[Target]:
    """A second server, standing for a host nobody allow-listed."""
    server = start_target()
    try:
        yield server
    finally:
        server.close()


async def run(settings: Settings, fn_name: str, arg: Any) -> Any:
    modules = HttpModules(settings)
    try:
        environment = ActivityEnvironment()
        environment.info = dataclasses.replace(
            ActivityEnvironment.default_info(), workflow_id="wf-b", activity_id="step-b"
        )
        return await environment.run(getattr(modules, fn_name), arg)
    finally:
        await modules.aclose()


async def refusal(settings: Settings, fn_name: str, arg: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run(settings, fn_name, arg)
    return caught.value


class TestBearerBinding:
    async def test_sent_to_a_listed_host(self, target: Target) -> None:
        """The allow-listed host receives the token."""
        target.route("PUT", "/flag", Reply(200))
        settings = Settings(http_bearer_token=TOKEN, http_bearer_hosts=[host_of(target)])
        await run(
            settings,
            "http_request",
            HttpRequestInput(method="PUT", url=target.url("/flag"), use_bearer_token=True),
        )
        assert target.hits("PUT", "/flag")[0].headers["authorization"] == f"Bearer {TOKEN}"

    async def test_not_sent_to_a_host_that_is_not_listed(
        self, target: Target, other: Target
    ) -> None:
        """A URL on another host fails, non-retryable, naming the host; it receives nothing."""
        other.route("PUT", "/flag", Reply(200))
        settings = Settings(http_bearer_token=TOKEN, http_bearer_hosts=[host_of(target)])
        error = await refusal(
            settings,
            "http_request",
            HttpRequestInput(method="PUT", url=other.url("/flag"), use_bearer_token=True),
        )
        assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)
        assert f"not allowed for host {host_of(other)}" in error.message
        assert host_of(target) in error.message  # says which hosts are allowed
        assert other.hits() == []
        assert TOKEN not in error.message

    async def test_nothing_listed_means_sent_nowhere(self, target: Target) -> None:
        """A token with an empty allow-list is sent to no host at all."""
        settings = Settings(http_bearer_token=TOKEN)
        error = await refusal(
            settings,
            "http_probe",
            HttpProbeInput(url=target.url("/health"), use_bearer_token=True),
        )
        assert "FIRELINE_HTTP_BEARER_HOSTS: none" in error.message
        assert target.hits() == []

    async def test_the_probe_is_bound_too(self, target: Target, other: Target) -> None:
        """core.http_probe sends the token to the listed host and refuses the other one."""
        target.route("GET", "/health", Reply(200))
        settings = Settings(http_bearer_token=TOKEN, http_bearer_hosts=[host_of(target)])
        result = await run(
            settings, "http_probe", HttpProbeInput(url=target.url("/health"), use_bearer_token=True)
        )
        assert result.satisfied is True
        assert target.hits()[0].headers["authorization"] == f"Bearer {TOKEN}"
        error = await refusal(
            settings, "http_probe", HttpProbeInput(url=other.url("/health"), use_bearer_token=True)
        )
        assert host_of(other) in error.message
        assert other.hits() == []

    async def test_an_undo_to_an_unlisted_host_is_refused_before_the_change(
        self, target: Target, other: Target
    ) -> None:
        """A compensation that would send the token elsewhere stops the step before it acts."""
        target.route("POST", "/act", Reply(200))
        settings = Settings(http_bearer_token=TOKEN, http_bearer_hosts=[host_of(target)])
        error = await refusal(
            settings,
            "http_request",
            HttpRequestInput.model_validate(
                {
                    "url": target.url("/act"),
                    "compensation": {"url": other.url("/undo"), "use_bearer_token": True},
                }
            ),
        )
        assert host_of(other) in error.message
        assert target.hits() == []
        assert other.hits() == []


class TestMatching:
    @pytest.mark.parametrize(
        ("url", "allowed", "problem"),
        [
            ("https://api.example.com/x", ["api.example.com"], None),
            ("https://api.example.com:443/x", ["api.example.com"], None),
            ("https://API.Example.com/x", ["api.example.com:443"], None),
            ("https://api.example.com:8443/x", ["api.example.com"], "not allowed for host"),
            ("https://evil-api.example.com/x", ["api.example.com"], "not allowed for host"),
            ("https://api.example.com.evil.net/x", ["api.example.com"], "not allowed for host"),
            ("https://example.com/x", ["api.example.com"], "not allowed for host"),
            ("http://api.example.com/x", ["api.example.com:80"], "only over https"),
            ("http://127.0.0.1:8080/x", ["127.0.0.1:8080"], None),
            ("http://localhost:8080/x", ["localhost:8080"], None),
            ("http://[::1]:9000/x", ["[::1]:9000"], None),
            ("http://127.0.0.1:8081/x", ["127.0.0.1:8080"], "not allowed for host"),
            ("http://user@127.0.0.1:8080/x", ["127.0.0.1"], "not allowed for host"),
            ("ftp://127.0.0.1/x", ["127.0.0.1"], "not an http or https URL"),
        ],
    )
    def test_exact_host_and_port(self, url: str, allowed: list[str], problem: str | None) -> None:
        """Entries match host and port exactly (default port when omitted); https off loopback."""
        found = credential_problem(url, allowed, "FIRELINE_HTTP_BEARER_HOSTS")
        if problem is None:
            assert found is None
        else:
            assert found is not None
            assert problem in found

    def test_settings_read_the_list_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FIRELINE_HTTP_BEARER_HOSTS is a JSON list."""
        monkeypatch.setenv("FIRELINE_HTTP_BEARER_HOSTS", '["api.example.com", "127.0.0.1:9"]')
        assert Settings().http_bearer_hosts == ["api.example.com", "127.0.0.1:9"]


ASK_PLAYBOOK = """
name: call-admin
inputs: {url: {type: string, required: true}}
steps:
  - id: call
    uses: core.http_request
    with:
      url: "${{ inputs.url }}"
      use_bearer_token: true
      compensation: {url: "${{ inputs.url }}"}
    on_failure: ask
"""


async def status_when(handle: Any, step: str, wanted: StepStatus, attempts: int) -> RunState:
    for _ in range(300):
        state: RunState = await handle.query(QUERY_STATUS, result_type=RunState)
        if state.step(step).status is wanted and state.step(step).attempts >= attempts:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{step} never reached {wanted} (attempt {attempts})")


class TestThroughARun:
    async def test_decide_retry_with_a_new_url_does_not_carry_the_token(
        self,
        client: Client,
        task_queue_prefix: str,
        tmp_path: Path,
        target: Target,
        other: Target,
    ) -> None:
        """Finding 3: a retry pointed at another host fails naming it; that host receives
        nothing, while the listed host got the token on the first attempt."""
        target.route("POST", "/admin", Reply(404, {"error": "wrong path"}))
        other.route("POST", "/steal", Reply(200))
        settings = Settings(http_bearer_token=TOKEN, http_bearer_hosts=[host_of(target)])
        plan = compile_playbooks(tmp_path, {"c.yaml": ASK_PLAYBOOK}, "call-admin")
        async with fireline_workers(client, task_queue_prefix, settings=settings):
            handle = await start_run(client, task_queue_prefix, plan, {"url": target.url("/admin")})
            await status_when(handle, "call", StepStatus.awaiting_decision, 1)
            await decide(
                handle, "call", DecisionAction.retry, "alice", inputs={"url": other.url("/steal")}
            )
            state = await status_when(handle, "call", StepStatus.awaiting_decision, 2)
            await decide(handle, "call", DecisionAction.compensate, "alice")
            with pytest.raises(WorkflowFailureError):
                await handle.result()

        assert other.hits() == []
        assert f"not allowed for host {host_of(other)}" in (state.step("call").error or "")
        [first] = target.hits("POST", "/admin")
        assert first.headers["authorization"] == f"Bearer {TOKEN}"
