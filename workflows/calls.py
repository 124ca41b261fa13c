"""Activity calls from a Plan's ActivityCall: timeouts, heartbeat and retry policy in one place.

Forward steps, checks, previews and compensations all go through :func:`call_activity`, so a
compensation runs with exactly the settings its record carries (finding 6).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from fireline import errors
    from fireline.plan import ActivityCall, RetrySpec


def retry_policy(spec: RetrySpec) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=spec.initial_interval_s),
        backoff_coefficient=spec.backoff,
        maximum_interval=timedelta(seconds=spec.max_interval_s),
        maximum_attempts=spec.max_attempts,
        non_retryable_error_types=[*errors.NON_RETRYABLE_ACTIVITY_ERRORS, *spec.non_retryable],
    )


def failure_text(err: BaseException) -> str:
    """The innermost meaningful message of an activity or child failure."""
    while isinstance(err, ActivityError | ChildWorkflowError) and err.cause is not None:
        err = err.cause
    return str(err) or type(err).__name__


def cancelled(err: BaseException) -> bool:
    """True when an activity or child failed because this run is being cancelled."""
    if isinstance(err, asyncio.CancelledError):
        return True
    return isinstance(err, ActivityError | ChildWorkflowError) and isinstance(
        err.cause, CancelledError
    )


async def call_activity(
    call: ActivityCall,
    arg: dict[str, Any],
    activity_id: str,
    summary: str,
    *,
    queue_prefix: str,
    activity: str | None = None,
    result_type: type = dict,
) -> Any:
    """Run ``call`` (or, named by ``activity``, another activity on the same queue, e.g. its
    preview) with the call's timeouts, heartbeat and retry policy."""
    timeout = timedelta(seconds=call.start_to_close_s)
    name = activity or call.module
    if call.local:
        return await workflow.execute_local_activity(
            name,
            arg,
            start_to_close_timeout=timeout,
            retry_policy=retry_policy(call.retry),
            activity_id=activity_id,
            summary=summary,
            result_type=result_type,
        )
    return await workflow.execute_activity(
        name,
        arg,
        task_queue=f"{queue_prefix}-{call.domain}",
        start_to_close_timeout=timeout,
        heartbeat_timeout=timedelta(seconds=call.heartbeat_s) if call.heartbeat_s else None,
        retry_policy=retry_policy(call.retry),
        activity_id=activity_id,
        summary=summary,
        result_type=result_type,
    )
