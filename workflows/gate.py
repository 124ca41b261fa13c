"""The gate judge: may this person make this decision on this step, now?

A plain function over plain data (no Temporal import), so every rule has a fast table-driven
test. The workflow calls it from its update validators, its update handlers and its signal
handlers alike, so there is one place where the rules live.

A :class:`Refusal` says whether it is *audited*. Refusals that judge nobody (no such step,
not waiting, a person the catalog does not know, a request that contradicts itself) are not:
an update validator answers them and nothing enters the history. Refusals of a known person
without the right (wrong role or tier, unsigned where a signature is required, a bad or
expired signature, their own run, an embargo, twice the same approver) are audited: the
update handler records them in the timeline, then answers with the refusal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fireline.identity.signing import SignedDecision, inputs_digest, verify_decision
from fireline.incident import IncidentRights
from fireline.messages import StepState, StepStatus
from fireline.plan import DecisionRights, GateSpec, Risk

Action = Literal["approve", "reject", "retry", "skip", "compensate", "cancel"]
EMBARGO_TIER = 3
"""Who may approve a change during a soft embargo."""


@dataclass(frozen=True)
class Attempt:
    """One decision someone sends: an approval, a rejection, a retry/skip/compensate, or a
    cancel of the whole run (``step`` "")."""

    action: Action
    person: str
    step: str
    signed: SignedDecision | None = None
    inputs: Mapping[str, Any] | None = None
    """For ``retry``: the new ``with:`` values."""

    def digest(self, step: StepState) -> str:
        """What a signed claim must carry: the digest of the step's inputs as the decider saw
        them, with a retry's new values applied (so the signature covers those too)."""
        return inputs_digest({**(step.inputs or {}), **(self.inputs or {})})


@dataclass(frozen=True)
class RunFacts:
    """What the judge needs to know about the run as a whole."""

    workflow_id: str
    plan_name: str
    requested_by: str
    rights: DecisionRights | None
    trusted_keys: Mapping[str, str] = field(default_factory=dict)
    """Empty: the run was started by something that signs nothing (a test, or ``temporal
    workflow start``). Unsigned decisions are then accepted, recorded unverified, since
    requiring signatures would leave such a run's gates unpassable; whoever can start a run
    directly could give it a key of their own anyway. The API always passes its key."""
    service: str | None = None
    separated: tuple[str, ...] = ()
    """Who besides the requester may not approve high/critical steps."""


@dataclass(frozen=True)
class Refusal:
    reason: str
    audited: bool


def judge(
    attempt: Attempt,
    step: StepState | None,
    gate: GateSpec | None,
    run: RunFacts,
    now: datetime,
) -> Refusal | None:
    """None when the decision may be recorded; else why not, and whether to audit it."""
    refusal = screen(attempt, step, gate, run)
    if refusal is not None or step is None:
        return refusal
    if run.rights is None:
        return _legacy(attempt, step, gate)
    return _judge(attempt, step, gate, run, run.rights, now)


def screen(
    attempt: Attempt, step: StepState | None, gate: GateSpec | None, run: RunFacts
) -> Refusal | None:
    """The refusals that judge nobody (never audited): what an update validator answers.

    No signature is checked here, so a validator stays cheap; the handler judges in full.
    """
    if step is None:
        return Refusal(f"no step '{attempt.step}' in {run.plan_name}", audited=False)
    gating = attempt.action in ("approve", "reject")
    if gating and (step.status is not StepStatus.awaiting_approval or gate is None):
        return Refusal(
            f"step '{step.id}' is not waiting for approval (it is {step.status.value})",
            audited=False,
        )
    if not gating:
        if step.status is not StepStatus.awaiting_decision:
            return Refusal(
                f"step '{step.id}' is not waiting for a decision (it is {step.status.value})",
                audited=False,
            )
        if attempt.inputs and attempt.action != "retry":
            return Refusal("new inputs only make sense with retry", audited=False)
        if attempt.inputs and step.kind != "step":
            return Refusal(
                "new inputs apply to module steps, not to included playbooks", audited=False
            )
    if run.rights is not None and _unknown(attempt.person, gate, run.rights):
        return Refusal(f"{attempt.person} is not in the catalog", audited=False)
    return None


