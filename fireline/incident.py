"""Everything that crosses the IncidentWorkflow boundary: start input, signals, updates, query.

Ingress starts an incident with signal-with-start: workflow id :func:`incident_workflow_id`
of the incident key, input :class:`IncidentStart` (built by :func:`incident_start` from the
catalog, which pins the escalation policy), signal :data:`SIGNAL_ALERTS` carrying one
:class:`AlertBatch`. The operator surface reads :data:`QUERY_STATUS` (:class:`IncidentState`)
and acts through the updates below. New fields always get defaults so old histories decode.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from fireline.catalog.model import Catalog, pin_policy
from fireline.catalog.services import (
    GuardPolicy,
    PagingChannel,
    PinnedPolicy,
    Service,
)
from fireline.identity.signing import SignedDecision
from fireline.ingress.alert import Alert
from fireline.messages import SA_PHASE, SA_PLAYBOOK
from fireline.plan import Person, Plan, Risk

INCIDENT_WORKFLOW = "IncidentWorkflow"
GUARD_WORKFLOW = "GuardWorkflow"
GUARD_QUEUE_SUFFIX = "-guards"
"""Guards have a task queue of their own (``<prefix>-guards``): in a storm the service's guard
must answer while hundreds of incidents' first tasks wait on the main queue, not behind them."""
GUARD_UPDATE_ADMIT_BATCH = "admit_batch"
"""Update to a GuardWorkflow: a list of ``workflows.guard.AdmitRequest`` -> a list of
:class:`GuardStatus`, one per request, decided in order."""

SIGNAL_ALERTS = "alerts"
"""Signal: one :class:`AlertBatch` (ingress coalesces concurrent notifications per key)."""
UPDATE_ACK = "ack"
"""Update: :class:`Ack` -> :class:`IncidentState`. Stops the ladder's clock."""
UPDATE_COMMAND = "command"
"""Update: :class:`Command` (take, hand over, hand back) -> :class:`IncidentState`."""
UPDATE_RESOLVE = "resolve"
"""Update: :class:`Resolve` -> :class:`IncidentState`. A person declares it resolved."""
UPDATE_CANCEL = "cancel"
"""Update: :class:`Resolve` -> :class:`IncidentState`. Stops the run (it compensates)."""
UPDATE_APPROVE = "approve"
"""Update: :class:`fireline.messages.Approval` -> :class:`IncidentState`. With step
:data:`GUARD_STEP` it decides the guard's gate; any other step is passed to the child run."""
UPDATE_REJECT = "reject"
"""Update: like :data:`UPDATE_APPROVE`, rejecting."""
GUARD_STEP = "guard"
"""The pseudo-step of the guard's human gate, held by the incident before its run starts."""
SIGNAL_APPROVE = "approve_gate"
"""Signal passthrough: :class:`fireline.messages.Approval` forwarded to the child run."""
SIGNAL_REJECT = "reject_gate"
"""Signal passthrough: :class:`fireline.messages.Approval` forwarded to the child run."""
QUERY_STATUS = "status"
"""Query: -> :class:`IncidentState`."""

SA_SERVICE = "FirelineService"
SA_SEVERITY = "FirelineSeverity"
SA_INCIDENT_KEY = "FirelineIncidentKey"
SA_VALUE_BYTES = 1000
"""An incident key's search attribute is cut to this many bytes of JSON: Temporal refuses a
start whose keyword value is over its size limit (2 KB by default), and a key is built from
labels, which a sender chooses."""

MAX_ID = 200
"""Temporal ids may be long, but the UI and logs should not be: longer keys are hashed."""
_ID_SAFE = re.compile(r"[^A-Za-z0-9._:-]")
"""Also safe in a URL path segment, so ``/v1/incidents/{id}`` needs no escaping."""
MAX_BATCH = 5000
"""Alerts per signal: a batch larger than this is refused by the payload model."""


def incident_workflow_id(key: str) -> str:
    """The workflow id of the incident for ``key``: readable when short, hashed when long.

    Characters outside a conservative set are replaced and the digest of the *whole* key is
    appended whenever anything was changed or cut, so two different keys never share an id.
    """
    cleaned = _ID_SAFE.sub("_", key)
    if cleaned == key and len(key) <= MAX_ID - len("incident-"):
        return f"incident-{key}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"incident-{cleaned[:120]}-{digest}"


class AlertBatch(BaseModel):
    """Notifications for one incident key, delivered as one signal."""

    batch_id: str = Field(min_length=1, max_length=128)
    alerts: list[Alert] = Field(max_length=MAX_BATCH)


