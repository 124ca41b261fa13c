"""Ladder arithmetic and rotations: table-driven, no Temporal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fireline.catalog.model import Catalog, pin_policy
from fireline.catalog.services import (
    PinnedLevel,
    PinnedPolicy,
    Rotation,
    Service,
    Strategy,
    on_call,
)
from fireline.incident import incident_start, incident_workflow_id
from workflows import escalation

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

ROTATION = Rotation.model_validate(
    {
        "people": ["alice", "bob", "erin"],
        "handoff": "2026-01-05T09:00:00Z",
        "period": "1d",
        "overrides": [
            {"person": "dana", "start": "2026-01-07T12:00:00Z", "end": "2026-01-07T18:00:00Z"}
        ],
    }
)

POLICY = PinnedPolicy(
    levels=[
        PinnedLevel(tier=1, delay=300, people=["alice", "bob"]),
        PinnedLevel(tier=2, delay=600, people=["carol"]),
        PinnedLevel(tier=3, delay=600, people=["dana"]),
    ],
    repeat=1,
    ack_timeout=1800,
)


class TestRotation:
    @pytest.mark.parametrize(
        ("at", "expected"),
        [
            (T0, "alice"),
            (T0 + timedelta(hours=23, minutes=59), "alice"),
            (T0 + timedelta(days=1), "bob"),
            (T0 + timedelta(days=2, hours=11), "erin"),
            (T0 + timedelta(days=2, hours=4), "dana"),  # override
            (T0 + timedelta(days=2, hours=9), "erin"),  # override over (end excluded)
            (T0 + timedelta(days=3), "alice"),  # wraps round
            (T0 - timedelta(hours=1), "erin"),  # before the first handoff: the previous turn
        ],
    )
    def test_who_is_on_call(self, at: datetime, expected: str) -> None:
        """Handoff time + period pick the holder; an override covering the moment wins."""
        assert on_call(ROTATION, at) == expected

    def test_override_must_end_after_it_starts(self) -> None:
        """A backwards override is refused when the catalog loads."""
        with pytest.raises(ValidationError, match="ends after it starts"):
            Rotation.model_validate(
                {
                    "people": ["a"],
                    "handoff": T0.isoformat(),
                    "overrides": [{"person": "b", "start": T0.isoformat(), "end": T0.isoformat()}],
                }
            )


class TestLadder:
    @pytest.mark.parametrize(
        ("index", "expected"),
        [
            (0, (0, 0, 1, ("alice", "bob"))),
            (1, (1, 0, 2, ("carol",))),
            (2, (2, 0, 3, ("dana",))),
            (3, (0, 1, 1, ("alice", "bob"))),  # the repeat
            (5, (2, 1, 3, ("dana",))),
        ],
    )
    def test_rungs(self, index: int, expected: tuple[int, int, int, tuple[str, ...]]) -> None:
        """index -> (level, cycle, tier, people) over the levels and the repeat."""
        rung = escalation.rung(POLICY, index, T0)
        assert rung is not None
        assert (rung.level, rung.cycle, rung.tier, rung.people) == expected

    @pytest.mark.parametrize("index", [6, 7, -1])
    def test_past_the_last_repeat_there_is_no_rung(self, index: int) -> None:
        assert escalation.rung(POLICY, index, T0) is None

    def test_due_time_is_the_level_delay(self) -> None:
        rung = escalation.rung(POLICY, 1, T0)
        assert rung is not None
        assert escalation.due_at(T0, rung) == T0 + timedelta(minutes=10)

    @pytest.mark.parametrize(("turn", "expected"), [(0, "a"), (1, "b"), (2, "c"), (3, "a")])
    def test_round_robin_takes_turns(self, turn: int, expected: str) -> None:
        policy = PinnedPolicy(
            levels=[
                PinnedLevel(tier=1, delay=60, people=["a", "b", "c"], strategy=Strategy.round_robin)
            ]
        )
        rung = escalation.rung(policy, 0, T0, turn)
        assert rung is not None
        assert rung.people == (expected,)

    def test_rotation_level_pages_the_holder_at_paging_time(self) -> None:
        """The same rung pages alice on Monday and bob on Tuesday."""
        policy = PinnedPolicy(
            levels=[PinnedLevel(tier=1, delay=60, people=["carol"], rotation=True)],
            rotation=ROTATION,
        )
        monday = escalation.rung(policy, 0, T0)
        tuesday = escalation.rung(policy, 0, T0 + timedelta(days=1))
        assert monday is not None
        assert tuesday is not None
        assert monday.people == ("carol", "alice")
        assert tuesday.people == ("carol", "bob")

    @pytest.mark.parametrize(("tier", "index"), [(0, 0), (1, 0), (2, 1), (3, 2)])
    def test_a_gate_starts_at_its_tier(self, tier: int, index: int) -> None:
        assert escalation.first_index_for_tier(POLICY, tier) == index

    @pytest.mark.parametrize(
        ("age_s", "timeout", "lapsed"),
        [(100, 1800, False), (1800, 1800, True), (99999, None, False)],
    )
    def test_ack_lapse(self, age_s: float, timeout: float | None, lapsed: bool) -> None:
        assert escalation.ack_lapsed(T0, timeout, T0 + timedelta(seconds=age_s)) is lapsed


class TestPinning:
    def catalog(self) -> Catalog:
        return Catalog.model_validate(
            {
                "roles": {"sre-oncall": {"tier": 1, "members": ["alice", "bob"]}},
                "services": {
                    "payments": {
                        "escalation": {
                            "levels": [
                                {"tier": 1, "delay": "5m", "targets": [{"role": "sre-oncall"}]},
                                {"tier": 2, "targets": [{"person": "carol"}, {"rotation": True}]},
                            ],
                            "repeat": 2,
                        },
                        "rotation": {"people": ["x", "y"], "handoff": T0.isoformat()},
                    }
                },
            }
        )

    def test_roles_resolved_when_pinned(self) -> None:
        """The pinned policy holds people, so a later roster edit does not reach it."""
        pinned = pin_policy(self.catalog(), self.catalog().services["payments"])
        assert pinned.levels[0].people == ["alice", "bob"]
        assert pinned.levels[0].delay == 300
        assert pinned.levels[1].rotation is True
        assert pinned.repeat == 2
        start = incident_start(self.catalog(), "payments", "k")
        edited = self.catalog().model_copy(deep=True)
        edited.roles["sre-oncall"].members.append("mallory")  # type: ignore[union-attr]
        assert start.policy.levels[0].people == ["alice", "bob"]

    def test_default_policy_from_responders(self) -> None:
        """No policy: the rotation first, then primary and secondary responders."""
        service = Service.model_validate(
            {"responders": ["p1", "p2"], "rotation": {"people": ["r"], "handoff": T0.isoformat()}}
        )
        levels = service.policy().levels
        assert [(lv.tier, lv.targets[0].rotation, lv.targets[0].person) for lv in levels] == [
            (1, True, None),
            (2, False, "p1"),
            (2, False, "p2"),
        ]

    @pytest.mark.parametrize(
        "target",
        [{}, {"person": "a", "role": "b"}, {"person": "a", "rotation": True}],
    )
    def test_a_target_names_exactly_one_thing(self, target: dict[str, object]) -> None:
        with pytest.raises(ValidationError, match="exactly one"):
            Service.model_validate({"escalation": {"levels": [{"targets": [target]}]}})

    def test_hostile_sizes_refused(self) -> None:
        """Hundreds of levels or a repeat of a million are catalog errors, not pages."""
        level = {"targets": [{"person": "a"}]}
        with pytest.raises(ValidationError):
            Service.model_validate({"escalation": {"levels": [level] * 11}})
        with pytest.raises(ValidationError):
            Service.model_validate({"escalation": {"levels": [level], "repeat": 10**6}})


class TestWorkflowIds:
    @pytest.mark.parametrize(
        "key",
        ["payments", 'am/{}:{alertname="x"}', "k" * 5000, "ünïcode key", "a\nb"],
    )
    def test_ids_are_bounded_and_url_safe(self, key: str) -> None:
        wid = incident_workflow_id(key)
        assert len(wid) <= 200
        assert all(c.isalnum() or c in "._:-" for c in wid)

    def test_different_keys_never_share_an_id(self) -> None:
        """Cleaning or cutting a key appends its digest, so near-identical keys stay apart."""
        keys = ["a/b", "a_b", "a b", "k" * 300, "k" * 301]
        assert len({incident_workflow_id(k) for k in keys}) == len(keys)
        assert incident_workflow_id("payments") == "incident-payments"


class TestContract:
    def test_an_oversized_batch_is_refused_by_the_model(self) -> None:
        """One signal cannot carry an unbounded number of alerts into history."""
        from fireline.incident import MAX_BATCH, AlertBatch
        from fireline.ingress.alert import Alert

        alert = Alert.model_validate(
            {
                "source": "generic",
                "notification_id": "n",
                "group_key": "g",
                "status": "firing",
                "name": "x",
                "received_at": T0.isoformat(),
            }
        )
        AlertBatch(batch_id="ok", alerts=[alert] * MAX_BATCH)
        with pytest.raises(ValidationError):
            AlertBatch(batch_id="big", alerts=[alert] * (MAX_BATCH + 1))

    @pytest.mark.parametrize("field", ["by", "comment"])
    def test_huge_names_and_comments_are_refused(self, field: str) -> None:
        from fireline.incident import Ack

        body = {"by": "alice", "comment": ""}
        body[field] = "x" * 5000
        with pytest.raises(ValidationError):
            Ack.model_validate(body)