def _unknown(person: str, gate: GateSpec | None, rights: DecisionRights) -> bool:
    """Neither in the roster nor admitted by an open role (or, ungated, by an open run)."""
    if person in rights.people:
        return False
    if gate is not None:
        return not (gate.approvers is None and gate.role in rights.open_roles)
    return rights.owners is not None or bool(rights.people)


def _legacy(attempt: Attempt, step: StepState, gate: GateSpec | None) -> Refusal | None:
    """Plans compiled before decision rights were frozen into them keep their old rules."""
    if gate is None or attempt.action not in ("approve", "reject"):
        return None
    if gate.approvers is not None and attempt.person not in gate.approvers:
        allowed = ", ".join(gate.approvers)
        return Refusal(
            f"{attempt.person} may not decide for role {gate.role} ({allowed})", audited=True
        )
    if attempt.action == "approve" and _approved_by(step, attempt.person):
        return Refusal(
            f"{attempt.person} already approved '{step.id}'; another person must", audited=True
        )
    return None


def _judge(
    attempt: Attempt,
    step: StepState,
    gate: GateSpec | None,
    run: RunFacts,
    rights: DecisionRights,
    now: datetime,
) -> Refusal | None:
    known = rights.people.get(attempt.person)
    if attempt.signed is not None:
        mismatch = _claim_mismatch(attempt, step, run)
        if mismatch is not None:
            return Refusal(mismatch, audited=known is not None)
    # From here on the person is known (or admitted by an open role): refusals are audited.
    refusal = _identity(attempt, step, run, rights, now)
    if refusal is not None:
        return Refusal(refusal, audited=True)
    refusal = _rights(attempt, step, gate, run, rights, now)
    return Refusal(refusal, audited=True) if refusal is not None else None


def _claim_mismatch(attempt: Attempt, step: StepState, run: RunFacts) -> str | None:
    assert attempt.signed is not None
    claim = attempt.signed.claim
    expected = {
        "workflow_id": run.workflow_id,
        "step": step.id,
        "action": attempt.action,
        "person": attempt.person,
    }
    for name, value in expected.items():
        if getattr(claim, name) != value:
            return f"the signed decision is for {name} {getattr(claim, name)!r}, not {value!r}"
    return None


def _identity(
    attempt: Attempt, step: StepState, run: RunFacts, rights: DecisionRights, now: datetime
) -> str | None:
    """The person is proven by a trusted signature, or the rights let this risk go unsigned."""
    signed = attempt.signed
    if signed is None:
        if step.risk in rights.unsigned or not run.trusted_keys:
            return None
        return (
            f"unsigned decision claiming {attempt.person} refused: {step.risk.value} steps need "
            "a decision signed by the Fireline API (use `fireline` or the API, not Temporal "
            "directly)"
        )
    reason = verify_decision(signed, run.trusted_keys, now)
    if reason is not None:
        return f"decision by {attempt.person} refused: {reason}"
    digest = attempt.digest(step)
    if signed.claim.inputs_digest != digest:
        return (
            f"{attempt.person} decided on other inputs than the step now has "
            f"(signed {signed.claim.inputs_digest[:12] or 'none'}, now {digest[:12] or 'none'}): "
            "look at the step again and decide anew"
        )
    return None


