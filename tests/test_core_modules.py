"""The core modules against a real HTTP target, in an activity context and as real activities.

``ActivityEnvironment`` gives the modules a real activity context without a server; the
``TestAsActivities`` cases run them on a worker of the shared dev server (``env``), so retries,
heartbeats and error types go through Temporal itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import pytest
    import structlog
    from pydantic import ValidationError
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.core.http import (
        MAX_SAMPLES,
        HttpCall,
        HttpModules,
        HttpProbeInput,
        HttpRequestInput,
        HttpResponse,
    )
    from activities.core.notify import NotifyInput, NotifyModules, NotifyOutput
    from activities.core.timing import WaitInput, WaitOutput, wait
    from fireline import errors
    from fireline.modules import (
        CheckResult,
        CompensationRef,
        bind_activities,
        load_registry,
    )
    from fireline.plan import WAIT_MODULE, Risk
    from fireline.runtime.settings import Settings
    from tests.support.target import Reply, Target, target  # noqa: F401

REGISTRY = load_registry(["core"])


def activity_env(
    workflow_id: str = "wf-1", activity_id: str = "step-a", heartbeat_s: float | None = None
) -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id=workflow_id,
        activity_id=activity_id,
        heartbeat_timeout=timedelta(seconds=heartbeat_s) if heartbeat_s else None,
    )
    return environment


def closed_port_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 where nothing listens: the port was bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def host_of(target: Target) -> str:
    """The ``host:port`` of a target server, as ``http_bearer_hosts`` lists it."""
    return target.base_url.removeprefix("http://")


@pytest.fixture
async def http_modules(target: Target) -> AsyncIterator[HttpModules]:
    """Modules whose bearer token is allow-listed for the test's target server."""
    modules = HttpModules(
        Settings(http_bearer_token="s3cret-token", http_bearer_hosts=[host_of(target)])
    )
    try:
        yield modules
    finally:
        await modules.aclose()


