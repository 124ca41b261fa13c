"""Checks: preconditions run once, postconditions and rollback checks poll until satisfied.

The polling is a workflow timer between attempts, so a long deadline holds no worker slot;
a check that cannot run at all counts as unsatisfied, with the reason as its detail.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from fireline.messages import CheckObservation
    from fireline.plan import CheckCall
    from workflows.calls import call_activity, cancelled, failure_text


def observe(name: str, stage: str, raw: dict[str, Any], attempts: int) -> CheckObservation:
    return CheckObservation(
        check=name,
        stage=stage,
        satisfied=bool(raw.get("satisfied")),
        observed=raw.get("observed"),
        expected=raw.get("expected"),
        detail=str(raw.get("detail", "")),
        attempts=attempts,
        at=workflow.now(),
    )


async def poll_check(
    check: CheckCall,
    params: dict[str, Any],
    step_id: str,
    index: int,
    stage: str,
    *,
    queue_prefix: str,
) -> CheckObservation:
    """Run once (``pre``) or poll until satisfied or the deadline (``post``, ``rollback``)."""
    deadline = workflow.now() + timedelta(seconds=check.deadline_s)
    attempt = 0
    while True:
        attempt += 1
        summary = f"{stage} check {check.name} for {step_id}"
        try:
            raw = await call_activity(
                check,
                params,
                f"{stage}:{step_id}:{index}:{check.name}:{attempt}",
                summary,
                queue_prefix=queue_prefix,
            )
            obs = observe(check.name, stage, raw, attempt)
        except ActivityError as err:
            if cancelled(err):
                raise asyncio.CancelledError from None
            obs = CheckObservation(
                check=check.name,
                stage=stage,
                satisfied=False,
                attempts=attempt,
                detail=f"check could not run: {failure_text(err)}",
                at=workflow.now(),
            )
        if obs.satisfied or stage == "pre" or workflow.now() >= deadline:
            return obs
        await workflow.sleep(
            timedelta(seconds=check.poll_interval_s), summary=f"re-check {check.name}"
        )