def _rights(
    attempt: Attempt,
    step: StepState,
    gate: GateSpec | None,
    run: RunFacts,
    rights: DecisionRights,
    now: datetime,
) -> str | None:
    person = attempt.person
    known = rights.people.get(person)
    tier = known.tier if known is not None else 0
    roles = list(known.roles) if known is not None else []
    if known is None and gate is not None and gate.role in rights.open_roles:
        tier, roles = rights.open_roles[gate.role], [gate.role]
    if gate is not None:
        if gate.approvers is not None and person not in gate.approvers:
            return f"{person} may not decide for role {gate.role} ({', '.join(gate.approvers)})"
    elif rights.owners is not None and person not in rights.owners:
        return (
            f"{person} may not decide for '{step.id}': ungated steps are decided by the "
            f"run's owners ({', '.join(rights.owners)})"
        )
    if attempt.action != "approve":
        return None
    right = rights.right(step.risk)
    if not right.admits(tier, roles):
        return (
            f"{person} (tier {tier}) may not approve a {step.risk.value} step: it needs "
            f"{right.describe()}"
        )
    if _approved_by(step, person):
        return f"{person} already approved '{step.id}'; another person must"
    if step.risk in rights.separation_of_duties and person == run.requested_by:
        return (
            f"{person} started this run and may not approve its {step.risk.value} steps "
            "(separation of duties): another person must"
        )
    if step.risk in rights.separation_of_duties and person in run.separated:
        return (
            f"{person} acknowledged this incident and may not approve its {step.risk.value} "
            "steps (separation of duties): another person must"
        )
    embargo = rights.embargo(now, step.domain, run.service, _target(step)) if step.mutates else None
    if embargo is not None:
        why = f" ({embargo.reason})" if embargo.reason else ""
        if embargo.mode == "hard":
            return f"embargo '{embargo.name}'{why} is in force: changes to this target are refused"
        if tier < EMBARGO_TIER:
            return (
                f"embargo '{embargo.name}'{why} is in force: approvals need a Tier "
                f"{EMBARGO_TIER} person; {person} is tier {tier}"
            )
    return None


def _approved_by(step: StepState, person: str) -> bool:
    return any(a.by == person and a.decision == "approved" for a in step.approvals)


def _target(step: StepState) -> str | None:
    value = (step.inputs or {}).get("target")
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- cancel


def cancellers(steps: Sequence[StepState], run: RunFacts) -> list[str] | None:
    """Who may cancel a run with rights: the person who started it, the run's owners, and
    whoever may decide at one of its gates. None: anyone named (an open role's gate, or a
    run whose owners and roster are open)."""
    rights = run.rights
    assert rights is not None
    allowed = [run.requested_by]
    if rights.owners is None:
        if not rights.people:
            return None
        allowed += list(rights.people)
    else:
        allowed += rights.owners
    for step in steps:
        if step.gate is None:
            continue
        if step.gate.approvers is None:
            return None
        allowed += step.gate.approvers
    return list(dict.fromkeys(allowed))


def screen_cancel(
    attempt: Attempt, steps: Sequence[StepState], run: RunFacts, running: bool
) -> Refusal | None:
    """The cancel refusals that judge nobody (what the cancel update's validator answers)."""
    if not running:
        return Refusal("the run is no longer running: nothing to cancel", audited=False)
    if attempt.step:
        return Refusal("a cancel is for the whole run, not for a step", audited=False)
    rights = run.rights
    if (
        rights is not None
        and attempt.person not in rights.people
        and attempt.person != run.requested_by
        and cancellers(steps, run) is not None
    ):
        return Refusal(f"{attempt.person} is not in the catalog", audited=False)
    return None