class IncidentPhase(StrEnum):
    detected = "detected"
    triaging = "triaging"
    awaiting_approval = "awaiting-approval"
    remediating = "remediating"
    verifying = "verifying"
    compensating = "compensating"
    resolved = "resolved"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (IncidentPhase.resolved, IncidentPhase.failed)


COMMANDER_ROLE = "incident-commander"
"""The catalog role whose members may take command of any incident (and ack or cancel it)."""
COMMAND_MIN_TIER = 1
"""Responders below this tier may acknowledge but not take command."""


class IncidentRights(BaseModel):
    """Who may ack, command and cancel this incident, pinned from the catalog at opening.

    Judged by :func:`workflows.gate.judge_incident`; like the escalation policy, a catalog
    edit never changes the rights of an incident already open.
    """

    people: dict[str, Person] = Field(default_factory=dict)
    """The roster (name, roles, tier): who the catalog knows at all."""
    responders: list[str] = Field(default_factory=list)
    """The service's responders, its rotation (overrides included) and every person its
    ladder pages: they may acknowledge."""
    owners: list[str] = Field(default_factory=list)
    """Members of the owner team's role (``decision_rights.owners[owner_team]``)."""
    commanders: list[str] = Field(default_factory=list)
    """Members of :data:`COMMANDER_ROLE`: they may command, ack and cancel any incident."""
    command_min_tier: int = COMMAND_MIN_TIER
    open: bool = False
    """The catalog names nobody for this service (an open role on the ladder, or no roster):
    anyone named may act, signatures still checked."""
    unsigned: list[str] = Field(default_factory=list)
    """Actions accepted without a signature even where the incident trusts keys: ``ack`` when
    the catalog lets low-risk decisions go unsigned, ``command`` for medium, ``cancel`` and the
    guard gate's ``approve``/``reject`` when every step of the routed playbook is at an
    unsigned risk."""


class IncidentStart(BaseModel):
    """Workflow input: the routed service, its playbook and the policy pinned at opening."""

    key: str = Field(min_length=1, max_length=2048)
    service: str = Field(min_length=1, max_length=256)
    severity: str = "unknown"
    title: str = ""
    plan: Plan | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    policy: PinnedPolicy
    responders: list[str] = Field(default_factory=list)
    paging: list[PagingChannel] = Field(default_factory=list)
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    previous_incident: str | None = None
    """Run id (or workflow id) of the incident this key had before, when ingress knows it."""
    drill: bool = False
    task_queue_prefix: str = "fireline"
    requested_by: str = "ingress"
    trusted_keys: dict[str, str] = Field(default_factory=dict)
    """Public keys whose signed decisions the run accepts (as ``RunRequest.trusted_keys``):
    the API's signed approvals of the run's gates verify against them, and so do its signed
    acks, commands and cancels of the incident itself."""
    rights: IncidentRights | None = None
    """Who may ack, command and cancel; None (incidents opened before rights): anyone."""
    upsert_search_attributes: bool = True
    """Set service, severity, key, playbook and phase as search attributes (the names in
    :data:`fireline.messages.SEARCH_ATTRIBUTES`, which ``fireline up`` registers) unless the
    starter already did; off only for a server where they are not registered."""
    history_limit: int = Field(default=8000, ge=50, le=40_000)
    """Continue-as-new beyond this many history events (Temporal warns at 10k)."""
    guard_timeout_s: float = Field(default=30.0, ge=0.5, le=600.0)
    """How long one ask of the guard may take; after a few the run waits for a person."""
    history_bytes_limit: int = Field(default=256 * 1024, ge=16 * 1024, le=50 * 1024 * 1024)
    """Continue-as-new past this much history too: a storm's alert batches are large, and a
    worker that lost the incident from its cache replays all of it in one task."""
    run_poll_s: float = Field(default=10.0, ge=1.0, le=600.0)
    """How often the incident reads its run's status (gates opened, mutating steps started)."""
    run_poll_max_s: float = Field(default=60.0, ge=1.0, le=600.0)
    """The reading backs off to this while nothing changes (a run waiting at a gate)."""
    carried: IncidentState | None = None
    """Set only by continue-as-new: the state so far, carried into the new run."""


class Ack(BaseModel):
    by: str = Field(min_length=1, max_length=128)
    comment: str = Field(default="", max_length=2000)
    signed: SignedDecision | None = None
    """The API's signature of ``by``'s decision (claim action ``ack``, step "")."""


