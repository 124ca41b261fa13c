"""HAProxy modules: drain, disable, enable and weigh servers through the runtime API.

Every change records the state it found (admin state, weight, as ``show servers state``
reports them) and is compensated by ``platform.haproxy_restore``, which puts exactly that back.
Targets are named in settings (``targets.haproxy.<name>``: ``socket`` or ``address``), never
in inputs. The checks run on the platform queue, where the sockets are reachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from temporalio.exceptions import ApplicationError

from activities.core.runtime import refused, target_settings, unavailable
from activities.platform.haproxy_api import (
    AdminState,
    HaproxyAdmin,
    HaproxyError,
    HaproxyTarget,
    Name,
    ServerState,
    Unreachable,
)
from activities.platform.runtime import Journal, stepping
from fireline.modules import CheckRef, CompensationRef, ModuleSet, check, module, preview
from fireline.plan import Change, CheckResult, Preview, Risk
from fireline.runtime.settings import Settings

log = structlog.get_logger(__name__)

KIND = "haproxy"
MAX_SERVERS = 256
"""Servers one step may touch; a bigger list is a mistake, not a remediation."""

_RESTORE = CompensationRef(
    module="platform.haproxy_restore",
    with_={
        "target": "${{ input.target }}",
        "backend": "${{ input.backend }}",
        "servers": "${{ output.previous }}",
    },
)
_KEEP_HEALTHY = CheckRef(
    check="platform.haproxy_healthy",
    with_={
        "target": "${{ input.target }}",
        "backend": "${{ input.backend }}",
        "min_healthy": "${{ input.keep_healthy }}",
        "excluding": "${{ input.servers }}",
    },
)


def _state_check(state: AdminState) -> CheckRef:
    return CheckRef(
        check="platform.haproxy_servers_match",
        with_={
            "target": "${{ input.target }}",
            "backend": "${{ input.backend }}",
            "servers": "${{ input.servers }}",
            "admin_state": state,
        },
        deadline_s=30,
        poll_interval_s=0.5,
    )


# -- inputs and outputs -------------------------------------------------------------------


class BackendRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="name of the HAProxy in settings (targets.haproxy.NAME)")
    backend: Name


class ServersInput(BackendRef):
    servers: list[Name] = Field(min_length=1, max_length=MAX_SERVERS)

    @field_validator("servers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class TakeOutInput(ServersInput):
    keep_healthy: int = Field(
        ge=0,
        description="refuse unless this many other servers of the backend stay healthy; "
        "required, so every playbook says how much capacity it must keep",
    )


class DrainInput(TakeOutInput):
    wait_s: float = Field(
        default=300.0, ge=0, le=3600, description="how long to wait for sessions to end"
    )
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)


class WeightsInput(BackendRef):
    weights: dict[Name, int] = Field(min_length=1, max_length=MAX_SERVERS)
    keep_healthy: int = Field(ge=0, description="refuse unless this many servers are healthy")

    @field_validator("weights")
    @classmethod
    def _range(cls, value: dict[str, int]) -> dict[str, int]:
        for server, weight in value.items():
            if not 0 <= weight <= 256:
                raise ValueError(f"weight of {server} is {weight}; HAProxy takes 0..256")
        return value


class ServerSetting(BaseModel):
    """What a restore puts back on one server. A ServerState validates as one."""

    model_config = ConfigDict(extra="ignore")

    server: Name
    admin_state: AdminState
    weight: int = Field(ge=0, le=256)


class RestoreInput(BackendRef):
    servers: list[ServerSetting] = Field(min_length=1, max_length=MAX_SERVERS)


class ChangeOutput(BaseModel):
    """What a step found, what it left, and which servers it actually changed."""

    target: str
    backend: str
    previous: list[ServerState] = Field(description="as found before the first change")
    current: list[ServerState] = Field(description="the same servers as left by the step")
    changed: list[str] = Field(description="servers this attempt sent a command for")


class DrainOutput(ChangeOutput):
    remaining_sessions: int = Field(description="scur summed over the drained servers at the end")
    drained: bool = Field(description="every drained server reached 0 sessions in time")
    waited_s: float


class BackendInput(BackendRef):
    pass


class ServersOutput(BaseModel):
    target: str
    backend: str
    servers: list[ServerState] = Field(description=f"the first {MAX_SERVERS}, in config order")
    truncated: bool = Field(default=False, description="the backend has more servers than that")
    healthy: int = Field(description="healthy servers of the whole backend")


class DriftInput(BackendRef):
    known_good: list[ServerSetting] = Field(min_length=1, max_length=MAX_SERVERS)


class Drift(BaseModel):
    server: str
    attribute: str
    known_good: Any
    current: Any


class DriftOutput(BaseModel):
    target: str
    backend: str
    drifted: list[Drift]
    count: int
    current: list[ServerState]


class HealthyInput(BackendRef):
    min_healthy: int = Field(default=1, ge=0)
    excluding: list[Name] = Field(
        default_factory=list, description="servers not counted (those a step takes out)"
    )


class MatchInput(BackendRef):
    """Servers expected in a state: one admin state for ``servers``, and/or per-server
    ``weights``, and/or full ``settings`` (what a restore applied)."""

    servers: list[Name] = Field(default_factory=list)
    admin_state: AdminState | None = None
    weights: dict[Name, int] | None = None
    settings: list[ServerSetting] | None = None

    @model_validator(mode="after")
    def _something(self) -> MatchInput:
        if self.admin_state is None and not self.weights and not self.settings:
            raise ValueError("expect something: admin_state, weights or settings")
        if self.admin_state is not None and not self.servers:
            raise ValueError("admin_state needs the servers it applies to")
        return self


# -- the modules ----------------------------------------------------------------------------


class HaproxyModules(ModuleSet):
    """HAProxy runtime API modules; one journal per worker (see activities.platform.runtime)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.journal = Journal()

    def admin(self, target: str) -> HaproxyAdmin:
        return HaproxyAdmin(target_settings(self.settings, KIND, target, HaproxyTarget))

    # -- reading ----------------------------------------------------------------------------

    @module(
        "platform.haproxy_servers",
        domain="platform",
        risk=Risk.low,
        provides=["haproxy.state_recorded"],
        timeout=timedelta(seconds=30),
    )
    async def servers(self, request: BackendInput) -> ServersOutput:
        """Read a backend's servers (show servers state + show stat); changes nothing."""
        async with stepping("platform.haproxy_servers", backend=request.backend):
            states = await _read(self.admin(request.target), request.backend)
            return ServersOutput(
                target=request.target,
                backend=request.backend,
                servers=states[:MAX_SERVERS],
                truncated=len(states) > MAX_SERVERS,
                healthy=sum(s.healthy for s in states),
            )

    @module(
        "platform.haproxy_drift",
        domain="platform",
        risk=Risk.low,
        provides=["haproxy.drift_known"],
        timeout=timedelta(seconds=30),
    )
    async def drift(self, request: DriftInput) -> DriftOutput:
        """Compare a backend's servers with the last known good settings; changes nothing."""
        async with stepping("platform.haproxy_drift", backend=request.backend):
            states = await _read(self.admin(request.target), request.backend)
            by_name = _select(states, [s.server for s in request.known_good], request)
            drifted = [
                Drift(server=want.server, attribute=attr, known_good=good, current=now)
                for want in request.known_good
                for attr, good, now in (
                    ("admin_state", want.admin_state, by_name[want.server].admin_state),
                    ("weight", want.weight, by_name[want.server].weight),
                )
                if good != now
            ]
            return DriftOutput(
                target=request.target,
                backend=request.backend,
                drifted=drifted,
                count=len(drifted),
                current=[s for s in states if s.server in {g.server for g in request.known_good}],
            )

    # -- changing ---------------------------------------------------------------------------

    @module(
        "platform.haproxy_drain",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        preconditions=[_KEEP_HEALTHY],
        postconditions=[_state_check("drain")],
        provides=["haproxy.servers_out_of_rotation"],
        timeout=timedelta(hours=1, minutes=5),
        heartbeat=timedelta(seconds=10),
    )
    async def drain(self, request: DrainInput) -> DrainOutput:
        """Drain servers (no new sessions) and wait until their sessions end or wait_s passes."""
        async with stepping("platform.haproxy_drain", backend=request.backend):
            admin = self.admin(request.target)
            previous, changed = await self._apply(
                admin, request, {s: ("drain", None) for s in request.servers}
            )
            started = time.monotonic()
            deadline = started + request.wait_s
            draining = set(request.servers)
            seen: int | None = None
            while True:
                current = await _read(admin, request.backend)
                remaining = sum(s.sessions or 0 for s in current if s.server in draining)
                if remaining == 0 or time.monotonic() >= deadline:
                    break
                if remaining != seen:
                    log.info("waiting for sessions to end", remaining=remaining)
                    seen = remaining
                await asyncio.sleep(
                    min(request.poll_interval_s, max(deadline - time.monotonic(), 0))
                )
            waited = time.monotonic() - started
            log.info("drained", remaining=remaining, waited_s=round(waited, 2), changed=changed)
            return DrainOutput(
                target=request.target,
                backend=request.backend,
                previous=previous,
                current=[s for s in current if s.server in draining],
                changed=changed,
                remaining_sessions=remaining,
                drained=remaining == 0,
                waited_s=round(waited, 3),
            )

    @module(
        "platform.haproxy_disable",
        domain="platform",
        risk=Risk.high,
        mutates=True,
        compensation=_RESTORE,
        preconditions=[_KEEP_HEALTHY],
        postconditions=[_state_check("maint")],
        provides=["haproxy.servers_out_of_rotation"],
        timeout=timedelta(seconds=60),
    )
    async def disable(self, request: TakeOutInput) -> ChangeOutput:
        """Put servers into maintenance: their sessions are cut and they get no traffic."""
        async with stepping("platform.haproxy_disable", backend=request.backend):
            return await self._change(request, {s: ("maint", None) for s in request.servers})

    @module(
        "platform.haproxy_enable",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        postconditions=[_state_check("ready")],
        provides=["haproxy.servers_in_rotation"],
        timeout=timedelta(seconds=60),
    )
    async def enable(self, request: ServersInput) -> ChangeOutput:
        """Put servers back into rotation (admin state ready)."""
        async with stepping("platform.haproxy_enable", backend=request.backend):
            return await self._change(request, {s: ("ready", None) for s in request.servers})

    @module(
        "platform.haproxy_set_weights",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        preconditions=[
            CheckRef(
                check="platform.haproxy_healthy",
                with_={
                    "target": "${{ input.target }}",
                    "backend": "${{ input.backend }}",
                    "min_healthy": "${{ input.keep_healthy }}",
                },
            )
        ],
        postconditions=[
            CheckRef(
                check="platform.haproxy_servers_match",
                with_={
                    "target": "${{ input.target }}",
                    "backend": "${{ input.backend }}",
                    "weights": "${{ input.weights }}",
                },
                deadline_s=30,
                poll_interval_s=0.5,
            )
        ],
        provides=["haproxy.weights_shifted"],
        timeout=timedelta(seconds=60),
    )
    async def set_weights(self, request: WeightsInput) -> ChangeOutput:
        """Set server weights, shifting traffic between servers or pools of a backend."""
        async with stepping("platform.haproxy_set_weights", backend=request.backend):
            return await self._change(request, {s: (None, w) for s, w in request.weights.items()})

    @module(
        "platform.haproxy_restore",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        postconditions=[
            CheckRef(
                check="platform.haproxy_servers_match",
                with_={
                    "target": "${{ input.target }}",
                    "backend": "${{ input.backend }}",
                    "settings": "${{ input.servers }}",
                },
                deadline_s=30,
                poll_interval_s=0.5,
            )
        ],
        timeout=timedelta(seconds=60),
    )
    async def restore(self, request: RestoreInput) -> ChangeOutput:
        """Put servers' admin state and weight exactly as given (a recorded or known-good
        state); the compensation of every other HAProxy module."""
        async with stepping("platform.haproxy_restore", backend=request.backend):
            return await self._change(
                request, {s.server: (s.admin_state, s.weight) for s in request.servers}
            )

    # -- previews -----------------------------------------------------------------------------

    @preview("platform.haproxy_drain")
    async def preview_drain(self, request: DrainInput) -> Preview:
        return await self._preview(
            request,
            {s: ("drain", None) for s in request.servers},
            f"drain {_names(request.servers)} of {request.backend} and wait up to "
            f"{request.wait_s:g} s for their sessions to end",
            request.keep_healthy,
        )

    @preview("platform.haproxy_disable")
    async def preview_disable(self, request: TakeOutInput) -> Preview:
        return await self._preview(
            request,
            {s: ("maint", None) for s in request.servers},
            f"put {_names(request.servers)} of {request.backend} into maintenance (their "
            "sessions are cut)",
            request.keep_healthy,
        )

    @preview("platform.haproxy_enable")
    async def preview_enable(self, request: ServersInput) -> Preview:
        return await self._preview(
            request,
            {s: ("ready", None) for s in request.servers},
            f"put {_names(request.servers)} of {request.backend} back into rotation",
            None,
        )

    @preview("platform.haproxy_set_weights")
    async def preview_set_weights(self, request: WeightsInput) -> Preview:
        return await self._preview(
            request,
            {s: (None, w) for s, w in request.weights.items()},
            f"set weights of {_names(list(request.weights))} of {request.backend}",
            None,
        )

    @preview("platform.haproxy_restore")
    async def preview_restore(self, request: RestoreInput) -> Preview:
        return await self._preview(
            request,
            {s.server: (s.admin_state, s.weight) for s in request.servers},
            f"restore admin state and weight of {_names([s.server for s in request.servers])} "
            f"of {request.backend}",
            None,
        )

    # -- checks ------------------------------------------------------------------------------

    @check(
        "platform.haproxy_healthy",
        domain="platform",
        local=False,
        timeout=timedelta(seconds=20),
    )
    async def healthy(self, request: HealthyInput) -> CheckResult:
        """At least N servers of a backend take traffic (running, ready, weight > 0)."""
        async with stepping("platform.haproxy_healthy", backend=request.backend):
            try:
                states = await _read(self.admin(request.target), request.backend)
            except ApplicationError as exc:
                if exc.non_retryable:
                    raise
                return CheckResult(
                    satisfied=False,
                    expected={"min_healthy": request.min_healthy},
                    detail=f"{request.backend}: cannot be read: {exc.message}",
                )
            excluded = set(request.excluding)
            counted = [s for s in states if s.server not in excluded]
            healthy = [s.server for s in counted if s.healthy]
            satisfied = len(healthy) >= request.min_healthy
            besides = f" besides {_names(sorted(excluded))}" if excluded else ""
            unhealthy = ", ".join(
                f"{s.server} {s.operational}/{s.admin_state}/w{s.weight}"
                for s in counted
                if not s.healthy
            )
            detail = (
                f"{request.backend} has {len(healthy)} healthy server(s){besides}"
                f" ({', '.join(healthy) or 'none'}"
                + (f"; not healthy: {unhealthy}" if unhealthy else "")
                + ")"
                + (", as expected" if satisfied else f"; expected at least {request.min_healthy}")
            )
            return CheckResult(
                satisfied=satisfied,
                observed={
                    "healthy": len(healthy),
                    "servers": {
                        s.server: {
                            "operational": s.operational,
                            "admin_state": s.admin_state,
                            "weight": s.weight,
                            "status": s.status,
                        }
                        for s in states
                    },
                },
                expected={"min_healthy": request.min_healthy, "excluding": sorted(excluded)},
                detail=detail,
            )

    @check(
        "platform.haproxy_servers_match",
        domain="platform",
        local=False,
        timeout=timedelta(seconds=20),
    )
    async def servers_match(self, request: MatchInput) -> CheckResult:
        """Servers have the admin state and weights expected (a change's postcondition)."""
        async with stepping("platform.haproxy_servers_match", backend=request.backend):
            states = await _read(self.admin(request.target), request.backend, sessions=False)
            wanted = _wanted(request)
            by_name = _select(states, list(wanted), request)
            mismatches = []
            for server, (state, weight) in wanted.items():
                found = by_name[server]
                if state is not None and found.admin_state != state:
                    mismatches.append(f"{server} is {found.admin_state}, not {state}")
                if weight is not None and found.weight != weight:
                    mismatches.append(f"{server} has weight {found.weight}, not {weight}")
            observed = {
                s: {"admin_state": by_name[s].admin_state, "weight": by_name[s].weight}
                for s in wanted
            }
            expected = {
                s: {k: v for k, v in (("admin_state", st), ("weight", w)) if v is not None}
                for s, (st, w) in wanted.items()
            }
            detail = (
                f"{request.backend}: " + "; ".join(mismatches)
                if mismatches
                else f"{request.backend}: {_names(list(wanted))} as expected"
            )
            return CheckResult(
                satisfied=not mismatches, observed=observed, expected=expected, detail=detail
            )

    # -- shared ----------------------------------------------------------------------------------

    async def _change(
        self, request: BackendRef, wanted: dict[str, tuple[AdminState | None, int | None]]
    ) -> ChangeOutput:
        admin = self.admin(request.target)
        previous, changed = await self._apply(admin, request, wanted)
        current = [
            s for s in await _read(admin, request.backend, sessions=False) if s.server in wanted
        ]
        log.info("servers changed", changed=changed)
        return ChangeOutput(
            target=request.target,
            backend=request.backend,
            previous=previous,
            current=current,
            changed=changed,
        )

    async def _apply(
        self,
        admin: HaproxyAdmin,
        request: BackendRef,
        wanted: dict[str, tuple[AdminState | None, int | None]],
    ) -> tuple[list[ServerState], list[str]]:
        """Record what was found (once per key), then send only the commands that change
        something: weight first, so a server coming back into rotation comes back weighed."""
        states = await _read(admin, request.backend, sessions=False)
        by_name = _select(states, list(wanted), request)
        previous = self.journal.recall(ServerState)
        if previous is None or {p.server for p in previous} != set(wanted):
            previous = [by_name[s] for s in wanted]
            self.journal.remember(list(previous))
        changed: list[str] = []
        try:
            for server, (state, weight) in wanted.items():
                found = by_name[server]
                touched = False
                if weight is not None and found.weight != weight:
                    await admin.set_weight(request.backend, server, weight)
                    touched = True
                if state is not None and found.admin_state != state:
                    await admin.set_state(request.backend, server, state)
                    touched = True
                if touched:
                    changed.append(server)
        except HaproxyError as exc:
            raise _error(exc, request) from None
        return previous, changed

    async def _preview(
        self,
        request: BackendRef,
        wanted: dict[str, tuple[AdminState | None, int | None]],
        summary: str,
        keep_healthy: int | None,
    ) -> Preview:
        async with stepping("preview", backend=request.backend):
            states = await _read(self.admin(request.target), request.backend)
            by_name = _select(states, list(wanted), request)
            changes: list[Change] = []
            for server, (state, weight) in wanted.items():
                found = by_name[server]
                where = f"{request.target}:{request.backend}/{server}"
                if weight is not None and found.weight != weight:
                    changes.append(
                        Change(target=where, attribute="weight", before=found.weight, after=weight)
                    )
                if state is not None and found.admin_state != state:
                    changes.append(
                        Change(
                            target=where,
                            attribute="admin_state",
                            before=found.admin_state,
                            after=state,
                        )
                    )
            touched = sorted({c.target.rsplit("/", 1)[1] for c in changes})
            sessions = sum(by_name[s].sessions or 0 for s in touched)
            warnings = [
                f"{s} already as requested: nothing to change" for s in wanted if s not in touched
            ]
            if keep_healthy is not None:
                left = [s.server for s in states if s.healthy and s.server not in wanted]
                if len(left) < keep_healthy:
                    warnings.append(
                        f"only {len(left)} other healthy server(s) ({_names(left) or 'none'}); "
                        f"the step requires {keep_healthy} and will refuse"
                    )
            rollback = "platform.haproxy_restore puts back " + (
                "; ".join(
                    f"{s}: {by_name[s].admin_state}, weight {by_name[s].weight}" for s in touched
                )
                or "nothing (no change)"
            )
            return Preview(
                mutates=bool(changes),
                summary=summary,
                changes=changes,
                blast_radius={"servers": len(touched), "sessions": sessions},
                rollback=rollback,
                warnings=warnings,
            )


