"""The compiled, validated form of a playbook: what a PlaybookWorkflow receives and runs.

A Plan carries everything the workflow needs (module names, domains, timeouts, retry policies,
checks, gates, compensations, expressions still to resolve) so workflow code never consults the
module registry or the file system, and the history records exactly what ran. Its ``hash`` is
the SHA-256 of its canonical JSON without the hash itself.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WAIT_MODULE = "core.wait"
"""Runs as a durable workflow timer, not an activity holding a worker slot."""
MAX_WAIT_S = 7 * 24 * 3600.0
"""A pause longer than a week is a schedule, not a runbook step: core.wait's input model and,
for values that arrive through expressions, the workflow refuse it."""


class Risk(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


_RISK_ORDER: tuple[Risk, ...] = (Risk.low, Risk.medium, Risk.high, Risk.critical)


class OnFailure(StrEnum):
    compensate = "compensate"
    """Roll back every completed step in reverse order (the default)."""
    halt = "halt"
    """Stop where it failed and leave everything as it is for a human."""
    ask = "ask"
    """Pause and wait for a human decision: retry (maybe with new inputs), skip, or compensate."""


class CheckResult(BaseModel):
    """What a check saw: ``satisfied`` decides, the rest is evidence for the audit trail."""

    satisfied: bool
    observed: Any = None
    expected: Any = None
    detail: str = ""


class Change(BaseModel):
    """One thing a step would change: where, what, and from which value to which."""

    target: str
    attribute: str
    before: Any = None
    after: Any = None


class Preview(BaseModel):
    """What a step would do if approved now, read from real state, changing nothing.

    Shown to approvers at the step's gate (status, API, Temporal UI banner, pages): the
    change as before -> after, how far it reaches, and how it would be undone.
    """

    mutates: bool
    summary: str
    changes: list[Change] = Field(default_factory=list)
    blast_radius: dict[str, int] = Field(
        default_factory=dict, description="how many targets, sessions, keys, replicas it touches"
    )
    rollback: str = Field(default="", description="how it is undone, or why it cannot be")
    warnings: list[str] = Field(default_factory=list)


class SourceRef(BaseModel):
    """Where a piece of a plan came from, for error messages and the status view."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class RetrySpec(BaseModel):
    """Temporal retry policy in plain numbers, so it survives the JSON round trip."""

    initial_interval_s: float = 1.0
    backoff: float = 2.0
    max_interval_s: float = 30.0
    max_attempts: int = 3
    non_retryable: list[str] = Field(default_factory=list)


class ActivityCall(BaseModel):
    """One invocation of a registered activity; ``with_`` may still hold ``${{ }}`` expressions."""

    model_config = ConfigDict(populate_by_name=True)

    module: str
    domain: str
    local: bool = False
    """Run as a local activity on the workflow worker (cheap checks without credentials)."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    start_to_close_s: float = 60.0
    heartbeat_s: float | None = None
    retry: RetrySpec = Field(default_factory=RetrySpec)
    when: str | None = None
    """Dotted path (``input.health_url``): the call is skipped when it resolves to nothing."""
    preview: str | None = None
    """The activity that reads what this call would change (same input, returns a Preview)."""


class CheckCall(ActivityCall):
    """A named check: preconditions run once, postconditions poll until satisfied or deadline."""

    name: str
    poll_interval_s: float = 2.0
    deadline_s: float = 60.0


class GateSpec(BaseModel):
    """A human approval gate in front of a step's action."""

    role: str
    tier: int = Field(default=1, ge=0, le=3)
    timeout_s: float = 900.0
    min_approvals: int = Field(default=1, ge=1)
    approvers: list[str] | None = None
    """Who may approve, resolved from the catalog at compile time; None admits any named person."""


class StepNode(BaseModel):
    kind: Literal["step"] = "step"
    id: str
    name: str
    action: ActivityCall
    risk: Risk = Risk.low
    mutates: bool = False
    idempotent: bool = True
    preconditions: list[CheckCall] = Field(default_factory=list)
    postconditions: list[CheckCall] = Field(default_factory=list)
    gate: GateSpec | None = None
    compensation: ActivityCall | None = None
    """Expressions here may also use ``input.*`` and ``output.*`` of the forward step."""
    on_failure: OnFailure = OnFailure.compensate
    decision_timeout_s: float = 3600.0
    """How long ``on_failure: ask`` waits for a human before it compensates."""
    is_check: bool = False
    """The action is a check used as a step: an unsatisfied result fails the step."""
    requires: list[str] = Field(default_factory=list)
    provides: list[str] = Field(default_factory=list)
    source: SourceRef | None = None