class Command(BaseModel):
    """``take``: ``by`` becomes commander; ``handover``: to ``to``; ``release``: hand back."""

    action: Literal["take", "handover", "release"] = "take"
    by: str = Field(min_length=1, max_length=128)
    to: str | None = Field(default=None, min_length=1, max_length=128)
    comment: str = Field(default="", max_length=2000)
    signed: SignedDecision | None = None
    """Claim action ``command``, step the command's ``action``, inputs digest over
    :meth:`claim_inputs` (so a signed handover names its successor)."""

    def claim_inputs(self) -> dict[str, Any] | None:
        return {"to": self.to} if self.to is not None else None


class Resolve(BaseModel):
    by: str = Field(min_length=1, max_length=128)
    comment: str = Field(default="", max_length=2000)
    signed: SignedDecision | None = None
    """For a cancel: claim action ``cancel``, step ""."""


class TimelineEvent(BaseModel):
    """One thing that happened, timestamped: alert, page, ack, approval, action, check, ..."""

    at: datetime
    kind: str
    actor: str = "fireline"
    message: str = ""
    step: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class PageRecord(BaseModel):
    at: datetime
    person: str
    tier: int
    level: int
    cycle: int
    channel: str
    reason: str = "escalation"
    """``escalation``, ``gate`` (nobody decided within a tier's target) or ``retrigger``."""
    delivered: bool = False
    attempts: int = 0
    error: str | None = None


class AckRecord(BaseModel):
    at: datetime
    by: str
    comment: str = ""
    source: str = "fireline"
    verified: bool = False
    """The acknowledger was proven by a trusted signature."""


class AlertCounts(BaseModel):
    total: int = 0
    firing: int = 0
    resolved: int = 0
    duplicates: int = 0
    by_name: dict[str, int] = Field(default_factory=dict)
    first_at: datetime | None = None
    last_at: datetime | None = None


class EscalationStatus(BaseModel):
    state: Literal["triggered", "acknowledged", "commanded", "exhausted", "stopped"] = "triggered"
    level: int = 0
    cycle: int = 0
    tier: int = 0
    paged: list[str] = Field(default_factory=list)
    next_at: datetime | None = None
    reason: str = "escalation"
    """What the ladder is climbing for: the incident (``escalation``) or a gate (``gate``)."""
    gate_step: str | None = None
    index: int = 0
    """Position on the ladder: cycle * levels + level."""
    since: datetime | None = None
    """When the current rung was paged."""
    turns: dict[str, int] = Field(default_factory=dict)
    """Visits per level, for round robin."""


class GuardStatus(BaseModel):
    """The guard's answer for this incident's run, and the counts it was based on."""

    allowed: bool = True
    needs_human: bool = False
    reasons: list[str] = Field(default_factory=list)
    runs_in_window: int = 0
    max_runs: int = 0
    blast_used: int = 0
    blast_budget: int = 0
    breaker_open: bool = False


class RunSummary(BaseModel):
    workflow_id: str | None = None
    playbook: str | None = None
    phase: str | None = None
    mutated: bool = False
    """A mutating step has started: a resolved alert no longer cancels the run."""
    verified: bool | None = None
    """All postconditions of mutating steps were satisfied (None: none ran)."""
    blast: int = 0
    reason: str | None = None


class IncidentState(BaseModel):
    """What the ``status`` query returns (and what continue-as-new carries over)."""

    incident_id: str = ""
    key: str = ""
    service: str = ""
    severity: str = "unknown"
    title: str = ""
    phase: IncidentPhase = IncidentPhase.detected
    drill: bool = False
    previous_incident: str | None = None
    opened_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    contained_at: datetime | None = None
    resolved_at: datetime | None = None
    auto_resolved: bool = False
    resolution: str | None = None
    resolved_by: str | None = None
    """``alert`` (the source resolved it), ``automation`` (the run fixed it), or a person."""
    commander: str | None = None
    alerts: AlertCounts = Field(default_factory=AlertCounts)
    recent_alerts: list[Alert] = Field(default_factory=list)
    acks: list[AckRecord] = Field(default_factory=list)
    pages: list[PageRecord] = Field(default_factory=list)
    escalation: EscalationStatus = Field(default_factory=EscalationStatus)
    escalations_per_tier: dict[str, int] = Field(default_factory=dict)
    guard: GuardStatus = Field(default_factory=GuardStatus)
    run: RunSummary = Field(default_factory=RunSummary)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    timeline_dropped: int = 0
    seen_ids: list[str] = Field(default_factory=list)
    """Recent notification ids (bounded), for exact dedupe of redeliveries."""
    seen_batches: list[str] = Field(default_factory=list)
    firing: list[str] = Field(default_factory=list)
    """Identities (fingerprint or name + labels) of the alerts still firing."""
    guard_approved_by: str | None = None
    carry: dict[str, Any] = Field(default_factory=dict)
    """Workflow bookkeeping that continue-as-new carries (pending resolve, cancel, gates)."""
    runs: int = 1
    """How many workflow runs (continue-as-new) this incident has spanned."""


