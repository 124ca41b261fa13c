"""What ``fireline plan`` shows: every step of a compiled playbook, classified before it runs.

Walking the plan is pure (this module): each step, parallel branches and included playbooks
included, is mutating, read-only or undetermined (its inputs name an earlier step's outputs,
which only a run can know), with its risk, its gate and its undo. The determinable mutating
steps get their inputs resolved here; the operations layer then has their modules' previews
read the real systems through Temporal (``workflows.plan_preview``) and fills them in.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from fireline.plan import IncludeNode, ParallelNode, Plan, Preview, Risk, StepNode
from fireline.playbook.expressions import ExpressionError, references, resolve

IRREVERSIBLE_TEXT = "irreversible"


class StepKind(StrEnum):
    mutating = "mutating"
    read_only = "read-only"
    undetermined = "undetermined"


class PlannedGate(BaseModel):
    role: str
    tier: int
    min_approvals: int


class PlannedStep(BaseModel):
    """One row of the plan: what the step is, what it would do and who must agree first."""

    id: str
    """The step id, prefixed by the include ids that lead to it (``include/step``)."""
    name: str
    module: str
    domain: str = ""
    kind: StepKind
    mutates: bool
    risk: Risk
    depth: int = 0
    within: str | None = None
    """The parallel block or included playbook the step belongs to."""
    gate: PlannedGate | None = None
    compensation: str | None = None
    """The undoing module, ``irreversible`` for a change without one, None when read-only."""
    depends_on: list[str] = Field(default_factory=list)
    """What makes the step undetermined: ``steps.X`` references, or unknown include inputs."""
    inputs: dict[str, Any] | None = None
    """The resolved inputs, when they can be known before the run."""
    preview: Preview | None = None
    preview_error: str | None = None
    note: str = ""


class PlanPreview(BaseModel):
    """``fireline plan``'s answer; ``POST /plans/preview`` returns it as JSON."""

    playbook: str
    version: str
    plan_hash: str
    max_risk: Risk
    inputs: dict[str, Any] = Field(default_factory=dict)
    steps: list[PlannedStep] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {kind.value: 0 for kind in StepKind}
        for step in self.steps:
            out[step.kind.value] += 1
        return out


def _defaults(plan: Plan, given: dict[str, Any]) -> dict[str, Any]:
    """As the workflow does: a declared input left out takes its default, or null."""
    values = dict(given)
    for spec in plan.inputs:
        values.setdefault(spec.name, spec.default)
    return values


def _dependencies(value: Any, unknown_inputs: set[str]) -> list[str]:
    """The references of ``value`` a plan cannot resolve before the run."""
    out: list[str] = []
    for path in references(value):
        head = path[0] if path else None
        if head == "steps" and len(path) > 1:
            ref = f"steps.{path[1]}"
        elif head == "inputs" and len(path) > 1 and path[1] in unknown_inputs:
            ref = f"inputs.{path[1]}"
        else:
            continue
        if ref not in out:
            out.append(ref)
    return out