class ParallelNode(BaseModel):
    """Branches that run at once; one failing cancels the others, then policy applies."""

    kind: Literal["parallel"] = "parallel"
    id: str
    name: str
    branches: list[Node]
    source: SourceRef | None = None


class IncludeNode(BaseModel):
    """Another playbook run as a unit (a child workflow); its outputs are this node's outputs."""

    kind: Literal["include"] = "include"
    id: str
    name: str
    plan: Plan
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    gate: GateSpec | None = None
    on_failure: OnFailure = OnFailure.compensate
    decision_timeout_s: float = 3600.0
    source: SourceRef | None = None

    model_config = ConfigDict(populate_by_name=True)


Node = Annotated[StepNode | ParallelNode | IncludeNode, Field(discriminator="kind")]


class InputSpec(BaseModel):
    name: str
    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    description: str = ""
    required: bool = False
    default: Any = None


# -- decision rights, frozen from the catalog at compile time -----------------------------


class Person(BaseModel):
    """Who may decide, as the catalog said when the plan was compiled (contact left out)."""

    name: str
    roles: list[str] = Field(default_factory=list)
    tier: int = 0


class RiskRight(BaseModel):
    """Who may approve a step of one risk level, and how many must."""

    min_tier: int | None = None
    roles: list[str] = Field(default_factory=list)
    """Holding any of these roles qualifies as well as the tier does."""
    min_approvals: int = 1

    def admits(self, tier: int, roles: list[str]) -> bool:
        if self.min_tier is None and not self.roles:
            return True
        return (self.min_tier is not None and tier >= self.min_tier) or bool(
            set(roles) & set(self.roles)
        )

    def describe(self) -> str:
        parts = [f"tier {self.min_tier}+"] if self.min_tier is not None else []
        parts += [f"role {r}" for r in self.roles]
        return " or ".join(parts) or "anyone"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class WeeklyWindow(BaseModel):
    """Every week on ``days``, from ``start`` to ``end`` local time (``end`` <= ``start``
    runs past midnight into the next day)."""

    days: list[str]
    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        naive = local.replace(tzinfo=None)
        for back in (0, 1):
            day = (naive - timedelta(days=back)).date()
            if WEEKDAYS[day.weekday()] not in self.days:
                continue
            begin = datetime.combine(day, self.start)
            finish = datetime.combine(day, self.end)
            if finish <= begin:
                finish += timedelta(days=1)
            if begin <= naive < finish:
                return True
        return False


class ZoneOffset(BaseModel):
    """From the UTC instant ``since`` on (until the next entry), the zone's clocks read UTC
    plus ``seconds``."""

    since: datetime
    seconds: int


class EmbargoWindow(BaseModel):
    """A change freeze: mutating steps it covers need Tier 3 (soft) or are refused (hard).

    The zone's rules are resolved when the plan is compiled (``offsets``, see
    ``fireline.catalog.embargo.zone_offsets``), so the workflow never consults the time zone
    database: inside Temporal's sandbox ``zoneinfo`` is a restricted proxy, and a worker whose
    tzdata differs from another's would otherwise judge (and replay) the same instant
    differently.
    """

    name: str
    mode: Literal["soft", "hard"] = "soft"
    domains: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    start: datetime | None = None
    """Local wall-clock time in ``timezone`` (naive), with ``end``: a one-off window."""
    end: datetime | None = None
    weekly: list[WeeklyWindow] = Field(default_factory=list)
    reason: str = ""
    offsets: list[ZoneOffset] = Field(default_factory=list)
    """The zone's UTC offsets over the years a run of this plan can reach, in order; empty for
    UTC (and in plans compiled before offsets were frozen)."""

    def covers(self, domain: str | None, service: str | None, target: str | None) -> bool:
        return (
            (domain is not None and domain in self.domains)
            or (service is not None and service in self.services)
            or (target is not None and target in self.targets)
        )

    def local_time(self, now: datetime) -> datetime:
        """``now`` as the wall-clock time in the window's zone (naive)."""
        utc = now.astimezone(UTC)
        if self.offsets:
            at = bisect_right([o.since for o in self.offsets], utc)
            offset = self.offsets[max(at - 1, 0)].seconds
            return (utc + timedelta(seconds=offset)).replace(tzinfo=None)
        if self.timezone in ("UTC", "Etc/UTC"):
            return utc.replace(tzinfo=None)
        # A plan compiled before offsets were frozen: look the zone up as it always did.
        from zoneinfo import ZoneInfo

        return utc.astimezone(ZoneInfo(self.timezone)).replace(tzinfo=None)

    def active_at(self, now: datetime) -> bool:
        naive = self.local_time(now)
        if self.start is not None and self.end is not None and self.start <= naive < self.end:
            return True
        return any(w.contains(naive) for w in self.weekly)


