"""Log lines stay cheap and say things once, whatever is logged.

The console renderer once printed every frame's local variables of a traceback, which spun a
process for minutes over a 20 MB request body; Temporal's loggers append their context to the
message as well as passing it as fields. These tests render real records through
``configure_logging`` (and, for workflow and activity lines, a real worker) and read the text.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import structlog
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from fireline.runtime.interceptors import LogContextInterceptor
from fireline.runtime.logging import MAX_VALUE_CHARS, configure_logging


class Stderr:
    """What configure_logging (called inside the test, writing to sys.stderr) has written."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().err
        return self.text


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Stderr]:
    """Captured stderr of the test; logging is put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    flags = (workflow.logger.workflow_info_on_message, activity.logger.activity_info_on_message)
    try:
        yield Stderr(capsys)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        workflow.logger.workflow_info_on_message, activity.logger.activity_info_on_message = flags
        structlog.reset_defaults()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _fail_with_a_huge_local() -> None:
    body = "x" * 2_000_000
    raise ValueError(f"cannot use a body of {len(body)} bytes")


@activity.defn(name="LoggingProbeActivity")
async def noisy_activity(text: str) -> str:
    activity.logger.info("activity says %s", text)
    return text


@workflow.defn(name="LoggingProbe")
class NoisyWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        workflow.logger.info("workflow says %s", text)
        return await workflow.execute_activity(
            noisy_activity, text, start_to_close_timeout=timedelta(seconds=10)
        )


class TestTracebacks:
    @pytest.mark.parametrize("fmt", ["console", "json"])
    def test_locals_are_never_rendered(self, stderr: Stderr, fmt: str) -> None:
        """An exception is a plain traceback: no frame's locals, so no 2 MB string either."""
        configure_logging(fmt)
        log = structlog.get_logger("test.tracebacks")
        try:
            _fail_with_a_huge_local()
        except ValueError:
            log.exception("request failed")
        text = stderr.getvalue()
        assert "Traceback (most recent call last)" in text
        assert "cannot use a body of 2000000 bytes" in text
        assert "xxxxxxxxxx" not in text
        assert "body =" not in text
        assert len(text) < 20_000

    def test_long_values_are_cut(self, stderr: Stderr) -> None:
        """A huge value logged as a field is cut to the bound, saying how much was left out."""
        configure_logging("json")
        structlog.get_logger("test.cut").warning("big input", payload="y" * 100_000)
        (line,) = [line for line in _json_lines(stderr.getvalue()) if line["event"] == "big input"]
        assert len(line["payload"]) < MAX_VALUE_CHARS + 50
        assert line["payload"].endswith(f"... [{100_000 - MAX_VALUE_CHARS} more characters]")


class TestTemporalContext:
    async def test_workflow_and_activity_lines_carry_their_context_once(
        self, stderr: Stderr, client: Client
    ) -> None:
        """The message is what was written; the ids are fields, each exactly once."""
        configure_logging("json")
        queue = f"log-{uuid.uuid4().hex[:8]}"
        workflow_id = f"log-{uuid.uuid4().hex[:8]}"
        async with Worker(
            client,
            task_queue=queue,
            workflows=[NoisyWorkflow],
            activities=[noisy_activity],
            interceptors=[LogContextInterceptor()],
            workflow_runner=UnsandboxedWorkflowRunner(),  # the sandbox is not under test
        ):
            await client.execute_workflow(NoisyWorkflow.run, "hi", id=workflow_id, task_queue=queue)
        raw = stderr.getvalue()
        lines = {line["event"]: line for line in _json_lines(raw)}
        flow = lines["workflow says hi"]
        assert flow["workflow_id"] == workflow_id
        assert flow["workflow_type"] == "LoggingProbe"
        assert "temporal_workflow" not in flow
        act = lines["activity says hi"]
        assert act["workflow_id"] == workflow_id
        assert act["activity_type"] == "LoggingProbeActivity"
        assert "temporal_activity" not in act
        for text in ("workflow says hi", "activity says hi"):
            (raw_line,) = [line for line in raw.splitlines() if text in line]
            assert raw_line.count(workflow_id) == 1, raw_line
