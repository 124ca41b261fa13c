"""Decision rights at compile time: gates that can never be satisfied are refused here.

What the compiler can know, it checks: a gate whose role has nobody allowed to approve its
step's risk (or fewer such people than the approvals it needs) is a problem at the step's line,
with a fix. ``critical`` steps need two distinct approvers: a gate asking fewer is *raised* to
the floor, not refused, because the catalog is the authority on the floor and a gate may only
ask for more; it is refused only when its role cannot supply that many qualified people.

Embargoes can be checked only partly: a step's domain is known now, but the service and target
come with the run's inputs and the time with the run. So the compiler refuses only what can
never work (a soft embargo over a domain the playbook changes while the catalog has no Tier 3
person to approve during it) and leaves the rest to the judge at run time.

The roster and the rules are frozen into the Plan (``Plan.rights``) rather than passed at
start: the plan's content hash then covers them, the history shows exactly which rules a run
was judged by, a catalog edit never changes a run already going, and an included playbook
carries its own copy without the parent having to forward anything.
"""

from __future__ import annotations

from fireline.catalog.embargo import zone_offsets
from fireline.catalog.model import Catalog
from fireline.catalog.rights import MIN_APPROVALS
from fireline.plan import (
    DecisionRights,
    EmbargoWindow,
    IncludeNode,
    Node,
    ParallelNode,
    Person,
    Risk,
    RiskRight,
    StepNode,
    WeeklyWindow,
)
from fireline.playbook.loader import Problem

EMBARGO_TIER = 3


def freeze_rights(catalog: Catalog, owner: str) -> DecisionRights:
    """The part of the catalog a run is judged by (no contact details, no credentials)."""
    spec = catalog.decision_rights
    people = {
        name: Person(name=name, roles=catalog.roles_of(name), tier=catalog.tier_of(name))
        for name in catalog.roster()
    }
    owner_role = spec.owners.get(owner) or (owner if owner in catalog.roles else None)
    owners = catalog.approvers(owner_role) if owner_role is not None else None
    return DecisionRights(
        people=people,
        open_roles={n: r.tier for n, r in catalog.roles.items() if catalog.approvers(n) is None},
        risks={
            risk: RiskRight(
                min_tier=rule.min_tier,
                roles=list(rule.roles),
                min_approvals=rule.min_approvals or 1,
            )
            for risk in Risk
            for rule in [spec.rule(risk)]
        },
        separation_of_duties=list(spec.separation_of_duties),
        unsigned=list(spec.unsigned),
        owners=owners,
        embargoes=[
            EmbargoWindow(
                name=name,
                mode=e.mode,
                domains=list(e.domains),
                services=list(e.services),
                targets=list(e.targets),
                timezone=e.timezone,
                offsets=zone_offsets(e.timezone),
                start=e.start,
                end=e.end,
                weekly=[
                    WeeklyWindow(days=list(w.days), start=w.start, end=w.end) for w in e.weekly
                ],
                reason=e.reason,
            )
            for name, e in catalog.embargoes.items()
        ],
    )


def _walk(nodes: list[Node]) -> list[StepNode | IncludeNode]:
    out: list[StepNode | IncludeNode] = []
    for node in nodes:
        if isinstance(node, ParallelNode):
            out += _walk(node.branches)
        else:
            out.append(node)
    return out


def apply_policy(nodes: list[Node], rights: DecisionRights, file: str) -> list[Problem]:
    """Check every gate of these nodes against the rights; raise counts to the floor in place.

    Included playbooks are not entered: each was compiled, and checked, on its own.
    """
    problems: list[Problem] = []
    for node in _walk(nodes):
        line = node.source.line if node.source else None
        risk = node.risk if isinstance(node, StepNode) else node.plan.max_risk()
        gate = node.gate
        if gate is not None:
            problem = _gate_problem(node, risk, rights)
            if problem is not None:
                problems.append(Problem(file, line, node.id, "approval", problem))
                continue
            needed = max(gate.min_approvals, rights.right(risk).min_approvals)
            if needed != gate.min_approvals:
                node.gate = gate.model_copy(update={"min_approvals": needed})
        if isinstance(node, StepNode) and node.mutates:
            problem = _embargo_problem(node, rights)
            if problem is not None:
                problems.append(Problem(file, line, node.id, None, problem))
    return problems


def _qualified(
    role: str, approvers: list[str] | None, right: RiskRight, rights: DecisionRights
) -> list[str] | None:
    """The people who may approve for ``role`` at this risk; None: anyone named may."""
    if approvers is None:
        tier = rights.open_roles.get(role, 0)
        return None if right.admits(tier, [role]) else []
    return [
        p
        for p in approvers
        if (person := rights.people.get(p)) is not None and right.admits(person.tier, person.roles)
    ]


def _gate_problem(node: StepNode | IncludeNode, risk: Risk, rights: DecisionRights) -> str | None:
    gate = node.gate
    assert gate is not None
    right = rights.right(risk)
    qualified = _qualified(gate.role, gate.approvers, right, rights)
    needed = max(gate.min_approvals, right.min_approvals)
    floor = MIN_APPROVALS.get(risk)
    why = f" ({risk.value} steps need {floor} distinct approvers)" if floor else ""
    if qualified is None:
        return None
    if not qualified:
        return (
            f"role '{gate.role}' cannot approve a {risk.value} step: it needs "
            f"{right.describe()}, and no one acting for the role has that; use a role whose "
            "members qualify, or change the catalog's decision_rights"
        )
    if len(qualified) < needed:
        return (
            f"needs {needed} approvals{why} but only {len(qualified)} person(s) acting for "
            f"role '{gate.role}' may approve a {risk.value} step ({', '.join(qualified)}); add "
            "qualified members to the role in the catalog, or use another role"
        )
    return None


def _embargo_problem(node: StepNode, rights: DecisionRights) -> str | None:
    tier3 = [p.name for p in rights.people.values() if p.tier >= EMBARGO_TIER]
    for embargo in rights.embargoes:
        if embargo.mode == "soft" and node.action.domain in embargo.domains and not tier3:
            return (
                f"soft embargo '{embargo.name}' covers domain '{node.action.domain}', but the "
                "catalog has no Tier 3 person to approve changes during it; add one, or make "
                "the embargo hard if changes must simply wait"
            )
    return None
