"""The compensation stack: how to undo each step that ran, newest first.

A record is resolved when it is pushed (inputs, the checks that verify the undo) and carries
the whole activity call: timeouts, heartbeat and retry policy of the compensating module. So a
worker that dies mid-rollback is noticed after the heartbeat timeout, not the 5-minute
start-to-close, and a parent can run a child's undo exactly as the child would have.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fireline.messages import CompensationRecord
    from fireline.plan import ActivityCall, RetrySpec

COMPENSATION_RETRY = RetrySpec(max_attempts=5, initial_interval_s=1.0, max_interval_s=30.0)
"""Compensations get more patience than forward steps: giving up half-way through a rollback
is the worst outcome a run can have."""


def compensation_call(call: ActivityCall) -> ActivityCall:
    """The undo's call: its own settings, with at least COMPENSATION_RETRY's attempts."""
    attempts = max(call.retry.max_attempts, COMPENSATION_RETRY.max_attempts)
    return call.model_copy(
        update={
            "with_": {},
            "when": None,
            "preview": None,
            "retry": call.retry.model_copy(update={"max_attempts": attempts}),
        },
        deep=True,
    )


def make_record(
    step: str, call: ActivityCall, comp_input: dict[str, Any], verify: list[dict[str, Any]]
) -> CompensationRecord:
    full = compensation_call(call)
    return CompensationRecord(
        step=step,
        module=call.module,
        domain=call.domain,
        local=call.local,
        input=comp_input,
        start_to_close_s=call.start_to_close_s,
        retry_max_attempts=full.retry.max_attempts,
        verify=verify,
        call=full,
    )


def call_of(record: CompensationRecord) -> ActivityCall:
    """The call a record runs with; records pushed before calls were kept get the old one."""
    if record.call is not None:
        return record.call
    return ActivityCall(
        module=record.module,
        domain=record.domain,
        local=record.local,
        start_to_close_s=record.start_to_close_s,
        retry=COMPENSATION_RETRY.model_copy(update={"max_attempts": record.retry_max_attempts}),
    )


class CompensationStack:
    """Pushed compensations in the order their steps completed."""

    def __init__(self) -> None:
        self.records: list[CompensationRecord] = []

    def drop(self, step: str) -> None:
        """Forget a step's undo (it is about to be pushed again by a retry)."""
        self.records = [c for c in self.records if c.step != step]

    def push(self, record: CompensationRecord) -> None:
        self.records.append(record)

    def adopt(self, prefix: str, records: list[CompensationRecord]) -> None:
        """A child playbook's pending undos become the parent's, named under the include."""
        for record in records:
            self.push(record.model_copy(update={"step": f"{prefix}/{record.step}"}))

    def pending(self) -> list[CompensationRecord]:
        return [c for c in self.records if c.status == "pending"]

    def rollback_order(self) -> list[CompensationRecord]:
        return list(reversed(self.pending()))


def undone(record: CompensationRecord) -> bool:
    """The one rule for "rolled back": the undo succeeded and its verification did not fail."""
    return record.status == "succeeded" and record.verified is not False


def rollback_summary(records: list[CompensationRecord]) -> str:
    if not records:
        return "nothing to roll back"
    done = [c for c in records if undone(c)]
    bad = [c for c in records if not undone(c)]
    text = f"rolled back {len(done)} of {len(records)}"
    if bad:
        text += "; NOT rolled back: " + ", ".join(f"{c.step} ({c.error})" for c in bad)
    return text