async def raises_application_error(awaitable: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await awaitable
    return caught.value


class TestRegistry:
    def test_http_request_metadata(self) -> None:
        """core.http_request is a medium-risk idempotent mutation with undo and verification."""
        spec = REGISTRY["core.http_request"]
        assert (spec.kind, spec.domain, spec.risk) == ("module", "core", Risk.medium)
        assert (spec.mutates, spec.idempotent, spec.owner) == (True, True, HttpModules)
        assert (spec.input_model, spec.output_model) == (HttpRequestInput, HttpResponse)
        assert spec.compensation == CompensationRef(
            module="core.http_request", with_="${{ input.compensation }}", when="compensation"
        )
        [post] = spec.postconditions
        assert (post.check, post.with_, post.when) == (
            "core.http_probe",
            {"url": "${{ input.health_url }}"},
            "health_url",
        )
        assert spec.heartbeat is not None

    def test_http_probe_metadata(self) -> None:
        """core.http_probe is a local core check returning CheckResult."""
        spec = REGISTRY["core.http_probe"]
        assert (spec.kind, spec.domain, spec.local, spec.owner) == (
            "check",
            "core",
            True,
            HttpModules,
        )
        assert (spec.input_model, spec.output_model) == (HttpProbeInput, CheckResult)

    def test_wait_and_notify_metadata(self) -> None:
        """core.wait and core.notify are low-risk modules that change nothing."""
        wait_spec, notify_spec = REGISTRY[WAIT_MODULE], REGISTRY["core.notify"]
        assert WAIT_MODULE == "core.wait"
        assert (wait_spec.mutates, wait_spec.risk, wait_spec.owner) == (False, Risk.low, None)
        assert (wait_spec.input_model, wait_spec.output_model) == (WaitInput, WaitOutput)
        assert (notify_spec.mutates, notify_spec.risk, notify_spec.owner) == (
            False,
            Risk.low,
            NotifyModules,
        )
        assert (notify_spec.input_model, notify_spec.output_model) == (NotifyInput, NotifyOutput)

    def test_every_core_module_describes_itself_as_json(self) -> None:
        """describe() of each core module is JSON with its input schema and a description."""
        names = sorted(s.name for s in REGISTRY.values() if s.domain == "core")
        assert {"core.http_probe", "core.http_request", "core.notify", "core.wait"} <= set(names)
        for name in names:
            described = json.loads(json.dumps(REGISTRY[name].describe()))
            assert described["description"]
            assert described["input_schema"]["properties"]

    def test_compensation_is_a_valid_request(self) -> None:
        """The stored undo call, dumped by alias, is itself a valid core.http_request input."""
        request = HttpRequestInput.model_validate(
            {
                "url": "http://127.0.0.1:1/drain",
                "json": {"backend": "db-1"},
                "compensation": {
                    "method": "DELETE",
                    "url": "http://127.0.0.1:1/drain",
                    "json": {"backend": "db-1"},
                },
            }
        )
        assert isinstance(request.compensation, HttpCall)
        undo = HttpRequestInput.model_validate(request.compensation.model_dump(by_alias=True))
        assert (undo.method, undo.json_body) == ("DELETE", {"backend": "db-1"})


class TestHttpRequest:
    async def test_sends_step_headers_and_body(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """The request carries the step's idempotency key, the run id and the JSON body."""
        target.route("POST", "/drain", Reply(200, {"drained": True}))
        result = await activity_env().run(
            http_modules.http_request,
            HttpRequestInput(
                url=target.url("/drain?force=1"), headers={"X-Team": "db"}, json={"node": "a"}
            ),
        )
        assert result == HttpResponse(
            status=200,
            body={"drained": True},
            elapsed_ms=result.elapsed_ms,
            idempotency_key="wf-1/step-a",
        )
        [hit] = target.hits("POST", "/drain")
        assert hit.headers["idempotency-key"] == "wf-1/step-a"
        assert hit.headers["x-fireline-run"] == "wf-1"
        assert hit.headers["x-team"] == "db"
        assert "authorization" not in hit.headers
        assert (hit.json, hit.query) == ({"node": "a"}, {"force": "1"})

    async def test_bearer_token_comes_from_settings(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """use_bearer_token adds the configured token; it never appears in the output."""
        target.route("PUT", "/flag", Reply(204))
        result = await activity_env().run(
            http_modules.http_request,
            HttpRequestInput(method="PUT", url=target.url("/flag"), use_bearer_token=True),
        )
        assert result.status == 204
        assert target.hits("PUT", "/flag")[0].headers["authorization"] == "Bearer s3cret-token"
        assert "s3cret" not in result.model_dump_json()

    async def test_bearer_token_missing_is_invalid_input(self, target: Target) -> None:
        """Asking for a token that is not configured fails before anything is sent."""
        modules = HttpModules(Settings(http_bearer_token=None))
        try:
            error = await raises_application_error(
                activity_env().run(
                    modules.http_request,
                    HttpRequestInput(url=target.url("/x"), use_bearer_token=True),
                )
            )
        finally:
            await modules.aclose()
        assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)
        assert "FIRELINE_HTTP_BEARER_TOKEN" in error.message
        assert target.hits() == []

    async def test_4xx_is_a_non_retryable_refusal(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """A 409 becomes TargetRefused, non-retryable, quoting the target's answer."""
        target.route("POST", "/failover", Reply(409, {"reason": "already primary"}))
        url = target.url("/failover")
        error = await raises_application_error(
            activity_env().run(http_modules.http_request, HttpRequestInput(url=url))
        )
        assert (error.type, error.non_retryable) == (errors.TARGET_REFUSED, True)
        assert error.message == (
            f'POST {url} answered 409, expected 2xx: {{"reason": "already primary"}}'
        )

    async def test_5xx_is_retryable_unavailability(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """A 503 becomes TargetUnavailable, which the retry policy may retry."""
        target.route("POST", "/restart", Reply(503, {"error": "busy"}))
        error = await raises_application_error(
            activity_env().run(
                http_modules.http_request, HttpRequestInput(url=target.url("/restart"))
            )
        )
        assert (error.type, error.non_retryable) == (errors.TARGET_UNAVAILABLE, False)
        assert "answered 503, expected 2xx" in error.message

    async def test_unexpected_success_status_is_refused(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """expect_status narrows success: a 200 where 202 was expected is refused."""
        target.route("POST", "/job", Reply(200))
        error = await raises_application_error(
            activity_env().run(
                http_modules.http_request,
                HttpRequestInput(url=target.url("/job"), expect_status=[202]),
            )
        )
        assert error.type == errors.TARGET_REFUSED
        assert "answered 200, expected 202" in error.message

    async def test_connection_refused_is_unavailable(self, http_modules: HttpModules) -> None:
        """Nothing listening is TargetUnavailable, naming the URL."""
        url = closed_port_url("/x")
        error = await raises_application_error(
            activity_env().run(http_modules.http_request, HttpRequestInput(url=url))
        )
        assert (error.type, error.non_retryable) == (errors.TARGET_UNAVAILABLE, False)
        assert error.message.startswith(f"POST {url} failed: ConnectError")

    async def test_timeout_is_unavailable(self, target: Target, http_modules: HttpModules) -> None:
        """A target slower than timeout_s is TargetUnavailable."""
        target.route("POST", "/slow", Reply(200, delay_s=3))
        error = await raises_application_error(
            activity_env().run(
                http_modules.http_request,
                HttpRequestInput(url=target.url("/slow"), timeout_s=0.2),
            )
        )
        assert error.type == errors.TARGET_UNAVAILABLE
        assert "no answer within 0.2 s" in error.message

    @pytest.mark.parametrize(
        "fields",
        [
            {"url": "ftp://127.0.0.1/x"},
            {"url": "no-scheme/x"},
            {"url": "http://127.0.0.1:1/x", "health_url": "file:///etc/passwd"},
            {"url": "http://127.0.0.1:1/x", "compensation": {"url": "127.0.0.1:1/undo"}},
        ],
    )
    async def test_bad_urls_are_invalid_input(
        self, fields: dict[str, Any], http_modules: HttpModules
    ) -> None:
        """A URL that is not http(s), in any of the three URL fields, is InvalidInput."""
        error = await raises_application_error(
            activity_env().run(http_modules.http_request, HttpRequestInput.model_validate(fields))
        )
        assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)

    async def test_large_body_is_cut(self, target: Target, http_modules: HttpModules) -> None:
        """A body too large for history is kept as text of at most 4 KiB."""
        target.route("GET", "/dump", Reply(200, "x" * 70_000))
        result = await activity_env().run(
            http_modules.http_request, HttpRequestInput(method="GET", url=target.url("/dump"))
        )
        assert isinstance(result.body, str)
        assert len(result.body) == 4096

    async def test_heartbeats_while_waiting(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """With a heartbeat timeout the module heartbeats while the request is in flight."""
        target.route("POST", "/slow", Reply(200, delay_s=0.6))
        environment = activity_env(heartbeat_s=0.3)
        beats: list[Any] = []
        environment.on_heartbeat = lambda *details: beats.append(details)
        await environment.run(http_modules.http_request, HttpRequestInput(url=target.url("/slow")))
        assert beats
        assert beats[0] == ("core.http_request",)

    async def test_no_heartbeats_without_timeout(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """Without a heartbeat timeout nothing heartbeats."""
        target.route("POST", "/slow", Reply(200, delay_s=0.5))
        environment = activity_env()
        beats: list[Any] = []
        environment.on_heartbeat = lambda *details: beats.append(details)
        await environment.run(http_modules.http_request, HttpRequestInput(url=target.url("/slow")))
        assert beats == []

    async def test_logs_carry_step_identity(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """Log lines written while the module runs name the workflow, step and module."""
        target.route("POST", "/x", Reply(200))
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            await activity_env("wf-log", "step-log").run(
                http_modules.http_request, HttpRequestInput(url=target.url("/x"))
            )
        [answered] = [e for e in logs if e["event"] == "http request answered"]
        assert answered["workflow_id"] == "wf-log"
        assert answered["activity_id"] == "step-log"
        assert answered["module"] == "core.http_request"
        assert answered["status"] == 200


class TestHttpProbe:
    async def probe(self, modules: HttpModules, **fields: Any) -> CheckResult:
        return await activity_env().run(modules.http_probe, HttpProbeInput(**fields))

    async def test_healthy_endpoint_is_satisfied(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """A 200 satisfies the default expectation and says so."""
        target.route("GET", "/health", Reply(200))
        url = target.url("/health")
        result = await self.probe(http_modules, url=url)
        assert result.satisfied is True
        assert result.observed["status"] == 200
        assert result.expected == {"status": [200]}
        assert result.detail.startswith(f"GET {url} answered 200 in ")
        assert result.detail.endswith(", as expected")
        assert target.hits("GET", "/health")[0].headers["idempotency-key"] == "wf-1/step-a"

    async def test_status_mismatch_is_unsatisfied(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """A 503 where 200 is expected is an unsatisfied observation, not an error."""
        target.route("GET", "/health", Reply(503))
        url = target.url("/health")
        result = await self.probe(http_modules, url=url)
        assert result.satisfied is False
        assert result.observed["status"] == 503
        assert result.detail.startswith(f"GET {url} answered 503 in ")
        assert result.detail.endswith("; expected 200")

    async def test_latency_bound(self, target: Target, http_modules: HttpModules) -> None:
        """An answer slower than max_latency_ms is unsatisfied; a generous bound is met."""
        target.route("GET", "/slow", Reply(200, delay_s=0.5))
        slow = await self.probe(http_modules, url=target.url("/slow"), max_latency_ms=100)
        assert slow.satisfied is False
        assert slow.observed["latency_ms"] >= 300
        assert slow.expected == {"status": [200], "max_latency_ms": 100}
        assert slow.detail.endswith("; expected 200 within 100 ms")
        target.route("GET", "/fast", Reply(200))
        fast = await self.probe(http_modules, url=target.url("/fast"), max_latency_ms=60_000)
        assert fast.satisfied is True

    async def test_json_field(self, target: Target, http_modules: HttpModules) -> None:
        """json_field follows a dotted path (list indexes too) and compares with json_equals."""
        target.route(
            "GET",
            "/status",
            Reply(200, {"checks": {"db": {"state": "degraded"}}, "nodes": ["a", "b"]}),
        )
        url = target.url("/status")
        wrong = await self.probe(
            http_modules, url=url, json_field="checks.db.state", json_equals="ok"
        )
        assert wrong.satisfied is False
        assert wrong.observed["json_value"] == "degraded"
        assert "checks.db.state is 'degraded', not 'ok'" in wrong.detail
        right = await self.probe(
            http_modules, url=url, json_field="checks.db.state", json_equals="degraded"
        )
        assert right.satisfied is True
        indexed = await self.probe(http_modules, url=url, json_field="nodes.1", json_equals="b")
        assert indexed.satisfied is True
        missing = await self.probe(http_modules, url=url, json_field="checks.cache.state")
        assert missing.satisfied is False
        assert "checks.cache.state is missing" in missing.detail

    async def test_body_contains(self, target: Target, http_modules: HttpModules) -> None:
        """body_contains looks for text in the body."""
        target.route("GET", "/ready", Reply(200, {"state": "ready"}))
        url = target.url("/ready")
        found = await self.probe(http_modules, url=url, body_contains="ready")
        assert (found.satisfied, found.observed["body_contains"]) == (True, True)
        absent = await self.probe(http_modules, url=url, body_contains="draining")
        assert (absent.satisfied, absent.observed["body_contains"]) == (False, False)

    async def test_connection_refused_is_an_observation(self, http_modules: HttpModules) -> None:
        """Nothing listening is unsatisfied with the error in the detail, not an exception."""
        url = closed_port_url("/health")
        result = await self.probe(http_modules, url=url)
        assert result.satisfied is False
        assert result.observed["status"] is None
        assert "ConnectError" in result.observed["error"]
        assert result.detail.startswith(f"GET {url} failed: ConnectError")

    async def test_samples_report_worst_status_and_percentiles(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """With several samples one bad answer fails the probe; the worst one is reported."""
        target.route("GET", "/flaky", Reply(200), Reply(404), Reply(503), Reply(200))
        result = await self.probe(http_modules, url=target.url("/flaky"), samples=4)
        assert result.satisfied is False
        assert result.observed["statuses"] == [200, 404, 503, 200]
        assert result.observed["status"] == 503
        observed = result.observed
        assert (
            observed["latency_p50_ms"] <= observed["latency_p95_ms"] <= observed["latency_max_ms"]
        )
        assert ": 2 of 4 samples passed, worst 503 (p50 " in result.detail
        assert len(target.hits("GET", "/flaky")) == 4

    async def test_invalid_input(self, http_modules: HttpModules) -> None:
        """A bad URL or json_equals without json_field is InvalidInput; samples are bounded."""
        for fields in (
            {"url": "gopher://127.0.0.1/"},
            {"url": "http://127.0.0.1:1/", "json_equals": 1},
        ):
            error = await raises_application_error(self.probe(http_modules, **fields))
            assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)
        with pytest.raises(ValidationError):
            HttpProbeInput(url="http://127.0.0.1:1/", samples=MAX_SAMPLES + 1)
        with pytest.raises(ValidationError):
            HttpProbeInput(url="http://127.0.0.1:1/", max_error_rate=1.5)

    async def test_error_rate_within_its_threshold_is_satisfied(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """1 failure in 10 samples is a 10% error rate: within 20%, outside 5%."""
        target.route("GET", "/api", *([Reply(200)] * 9), Reply(503), Reply(200))
        tolerant = await self.probe(
            http_modules, url=target.url("/api"), samples=10, max_error_rate=0.2
        )
        assert tolerant.satisfied is True
        assert (tolerant.observed["errors"], tolerant.observed["error_rate"]) == (1, 0.1)
        assert tolerant.expected["max_error_rate"] == 0.2
        assert "error rate 10.00%, as expected" in tolerant.detail
        target.route("GET", "/api", *([Reply(200)] * 9), Reply(503), Reply(200))
        strict = await self.probe(
            http_modules, url=target.url("/api"), samples=10, max_error_rate=0.05
        )
        assert strict.satisfied is False
        assert strict.observed["error_rate"] == 0.1
        assert "expected 200 on all but 5.00% of samples" in strict.detail

    async def test_latency_percentile_is_the_one_bounded(
        self, target: Target, http_modules: HttpModules
    ) -> None:
        """One slow sample (500 ms) in five breaks a p99 bound of 250 ms but not a p50 one."""
        target.route("GET", "/slow", *([Reply(200)] * 4), Reply(200, delay_s=0.5))
        p50 = await self.probe(
            http_modules,
            url=target.url("/slow"),
            samples=5,
            max_latency_ms=250,
            latency_percentile=50,
        )
        assert p50.satisfied is True
        assert p50.observed["latency_p99_ms"] >= 500 > p50.observed["latency_ms"]
        target.route("GET", "/slow", *([Reply(200)] * 4), Reply(200, delay_s=0.5))
        p99 = await self.probe(
            http_modules,
            url=target.url("/slow"),
            samples=5,
            max_latency_ms=250,
            latency_percentile=99,
        )
        assert p99.satisfied is False
        assert p99.expected["latency_percentile"] == 99
        assert "p99 within 250 ms" in p99.detail


class TestNotify:
    async def test_posts_payload_with_key(self, target: Target) -> None:
        """The webhook gets text, severity, fields and the step's identity, once per key."""
        target.route("POST", "/hook", Reply(200))
        modules = NotifyModules(Settings())
        try:
            result = await activity_env("wf-9", "tell").run(
                modules.notify,
                NotifyInput(
                    message="Failing over db-1",
                    severity="critical",
                    url=target.url("/hook"),
                    fields={"service": "orders"},
                ),
            )
        finally:
            await modules.aclose()
        assert result == NotifyOutput(delivered=True, status=200)
        [hit] = target.hits("POST", "/hook")
        sent_at = hit.json.pop("sent_at")
        assert datetime.fromisoformat(sent_at).tzinfo is not None
        assert hit.json == {
            "text": "Failing over db-1",
            "severity": "critical",
            "fields": {"service": "orders"},
            "workflow_id": "wf-9",
            "activity_id": "tell",
        }
        assert hit.headers["idempotency-key"] == "wf-9/tell"

    async def test_falls_back_to_configured_webhook(self, target: Target) -> None:
        """Without a url the module posts to FIRELINE_NOTIFY_WEBHOOK_URL."""
        target.route("POST", "/default-hook", Reply(202))
        modules = NotifyModules(Settings(notify_webhook_url=target.url("/default-hook")))
        try:
            result = await activity_env().run(modules.notify, NotifyInput(message="hello"))
        finally:
            await modules.aclose()
        assert result.status == 202
        assert target.hits("POST", "/default-hook")[0].json["severity"] == "info"

    async def test_no_url_anywhere_is_invalid_input(self) -> None:
        """No url and no configured webhook is InvalidInput."""
        modules = NotifyModules(Settings(notify_webhook_url=None))
        error = await raises_application_error(
            activity_env().run(modules.notify, NotifyInput(message="hello"))
        )
        assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)

    async def test_failing_webhook_is_unavailable(self, target: Target) -> None:
        """A webhook answering 500 raises TargetUnavailable so the retry policy applies."""
        target.route("POST", "/hook", Reply(500))
        modules = NotifyModules(Settings())
        try:
            error = await raises_application_error(
                activity_env().run(
                    modules.notify, NotifyInput(message="x", url=target.url("/hook"))
                )
            )
        finally:
            await modules.aclose()
        assert error.type == errors.TARGET_UNAVAILABLE


class TestWait:
    async def test_sleeps_and_heartbeats(self) -> None:
        """The activity form sleeps at least the asked time, heartbeating meanwhile."""
        environment = activity_env(heartbeat_s=0.15)
        beats: list[Any] = []
        environment.on_heartbeat = lambda *details: beats.append(details)
        result = await environment.run(wait, WaitInput(seconds=0.2, reason="let caches drain"))
        assert result.waited_s >= 0.2
        assert beats

    def test_bounds(self) -> None:
        """A negative wait or one longer than a week is rejected by the input model."""
        for seconds in (-1, 7 * 24 * 3600 + 1):
            with pytest.raises(ValidationError):
                WaitInput(seconds=seconds)


class ModuleCall(BaseModel):
    module: str
    input: dict[str, Any]
    step: str = "step-1"
    local: bool = False
    attempts: int = 3
    heartbeat_s: float | None = None


@workflow.defn(name="CoreModuleCallForTests")
class CallModule:
    """Calls one module by its registered name, as the playbook workflow does."""

    @workflow.run
    async def run(self, call: ModuleCall) -> Any:
        retry = RetryPolicy(
            initial_interval=timedelta(milliseconds=100), maximum_attempts=call.attempts
        )
        if call.local:
            return await workflow.execute_local_activity(
                call.module,
                call.input,
                activity_id=call.step,
                start_to_close_timeout=timedelta(seconds=20),
                retry_policy=retry,
            )
        return await workflow.execute_activity(
            call.module,
            call.input,
            activity_id=call.step,
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=timedelta(seconds=call.heartbeat_s) if call.heartbeat_s else None,
            retry_policy=retry,
        )


@contextlib.asynccontextmanager
async def core_worker(env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[str]:
    specs = [s for s in REGISTRY.for_worker(["core"], local_checks=True) if s.domain == "core"]
    activities, sets = bind_activities(specs, settings)
    task_queue = f"core-{uuid.uuid4().hex[:10]}"
    try:
        async with Worker(
            env.client, task_queue=task_queue, workflows=[CallModule], activities=activities
        ):
            yield task_queue
    finally:
        for module_set in sets:
            await module_set.aclose()


async def run_call(env: WorkflowEnvironment, task_queue: str, call: ModuleCall) -> tuple[str, Any]:
    workflow_id = f"core-test-{uuid.uuid4().hex[:10]}"
    result = await env.client.execute_workflow(
        CallModule.run, call, id=workflow_id, task_queue=task_queue
    )
    return workflow_id, result


class TestAsActivities:
    async def test_retry_after_503_keeps_the_idempotency_key(
        self, env: WorkflowEnvironment, target: Target
    ) -> None:
        """A 503 is retried by Temporal; both attempts carry the same key and the token."""
        target.route("POST", "/restart", Reply(503), Reply(200, {"restarted": True}))
        settings = Settings(http_bearer_token="worker-token", http_bearer_hosts=[host_of(target)])
        async with core_worker(env, settings) as task_queue:
            workflow_id, result = await run_call(
                env,
                task_queue,
                ModuleCall(
                    module="core.http_request",
                    input={"url": target.url("/restart"), "use_bearer_token": True},
                    step="restart-api",
                ),
            )
        assert result["status"] == 200
        assert result["body"] == {"restarted": True}
        first, second = target.hits("POST", "/restart")
        key = f"{workflow_id}/restart-api"
        assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == key
        assert result["idempotency_key"] == key
        assert second.headers["x-fireline-run"] == workflow_id
        assert second.headers["authorization"] == "Bearer worker-token"

    async def test_4xx_fails_without_retry(self, env: WorkflowEnvironment, target: Target) -> None:
        """A 403 fails the activity once with TargetRefused, whatever the retry budget."""
        target.route("POST", "/promote", Reply(403, {"error": "forbidden"}))
        async with core_worker(env, Settings()) as task_queue:
            with pytest.raises(WorkflowFailureError) as caught:
                await run_call(
                    env,
                    task_queue,
                    ModuleCall(
                        module="core.http_request",
                        input={"url": target.url("/promote")},
                        attempts=5,
                    ),
                )
        activity_error = caught.value.cause
        assert isinstance(activity_error, ActivityError)
        cause = activity_error.cause
        assert isinstance(cause, ApplicationError)
        assert (cause.type, cause.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "answered 403, expected 2xx" in cause.message
        assert len(target.hits("POST", "/promote")) == 1

    async def test_heartbeats_keep_a_slow_request_alive(
        self, env: WorkflowEnvironment, target: Target
    ) -> None:
        """A request slower than the heartbeat timeout succeeds because the module heartbeats."""
        target.route("POST", "/slow", Reply(200, delay_s=3))
        async with core_worker(env, Settings()) as task_queue:
            _, result = await run_call(
                env,
                task_queue,
                ModuleCall(
                    module="core.http_request",
                    input={"url": target.url("/slow")},
                    heartbeat_s=1,
                    attempts=1,
                ),
            )
        assert result["status"] == 200
        assert len(target.hits("POST", "/slow")) == 1

    async def test_probe_as_local_activity(self, env: WorkflowEnvironment, target: Target) -> None:
        """The probe runs as a local activity: it observes both up and down without failing."""
        target.route("GET", "/health", Reply(200, {"status": "ok"}))
        async with core_worker(env, Settings()) as task_queue:
            _, up = await run_call(
                env,
                task_queue,
                ModuleCall(
                    module="core.http_probe",
                    input={
                        "url": target.url("/health"),
                        "json_field": "status",
                        "json_equals": "ok",
                    },
                    local=True,
                ),
            )
            _, down = await run_call(
                env,
                task_queue,
                ModuleCall(module="core.http_probe", input={"url": closed_port_url()}, local=True),
            )
        assert (up["satisfied"], up["observed"]["json_value"]) == (True, "ok")
        assert down["satisfied"] is False
        assert "ConnectError" in down["detail"]
