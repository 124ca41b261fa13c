"""Ladder arithmetic: which rung comes next, whom it pages, when the one after it is due.

Plain functions over the pinned policy so the incident workflow only keeps a position
(``index`` = cycle * levels + level) and a clock; everything here is table-tested without
Temporal. Rotations are resolved at the moment a page is sent (``at``), never earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fireline.catalog.services import PinnedPolicy, Strategy, on_call


@dataclass(frozen=True)
class Rung:
    """One reached level of the ladder, with the people it pages."""

    index: int
    level: int
    cycle: int
    tier: int
    delay_s: float
    people: tuple[str, ...]


def rung_count(policy: PinnedPolicy) -> int:
    """How many rungs the ladder has, repeats included."""
    return len(policy.levels) * (policy.repeat + 1)


def position(policy: PinnedPolicy, index: int) -> tuple[int, int] | None:
    """``(level, cycle)`` of rung ``index``, or None past the last repeat."""
    if index < 0 or index >= rung_count(policy):
        return None
    return index % len(policy.levels), index // len(policy.levels)


def candidates(policy: PinnedPolicy, level: int, at: datetime) -> list[str]:
    """Everyone a level could page at ``at``: named people, then whoever holds the rotation."""
    spec = policy.levels[level]
    people = list(spec.people)
    if spec.rotation and policy.rotation is not None:
        holder = on_call(policy.rotation, at)
        if holder not in people:
            people.append(holder)
    return people


def rung(policy: PinnedPolicy, index: int, at: datetime, turn: int = 0) -> Rung | None:
    """Rung ``index`` as paged at ``at``; ``turn`` counts earlier visits (round robin)."""
    where = position(policy, index)
    if where is None:
        return None
    level, cycle = where
    spec = policy.levels[level]
    people = candidates(policy, level, at)
    if spec.strategy is Strategy.round_robin and people:
        people = [people[turn % len(people)]]
    return Rung(
        index=index,
        level=level,
        cycle=cycle,
        tier=spec.tier,
        delay_s=spec.delay,
        people=tuple(people),
    )


def due_at(paged_at: datetime, current: Rung) -> datetime:
    """When the next rung is paged if nobody acknowledges (or decides, at a gate)."""
    return paged_at + timedelta(seconds=current.delay_s)


def first_index_for_tier(policy: PinnedPolicy, tier: int) -> int:
    """The first rung at ``tier`` or above: a tier-2 gate does not page tier-1 people first.

    Falls back to the last level when no level reaches the tier, so somebody is paged.
    """
    for n, level in enumerate(policy.levels):
        if level.tier >= tier:
            return n
    return len(policy.levels) - 1


def ack_lapsed(acked_at: datetime, ack_timeout_s: float | None, now: datetime) -> bool:
    """An acknowledgement older than the policy's ack timeout returns the incident to triggered."""
    if ack_timeout_s is None:
        return False
    return now >= acked_at + timedelta(seconds=ack_timeout_s)