def judge_cancel(
    attempt: Attempt,
    steps: Sequence[StepState],
    run: RunFacts,
    now: datetime,
    running: bool = True,
) -> Refusal | None:
    """May this person cancel the run (which rolls back everything it changed)?

    A cancel undoes every completed step, so it needs a signature unless every step of the
    run is at a risk the catalog lets go unsigned; who may cancel is :func:`cancellers`.
    Plans compiled before decision rights keep the old rule: anyone may cancel.
    """
    refusal = screen_cancel(attempt, steps, run, running)
    if refusal is not None or run.rights is None:
        return refusal
    rights = run.rights
    signed = attempt.signed
    if signed is not None:
        claim = signed.claim
        expected = {
            "workflow_id": run.workflow_id,
            "step": "",
            "action": "cancel",
            "person": attempt.person,
            "inputs_digest": "",
        }
        for name, value in expected.items():
            if getattr(claim, name) != value:
                return Refusal(
                    f"the signed decision is for {name} {getattr(claim, name)!r}, not {value!r}",
                    audited=True,
                )
        reason = verify_decision(signed, run.trusted_keys, now)
        if reason is not None:
            return Refusal(f"cancel by {attempt.person} refused: {reason}", audited=True)
    else:
        risk = max((s.risk for s in steps), key=list(Risk).index, default=Risk.low)
        if run.trusted_keys and risk not in rights.unsigned:
            return Refusal(
                f"unsigned cancel claiming {attempt.person} refused: this run has "
                f"{risk.value} steps, and cancelling rolls them back; it needs a decision "
                "signed by the Fireline API (use `fireline cancel` or the API, not Temporal "
                "directly)",
                audited=True,
            )
    allowed = cancellers(steps, run)
    if allowed is not None and attempt.person not in allowed:
        return Refusal(
            f"{attempt.person} may not cancel this run: its starter, its owners and its "
            f"gates' approvers may ({', '.join(allowed)})",
            audited=True,
        )
    return None


def needed_approvals(gate: GateSpec, risk: Risk, rights: DecisionRights | None) -> int:
    """The gate's own count, never fewer than the rights ask for the step's risk."""
    if rights is None:
        return gate.min_approvals
    return max(gate.min_approvals, rights.right(risk).min_approvals)


def counted_approvals(step: StepState, rights: DecisionRights | None) -> int:
    """Approvals that still count: for plans with rights, only those for the current inputs."""
    approved = [a for a in step.approvals if a.decision == "approved"]
    if rights is None:
        return len(approved)
    digest = inputs_digest(step.inputs or {})
    return sum(a.inputs_digest == digest for a in approved)


# ------------------------------------------------------------------------ incidents

IncidentAction = Literal["ack", "command", "cancel", "approve", "reject"]
"""``approve``/``reject`` here are of the guard's gate (step "guard"), the incident's own."""


@dataclass(frozen=True)
class IncidentAttempt:
    """An ack, a command (``step`` take/handover/release), a cancel of an incident, or a
    decision at its guard's gate (``step`` "guard")."""

    action: IncidentAction
    person: str
    step: str = ""
    signed: SignedDecision | None = None
    inputs: Mapping[str, Any] | None = None
    """For a handover: ``{"to": successor}``; the signature's digest covers it."""
    to: str | None = None

    def digest(self) -> str:
        return inputs_digest(self.inputs) if self.inputs is not None else ""


@dataclass(frozen=True)
class IncidentFacts:
    """What the incident judge needs: the pinned rights and who has acted so far."""

    workflow_id: str
    rights: IncidentRights | None
    trusted_keys: Mapping[str, str] = field(default_factory=dict)
    paged: tuple[str, ...] = ()
    """Everyone the ladder has paged for this incident."""
    acknowledgers: tuple[str, ...] = ()
    commander: str | None = None


def _responding(person: str, rights: IncidentRights, facts: IncidentFacts) -> bool:
    return (
        person in rights.responders
        or person in facts.paged
        or person in rights.owners
        or person in rights.commanders
    )


def may_ack(person: str, facts: IncidentFacts) -> str | None:
    """Responders (the service's, its rotation's, the ladder's, whoever was paged), the owner
    team and incident commanders may acknowledge; None when ``person`` may."""
    rights = facts.rights
    if rights is None or rights.open or _responding(person, rights, facts):
        return None
    return (
        f"{person} may not acknowledge this incident: its responders, the people paged, the "
        "owner team and incident commanders may"
    )


