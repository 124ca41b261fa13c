"""structlog set-up shared by the worker, the API, the CLI and the stack runner.

Standard-library records (Temporal's own ``workflow.logger`` and ``activity.logger`` among them)
are rendered by the same processors, so one incident's lines read alike whichever layer wrote
them, as JSON in production and coloured text on a terminal.

Two things here keep logging cheap whatever is thrown at it: exceptions are rendered as plain
tracebacks (a pretty renderer that prints every frame's local variables once spun a process
for minutes over a 20 MB request body), and every text value is cut to a bounded length.
Temporal's loggers would append their workflow context to the message *and* pass it as extra
fields; here it appears once, as fields (``workflow_id``, ``run_id``, ...).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from temporalio import activity, workflow

__all__ = ["MAX_VALUE_CHARS", "configure_logging"]

MAX_VALUE_CHARS = 4000
"""Longest text value a log line carries; the rest is replaced by a count of what was cut."""

_TEMPORAL_EXTRAS = ("temporal_workflow", "temporal_activity")
_RENAMES = {"workflow_run_id": "run_id"}
"""Temporal's activity context calls the run id ``workflow_run_id``; ours binds ``run_id``."""


def _temporal_context(
    _: object, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Flatten Temporal's context dicts into fields, each once (bound values win)."""
    for key in _TEMPORAL_EXTRAS:
        details = event.pop(key, None)
        if isinstance(details, dict):
            for name, value in details.items():
                event.setdefault(_RENAMES.get(str(name), str(name)), value)
    return event


def _bounded(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Cut every long text value (the event too), so one line never costs megabytes."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            cut = len(value) - MAX_VALUE_CHARS
            event[key] = f"{value[:MAX_VALUE_CHARS]}... [{cut} more characters]"
    return event


_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    # The context goes on as fields (temporal_workflow / temporal_activity extras), never
    # also appended to the message text.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), _temporal_context],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _bounded,
                structlog.processors.format_exc_info if fmt == "json" else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _identity(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    return event
