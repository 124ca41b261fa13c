"""Run inputs of a playbook: checked against its declarations and coerced to their types.

Inputs arrive as JSON from the API, as text from the CLI (``-i retries=3``) and as literals in
YAML (defaults, an include's ``with:``); each path goes through ``coerce_input`` so a playbook
sees the same typed value whichever way it was started.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fireline.plan import InputSpec, Plan
from fireline.playbook.loader import suggestion

__all__ = ["apply_input_defaults", "coerce_input"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_INT = re.compile(r"[+-]?\d+")


def coerce_input(spec: InputSpec, value: Any, *, from_text: bool = True) -> Any:
    """``value`` as ``spec.type``; ``from_text`` also accepts CLI strings ("true", "3", JSON).

    Raises ValueError starting with the input's name, so callers can prefix context.
    """
    kind = spec.type
    bad = ValueError(
        f"'{spec.name}' must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got "
        f"{_json_type(value)} {json.dumps(value, default=str)[:60]}"
    )
    text = value.strip() if from_text and isinstance(value, str) else None
    if kind == "string":
        if isinstance(value, str):
            return value
        raise bad
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise bad
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if text is not None and _INT.fullmatch(text):
            return int(text)
        raise bad
    if kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if text is not None:
            try:
                return int(text) if _INT.fullmatch(text) else float(text)
            except ValueError:
                raise bad from None
        raise bad
    wanted = dict if kind == "object" else list
    if isinstance(value, wanted):
        return value
    if text is not None:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise bad from None
        if isinstance(parsed, wanted):
            return parsed
    raise bad


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),  # before int: a bool is an int to isinstance
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (dict, "object"),
    (list, "array"),
)


def _json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, as a playbook author declares it."""
    return next((name for t, name in _JSON_TYPES if isinstance(value, t)), type(value).__name__)


def apply_input_defaults(plan: Plan, given: Mapping[str, Any]) -> dict[str, Any]:
    """Run inputs checked against the plan's InputSpecs, coerced, with defaults filled in.

    Every declared input appears in the result (``None`` when optional without a default), so
    ``${{ inputs.x }}`` always resolves. Raises ValueError listing every problem at once.
    """
    specs = {s.name: s for s in plan.inputs}
    errors: list[str] = []
    for name in given:
        if name not in specs:
            errors.append(
                f"unknown input '{name}'{suggestion(str(name), specs)}; playbook "
                f"'{plan.name}' takes: {', '.join(specs) or 'no inputs'}"
            )
    out: dict[str, Any] = {}
    for spec in plan.inputs:
        value = given.get(spec.name)
        if value is None:
            if spec.required:
                about = f": {spec.description}" if spec.description else ""
                errors.append(f"missing required input '{spec.name}' ({spec.type}){about}")
            out[spec.name] = spec.default
            continue
        try:
            out[spec.name] = coerce_input(spec, value, from_text=True)
        except ValueError as exc:
            errors.append(f"input {exc}")
    if errors:
        raise ValueError(f"playbook '{plan.name}': " + "; ".join(errors))
    return out
