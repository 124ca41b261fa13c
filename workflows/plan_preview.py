"""PlanPreviewWorkflow: run the previews of a whole playbook, changing nothing.

Previews read real state with the domain's credentials, which live on the domain workers, so
``fireline plan`` asks them through Temporal like a run would: one preview activity per
determinable mutating step, all at once, each bounded by the request's timeout and tried once
(a plan is advice; a stalled queue must not hold the operator). A preview that fails comes
back as its reason, never as a failed workflow.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from fireline.plan import Preview
    from workflows.calls import failure_text

PLAN_PREVIEW_WORKFLOW = "FirelinePlanPreview"


class PreviewCall(BaseModel):
    """One step's preview: which activity, on which domain's queue, with the resolved inputs."""

    step: str
    activity: str
    domain: str
    local: bool = False
    inputs: dict[str, Any] = Field(default_factory=dict)


class PlanPreviewRequest(BaseModel):
    task_queue_prefix: str
    calls: list[PreviewCall] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """How long one preview may take, waiting for a worker included."""


class PreviewOutcome(BaseModel):
    step: str
    preview: Preview | None = None
    error: str | None = None


@workflow.defn(name=PLAN_PREVIEW_WORKFLOW)
class PlanPreviewWorkflow:
    @workflow.run
    async def run(self, request: PlanPreviewRequest) -> list[PreviewOutcome]:
        return list(await asyncio.gather(*(self._one(request, c) for c in request.calls)))

    async def _one(self, request: PlanPreviewRequest, call: PreviewCall) -> PreviewOutcome:
        budget = timedelta(seconds=request.timeout_s)
        once = RetryPolicy(maximum_attempts=1)
        summary = f"preview {call.step} ({call.activity})"
        try:
            if call.local:
                raw = await workflow.execute_local_activity(
                    call.activity,
                    call.inputs,
                    schedule_to_close_timeout=budget,
                    retry_policy=once,
                    activity_id=f"preview:{call.step}",
                    summary=summary,
                    result_type=dict,
                )
            else:
                raw = await workflow.execute_activity(
                    call.activity,
                    call.inputs,
                    task_queue=f"{request.task_queue_prefix}-{call.domain}",
                    schedule_to_close_timeout=budget,
                    retry_policy=once,
                    activity_id=f"preview:{call.step}",
                    summary=summary,
                    result_type=dict,
                )
            return PreviewOutcome(step=call.step, preview=Preview.model_validate(raw))
        except ActivityError as err:
            return PreviewOutcome(step=call.step, error=failure_text(err)[:500])
        except ValueError as err:
            return PreviewOutcome(
                step=call.step, error=f"the preview returned something else: {err}"[:500]
            )
