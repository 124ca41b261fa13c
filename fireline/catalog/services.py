"""Services in the catalog: owner team, responders, on-call rotation, escalation policy, guard.

Routes (label matchers -> playbook) are read by the ingress router; this module gives the
rest of a service its shape, and :class:`PinnedPolicy` the snapshot an incident keeps (taken
by :func:`fireline.catalog.model.pin_policy`, which resolves roles against the catalog), so
editing the catalog never changes an incident that is already running.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from fireline.playbook.durations import parse_duration
from fireline.playbook.spec import Strict

Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A duration written as ``15m`` (or plain seconds) in the catalog, kept as seconds."""

MAX_LEVELS = 10
MAX_TARGETS = 50
MAX_REPEAT = 10


class Strategy(StrEnum):
    everyone = "everyone"
    """Page every target of the level at once."""
    round_robin = "round_robin"
    """Page one target per time the level is reached, taking turns."""


class Target(Strict):
    """Who a level pages: exactly one of a person, a role (its members), or the rotation."""

    person: str | None = Field(default=None, min_length=1, max_length=128)
    role: str | None = Field(default=None, min_length=1, max_length=128)
    rotation: bool = False
    """The service's on-call rotation, resolved when the page is sent."""

    @model_validator(mode="after")
    def _one(self) -> Target:
        given = [self.person is not None, self.role is not None, self.rotation]
        if sum(given) != 1:
            raise ValueError("a target names exactly one of `person`, `role` or `rotation: true`")
        return self


class Level(Strict):
    """One rung of the ladder: whom to page, and how long they have before the next rung."""

    tier: int = Field(default=1, ge=0, le=3)
    delay: Seconds = 300.0
    """Time to acknowledge: the next level is paged when nobody acknowledged within it."""
    targets: list[Target] = Field(min_length=1, max_length=MAX_TARGETS)
    strategy: Strategy = Strategy.everyone


class EscalationPolicy(Strict):
    """Ordered levels, repeated up to ``repeat`` more times; an ack stops the clock."""

    levels: list[Level] = Field(min_length=1, max_length=MAX_LEVELS)
    repeat: int = Field(default=0, ge=0, le=MAX_REPEAT)
    ack_timeout: Seconds | None = 1800.0
    """An acknowledgement lapses after this long without resolution: back to triggered."""


class Override(Strict):
    """Someone covering the rotation for a window (holiday swap, sick day)."""

    person: str = Field(min_length=1, max_length=128)
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _window(self) -> Override:
        if self.end <= self.start:
            raise ValueError("an override ends after it starts")
        return self


class Rotation(Strict):
    """People taking turns: ``people[0]`` holds from ``handoff``, the next after ``period``."""

    people: list[str] = Field(min_length=1, max_length=MAX_TARGETS)
    handoff: datetime
    period: Seconds = 7 * 86400.0
    overrides: list[Override] = Field(default_factory=list, max_length=200)


class PagingChannel(Strict):
    """Where pages for a service go: a named target in settings (its URL or key live there)."""

    kind: Literal["webhook", "pagerduty"] = "webhook"
    target: str = Field(default="default", min_length=1, max_length=128)


class GuardPolicy(Strict):
    """How much automation may do to a service before a human must look."""

    max_runs: int = Field(default=3, ge=0, le=1000)
    """Automatic runs of a playbook per window (beyond that the run waits at a human gate)."""
    window: Seconds = 3600.0
    blast_budget: int = Field(default=10, ge=0, le=100_000)
    """Targets automatic runs may change per window."""
    breaker: bool = True
    """After a failed verification, the next run on the service waits at a human gate."""


class Service(Strict):
    owner_team: str = ""
    description: str = ""
    responders: list[str] = Field(default_factory=list, max_length=MAX_TARGETS)
    """Primary first, then secondary: the default ladder pages them in that order."""
    rotation: Rotation | None = None
    escalation: EscalationPolicy | None = None
    paging: list[PagingChannel] = Field(default_factory=lambda: [PagingChannel()])
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    routes: list[dict[str, Any]] = Field(default_factory=list)
    """Label matchers -> playbook and inputs: their shape belongs to the ingress router."""

    def policy(self) -> EscalationPolicy:
        """The service's policy, or one made from its rotation and responders."""
        if self.escalation is not None:
            return self.escalation
        levels: list[Level] = []
        if self.rotation is not None:
            levels.append(Level(tier=1, targets=[Target(rotation=True)]))
        for person in self.responders:
            levels.append(Level(tier=1 if not levels else 2, targets=[Target(person=person)]))
        if not levels:
            levels.append(Level(tier=1, targets=[Target(role="sre-oncall")]))
        return EscalationPolicy(levels=levels)


class PinnedLevel(Strict):
    """A level with its roles resolved to people at the moment the incident opened."""

    tier: int
    delay: float
    people: list[str] = Field(default_factory=list)
    rotation: bool = False
    strategy: Strategy = Strategy.everyone


class PinnedPolicy(Strict):
    """The escalation an incident keeps for its whole life (a snapshot, never re-read)."""

    levels: list[PinnedLevel]
    repeat: int = 0
    ack_timeout: float | None = None
    rotation: Rotation | None = None


def on_call(rotation: Rotation, at: datetime) -> str:
    """Who holds ``rotation`` at ``at``: an override covering ``at`` wins (the latest added)."""
    for override in reversed(rotation.overrides):
        if override.start <= at < override.end:
            return override.person
    elapsed = (at - rotation.handoff) / timedelta(seconds=1)
    turns = int(elapsed // rotation.period)
    return rotation.people[turns % len(rotation.people)]
