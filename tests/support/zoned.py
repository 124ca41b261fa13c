"""A workflow that judges embargo windows with ``fireline.plan`` imported *inside* the sandbox.

PlaybookWorkflow passes ``fireline.plan`` through, but whether the sandbox re-imports a module
depends on which workflow file imported it first; here it is deliberately not passed through,
so ``zoneinfo`` (if the plan reached for it) is the sandbox's restricted proxy.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

from fireline.plan import EmbargoWindow


@workflow.defn(name="fireline-test-zoned-embargo")
class ZonedEmbargoWorkflow:
    @workflow.run
    async def run(self, windows: list[EmbargoWindow]) -> list[tuple[bool, str]]:
        """For each window: whether it is active now, and the local wall-clock time."""
        now: datetime = workflow.now()
        return [(w.active_at(now), w.local_time(now).isoformat()) for w in windows]
