"""``application.promql``: a PromQL expression held to a threshold, as a check.

It asks the Prometheus HTTP API (``GET /api/v1/query``) for an instant vector or a scalar and
compares every value with the threshold: an error rate ``< 0.01`` over ``[2m]`` as a step's
postcondition, say. The query and the observed values go into the CheckResult, so the run's
status shows what was asked and what was seen. A query that returns nothing is an observation
(unsatisfied unless ``no_data: satisfied``), not an exception: a quiet metric is information.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import httpx
import structlog
from pydantic import BaseModel, Field

from activities.application.targets import TARGET_NAME, PrometheusTarget
from activities.core.runtime import (
    HttpClientSet,
    bound_bearer,
    invalid_input,
    refused,
    running,
    status_error,
    target_headers,
    target_settings,
    transport_error,
    unavailable,
)
from fireline.modules import CheckResult, check

log = structlog.get_logger(__name__)

Op = Literal["<", "<=", ">", ">=", "==", "!="]
OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
SERIES_SHOWN = 10
"""Series kept in the observation (worst first): enough to see which, small for history."""
ANSWER_LIMIT_BYTES = 4 * 1024 * 1024
"""A larger answer is refused: a check's query should aggregate, not list every series."""


class PromQLInput(BaseModel):
    target: str = Field(pattern=TARGET_NAME, description="a name under settings targets.prometheus")
    query: str = Field(min_length=1, max_length=4000)
    op: Op = "<"
    threshold: float
    no_data: Literal["unsatisfied", "satisfied"] = Field(
        default="unsatisfied", description="what an empty result means"
    )


def _number(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


def _holds(op: str, value: float, threshold: float) -> bool:
    return not math.isnan(value) and OPS[op](value, threshold)


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.6g}"


class PrometheusModules(HttpClientSet):
    """Queries against Prometheus targets over the worker's shared HTTP pool."""

    def target(self, name: str) -> PrometheusTarget:
        return target_settings(self.settings, "prometheus", name, PrometheusTarget)

    def _auth(self, name: str, target: PrometheusTarget, url: str) -> tuple[dict[str, str], Any]:
        headers = target_headers(
            target.bearer_token,
            url,
            target.credential_hosts(),
            f"targets.prometheus.{name}.allowed_hosts",
        )
        auth: Any = None
        if target.bearer_token is None and target.password is not None:
            # Basic credentials are bound the same way as a bearer token.
            bound_bearer(
                target.password, url, target.credential_hosts(), f"targets.prometheus.{name}"
            )
            auth = httpx.BasicAuth(target.username or "", target.password.get_secret_value())
        return headers, auth

    async def query(self, name: str, query: str) -> dict[str, Any]:
        """The ``data`` of an instant query; API errors typed by what a retry could do."""
        target = self.target(name)
        url = target.url.rstrip("/") + "/api/v1/query"
        headers, auth = self._auth(name, target, url)
        try:
            async with self.http.stream(
                "GET",
                url,
                params={"query": query},
                headers=headers,
                auth=auth,
                timeout=target.timeout_s,
            ) as response:
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > ANSWER_LIMIT_BYTES:
                        raise invalid_input(
                            f"the answer to {query!r} is over {ANSWER_LIMIT_BYTES} bytes; "
                            "aggregate it (sum, max, topk) so the check compares a few series",
                            query=query,
                        )
        except httpx.RequestError as exc:
            raise transport_error("GET", url, exc, target.timeout_s) from exc
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = content[:500].decode("utf-8", "replace")
            raise status_error("GET", url, response.status_code, text, "a JSON answer")
        if body.get("status") != "success":
            kind, error = body.get("errorType"), body.get("error")
            message = f"prometheus {name!r} refused {query!r}: {kind}: {error}"
            if kind == "bad_data":
                raise invalid_input(message, query=query)
            if response.status_code >= 500 or kind in ("timeout", "canceled", "unavailable"):
                raise unavailable(message, query=query)
            raise refused(message, query=query)
        data = body.get("data")
        if not isinstance(data, dict):
            raise unavailable(f"prometheus {name!r} answered without data", query=query)
        return data

    @check(
        "application.promql",
        domain="application",
        local=False,
        timeout=timedelta(seconds=30),
    )
    async def promql(self, probe: PromQLInput) -> CheckResult:
        """Hold every value of an instant PromQL query to a threshold (e.g. error rate < 0.01)."""
        async with running("application.promql"):
            data = await self.query(probe.target, probe.query)
        kind = data.get("resultType")
        result = data.get("result")
        series: list[dict[str, Any]] = []
        if kind == "scalar" and isinstance(result, list) and len(result) == 2:
            series = [{"metric": {}, "value": _number(result[1])}]
        elif kind == "vector" and isinstance(result, list):
            series = [
                {"metric": s.get("metric", {}), "value": _number((s.get("value") or [0, None])[1])}
                for s in result
                if isinstance(s, dict)
            ]
        else:
            raise invalid_input(
                f"{probe.query!r} returns a {kind}; a check needs an instant vector or a scalar "
                "(wrap a range vector in rate(), avg_over_time(), ...)",
                query=probe.query,
            )
        expected = {"op": probe.op, "threshold": probe.threshold, "no_data": probe.no_data}
        want = f"{probe.op} {_fmt(probe.threshold)}"
        if not series:
            satisfied = probe.no_data == "satisfied"
            return CheckResult(
                satisfied=satisfied,
                observed={"query": probe.query, "result_type": kind, "value": None, "series": []},
                expected=expected,
                detail=f"{probe.query} returned no data"
                + ("; accepted (no_data: satisfied)" if satisfied else f"; expected {want}"),
            )
        failing = [s for s in series if not _holds(probe.op, s["value"], probe.threshold)]
        satisfied = not failing
        # The worst value is the one furthest on the wrong side; NaN counts as worst.
        bigger_is_worse = probe.op in ("<", "<=")
        ordered = sorted(
            series,
            key=lambda s: (
                math.isnan(s["value"]),
                s["value"] if bigger_is_worse else -s["value"],
            ),
            reverse=True,
        )
        worst = (failing and sorted(failing, key=ordered.index)[0]) or ordered[0]
        shown = [
            {"metric": s["metric"], "value": None if math.isnan(s["value"]) else s["value"]}
            for s in ordered[:SERIES_SHOWN]
        ]
        value = None if math.isnan(worst["value"]) else worst["value"]
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(worst["metric"].items()))
        which = f"{{{labels}}} " if labels else ""
        detail = (
            f"{probe.query} = {which}{_fmt(worst['value'])}"
            + (
                f" ({len(failing)} of {len(series)} series fail)"
                if len(series) > 1 and failing
                else ""
            )
            + (f", {want} as expected" if satisfied else f"; expected {want}")
        )
        log.info("promql observed", query=probe.query, value=value, satisfied=satisfied)
        return CheckResult(
            satisfied=satisfied,
            observed={
                "query": probe.query,
                "result_type": kind,
                "value": value,
                "series": shown,
                "series_count": len(series),
            },
            expected=expected,
            detail=detail,
        )
