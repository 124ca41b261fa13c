"""Failure types that cross the wire as ``ApplicationError.type``.

Workflows and retry policies match on these constants, never on Python class names, so a
rename cannot silently turn a non-retryable failure into an endless retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Raised by activities.
INVALID_INPUT = "InvalidInput"
"""The module's input cannot work however often it is retried (bad URL, unknown field)."""
TARGET_REFUSED = "TargetRefused"
"""The target system answered with a definite refusal (4xx): retrying will not help."""
TARGET_UNAVAILABLE = "TargetUnavailable"
"""The target could not be reached or answered 5xx: worth retrying."""

# Raised by the playbook workflow as its terminal failure; the status query has the details.
PLAYBOOK_FAILED = "PlaybookFailed"
"""A step failed and the policy was ``halt``: nothing was rolled back."""
PLAYBOOK_COMPENSATED = "PlaybookCompensated"
"""A step failed, was rejected or timed out and every compensation ran and verified."""
PLAYBOOK_COMPENSATION_FAILED = "PlaybookCompensationFailed"
"""At least one compensation still failed after its retries: a human must finish the rollback."""

# Raised by the playbook workflow's update handlers.
REFUSED = "Refused"
"""An approval, rejection or decision was not accepted (wrong state, not entitled, repeated)."""

NON_RETRYABLE_ACTIVITY_ERRORS: tuple[str, ...] = (INVALID_INPUT, TARGET_REFUSED)


class CompileError(Exception):
    """A playbook failed to compile; carries every problem found, each with its location."""

    def __init__(self, problems: Sequence[Any]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in problems))
