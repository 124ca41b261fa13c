"""core.page against a real local HTTP server: the webhook body, PagerDuty Events v2, failures.

The PagerDuty endpoint is the local server too (the target's ``url`` setting points there),
so the event is checked as PagerDuty would receive it; the routing key comes from settings
and must never show up in an error.
"""

from __future__ import annotations

import dataclasses

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.core.paging import PageInput, PagingModules, pagerduty_event, webhook_body
from fireline import errors
from fireline.messages import RunState, StepState, StepStatus
from fireline.plan import Preview
from fireline.run_view import PREVIEW_CHARS, preview_line, summarise
from fireline.runtime.settings import Settings
from tests.support.target import Reply, Target

ROUTING_KEY = "R0UT1NGKEY-secret-0123456789abcdef"


def env() -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(), workflow_id="incident-x", activity_id="7"
    )
    return environment


def page(**kw: object) -> PageInput:
    base: dict[str, object] = {
        "incident_id": "incident-am-payments",
        "person": "alice",
        "tier": 2,
        "title": "payments: HighErrorRate",
        "message": "ack: fireline ack incident-am-payments",
        "severity": "critical",
        "commander": "dana",
        "service": "payments",
    }
    base.update(kw)
    return PageInput.model_validate(base)


async def run(modules: PagingModules, request: PageInput) -> object:
    try:
        return await env().run(modules.page, request)
    finally:
        await modules.aclose()


class TestBodies:
    def test_webhook_body_is_slack_compatible_with_one_thread_key(self) -> None:
        """``text`` names the person, tier and commander; the thread key is the incident."""
        body = webhook_body(page())
        assert body["thread_key"] == "incident-am-payments"
        assert body["text"].splitlines()[:3] == [
            "[CRITICAL] payments: HighErrorRate",
            "Paging alice (tier 2)",
            "Commander: dana",
        ]

    def test_huge_message_is_cut_to_what_receivers_show(self) -> None:
        """A 20 kB message does not become a 20 kB chat post; the summary fits PagerDuty's cap."""
        big = page(message="x" * 20_000, title="t" * 1024)
        assert len(webhook_body(big)["text"]) == 3000
        assert len(pagerduty_event(big, "k")["payload"]["summary"]) == 1024

    def test_pagerduty_event_v2_shape(self) -> None:
        """routing_key, event_action, dedup_key = incident, payload with summary/source/severity."""
        event = pagerduty_event(page(severity="warning"), "key")
        assert event["routing_key"] == "key"
        assert event["event_action"] == "trigger"
        assert event["dedup_key"] == "incident-am-payments"
        assert event["payload"]["severity"] == "warning"
        assert event["payload"]["source"] == "payments"
        assert "commander dana" in event["payload"]["summary"]
        resolve = pagerduty_event(page(action="resolve"), "key")
        assert "payload" not in resolve
        unknown = pagerduty_event(page(severity="sev1"), "key")
        assert unknown["payload"]["severity"] == "critical"


class TestDelivery:
    async def test_webhook_delivered(self, target: Target) -> None:
        """The page arrives as JSON with the thread header; the result says where it went."""
        target.route("POST", "/hook", Reply(200))
        settings = Settings(targets={"webhook": {"oncall": {"url": target.url("/hook")}}})
        result = await run(PagingModules(settings), page(target="oncall"))
        hit = target.hits("POST", "/hook")[0]
        assert hit.json["person"] == "alice"
        assert hit.headers["x-fireline-thread"] == "incident-am-payments"
        assert result.channel == "webhook:oncall"  # type: ignore[attr-defined]

    async def test_pagerduty_delivered_with_routing_key_from_settings(self, target: Target) -> None:
        """The routing key travels in the body to PagerDuty, never through the page input."""
        target.route("POST", "/v2/enqueue", Reply(202, {"status": "success", "dedup_key": "x"}))
        settings = Settings(
            targets={
                "pagerduty": {
                    "payments": {"routing_key": ROUTING_KEY, "url": target.url("/v2/enqueue")}
                }
            }
        )
        result = await run(PagingModules(settings), page(channel="pagerduty", target="payments"))
        hit = target.hits("POST", "/v2/enqueue")[0]
        assert hit.json["routing_key"] == ROUTING_KEY
        assert hit.json["dedup_key"] == "incident-am-payments"
        assert result.status == 202  # type: ignore[attr-defined]
        assert ROUTING_KEY not in PageInput.model_json_schema().__repr__()

    async def test_refused_page_raises_without_leaking_the_key(self, target: Target) -> None:
        """A 400 from PagerDuty is a failure the incident records, not a silent success."""
        target.route("POST", "/v2/enqueue", Reply(400, {"status": "invalid event"}))
        settings = Settings(
            targets={
                "pagerduty": {"p": {"routing_key": ROUTING_KEY, "url": target.url("/v2/enqueue")}}
            }
        )
        with pytest.raises(ApplicationError) as caught:
            await run(PagingModules(settings), page(channel="pagerduty", target="p"))
        assert "400" in str(caught.value)
        assert ROUTING_KEY not in str(caught.value)

    async def test_unavailable_receiver_is_retryable(self, target: Target) -> None:
        """A 503 is worth retrying: the error is not marked non-retryable."""
        target.route("POST", "/hook", Reply(503))
        settings = Settings(targets={"webhook": {"default": {"url": target.url("/hook")}}})
        with pytest.raises(ApplicationError) as caught:
            await run(PagingModules(settings), page())
        assert caught.value.non_retryable is False

    async def test_unknown_channel_target_is_invalid_input(self) -> None:
        """A service naming a paging target settings do not have fails loudly, once."""
        with pytest.raises(ApplicationError) as caught:
            await run(PagingModules(Settings(targets={})), page(target="nowhere"))
        assert caught.value.type == errors.INVALID_INPUT
        assert caught.value.non_retryable is True
        assert "targets.webhook.nowhere" in str(caught.value)

    async def test_non_http_url_in_settings_is_refused(self) -> None:
        """A file:// URL in settings is not requested."""
        settings = Settings(targets={"webhook": {"default": {"url": "file:///etc/passwd"}}})
        with pytest.raises(ApplicationError) as caught:
            await run(PagingModules(settings), page())
        assert caught.value.type == errors.INVALID_INPUT


class TestGatePreviewInPages:
    """What the incident reads of its run: a waiting gate carries its preview's gist, so the
    page that asks someone to decide says what the step would change."""

    def _run(self, step: StepState) -> RunState:
        return RunState(playbook="p", version="1", plan_hash="h", steps=[step])

    def test_a_waiting_gate_carries_its_preview(self) -> None:
        preview = Preview(
            mutates=True, summary="flag checkout.shed: off -> on", blast_radius={"keys": 1}
        )
        step = StepState(
            id="shed", name="shed", status=StepStatus.awaiting_approval, preview=preview
        )
        [view] = summarise(self._run(step)).steps
        assert view.preview == "flag checkout.shed: off -> on (1 keys)"

    def test_a_failed_preview_says_so_and_a_decided_step_carries_none(self) -> None:
        waiting = StepState(
            id="s", name="s", status=StepStatus.awaiting_approval, preview_error="boom"
        )
        assert preview_line(waiting) == "preview unavailable: boom"
        done = StepState(
            id="s",
            name="s",
            status=StepStatus.succeeded,
            preview=Preview(mutates=True, summary="x" * 1000),
        )
        [view] = summarise(self._run(done)).steps
        assert view.preview is None
        assert len(preview_line(done) or "") == PREVIEW_CHARS
