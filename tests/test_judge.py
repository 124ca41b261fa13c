"""The gate judge, rule by rule: every refusal message, and whether it is audited."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from fireline.identity.signing import DecisionClaim, generate_key, inputs_digest, sign_decision
from fireline.messages import ApprovalRecord, RunState, StepState, StepStatus
from fireline.plan import (
    Change,
    DecisionRights,
    EmbargoWindow,
    GateSpec,
    Person,
    Preview,
    Risk,
    RiskRight,
    WeeklyWindow,
)
from workflows.gate import (
    Attempt,
    Refusal,
    RunFacts,
    counted_approvals,
    judge,
    judge_cancel,
    needed_approvals,
    screen,
    screen_cancel,
)
from workflows.journal import render_banner

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # a Tuesday
PRIVATE, PUBLIC = generate_key()
INPUTS = {"target": "main", "pool": "edge"}

RIGHTS = DecisionRights(
    people={
        "alice": Person(name="alice", roles=["oncall"], tier=1),
        "bob": Person(name="bob", roles=["oncall"], tier=1),
        "carol": Person(name="carol", roles=["senior"], tier=2),
        "erin": Person(name="erin", roles=["senior"], tier=2),
        "dana": Person(name="dana", roles=["lead"], tier=3),
        "dave": Person(name="dave", roles=["dba"], tier=1),
    },
    open_roles={"anyone": 1},
    risks={
        Risk.low: RiskRight(),
        Risk.medium: RiskRight(min_tier=1),
        Risk.high: RiskRight(min_tier=2, roles=["dba"]),
        Risk.critical: RiskRight(min_tier=2, min_approvals=2),
    },
    owners=["alice", "bob"],
    embargoes=[
        EmbargoWindow(
            name="close",
            mode="soft",
            domains=["database"],
            timezone="Europe/Berlin",
            start=datetime(2026, 12, 1, 10, 30),  # 09:30 UTC
            end=datetime(2026, 12, 1, 12, 0),
            reason="ledger close",
        ),
        EmbargoWindow(
            name="weekend",
            mode="hard",
            targets=["ledger"],
            timezone="America/New_York",
            weekly=[WeeklyWindow(days=["tue"], start=time(4, 0), end=time(6, 0))],
        ),
    ],
)
GATE = GateSpec(role="senior", tier=2, approvers=["carol", "dana", "erin"])
RUN = RunFacts(
    workflow_id="run-1",
    plan_name="pb",
    requested_by="erin",
    rights=RIGHTS,
    trusted_keys={"k1": PUBLIC},
)


def step(**changes: Any) -> StepState:
    base: dict[str, Any] = {
        "id": "s",
        "name": "s",
        "risk": Risk.high,
        "status": StepStatus.awaiting_approval,
        "gate": GATE,
        "inputs": INPUTS,
        "mutates": True,
        "domain": "core",
    }
    base.update(changes)
    return StepState.model_validate(base)


def signed(
    person: str,
    action: str = "approve",
    *,
    digest: str | None = None,
    expires: timedelta = timedelta(minutes=5),
    **claim: Any,
) -> Any:
    body: dict[str, Any] = {
        "workflow_id": "run-1",
        "step": "s",
        "action": action,
        "person": person,
        "inputs_digest": inputs_digest(INPUTS) if digest is None else digest,
        "expires_at": NOW + expires,
    }
    body.update(claim)
    return sign_decision(DecisionClaim.model_validate(body), PRIVATE, "k1")


@dataclass
class Case:
    name: str
    attempt: Attempt
    expected: Refusal | None
    step: StepState | None = field(default_factory=step)
    run: RunFacts = RUN
    now: datetime = NOW
    gate: GateSpec | str | None = "from-step"


def approve(person: str, **kw: Any) -> Attempt:
    return Attempt("approve", person, "s", signed=signed(person), **kw)


def refused(reason: str) -> Refusal:
    return Refusal(reason, audited=True)


def quiet(reason: str) -> Refusal:
    return Refusal(reason, audited=False)


CASES = [
    Case("signed approval by a qualified person passes", approve("carol"), None),
    Case(
        "no such step",
        Attempt("approve", "carol", "nope"),
        quiet("no step 'nope' in pb"),
        step=None,
    ),
    Case(
        "a step not at its gate",
        approve("carol"),
        quiet("step 's' is not waiting for approval (it is running)"),
        step=step(status=StepStatus.running),
    ),
    Case(
        "a decision for a step not waiting for one",
        Attempt("skip", "alice", "s"),
        quiet("step 's' is not waiting for a decision (it is awaiting_approval)"),
    ),
    Case(
        "new inputs without retry",
        Attempt("skip", "carol", "s", inputs={"pool": "x"}),
        quiet("new inputs only make sense with retry"),
        step=step(status=StepStatus.awaiting_decision),
    ),
    Case(
        "new inputs for an included playbook",
        Attempt("retry", "carol", "s", inputs={"pool": "x"}),
        quiet("new inputs apply to module steps, not to included playbooks"),
        step=step(status=StepStatus.awaiting_decision, kind="include"),
    ),
    Case(
        "a person the catalog does not know",
        Attempt("approve", "mallory", "s"),
        quiet("mallory is not in the catalog"),
    ),
    Case(
        "an open role admits a name the catalog does not know (low risk, unsigned)",
        Attempt("approve", "zed", "s"),
        None,
        step=step(risk=Risk.low, gate=GateSpec(role="anyone", approvers=None)),
    ),
    Case(
        "a forged unsigned approval of a medium+ step",
        Attempt("approve", "carol", "s"),
        refused(
            "unsigned decision claiming carol refused: high steps need a decision signed by "
            "the Fireline API (use `fireline` or the API, not Temporal directly)"
        ),
    ),
    Case(
        "unsigned is fine where the rights allow it",
        Attempt("approve", "carol", "s"),
        None,
        step=step(risk=Risk.low),
    ),
    Case(
        "unsigned is accepted, unverified, by a run given no signing key",
        Attempt("approve", "carol", "s"),
        None,
        run=replace(RUN, trusted_keys={}),
    ),
    Case(
        "a signature for another person",
        Attempt("approve", "dana", "s", signed=signed("carol")),
        refused("the signed decision is for person 'carol', not 'dana'"),
    ),
    Case(
        "a signature for another run",
        Attempt("approve", "carol", "s", signed=signed("carol", workflow_id="run-2")),
        refused("the signed decision is for workflow_id 'run-2', not 'run-1'"),
    ),
    Case(
        "a signed rejection replayed as an approval",
        Attempt("approve", "carol", "s", signed=signed("carol", "reject")),
        refused("the signed decision is for action 'reject', not 'approve'"),
    ),
    Case(
        "an expired signature",
        Attempt("approve", "carol", "s", signed=signed("carol", expires=timedelta(0))),
        refused("decision by carol refused: signed decision expired at 2026-12-01T10:00:00+00:00"),
    ),
    Case(
        "a key the run does not trust",
        approve("carol"),
        refused("decision by carol refused: signed with key 'k1', which this run does not trust"),
        run=replace(RUN, trusted_keys={"other": PUBLIC}),
    ),
    Case(
        "approved inputs differ from the step's",
        Attempt("approve", "carol", "s", signed=signed("carol", digest=inputs_digest({"a": 1}))),
        refused(
            f"carol decided on other inputs than the step now has (signed "
            f"{inputs_digest({'a': 1})[:12]}, now {inputs_digest(INPUTS)[:12]}): look at the "
            "step again and decide anew"
        ),
    ),
    Case(
        "not a member of the gate's role",
        approve("alice"),
        refused("alice may not decide for role senior (carol, dana, erin)"),
    ),
    Case(
        "tier too low for the risk",
        approve("alice"),
        refused("alice (tier 1) may not approve a high step: it needs tier 2+ or role dba"),
        gate=GateSpec(role="oncall", approvers=["alice", "bob"]),
    ),
    Case(
        "a role the rights name qualifies despite the tier",
        approve("dave"),
        None,
        gate=GateSpec(role="dba", approvers=["dave"]),
    ),
    Case(
        "the same person twice",
        approve("carol"),
        refused("carol already approved 's'; another person must"),
        step=step(
            approvals=[ApprovalRecord(by="carol", decision="approved", at=NOW, inputs_digest="x")]
        ),
    ),
    Case(
        "the requester approving a high step",
        approve("erin"),
        refused(
            "erin started this run and may not approve its high steps (separation of duties): "
            "another person must"
        ),
    ),
    Case(
        "the incident's acknowledger approving a high step",
        approve("carol"),
        refused(
            "carol acknowledged this incident and may not approve its high steps (separation "
            "of duties): another person must"
        ),
        run=replace(RUN, separated=("carol",)),
    ),
    Case(
        "the requester may approve a medium step",
        approve("erin"),
        None,
        step=step(risk=Risk.medium),
    ),
    Case(
        "the requester may reject her own run's step",
        Attempt("reject", "erin", "s", signed=signed("erin", "reject")),
        None,
    ),
    Case(
        "a soft embargo needs tier 3",
        approve("carol"),
        refused(
            "embargo 'close' (ledger close) is in force: approvals need a Tier 3 person; "
            "carol is tier 2"
        ),
        step=step(domain="database"),
        now=NOW,
    ),
    Case(
        "a soft embargo admits tier 3",
        approve("dana"),
        None,
        step=step(domain="database"),
    ),
    Case(
        "before the soft window opens, tier 2 is enough",
        Attempt("approve", "carol", "s", signed=signed("carol", expires=timedelta(hours=1))),
        None,
        step=step(domain="database"),
        now=NOW - timedelta(minutes=31),
    ),
    Case(
        "a soft embargo does not cover steps that change nothing",
        approve("carol"),
        None,
        step=step(domain="database", mutates=False),
    ),
    Case(
        "a hard weekly embargo on a target refuses everyone",
        Attempt(
            "approve",
            "dana",
            "s",
            signed=signed("dana", digest=inputs_digest({"target": "ledger"})),
        ),
        refused("embargo 'weekend' is in force: changes to this target are refused"),
        step=step(inputs={"target": "ledger"}),
        now=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),  # Tue 04:30 in New York
    ),
    Case(
        "decide on a gated step needs the gate's role",
        Attempt("skip", "alice", "s", signed=signed("alice", "skip")),
        refused("alice may not decide for role senior (carol, dana, erin)"),
        step=step(status=StepStatus.awaiting_decision),
    ),
    Case(
        "decide on an ungated step needs the run's owners",
        Attempt("retry", "carol", "s", signed=signed("carol", "retry")),
        refused(
            "carol may not decide for 's': ungated steps are decided by the run's owners "
            "(alice, bob)"
        ),
        step=step(status=StepStatus.awaiting_decision, gate=None),
    ),
    Case(
        "a retry signature must cover the new inputs",
        Attempt("retry", "alice", "s", signed=signed("alice", "retry"), inputs={"pool": "evil"}),
        refused(
            f"alice decided on other inputs than the step now has (signed "
            f"{inputs_digest(INPUTS)[:12]}, now "
            f"{inputs_digest({**INPUTS, 'pool': 'evil'})[:12]}): look at the step again and "
            "decide anew"
        ),
        step=step(status=StepStatus.awaiting_decision, gate=None),
    ),
    Case(
        "a signed retry with new inputs by an owner passes",
        Attempt(
            "retry",
            "alice",
            "s",
            signed=signed("alice", "retry", digest=inputs_digest({**INPUTS, "pool": "b"})),
            inputs={"pool": "b"},
        ),
        None,
        step=step(status=StepStatus.awaiting_decision, gate=None),
    ),
    Case(
        "plans without rights keep the old member rule",
        Attempt("approve", "mallory", "s"),
        refused("mallory may not decide for role senior (carol, dana, erin)"),
        run=replace(RUN, rights=None),
    ),
    Case(
        "plans without rights keep the old two-person rule",
        Attempt("approve", "carol", "s"),
        refused("carol already approved 's'; another person must"),
        step=step(approvals=[ApprovalRecord(by="carol", decision="approved", at=NOW)]),
        run=replace(RUN, rights=None),
    ),
]


class TestJudge:
    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_rule(self, case: Case) -> None:
        gate = case.gate
        if gate == "from-step":
            gate = case.step.gate if case.step is not None else None
        assert isinstance(gate, GateSpec | None)
        assert case.expected == judge(case.attempt, case.step, gate, case.run, case.now)

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_validator_screen_answers_exactly_the_unaudited(self, case: Case) -> None:
        """The update validator refuses what the judge would refuse unaudited, nothing else:
        an audited refusal must reach the handler, or it could not be recorded."""
        gate = case.gate
        if gate == "from-step":
            gate = case.step.gate if case.step is not None else None
        assert isinstance(gate, GateSpec | None)
        unaudited = case.expected if case.expected and not case.expected.audited else None
        assert unaudited == screen(case.attempt, case.step, gate, case.run)


class TestCounting:
    def test_critical_needs_two_even_if_the_gate_says_one(self) -> None:
        assert needed_approvals(GATE, Risk.critical, RIGHTS) == 2

    def test_a_gate_may_ask_more(self) -> None:
        assert needed_approvals(GATE.model_copy(update={"min_approvals": 3}), Risk.low, RIGHTS) == 3

    def test_only_approvals_for_the_current_inputs_count(self) -> None:
        """An approval given for other inputs (a retry changed them) no longer opens the gate."""
        current = inputs_digest(INPUTS)
        s = step(
            approvals=[
                ApprovalRecord(by="carol", decision="approved", at=NOW, inputs_digest=current),
                ApprovalRecord(by="dana", decision="approved", at=NOW, inputs_digest="old"),
                ApprovalRecord(by="erin", decision="rejected", at=NOW, inputs_digest=current),
            ]
        )
        assert counted_approvals(s, RIGHTS) == 1
        assert counted_approvals(s, None) == 2


class TestBanner:
    def _state(self, **step_changes: Any) -> RunState:
        return RunState(
            workflow_id="run-1",
            playbook="pb",
            version="1",
            plan_hash="0" * 64,
            steps=[
                step(
                    gate_deadline=NOW,
                    **step_changes,
                )
            ],
        )

    def test_the_gate_shows_the_preview(self) -> None:
        preview = Preview(
            mutates=True,
            summary="drain web-3",
            changes=[Change(target="edge/web-3", attribute="weight", before=100, after=0)],
            rollback="weight back to 100",
        )
        banner = render_banner(self._state(preview=preview))
        assert "**Would change:** drain web-3" in banner
        assert "- `edge/web-3` weight: 100 → 0" in banner
        assert "Undo: weight back to 100" in banner

    def test_a_failed_preview_is_shown_not_hidden(self) -> None:
        banner = render_banner(self._state(preview_error="admin socket refused"))
        assert "preview unavailable: admin socket refused" in banner

    def test_unverified_approvals_are_marked(self) -> None:
        record = ApprovalRecord(by="bob", decision="approved", at=NOW, verified=False)
        banner = render_banner(self._state(status=StepStatus.succeeded, approvals=[record]))
        assert "approved by bob (unverified)" in banner


def cancel(person: str, **claim: Any) -> Attempt:
    return Attempt(
        "cancel", person, "", signed=signed(person, "cancel", step="", digest="", **claim)
    )


@dataclass
class CancelCase:
    name: str
    attempt: Attempt
    expected: Refusal | None
    steps: list[StepState] = field(default_factory=lambda: [step()])
    run: RunFacts = RUN
    running: bool = True


ALLOWED = "erin, alice, bob, carol, dana"
CANCEL_CASES = [
    CancelCase("the starter may cancel", cancel("erin"), None),
    CancelCase("an owner may cancel", cancel("alice"), None),
    CancelCase("an approver of one of the run's gates may cancel", cancel("dana"), None),
    CancelCase(
        "a known person with no say over the run is refused, audited",
        cancel("dave"),
        refused(
            f"dave may not cancel this run: its starter, its owners and its gates' approvers "
            f"may ({ALLOWED})"
        ),
    ),
    CancelCase(
        "a person the catalog does not know is refused before judging",
        cancel("mallory"),
        quiet("mallory is not in the catalog"),
    ),
    CancelCase(
        "a finished or rolling-back run has nothing to cancel",
        cancel("erin"),
        quiet("the run is no longer running: nothing to cancel"),
        running=False,
    ),
    CancelCase(
        "a cancel names no step",
        Attempt("cancel", "erin", "s"),
        quiet("a cancel is for the whole run, not for a step"),
    ),
    CancelCase(
        "a forged unsigned cancel of a run with high steps",
        Attempt("cancel", "alice", ""),
        refused(
            "unsigned cancel claiming alice refused: this run has high steps, and cancelling "
            "rolls them back; it needs a decision signed by the Fireline API (use `fireline "
            "cancel` or the API, not Temporal directly)"
        ),
    ),
    CancelCase(
        "unsigned is fine when every step is at a risk the rights let go unsigned",
        Attempt("cancel", "alice", ""),
        None,
        steps=[step(risk=Risk.low)],
    ),
    CancelCase(
        "unsigned is accepted by a run given no signing key",
        Attempt("cancel", "alice", ""),
        None,
        run=replace(RUN, trusted_keys={}),
    ),
    CancelCase(
        "a signed approval is not a cancel",
        Attempt("cancel", "alice", "", signed=signed("alice", "approve", step="", digest="")),
        refused("the signed decision is for action 'approve', not 'cancel'"),
    ),
    CancelCase(
        "a cancel signed for another run",
        cancel("alice", workflow_id="run-2"),
        refused("the signed decision is for workflow_id 'run-2', not 'run-1'"),
    ),
    CancelCase(
        "a cancel signature with inputs bound is not a run cancel",
        Attempt("cancel", "alice", "", signed=signed("alice", "cancel", step="")),
        refused(f"the signed decision is for inputs_digest {inputs_digest(INPUTS)!r}, not ''"),
    ),
    CancelCase(
        "an expired cancel",
        cancel("alice", expires_at=NOW - timedelta(seconds=1)),
        refused(
            "cancel by alice refused: signed decision expired at "
            f"{(NOW - timedelta(seconds=1)).isoformat()}"
        ),
    ),
    CancelCase(
        "a gate of an open role lets anyone named cancel",
        Attempt("cancel", "zed", ""),
        None,
        steps=[step(risk=Risk.low, gate=GateSpec(role="anyone", approvers=None))],
    ),
    CancelCase(
        "plans compiled before decision rights: anyone may cancel",
        Attempt("cancel", "mallory", ""),
        None,
        run=replace(RUN, rights=None),
    ),
]


class TestCancel:
    @pytest.mark.parametrize("case", CANCEL_CASES, ids=lambda c: c.name)
    def test_rule(self, case: CancelCase) -> None:
        got = judge_cancel(case.attempt, case.steps, case.run, NOW, case.running)
        assert got == case.expected

    @pytest.mark.parametrize("case", CANCEL_CASES, ids=lambda c: c.name)
    def test_validator_screen_answers_exactly_the_unaudited(self, case: CancelCase) -> None:
        got = screen_cancel(case.attempt, case.steps, case.run, case.running)
        if case.expected is not None and not case.expected.audited:
            assert got == case.expected
        else:
            assert got is None
