"""Human durations in playbooks (``500ms``, ``30s``, ``15m``, ``1h``, ``2d``, ``1h30m``).

Plans carry plain seconds so they survive the JSON round trip unchanged; this module is the
one place that turns what people write into those seconds, and back for display.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
HINT = "use a number of seconds or a duration such as 500ms, 30s, 15m, 1h, 2d"


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string; raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: {HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            if not _WHOLE.fullmatch(text):
                raise ValueError(f"{value!r} is not a duration: {HINT}") from None
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    else:
        raise ValueError(f"{value!r} is not a duration: {HINT}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a duration: it must be more than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling (``90`` -> ``1m30s``), for status views and messages."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = ""
    remaining = seconds
    for unit in ("d", "h", "m"):
        count, remaining = divmod(remaining, _UNITS[unit])
        if count:
            out += f"{int(count)}{unit}"
    if remaining or not out:
        out += f"{remaining:g}s"
    return out
