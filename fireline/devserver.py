"""Embedded Temporal dev server runner (placeholder constants; the runner lands with the CLI)."""

from __future__ import annotations

# The stock dev server's history queue processors poll at 20/s, which costs about 35 ms per
# workflow task round trip; these lift the cap so each sequential activity costs ~17-28 ms.
TUNING_FLAGS: tuple[str, ...] = (
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "history.timerProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "history.visibilityProcessorMaxPollRPS=1000",
)
