"""Worker interceptors.

:class:`LogContextInterceptor` binds the running activity's identity (workflow id = incident,
run id, activity id = step id, activity type, attempt, task queue) into structlog's context
variables, so every line a module or check logs can be traced to its incident and step
without each module passing ids around by hand.
"""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

__all__ = ["LogContextInterceptor"]


class LogContextInterceptor(Interceptor):
    """Bind activity identity into structlog contextvars for the duration of each execution.

    Only ``async def`` activities see the bound values: the SDK runs sync activities in an
    executor without copying context variables. Fireline's modules are all async.
    """

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        tokens = structlog.contextvars.bind_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            activity_id=info.activity_id,
            activity_type=info.activity_type,
            attempt=info.attempt,
            task_queue=info.task_queue,
        )
        try:
            return await super().execute_activity(input)
        finally:
            # Restore what was bound before (worker-level context stays), not a blanket clear.
            structlog.contextvars.reset_contextvars(**tokens)
