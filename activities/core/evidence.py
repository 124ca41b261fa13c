"""What a step shows people, worded the same in every domain: previews and check results.

A gate shows a preview of the change; a check records what it saw. Where a step moves one
setting, or a check compares one state with the expected one or lists what is wrong, these
build the answer, so approvers and the audit trail read one phrasing whichever system the step
acts on.
"""

from __future__ import annotations

from typing import Any

from fireline.plan import Change, CheckResult, Preview

NOTHING_TO_CHANGE = " (already so: nothing to change)"


def setting_preview(change: Change, summary: str, unit: str, rollback: str) -> Preview:
    """The preview of a step moving one setting from ``change.before`` to ``change.after``.

    When they are equal the step changes nothing: the summary says so, no change is listed
    and the blast radius of ``unit`` is 0 (else 1).
    """
    same = change.before == change.after
    return Preview(
        mutates=not same,
        summary=summary + (NOTHING_TO_CHANGE if same else ""),
        changes=[] if same else [change],
        blast_radius={unit: 0 if same else 1},
        rollback=rollback,
    )


def state_result(
    subject: str, seen: str, wanted: str, *, satisfied: bool, observed: Any, expected: Any
) -> CheckResult:
    """A check of one state: ``<subject> is <seen>, as expected`` or ``...; expected <wanted>``."""
    return CheckResult(
        satisfied=satisfied,
        observed=observed,
        expected=expected,
        detail=f"{subject} is {seen}" + (", as expected" if satisfied else f"; expected {wanted}"),
    )


def problems_result(
    detail: str, problems: list[str], *, observed: Any, expected: Any
) -> CheckResult:
    """A check that lists what is wrong: satisfied when nothing is; ``detail`` (what was seen)
    followed by each problem."""
    return CheckResult(
        satisfied=not problems,
        observed=observed,
        expected=expected,
        detail=detail + (f"; {'; '.join(problems)}" if problems else ""),
    )
