"""What the platform modules share: remembering what a step found.

A platform step records the state it found before changing anything, and its compensation puts
exactly that back. A retry of the same step (same idempotency key) must not record its own
earlier change as "what it found", or the rollback would restore the broken state. So the
finding is kept by key: in the module set for retries on the same worker, and in the
activity's heartbeat details, which Temporal hands to the next attempt on any worker.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import activity

from activities.core.runtime import heartbeating, idempotency_key, step_logging

T = TypeVar("T", bound=BaseModel)

JOURNAL_SIZE = 1024
"""Findings kept per worker; older steps have long finished or will read their heartbeat."""


class Journal:
    """What each step found before it changed anything, by idempotency key."""

    def __init__(self) -> None:
        self._found: OrderedDict[str, Any] = OrderedDict()

    def recall(self, model: type[T]) -> list[T] | None:
        """What an earlier attempt of this step found, if any attempt got that far."""
        key = idempotency_key()
        if key in self._found:
            return [model.model_validate(item) for item in self._found[key]]
        details = activity.info().heartbeat_details
        if details and isinstance(details[0], dict) and "found" in details[0]:
            try:
                return [model.model_validate(item) for item in details[0]["found"]]
            except ValidationError:
                return None
        return None

    def remember(self, found: list[BaseModel]) -> None:
        """Keep the finding before the first change is made (and heartbeat it)."""
        key = idempotency_key()
        dumped = [item.model_dump(mode="json") for item in found]
        self._found[key] = dumped
        self._found.move_to_end(key)
        while len(self._found) > JOURNAL_SIZE:
            self._found.popitem(last=False)
        _beat({"found": dumped})


_details: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "fireline_platform_heartbeat", default=None
)
"""The running step's heartbeat details (per activity task, so concurrent steps never mix)."""


def _beat(details: dict[str, Any]) -> None:
    current = _details.get()
    if current is not None:
        current.clear()
        current.update(details)
    activity.heartbeat(dict(details))


@contextlib.asynccontextmanager
async def stepping(module: str, **context: Any) -> AsyncIterator[None]:
    """Bind the step's identity to every log line and heartbeat while the body runs.

    Like ``activities.core.runtime.running``, but the heartbeats carry the step's finding
    (see :class:`Journal`), so a later attempt on another worker can read it back; until this
    attempt records one, the previous attempt's details are sent on unchanged.
    """
    info = activity.info()
    earlier = info.heartbeat_details[0] if info.heartbeat_details else None
    details: dict[str, Any] = dict(earlier) if isinstance(earlier, dict) else {}
    token = _details.set(details)
    try:
        with step_logging(module, **context):
            async with heartbeating(lambda: (dict(details),)):
                yield
    finally:
        _details.reset(token)