def _resolve_with(with_: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    if set(with_) == {"$from"}:
        whole = resolve(with_["$from"], context)
        if not isinstance(whole, dict):
            raise ExpressionError(f"{with_['$from']} is not an object")
        return dict(whole)
    resolved: dict[str, Any] = resolve(with_, context)
    return resolved


def _gate(node: StepNode, plan: Plan) -> PlannedGate | None:
    if node.gate is None:
        return None
    needed = node.gate.min_approvals
    if plan.rights is not None:
        # As workflows.gate.needed_approvals counts: never fewer than the rights ask.
        needed = max(needed, plan.rights.right(node.risk).min_approvals)
    return PlannedGate(role=node.gate.role, tier=node.gate.tier, min_approvals=needed)


def walk(plan: Plan, inputs: dict[str, Any]) -> list[PlannedStep]:
    """Every step of ``plan`` in document order, classified; ``inputs`` are the checked ones."""
    out: list[PlannedStep] = []
    _walk(plan, _defaults(plan, inputs), set(), "", 0, None, out)
    return out


def _walk(
    plan: Plan,
    inputs: dict[str, Any],
    unknown: set[str],
    prefix: str,
    depth: int,
    within: str | None,
    out: list[PlannedStep],
) -> None:
    context = {"inputs": inputs, "steps": {}}
    for node in plan.nodes:
        _node(node, plan, context, unknown, prefix, depth, within, out)


def _node(
    node: StepNode | ParallelNode | IncludeNode,
    plan: Plan,
    context: dict[str, Any],
    unknown: set[str],
    prefix: str,
    depth: int,
    within: str | None,
    out: list[PlannedStep],
) -> None:
    if isinstance(node, ParallelNode):
        for branch in node.branches:
            _node(branch, plan, context, unknown, prefix, depth, f"parallel {node.id}", out)
    elif isinstance(node, IncludeNode):
        _include(node, context, unknown, prefix, depth, within, out)
    else:
        out.append(_step(node, plan, context, unknown, prefix, depth, within))


def _include(
    node: IncludeNode,
    context: dict[str, Any],
    unknown: set[str],
    prefix: str,
    depth: int,
    within: str | None,
    out: list[PlannedStep],
) -> None:
    """The included playbook's steps, with the inputs this playbook would give it."""
    child_inputs: dict[str, Any] = {}
    child_unknown: set[str] = set()
    for key, value in node.with_.items():
        if _dependencies(value, unknown):
            child_unknown.add(key)
            continue
        try:
            child_inputs[key] = resolve(value, context)
        except ExpressionError:
            child_unknown.add(key)
    child = node.plan
    mutates = any(isinstance(n, StepNode) and n.mutates for n in child.walk())
    out.append(
        PlannedStep(
            id=f"{prefix}{node.id}",
            name=node.name,
            module=f"playbook {child.name}",
            kind=StepKind.mutating if mutates else StepKind.read_only,
            mutates=mutates,
            risk=child.max_risk(),
            depth=depth,
            within=within,
            gate=(
                PlannedGate(
                    role=node.gate.role, tier=node.gate.tier, min_approvals=node.gate.min_approvals
                )
                if node.gate
                else None
            ),
            depends_on=[f"inputs.{k}" for k in sorted(child_unknown)],
            note="its steps follow",
        )
    )
    resolved = _defaults(child, child_inputs)
    for key in child_unknown:
        resolved[key] = None
    _walk(
        child,
        resolved,
        child_unknown,
        f"{prefix}{node.id}/",
        depth + 1,
        f"playbook {child.name}",
        out,
    )


def _step(
    node: StepNode,
    plan: Plan,
    context: dict[str, Any],
    unknown: set[str],
    prefix: str,
    depth: int,
    within: str | None,
) -> PlannedStep:
    action = node.action
    compensation: str | None = None
    if node.mutates:
        compensation = node.compensation.module if node.compensation else IRREVERSIBLE_TEXT
    step = PlannedStep(
        id=f"{prefix}{node.id}",
        name=node.name,
        module=action.module,
        domain=action.domain,
        kind=StepKind.mutating if node.mutates else StepKind.read_only,
        mutates=node.mutates,
        risk=node.risk,
        depth=depth,
        within=within,
        gate=_gate(node, plan),
        compensation=compensation,
    )
    depends = _dependencies(action.with_, unknown)
    if depends:
        step.kind = StepKind.undetermined
        step.depends_on = depends
        step.note = "inputs known only during the run"
        return step
    try:
        step.inputs = _resolve_with(action.with_, context)
    except ExpressionError as err:
        step.preview_error = f"inputs do not resolve: {err}"[:500]
        return step
    if node.mutates and action.preview is None:
        step.preview_error = f"{action.module} has no preview"
    return step


def preview_activity_of(plan: Plan, step_id: str) -> str | None:
    """The preview activity of a (prefixed) step id, looked up through the includes."""
    head, _, rest = step_id.partition("/")
    for node in plan.walk():
        if node.id != head:
            continue
        if isinstance(node, IncludeNode) and rest:
            return preview_activity_of(node.plan, rest)
        if isinstance(node, StepNode) and not rest:
            return node.action.preview
    return None


def wants_preview(step: PlannedStep) -> bool:
    """A determinable mutating step whose module can say what it would change."""
    return (
        step.kind is StepKind.mutating
        and step.inputs is not None
        and step.preview_error is None
        and not step.module.startswith("playbook ")
    )
