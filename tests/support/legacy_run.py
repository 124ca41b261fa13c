"""A run as it was before cancels were judged: it waits, and has no cancel update."""

from __future__ import annotations

from temporalio import workflow


@workflow.defn(name="fireline-test-legacy-run")
class LegacyRunWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)
