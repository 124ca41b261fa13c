"""Fuzz the whole OpenAPI surface of the live API; it never answers 5xx nor hangs.

A real ``fireline up`` process (dev server, workers, and the API in a uvicorn process of its
own) on free loopback ports serves the schema; schemathesis generates requests for every
operation from it, valid and invalid, sent with the development credential ``fireline up``
made. Meanwhile a thread keeps starting runs through the API and waits for each to complete,
so the test also proves that garbage at the API never stalls the workers. The number of
examples per operation is fixed, so the run is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from tests.test_devserver import Up

EXAMPLES_PER_OPERATION = 25
REQUEST_TIMEOUT_S = 15.0
"""A request that takes longer counts as a hang."""


class RunLoop(threading.Thread):
    """Starts the ``quick`` playbook through the API, again and again, until stopped."""

    def __init__(self, api: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=api, headers=headers, timeout=REQUEST_TIMEOUT_S)
        self.halt = threading.Event()
        self.completed = 0
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                started = self.http.post("/runs", json={"playbook": "quick"})
                if started.status_code != 201:
                    self.problems.append(f"start: {started.status_code} {started.text[:200]}")
                    return
                self._wait(started.json()["workflow_id"])
            except Exception as exc:
                self.problems.append(f"{type(exc).__name__}: {exc}")
                return

    def _wait(self, workflow_id: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.http.get(f"/runs/{workflow_id}")
            phase = state.json().get("phase") if state.status_code == 200 else None
            if phase == "succeeded":
                self.completed += 1
                return
            if phase in ("failed", "compensated", "compensation_failed", "cancelled"):
                self.problems.append(f"run {workflow_id} ended {phase}")
                return
            time.sleep(0.2)
        self.problems.append(f"run {workflow_id} did not complete within 60 s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    import asyncio

    up = Up(tmp_path_factory.mktemp("fuzz"))
    try:
        up.start()
        asyncio.run(up.ready())
        yield up
    finally:
        up.stop()


def _credential(up: Up) -> dict[str, str]:
    token = (up.data_dir / "identity" / "dev-credential").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _fuzz(operation: Any, api: str, headers: dict[str, str], failures: list[str]) -> int:
    """Send ``EXAMPLES_PER_OPERATION`` generated requests to one operation; how many were sent."""
    label = operation.label
    calls = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any) -> None:
        nonlocal calls
        calls += 1
        started = time.monotonic()
        try:
            response = case.call(base_url=api, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # a timeout or a dropped connection is a hang
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        took = time.monotonic() - started
        if took >= REQUEST_TIMEOUT_S:
            failures.append(f"{label}: took {took:.1f} s")
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as exc:
            failures.append(f"{label}: {str(exc)[:500]}")

    fuzz()
    return calls


def test_no_operation_answers_5xx_or_hangs_while_runs_complete(stack: Up) -> None:
    """Every operation, fuzzed: no 5xx, no request over the time limit, runs keep completing."""
    headers = _credential(stack)
    schema = schemathesis.openapi.from_url(f"{stack.api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # the whole operator surface, not an empty schema
    loop = RunLoop(stack.api, headers)
    loop.start()
    failures: list[str] = []
    calls = 0
    try:
        for operation in operations:
            calls += _fuzz(operation, stack.api, headers, failures)
    finally:
        loop.halt.set()
        loop.join(timeout=60)
    assert failures == []
    assert calls >= len(operations) * 3
    assert loop.problems == []
    assert loop.completed >= 1
    healthz = httpx.get(f"{stack.api}/healthz", timeout=5)
    assert healthz.status_code == 200


def test_schema_lists_every_route(stack: Up) -> None:
    """The fuzzed schema is the app's: it includes the run, decision and health routes."""
    paths = set(httpx.get(f"{stack.api}/openapi.json", timeout=5).json()["paths"])
    for path in (
        "/healthz",
        "/runs",
        "/runs/{workflow_id}",
        "/runs/{workflow_id}/steps/{step}/approve",
        "/runs/{workflow_id}/cancel",
    ):
        assert path in paths