def may_command(person: str, facts: IncidentFacts) -> str | None:
    """Responders of at least ``command_min_tier`` and incident commanders may take command."""
    rights = facts.rights
    if rights is None or rights.open or person in rights.commanders:
        return None
    known = rights.people.get(person)
    tier = known.tier if known is not None else 0
    if _responding(person, rights, facts) and tier >= rights.command_min_tier:
        return None
    return (
        f"{person} (tier {tier}) may not command this incident: responders of tier "
        f"{rights.command_min_tier} or more and incident commanders "
        f"({', '.join(rights.commanders) or 'none named'}) may"
    )


def may_decide_guard(person: str, facts: IncidentFacts) -> str | None:
    """The guard held the automatic run for a human: whoever may command may let it go (or
    turn it down)."""
    reason = may_command(person, facts)
    if reason is None:
        return None
    return reason.replace("may not command this incident", "may not decide at the guard's gate")


def may_cancel(person: str, facts: IncidentFacts) -> str | None:
    """As a run's cancel (its starter, its owners, its approvers): the commander, whoever
    acknowledged, the owner team and incident commanders may cancel (which rolls back)."""
    rights = facts.rights
    if rights is None or rights.open:
        return None
    allowed = [
        *([facts.commander] if facts.commander else []),
        *facts.acknowledgers,
        *rights.owners,
        *rights.commanders,
    ]
    if person in allowed:
        return None
    names = ", ".join(dict.fromkeys(allowed)) or "nobody yet"
    return (
        f"{person} may not cancel this incident: its commander, its acknowledgers, the owner "
        f"team and incident commanders may ({names})"
    )


def screen_incident(attempt: IncidentAttempt, facts: IncidentFacts) -> Refusal | None:
    """The refusals that judge nobody (what the update validators answer): a person the
    catalog does not know at all."""
    rights = facts.rights
    if rights is None or rights.open:
        return None
    if attempt.person not in rights.people and not _responding(attempt.person, rights, facts):
        return Refusal(f"{attempt.person} is not in the catalog", audited=False)
    return None


def judge_incident(attempt: IncidentAttempt, facts: IncidentFacts, now: datetime) -> Refusal | None:
    """May this person ack, command or cancel the incident? None when they may.

    A known person's refusals are audited. A signature is checked when given (it must be
    about this incident, this action and this person, by a trusted key, unexpired); an
    unsigned decision passes only where the incident trusts no key (started by something that
    signs nothing) or the pinned rights let the action go unsigned.
    """
    refusal = screen_incident(attempt, facts)
    if refusal is not None:
        return refusal
    rights = facts.rights
    signed = attempt.signed
    if signed is not None:
        claim = signed.claim
        expected = {
            "workflow_id": facts.workflow_id,
            "step": attempt.step,
            "action": attempt.action,
            "person": attempt.person,
            "inputs_digest": attempt.digest(),
        }
        for name, value in expected.items():
            if getattr(claim, name) != value:
                return Refusal(
                    f"the signed decision is for {name} {getattr(claim, name)!r}, not {value!r}",
                    audited=True,
                )
        reason = verify_decision(signed, facts.trusted_keys, now)
        if reason is not None:
            return Refusal(f"{attempt.action} by {attempt.person} refused: {reason}", audited=True)
    elif facts.trusted_keys and rights is not None and attempt.action not in rights.unsigned:
        return Refusal(
            f"unsigned {attempt.action} claiming {attempt.person} refused: it needs a decision "
            "signed by the Fireline API (use `fireline` or the API, not Temporal directly)",
            audited=True,
        )
    if attempt.action == "ack":
        reason = may_ack(attempt.person, facts)
    elif attempt.action == "cancel":
        reason = may_cancel(attempt.person, facts)
    elif attempt.action in ("approve", "reject"):
        reason = may_decide_guard(attempt.person, facts)
    elif attempt.step == "take":
        reason = may_command(attempt.person, facts)
    elif attempt.step == "handover" and attempt.to is not None:
        reason = may_command(attempt.to, facts)
        if reason is not None:
            reason = f"command cannot go to {attempt.to}: {reason}"
    else:
        reason = None  # release: the current commander only, checked by the workflow
    return Refusal(reason, audited=True) if reason is not None else None
