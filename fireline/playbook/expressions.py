"""A small, safe resolver for ``${{ ... }}`` expressions in playbooks.

Only dotted paths with optional integer indexes are understood (``inputs.host``,
``steps.promote.outputs.new_primary``, ``output.items[0]``): no operators, no calls, never
``eval``. A value that is exactly one expression keeps the referenced value's type; an
expression inside a longer string is interpolated as text. Pure functions only, so workflow
code can use it deterministically.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

EXPRESSION = re.compile(r"\$\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_-]*(?:\[\d+\])*(?:\.[A-Za-z_][A-Za-z0-9_-]*(?:\[\d+\])*)*$"
)
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)")


class ExpressionError(ValueError):
    """An expression is malformed or refers to something that does not exist."""


def parse_path(expr: str) -> list[str | int]:
    """Split ``steps.a.outputs.items[0]`` into ``['steps', 'a', 'outputs', 'items', 0]``."""
    if not _PATH.match(expr):
        raise ExpressionError(
            f"'${{{{ {expr} }}}}' is not a reference: use a dotted path such as inputs.name"
        )
    parts: list[str | int] = []
    for segment in expr.split("."):
        match = _SEGMENT.fullmatch(segment)
        assert match is not None  # guaranteed by _PATH
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def references(value: Any) -> Iterator[list[str | int]]:
    """Every path referenced anywhere inside ``value`` (strings, lists, dicts)."""
    if isinstance(value, str):
        for match in EXPRESSION.finditer(value):
            yield parse_path(match.group(1))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from references(item)


def has_expression(value: Any) -> bool:
    return next(references(value), None) is not None


def lookup(context: Mapping[str, Any], path: list[str | int]) -> Any:
    current: Any = context
    for depth, part in enumerate(path):
        where = _render(path[: depth + 1])
        if isinstance(part, int):
            if not isinstance(current, list) or part >= len(current):
                raise ExpressionError(f"{where}: no item {part}")
            current = current[part]
        elif isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            raise ExpressionError(f"{where}: not found")
    return current


def resolve(value: Any, context: Mapping[str, Any]) -> Any:
    """Replace every expression inside ``value`` with what it refers to in ``context``."""
    if isinstance(value, str):
        whole = EXPRESSION.fullmatch(value.strip())
        if whole:
            return lookup(context, parse_path(whole.group(1)))
        return EXPRESSION.sub(lambda m: _text(lookup(context, parse_path(m.group(1)))), value)
    if isinstance(value, Mapping):
        return {key: resolve(item, context) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(item, context) for item in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _render(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
