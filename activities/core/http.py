"""``core.http_request`` and ``core.http_probe``: the HTTP call and the HTTP observation.

Most remediation APIs (admin endpoints, feature flags, load balancer runtimes) are one HTTP
call, and most verification is one HTTP probe, so these two let a playbook act on and check any
such system without a dedicated module. Credentials come from settings, never from inputs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field

from activities.core.runtime import (
    HttpClientSet,
    describe_transport,
    invalid_input,
    require_url,
    run_headers,
    running,
    status_error,
    transport_error,
)
from fireline.modules import CheckRef, CheckResult, CompensationRef, check, module
from fireline.plan import Risk

log = structlog.get_logger(__name__)

BODY_LIMIT_CHARS = 4096
"""Text bodies kept in outputs (and so in workflow history) are cut to this many characters."""
JSON_BODY_LIMIT_BYTES = 64 * 1024
"""Larger JSON answers are kept as truncated text instead, to keep history small."""

MAX_SAMPLES = 200
"""Requests one probe may send: enough for percentiles, bounded so a probe stays a probe."""

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpCall(BaseModel):
    """One HTTP request described as data; as ``compensation`` it is the undo of a call."""

    model_config = ConfigDict(populate_by_name=True)

    method: Method = "POST"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    expect_status: list[int] | None = Field(
        default=None, description="statuses that count as success; None accepts any 2xx"
    )
    use_bearer_token: bool = Field(
        default=False, description="send Authorization: Bearer from FIRELINE_HTTP_BEARER_TOKEN"
    )


class HttpRequestInput(HttpCall):
    """A request to make now, with optional verification and undo."""

    timeout_s: float | None = Field(
        default=None, gt=0, description="defaults to FIRELINE_HTTP_TIMEOUT_SECONDS"
    )
    health_url: str | None = Field(
        default=None, description="probed for 200 after the call (postcondition core.http_probe)"
    )
    compensation: HttpCall | None = Field(
        default=None, description="the request that undoes this one, run on rollback"
    )


class HttpResponse(BaseModel):
    status: int
    body: Any = Field(
        default=None, description=f"parsed JSON, or text cut to {BODY_LIMIT_CHARS} characters"
    )
    elapsed_ms: float
    idempotency_key: str


class HttpProbeInput(BaseModel):
    url: str
    method: Method = "GET"
    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    max_latency_ms: float | None = Field(
        default=None,
        gt=0,
        description="bound on the latency (on latency_percentile when samples > 1)",
    )
    latency_percentile: Literal[50, 90, 95, 99] = Field(
        default=95, description="which percentile of the samples max_latency_ms bounds"
    )
    max_error_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "share of failing samples tolerated (0.01 = 1%); None tolerates none. A sample "
            "fails on no answer, an unexpected status or wrong content"
        ),
    )
    body_contains: str | None = None
    json_field: str | None = Field(
        default=None, description="dotted path into the JSON body, e.g. checks.db.status"
    )
    json_equals: Any = Field(
        default=None, description="value json_field must have; None only requires it non-null"
    )
    samples: int = Field(default=1, ge=1, le=MAX_SAMPLES)
    timeout_s: float = Field(default=10.0, gt=0)
    use_bearer_token: bool = False


def _expected_statuses(expect: list[int] | None) -> str:
    return "2xx" if expect is None else " or ".join(str(s) for s in expect)


def _status_ok(status: int, expect: list[int] | None) -> bool:
    return 200 <= status < 300 if expect is None else status in expect


def _read_body(response: httpx.Response) -> Any:
    """JSON when the target says so and it parses, otherwise text cut to the limit."""
    content_type = response.headers.get("content-type", "")
    if "json" in content_type and len(response.content) <= JSON_BODY_LIMIT_BYTES:
        try:
            return response.json()
        except ValueError:
            pass
    return response.text[:BODY_LIMIT_CHARS]


_MISSING = object()


def _json_path(document: Any, path: str) -> Any:
    """Follow ``a.b.0.c`` through mappings and lists; ``_MISSING`` when it leads nowhere."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: always one of the observed values."""
    ordered = sorted(values)
    return ordered[max(math.ceil(pct / 100 * len(ordered)) - 1, 0)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


@dataclass
class _Sample:
    status: int | None
    latency_ms: float
    error: str | None = None
    body_found: bool | None = None
    json_value: Any = None
    problems: list[str] = field(default_factory=list)
    """What is wrong besides the status and latency, which the detail states anyway."""

    def ok(self, probe: HttpProbeInput) -> bool:
        return self.status in probe.expect_status and not self.problems


class HttpModules(HttpClientSet):
    """HTTP action and probe sharing one connection pool per worker."""

    @module(
        "core.http_request",
        domain="core",
        risk=Risk.medium,
        mutates=True,
        idempotent=True,
        compensation=CompensationRef(
            module="core.http_request", with_="${{ input.compensation }}", when="compensation"
        ),
        postconditions=[
            CheckRef(
                check="core.http_probe",
                with_={"url": "${{ input.health_url }}"},
                when="health_url",
            )
        ],
        timeout=timedelta(minutes=5),
        heartbeat=timedelta(seconds=20),
    )
    async def http_request(self, request: HttpRequestInput) -> HttpResponse:
        """Send one HTTP request and insist on the expected status (idempotent by key).

        The ``Idempotency-Key`` header is the same on every retry of the step, so a target that
        honours it applies the change once however often the request is delivered.
        """
        async with running("core.http_request"):
            require_url(request.url, "url")
            if request.health_url is not None:
                require_url(request.health_url, "health_url")
            if request.compensation is not None:
                # A broken undo is found before the change is made, not during the rollback.
                require_url(request.compensation.url, "compensation.url")
                if request.compensation.use_bearer_token:
                    self.bearer_header(request.compensation.url)
            headers = {**request.headers, **run_headers()}
            if request.use_bearer_token:
                headers.update(self.bearer_header(request.url))
            timeout_s = request.timeout_s or self.settings.http_timeout_seconds
            started = time.perf_counter()
            try:
                response = await self.http.request(
                    request.method,
                    request.url,
                    headers=headers,
                    json=request.json_body,
                    timeout=timeout_s,
                )
            except httpx.RequestError as exc:
                log.warning("http request failed", method=request.method, url=request.url)
                raise transport_error(request.method, request.url, exc, timeout_s) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info(
                "http request answered",
                method=request.method,
                url=request.url,
                status=response.status_code,
                elapsed_ms=round(elapsed_ms, 1),
            )
            if not _status_ok(response.status_code, request.expect_status):
                raise status_error(
                    request.method,
                    request.url,
                    response.status_code,
                    response.text,
                    _expected_statuses(request.expect_status),
                )
            return HttpResponse(
                status=response.status_code,
                body=_read_body(response),
                elapsed_ms=elapsed_ms,
                idempotency_key=headers["Idempotency-Key"],
            )

    @check("core.http_probe", domain="core", local=True, timeout=timedelta(seconds=30))
    async def http_probe(self, probe: HttpProbeInput) -> CheckResult:
        """Observe an HTTP endpoint: status, latency, and optionally body text or a JSON field.

        An endpoint that cannot be reached is an observation (unsatisfied), not an error: a
        probe exists to see "down" as well as "up".
        """
        async with running("core.http_probe"):
            require_url(probe.url, "url")
            if probe.json_equals is not None and probe.json_field is None:
                raise invalid_input("json_equals needs json_field: which field should equal it?")
            headers = run_headers()
            if probe.use_bearer_token:
                headers.update(self.bearer_header(probe.url))
            samples = [await self._sample(probe, headers) for _ in range(probe.samples)]
            result = _judge(probe, samples)
            log.info(
                "http probe observed",
                url=probe.url,
                satisfied=result.satisfied,
                observed=result.observed,
            )
            return result

    async def _sample(self, probe: HttpProbeInput, headers: dict[str, str]) -> _Sample:
        started = time.perf_counter()
        try:
            response = await self.http.request(
                probe.method, probe.url, headers=headers, timeout=probe.timeout_s
            )
        except httpx.RequestError as exc:
            latency = (time.perf_counter() - started) * 1000
            return _Sample(None, latency, error=describe_transport(exc, probe.timeout_s))
        sample = _Sample(response.status_code, (time.perf_counter() - started) * 1000)
        if probe.body_contains is not None:
            sample.body_found = probe.body_contains in response.text
            if not sample.body_found:
                sample.problems.append(f"body lacks {probe.body_contains!r}")
        if probe.json_field is not None:
            _judge_json(probe, probe.json_field, response, sample)
        return sample


def _judge_json(
    probe: HttpProbeInput, path: str, response: httpx.Response, sample: _Sample
) -> None:
    try:
        document = json.loads(response.content)
    except ValueError:
        sample.problems.append("body is not JSON")
        return
    value = _json_path(document, path)
    if value is _MISSING:
        sample.problems.append(f"{path} is missing")
        return
    sample.json_value = value
    if probe.json_equals is None:
        if value is None:
            sample.problems.append(f"{path} is null")
    elif value != probe.json_equals:
        sample.problems.append(f"{path} is {value!r}, not {probe.json_equals!r}")


def _judge(probe: HttpProbeInput, samples: list[_Sample]) -> CheckResult:
    answered = [s.latency_ms for s in samples if s.status is not None]
    failing = [s for s in samples if not s.ok(probe)]
    error_rate = len(failing) / len(samples)
    # Worst first: no answer, then an unexpected status (higher is worse), then wrong content.
    worst = (
        max(
            failing,
            key=lambda s: (s.status is None, s.status not in probe.expect_status, s.status or 0),
        )
        if failing
        else samples[-1]
    )
    bound_ms: float | None = None
    if answered:
        bound_ms = (
            _percentile(answered, probe.latency_percentile) if len(samples) > 1 else answered[0]
        )
    latency_ok = probe.max_latency_ms is None or (
        bound_ms is not None and bound_ms <= probe.max_latency_ms
    )
    errors_ok = not failing if probe.max_error_rate is None else error_rate <= probe.max_error_rate
    satisfied = errors_ok and latency_ok

    observed: dict[str, Any] = {"status": worst.status, "latency_ms": _round(bound_ms)}
    if worst.error:
        observed["error"] = worst.error
    if len(samples) > 1:
        observed["samples"] = len(samples)
        observed["statuses"] = [s.status for s in samples]
        observed["errors"] = len(failing)
        observed["error_rate"] = round(error_rate, 4)
        if answered:
            observed["latency_p50_ms"] = _round(_percentile(answered, 50))
            observed["latency_p90_ms"] = _round(_percentile(answered, 90))
            observed["latency_p95_ms"] = _round(_percentile(answered, 95))
            observed["latency_p99_ms"] = _round(_percentile(answered, 99))
            observed["latency_max_ms"] = _round(max(answered))
    if probe.body_contains is not None:
        observed["body_contains"] = bool(worst.body_found)
    if probe.json_field is not None:
        observed["json_field"] = probe.json_field
        observed["json_value"] = worst.json_value

    expected: dict[str, Any] = {"status": probe.expect_status}
    wants = [_expected_statuses(probe.expect_status)]
    if probe.max_error_rate is not None:
        expected["max_error_rate"] = probe.max_error_rate
        wants.append(f"on all but {probe.max_error_rate:.2%} of samples")
    if probe.max_latency_ms is not None:
        expected["max_latency_ms"] = probe.max_latency_ms
        if len(samples) > 1:
            expected["latency_percentile"] = probe.latency_percentile
            wants.append(f"p{probe.latency_percentile} within {_ms(probe.max_latency_ms)}")
        else:
            wants.append(f"within {_ms(probe.max_latency_ms)}")
    if probe.body_contains is not None:
        expected["body_contains"] = probe.body_contains
        wants.append(f"with body containing {probe.body_contains!r}")
    if probe.json_field is not None:
        expected["json_field"] = probe.json_field
        expected["json_equals"] = probe.json_equals
        wants.append(
            f"with {probe.json_field} present"
            if probe.json_equals is None
            else f"with {probe.json_field} = {probe.json_equals!r}"
        )

    detail = _head(probe, samples, worst, answered)
    if worst.problems:
        detail += f" ({'; '.join(worst.problems)})"
    if len(samples) > 1 and failing:
        detail += f", error rate {error_rate:.2%}"
    detail += ", as expected" if satisfied else f"; expected {' '.join(wants)}"
    return CheckResult(satisfied=satisfied, observed=observed, expected=expected, detail=detail)


def _head(
    probe: HttpProbeInput, samples: list[_Sample], worst: _Sample, answered: list[float]
) -> str:
    what = f"{probe.method} {probe.url}"
    if len(samples) == 1:
        if worst.status is None:
            return f"{what} failed: {worst.error}"
        return f"{what} answered {worst.status} in {_ms(worst.latency_ms)}"
    good = sum(1 for s in samples if s.ok(probe))
    outcome = ""
    if not worst.ok(probe):
        outcome = (
            f", worst failed: {worst.error}" if worst.status is None else f", worst {worst.status}"
        )
    latency = (
        f"p50 {_ms(_percentile(answered, 50))}, p95 {_ms(_percentile(answered, 95))}, "
        f"max {_ms(max(answered))}"
        if answered
        else "no answers"
    )
    return f"{what}: {good} of {len(samples)} samples passed{outcome} ({latency})"
