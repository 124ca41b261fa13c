"""What a ``${{ path }}`` expression in a playbook may refer to, checked before anything runs.

A reference to a later step, to a branch of the same parallel group or to an output a module
does not have would otherwise fail halfway through an incident; here it is a compile problem
that says which steps and fields are in reach at that point of the playbook.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fireline.playbook.expressions import EXPRESSION, ExpressionError, parse_path
from fireline.playbook.loader import PathKey, suggestion

__all__ = ["Place", "ReferenceCheck", "StepInfo", "contains_expression", "whole_expression"]

Place = Literal["with", "outputs", "preconditions", "postconditions", "compensate"]
"""Where in a playbook an expression is written."""

_ROOTS = ("inputs", "steps", "input", "output")
_ROOTS_IN: dict[Place, tuple[str, ...]] = {
    "with": ("inputs", "steps"),
    "outputs": ("inputs", "steps"),
    "preconditions": ("inputs", "steps", "input"),
    "postconditions": _ROOTS,
    "compensate": _ROOTS,
}
"""A step's own ``input``/``output`` exist only in its checks and compensation, ``output`` only
once it has run."""


@dataclass
class StepInfo:
    """What expressions in other steps may know about a step before compiling it."""

    id: str
    path: PathKey
    order: int
    kind: str | None
    groups: tuple[str, ...]
    outputs: frozenset[str] | None
    """Fields of its output, or None when unknown (a problem is reported elsewhere)."""
    label: str


class ReferenceCheck:
    """Checks expressions against a playbook's declared inputs and (indexed) steps.

    ``report(path, step, message)`` receives each problem, located at the string it is in.
    """

    def __init__(
        self,
        inputs: Collection[str],
        steps: Mapping[str, StepInfo],
        report: Callable[[PathKey, str | None, str], None],
    ) -> None:
        self.inputs = inputs
        self.steps = steps
        self.report = report

    def check(
        self,
        value: Any,
        path: PathKey,
        where: Place,
        step: str | None,
        visible: set[str],
        inputs: set[str] | None = None,
        outputs: frozenset[str] | None = None,
    ) -> None:
        """Every expression in ``value``, written at ``where`` of ``step`` (None: the playbook).

        ``visible`` holds the steps finished before ``step``; ``inputs``/``outputs`` are the
        step's own fields, where ``input.*``/``output.*`` may be used.
        """
        roots = _ROOTS_IN[where]
        for leaf, text in _strings(value, path):
            matches = list(EXPRESSION.finditer(text))
            if text.count("${{") != len(matches):
                self.report(leaf, step, f"unclosed expression in '{text}': write ${{{{ path }}}}")
            for match in matches:
                try:
                    parts = parse_path(match.group(1))
                except ExpressionError as exc:
                    self.report(leaf, step, str(exc))
                    continue
                message = self._reference(parts, step, visible, roots, where, inputs, outputs)
                if message:
                    self.report(leaf, step, f"'{match.group(0)}': {message}")

    def _reference(
        self,
        parts: list[str | int],
        step: str | None,
        visible: set[str],
        roots: tuple[str, ...],
        where: Place,
        inputs: set[str] | None,
        outputs: frozenset[str] | None,
    ) -> str | None:
        root = parts[0]
        if root not in _ROOTS:
            return f"unknown root '{root}'; expressions start with {', '.join(roots)}"
        if root not in roots:
            if root == "output" and where == "preconditions":
                return "output.* is not available in preconditions: they run before the step"
            if where in ("with", "outputs"):
                return (
                    f"{root}.* exists only in a step's checks and compensation; here use "
                    "inputs.* or steps.<id>.outputs.*"
                )
            return f"{root}.* is not available here"
        name = parts[1] if len(parts) > 1 else None
        if root == "inputs":
            if not isinstance(name, str):
                return "name an input: inputs.<name>"
            if name not in self.inputs:
                return (
                    f"unknown input '{name}'{suggestion(name, self.inputs)}; declare it under "
                    "inputs: at the top of the playbook"
                )
            return None
        if root in ("input", "output"):
            fields = inputs if root == "input" else outputs
            if isinstance(name, str) and fields is not None and name not in fields:
                what = "input" if root == "input" else "output"
                return (
                    f"the step has no {what} '{name}'{suggestion(name, fields)}; its {what}s "
                    f"are: {', '.join(sorted(fields)) or 'none'}"
                )
            return None
        return self._step_reference(parts, step, visible)

    def _step_reference(
        self, parts: list[str | int], step: str | None, visible: set[str]
    ) -> str | None:
        sid = parts[1] if len(parts) > 1 else None
        if not isinstance(sid, str):
            return "name a step: steps.<id>.outputs.<field>"
        info = self.steps.get(sid)
        if info is None:
            return f"no step '{sid}' in this playbook{suggestion(sid, self.steps)}"
        if sid == step:
            return (
                "a step cannot use its own outputs in its with:; its checks and compensation "
                "use output.<field>"
            )
        if sid not in visible:
            current = self.steps.get(step) if step else None
            if current is not None and sid in current.groups:
                return f"'{sid}' is the parallel group this step belongs to; it has no outputs"
            if current is not None and info.order < current.order:
                return (
                    f"step '{sid}' runs in parallel with this one, so its outputs are not ready; "
                    "move it before the parallel group"
                )
            return f"step '{sid}' runs after this one; only earlier steps' outputs can be used"
        if len(parts) < 3 or parts[2] != "outputs":
            return f"use steps.{sid}.outputs.<field>"
        if info.kind == "parallel":
            return f"'{sid}' is a parallel group and has no outputs; refer to one of its branches"
        if len(parts) > 3 and info.outputs is not None:
            field = parts[3]
            if field not in info.outputs:
                return (
                    f"step '{sid}' ({info.label}) has no output '{field}'"
                    f"{suggestion(str(field), info.outputs)}; its outputs are: "
                    f"{', '.join(sorted(info.outputs)) or 'none'}"
                )
        return None


def _strings(value: Any, path: PathKey) -> Iterator[tuple[PathKey, str]]:
    """Every string inside ``value`` with its YAML path, so a problem points at its line."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))


def contains_expression(value: Any) -> bool:
    return any("${{" in text for _, text in _strings(value, ()))


def whole_expression(value: Any) -> bool:
    """True for ``"${{ a.b }}"``, false for ``"${{ a }}/x/${{ b }}"`` and plain text."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    matches = list(EXPRESSION.finditer(text))
    return len(matches) == 1 and matches[0].span() == (0, len(text))
