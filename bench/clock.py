"""When each run's first activity started, seen from inside the worker.

Workers run in the bench's own process, so activities of both sides write here and the
measuring code reads the same clock (``time.monotonic``) without any round trip.
"""

from __future__ import annotations

import time

_first_start: dict[str, float] = {}


def mark(workflow_id: str | None) -> None:
    """Record the first activity start of a run; later activities of the run are ignored."""
    if workflow_id is not None:
        _first_start.setdefault(workflow_id, time.monotonic())


def first_start(workflow_id: str) -> float | None:
    return _first_start.get(workflow_id)


def forget(workflow_id: str) -> None:
    _first_start.pop(workflow_id, None)


def reset() -> None:
    _first_start.clear()