IncidentStart.model_rebuild()


def search_attributes(start: IncidentStart) -> TypedSearchAttributes:
    """What to start an incident with (signal-with-start), so the UI filters by them.

    The phase is the one the incident's first task enters (triaging), so that task writes no
    search attributes of its own: one visibility write less per incident, which counts when a
    storm opens hundreds at once."""
    pairs: list[SearchAttributePair[str]] = [
        SearchAttributePair(SearchAttributeKey.for_keyword(SA_SERVICE), start.service),
        SearchAttributePair(SearchAttributeKey.for_keyword(SA_SEVERITY), start.severity),
        SearchAttributePair(
            SearchAttributeKey.for_keyword(SA_INCIDENT_KEY), fit_search_attribute(start.key)
        ),
        SearchAttributePair(SearchAttributeKey.for_keyword(SA_PHASE), IncidentPhase.triaging.value),
    ]
    if start.plan is not None:
        pairs.append(
            SearchAttributePair(SearchAttributeKey.for_keyword(SA_PLAYBOOK), start.plan.name)
        )
    return TypedSearchAttributes(pairs)


def fit_search_attribute(value: str, limit: int = SA_VALUE_BYTES) -> str:
    """``value`` cut so that its JSON, as Temporal sizes a search attribute (non-ASCII escaped:
    up to 12 bytes a character), stays within ``limit`` bytes."""
    if len(json.dumps(value)) <= limit:
        return value
    size = 2  # the quotes
    for n, char in enumerate(value):
        size += len(json.dumps(char)) - 2
        if size > limit:
            return value[:n]
    return value


def pin_rights(catalog: Catalog, service: Service, plan: Plan | None = None) -> IncidentRights:
    """Snapshot who may ack, command and cancel an incident of ``service`` (see
    :class:`IncidentRights`); roles are resolved to their members now."""
    policy = pin_policy(catalog, service)
    responders: list[str] = list(service.responders)
    if service.rotation is not None:
        responders += service.rotation.people + [o.person for o in service.rotation.overrides]
    open_ladder = False
    for level in policy.levels:
        for person in level.people:
            if person.startswith("role:"):
                open_ladder = True
            else:
                responders.append(person)
    spec = catalog.decision_rights
    owner_role = spec.owners.get(service.owner_team) or (
        service.owner_team if service.owner_team in catalog.roles else None
    )
    owners = (catalog.approvers(owner_role) or []) if owner_role else []
    commanders = (
        (catalog.approvers(COMMANDER_ROLE) or []) if COMMANDER_ROLE in catalog.roles else []
    )
    roster = catalog.roster()
    unsigned = [
        action
        for action, risk in (("ack", Risk.low), ("command", Risk.medium))
        if risk in spec.unsigned
    ]
    if (plan.max_risk() if plan is not None else Risk.low) in spec.unsigned:
        # Cancelling rolls the run back, and the guard's gate lets it run: as risky as its
        # riskiest step.
        unsigned += ["cancel", "approve", "reject"]
    return IncidentRights(
        people={
            name: Person(name=name, roles=catalog.roles_of(name), tier=catalog.tier_of(name))
            for name in roster
        },
        responders=list(dict.fromkeys(responders)),
        owners=owners,
        commanders=commanders,
        open=open_ladder or not roster,
        unsigned=unsigned,
    )


def incident_start(
    catalog: Catalog,
    service: str,
    key: str,
    *,
    severity: str = "unknown",
    title: str = "",
    plan: Plan | None = None,
    inputs: dict[str, Any] | None = None,
    drill: bool = False,
    previous_incident: str | None = None,
    task_queue_prefix: str = "fireline",
    trusted_keys: dict[str, str] | None = None,
) -> IncidentStart:
    """The start input for a routed alert, with the service's policy pinned now."""
    raw = catalog.services.get(service)
    svc = raw if isinstance(raw, Service) else Service.model_validate(raw or {})
    return IncidentStart(
        rights=pin_rights(catalog, svc, plan),
        key=key,
        service=service,
        severity=severity,
        title=title,
        plan=plan,
        inputs=inputs or {},
        policy=pin_policy(catalog, svc),
        responders=list(svc.responders),
        paging=list(svc.paging),
        guard=svc.guard,
        previous_incident=previous_incident,
        drill=drill,
        task_queue_prefix=task_queue_prefix,
        trusted_keys=trusted_keys or {},
    )
