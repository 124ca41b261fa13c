"""Inputs that reach a module but do not fit its model fail at once, naming the field.

Temporal decodes activity arguments before any interceptor runs and reports a bad one as a
retried "Failed decoding arguments"; modules take their payload raw and validate it with their
own model instead. These tests run a real worker against the session dev server.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from fireline import errors
from fireline.compile.compiler import PlaybookLibrary
from fireline.messages import QUERY_STATUS, RunState
from fireline.modules import Registry, bind_activities, load_registry
from fireline.runtime.settings import Settings
from tests.support import fact_modules
from tests.support.workers import CATALOG, fireline_workers, start_run


@workflow.defn(name="ActivityInputProbe")
class CallOnce:
    """Calls one activity by name with the given arguments, retrying up to three times."""

    @workflow.run
    async def run(self, name: str, arg: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_activity(
            name,
            arg,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                maximum_attempts=3, initial_interval=timedelta(milliseconds=50)
            ),
            result_type=dict,
        )
        return result


async def _call(client: Client, name: str, arg: dict[str, Any]) -> dict[str, Any]:
    registry = Registry.collect(fact_modules)
    activities, _ = bind_activities(registry.values(), Settings())
    queue = f"inputs-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[CallOnce],
        activities=activities,
        workflow_runner=UnsandboxedWorkflowRunner(),  # the sandbox is not under test here
    ):
        return await client.execute_workflow(
            CallOnce.run,
            args=[name, arg],
            id=f"inputs-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=30),
        )


class TestActivityBoundary:
    async def test_valid_input_reaches_the_module(self, client: Client) -> None:
        """A payload that fits is validated once and handed over as the model."""
        assert await _call(client, "test.scale", {"replicas": 3}) == {"replicas": 3}

    async def test_bad_field_fails_once_naming_the_field(self, client: Client) -> None:
        """A wrong type is a non-retryable InvalidInput with the field path, on attempt 1."""
        with pytest.raises(WorkflowFailureError) as caught:
            await _call(client, "test.scale", {"replicas": "lots", "undo": {"replicas": 1}})
        activity_error = caught.value.cause
        assert isinstance(activity_error, ActivityError)
        cause = activity_error.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == errors.INVALID_INPUT
        assert cause.non_retryable
        assert cause.message.startswith("test.scale: invalid input: replicas: Input should be")
        assert "Failed decoding arguments" not in cause.message
        assert activity_error.retry_state is not None
        assert activity_error.retry_state.name == "NON_RETRYABLE_FAILURE"
        (details,) = cause.details
        assert [f["field"] for f in details["fields"]] == ["replicas"]

    async def test_nested_and_missing_fields_are_all_named(self, client: Client) -> None:
        """Every failing field is listed with its dotted path; values are never echoed."""
        with pytest.raises(WorkflowFailureError) as caught:
            await _call(client, "test.toggle", {"enabled": {"secret": "hunter2"}})
        assert isinstance(caught.value.cause, ActivityError)
        cause = caught.value.cause.cause
        assert isinstance(cause, ApplicationError)
        fields = [f["field"] for f in cause.details[0]["fields"]]
        assert fields == ["flag", "enabled"]
        assert "hunter2" not in cause.message

    async def test_direct_calls_still_take_the_model(self) -> None:
        """Calling a module in Python with its model (or a dict) keeps working."""
        assert (await fact_modules.scale(fact_modules.ScaleInput(replicas=2))).replicas == 2
        assert (await fact_modules.scale({"replicas": 4})).replicas == 4
        with pytest.raises(ApplicationError, match="replicas: Input should be greater than"):
            await fact_modules.scale({"replicas": -1})


MISTYPED = """\
name: mistyped
on_failure: halt
inputs:
  target: {type: object, default: {not: text}}
steps:
  - id: look
    uses: test.read
    with: {target: "${{ inputs.target }}"}
"""


class TestThroughAPlaybook:
    async def test_a_run_time_value_that_does_not_fit_fails_the_step_at_once(
        self, client: Client, tmp_path: Path
    ) -> None:
        """An expression resolving to the wrong type fails the step once, naming the field."""
        prefix = f"fl-{uuid.uuid4().hex[:8]}"
        (tmp_path / "p.yaml").write_text(MISTYPED)
        registry = load_registry(["core"]).extended(fact_modules)
        plan = PlaybookLibrary.load(tmp_path, catalog=CATALOG, registry=registry).compile(
            "mistyped"
        )
        async with fireline_workers(client, prefix, registry=registry):
            handle = await start_run(client, prefix, plan)
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            state: RunState = await handle.query(QUERY_STATUS, result_type=RunState)
        step = state.step("look")
        assert step.attempts == 1
        assert step.error is not None
        assert "test.read: invalid input: target: Input should be a valid string" in step.error
        assert "Failed decoding arguments" not in step.error
