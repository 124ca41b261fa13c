"""The guard's rules as plain functions: rate limit, blast-radius budget, busy target, breaker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fireline.catalog.services import GuardPolicy
from workflows.guard import AdmitRequest, GuardLedger, Outcome, admit, guard_workflow_id, record

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def ask(
    ledger: GuardLedger, n: int, at: datetime, **kw: object
) -> tuple[bool, list[str], GuardLedger]:
    policy = GuardPolicy.model_validate(kw.pop("policy", {}))
    request = AdmitRequest(
        service="payments",
        incident_id=f"inc-{n}",
        policy=policy,
        targets=list(kw.pop("targets", [f"t{n}"])),  # type: ignore[call-overload]
        blast=int(kw.pop("blast", 1)),  # type: ignore[call-overload]
    )
    status, ledger = admit(ledger, request, at)
    return status.allowed, status.reasons, ledger


class TestRateLimit:
    @pytest.mark.parametrize(
        ("max_runs", "allowed"),
        [(0, [False, False]), (1, [True, False]), (2, [True, True])],
    )
    def test_runs_per_window(self, max_runs: int, allowed: list[bool]) -> None:
        ledger = GuardLedger()
        got = []
        for n in range(2):
            ok, _, ledger = ask(ledger, n, T0, policy={"max_runs": max_runs})
            got.append(ok)
        assert got == allowed

    def test_window_slides(self) -> None:
        """After the window, the old run no longer counts."""
        ok1, _, ledger = ask(GuardLedger(), 1, T0, policy={"max_runs": 1, "window": "1h"})
        ok2, why, ledger = ask(ledger, 2, T0 + timedelta(minutes=30), policy={"max_runs": 1})
        ok3, _, _ = ask(ledger, 3, T0 + timedelta(minutes=61), policy={"max_runs": 1})
        assert (ok1, ok2, ok3) == (True, False, True)
        assert "rate limit" in why[0]

    def test_asking_twice_counts_once(self) -> None:
        """A retried admission (same incident) is not a second run."""
        _, _, ledger = ask(GuardLedger(), 1, T0, policy={"max_runs": 1})
        ok, _, ledger = ask(ledger, 1, T0, policy={"max_runs": 1})
        assert ok is True
        assert len(ledger.entries) == 1


class TestBudget:
    @pytest.mark.parametrize(
        ("blasts", "budget", "allowed"),
        [([3, 3], 6, [True, True]), ([3, 4], 6, [True, False]), ([7], 6, [False])],
    )
    def test_targets_changed_per_window(
        self, blasts: list[int], budget: int, allowed: list[bool]
    ) -> None:
        ledger = GuardLedger()
        got = []
        for n, blast in enumerate(blasts):
            ok, _, ledger = ask(
                ledger, n, T0, blast=blast, policy={"blast_budget": budget, "max_runs": 10}
            )
            got.append(ok)
        assert got == allowed

    def test_a_target_being_changed_is_busy(self) -> None:
        """Two runs on the same target at once: the second waits for a human."""
        _, _, ledger = ask(GuardLedger(), 1, T0, targets=["db-main"], policy={"max_runs": 10})
        ok, why, _ = ask(ledger, 2, T0, targets=["db-main"], policy={"max_runs": 10})
        assert ok is False
        assert "db-main" in why[0]


class TestBreaker:
    def test_failed_verification_opens_and_a_human_pass_closes(self) -> None:
        policy = {"max_runs": 10}
        _, _, ledger = ask(GuardLedger(), 1, T0, policy=policy)
        ledger = record(ledger, Outcome(incident_id="inc-1", verified=False, detail="5xx"))
        assert ledger.breaker_open
        ok, why, ledger = ask(ledger, 2, T0, policy=policy)
        assert ok is False
        assert "breaker open" in why[0]
        assert "5xx" in why[0]
        # An automatic pass does not close it; one a human let through does.
        ledger = record(ledger, Outcome(incident_id="inc-2", verified=True, human_approved=False))
        assert ledger.breaker_open
        ledger = record(ledger, Outcome(incident_id="inc-2", verified=True, human_approved=True))
        assert not ledger.breaker_open
        ok, _, _ = ask(ledger, 3, T0, policy=policy)
        assert ok is True

    def test_breaker_off_in_policy(self) -> None:
        _, _, ledger = ask(GuardLedger(), 1, T0, policy={"max_runs": 10, "breaker": False})
        ledger = record(ledger, Outcome(incident_id="inc-1", verified=False))
        ok, _, _ = ask(ledger, 2, T0, policy={"max_runs": 10, "breaker": False})
        assert ok is True

    def test_refused_run_that_never_ran_frees_its_slot(self) -> None:
        policy = {"max_runs": 1}
        _, _, ledger = ask(GuardLedger(), 1, T0, policy=policy)
        _, _, ledger = ask(ledger, 2, T0, policy=policy)
        ledger = record(ledger, Outcome(incident_id="inc-2", verified=None, ran=False))
        assert [e.incident_id for e in ledger.entries] == ["inc-1"]

    def test_ledger_stays_bounded(self) -> None:
        """Ten thousand admissions in one window keep at most MAX_ENTRIES entries."""
        ledger = GuardLedger()
        for n in range(1200):
            _, _, ledger = ask(ledger, n, T0, policy={"max_runs": 5})
        assert len(ledger.entries) <= 1000

    def test_guard_ids_are_per_service_and_deployment(self) -> None:
        assert guard_workflow_id("payments", "fireline") != guard_workflow_id("search", "fireline")
        assert guard_workflow_id("a/b", "fireline") != guard_workflow_id("a_b", "fireline")
        # the same service in another deployment (another queue prefix) has a ledger of its own
        assert guard_workflow_id("payments", "fireline") != guard_workflow_id("payments", "t-1")
        assert guard_workflow_id("payments", "fireline").startswith("guard-")