class DecisionRights(BaseModel):
    """The catalog's roster and rules, frozen into the plan so that a catalog edit never
    changes a run already going (and the history shows which rules applied)."""

    people: dict[str, Person] = Field(default_factory=dict)
    open_roles: dict[str, int] = Field(default_factory=dict)
    """Roles without a member list (anyone named may act for them) and their tier."""
    risks: dict[Risk, RiskRight] = Field(default_factory=dict)
    separation_of_duties: list[Risk] = Field(default_factory=lambda: [Risk.high, Risk.critical])
    """Risks whose steps the person who started the run may not approve."""
    unsigned: list[Risk] = Field(default_factory=lambda: [Risk.low])
    """Risks for which an unsigned decision is accepted (recorded as unverified)."""
    owners: list[str] | None = None
    """Who may decide for ungated steps (the plan owner's role); None: anyone in the roster."""
    embargoes: list[EmbargoWindow] = Field(default_factory=list)
    service_input: str = "service"
    """The run input naming the service an embargo's ``services`` are matched against."""

    def right(self, risk: Risk) -> RiskRight:
        return self.risks.get(risk, RiskRight())

    def embargo(
        self, now: datetime, domain: str | None, service: str | None, target: str | None
    ) -> EmbargoWindow | None:
        """The embargo in force on this target now (a hard one before a soft one)."""
        hits = [e for e in self.embargoes if e.covers(domain, service, target) and e.active_at(now)]
        hits.sort(key=lambda e: e.mode != "hard")
        return hits[0] if hits else None


class Plan(BaseModel):
    name: str
    version: str = "1"
    owner: str = ""
    outage_class: str = ""
    description: str = ""
    inputs: list[InputSpec] = Field(default_factory=list)
    nodes: list[Node]
    outputs: dict[str, Any] = Field(default_factory=dict)
    on_failure: OnFailure = OnFailure.compensate
    source: SourceRef | None = None
    rights: DecisionRights | None = None
    """Who may decide, frozen from the catalog; None in plans compiled before it was."""
    hash: str = ""

    def content_hash(self) -> str:
        body = self.model_dump(mode="json", by_alias=True, exclude={"hash"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def sealed(self) -> Plan:
        """A copy carrying its own content hash."""
        return self.model_copy(update={"hash": self.content_hash()})

    def max_risk(self) -> Risk:
        """The highest risk of any step, included playbooks counted, for the UI's filters."""
        risks = [Risk.low]
        for node in self.walk():
            if isinstance(node, StepNode):
                risks.append(node.risk)
            elif isinstance(node, IncludeNode):
                risks.append(node.plan.max_risk())
        return max(risks, key=_RISK_ORDER.index)

    def walk(self) -> list[StepNode | ParallelNode | IncludeNode]:
        """Every node of this plan in document order (not descending into includes)."""
        out: list[StepNode | ParallelNode | IncludeNode] = []

        def visit(node: StepNode | ParallelNode | IncludeNode) -> None:
            out.append(node)
            if isinstance(node, ParallelNode):
                for branch in node.branches:
                    visit(branch)

        for node in self.nodes:
            visit(node)
        return out


ParallelNode.model_rebuild()
IncludeNode.model_rebuild()
Plan.model_rebuild()
