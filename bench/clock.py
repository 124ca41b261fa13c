"""When each run's first activity started, seen from inside the worker.

Workers run in the bench's own process, so activities of both sides write here and the
measuring code reads the same clock (``time.monotonic``) without any round trip.
"""

from __future__ import annotations

import time

_first_start: dict[str, float] = {}


RUN_OF_INCIDENT = ".run-"
"""An incident's run is ``<incident id>.run-<suffix>`` (workflows/incident.py)."""


def mark(workflow_id: str | None) -> None:
    """Record the first activity start of a run; later activities of the run are ignored.

    A run of an incident is also noted under its incident's id (see :func:`first_run_start`).
    """
    if workflow_id is not None:
        now = time.monotonic()
        _first_start.setdefault(workflow_id, now)
        incident, sep, _ = workflow_id.partition(RUN_OF_INCIDENT)
        if sep:
            _first_start.setdefault(incident + RUN_OF_INCIDENT, now)


def first_run_start(incident_id: str) -> float | None:
    """When the run of an incident first started an activity."""
    return _first_start.get(incident_id + RUN_OF_INCIDENT)


def first_start(workflow_id: str) -> float | None:
    return _first_start.get(workflow_id)


def forget(workflow_id: str) -> None:
    _first_start.pop(workflow_id, None)


def reset() -> None:
    _first_start.clear()