def _wanted(request: MatchInput) -> dict[str, tuple[AdminState | None, int | None]]:
    wanted: dict[str, tuple[AdminState | None, int | None]] = {
        s: (request.admin_state, None) for s in request.servers
    }
    for server, weight in (request.weights or {}).items():
        wanted[server] = (wanted.get(server, (None, None))[0], weight)
    for setting in request.settings or ():
        wanted[setting.server] = (setting.admin_state, setting.weight)
    return wanted


async def _read(admin: HaproxyAdmin, backend: str, *, sessions: bool = True) -> list[ServerState]:
    try:
        return await admin.servers(backend, sessions=sessions)
    except HaproxyError as exc:
        raise _error(exc, None) from None


def _select(
    states: list[ServerState], names: Iterable[str], request: BackendRef
) -> dict[str, ServerState]:
    """The named servers; an unknown one is a non-retryable error naming it and the known."""
    by_name = {s.server: s for s in states}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise refused(
            f"backend {request.backend!r} of haproxy target {request.target!r} has no server "
            f"{_names(unknown)}; it has: {_names(list(by_name)) or 'none'}",
            backend=request.backend,
            unknown=unknown,
        )
    return by_name


def _error(exc: HaproxyError, request: BackendRef | None) -> ApplicationError:
    """Unreachable sockets are retried; everything HAProxy refused (unknown names included)
    is final."""
    where = f"haproxy target {request.target!r}: " if request else ""
    if isinstance(exc, Unreachable):
        return unavailable(f"{where}{exc}")
    return refused(f"{where}{exc}")


def _names(names: list[str]) -> str:
    return ", ".join(names)
