"""Maintenance mode on and off through an application's admin endpoint.

The endpoint is ``targets.http.NAME.base_url + maintenance_path`` (``/maintenance``):
``GET`` answers ``{"enabled": bool}``, ``PUT {"enabled": bool, "reason": ...}`` switches it.
Each module reads the state first and records it, so its compensation (the other module)
restores exactly what was found: a maintenance window that was already on stays on after a
rollback. The prior state is recorded in the step's heartbeat before the switch, so a retry
of the same activity after a crash still knows what the first attempt found.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import structlog
from pydantic import BaseModel, Field

from activities.application.targets import TARGET_NAME, HttpTarget
from activities.core.evidence import setting_preview, state_result
from activities.core.runtime import (
    HttpClientSet,
    refused,
    running,
    status_error,
    target_headers,
    target_settings,
    transport_error,
)
from fireline.modules import CheckRef, CheckResult, CompensationRef, check, module, preview
from fireline.plan import Change, Preview, Risk

log = structlog.get_logger(__name__)


class MaintenanceInput(BaseModel):
    target: str = Field(pattern=TARGET_NAME, description="a name under settings targets.http")
    reason: str | None = Field(default=None, max_length=500, description="sent to the endpoint")
    expect_current: bool | None = Field(
        default=None, description="refuse unless maintenance is currently in this state"
    )
    apply: bool = Field(
        default=True,
        description=(
            "false reads the state and changes nothing: a compensation passes the forward "
            "step's `changed`, so undoing a step that changed nothing changes nothing"
        ),
    )


class MaintenanceIsInput(BaseModel):
    target: str = Field(pattern=TARGET_NAME)
    enabled: bool


class MaintenanceChange(BaseModel):
    target: str
    previous: bool = Field(description="maintenance mode as found before the step")
    enabled: bool = Field(description="maintenance mode as the step left it")
    changed: bool


def _state(enabled: bool) -> str:
    return "on" if enabled else "off"


def _switch_module(name: str, enabled: bool, undo: str) -> Any:
    return module(
        name,
        domain="application",
        risk=Risk.medium,
        mutates=True,
        compensation=CompensationRef(
            module=undo,
            with_={"target": "${{ input.target }}", "apply": "${{ output.changed }}"},
        ),
        preconditions=[
            CheckRef(
                check="application.maintenance_is",
                with_={"target": "${{ input.target }}", "enabled": "${{ input.expect_current }}"},
                when="expect_current",
            )
        ],
        postconditions=[
            CheckRef(
                check="application.maintenance_is",
                with_={"target": "${{ output.target }}", "enabled": "${{ output.enabled }}"},
                deadline_s=30,
                poll_interval_s=1,
            )
        ],
        timeout=timedelta(seconds=60),
        heartbeat=timedelta(seconds=20),
        description=f"Switch maintenance mode {_state(enabled)}, recording the state it found.",
    )


class MaintenanceModules(HttpClientSet):
    """Maintenance mode of HTTP targets, sharing the worker's HTTP connection pool."""

    def target(self, name: str) -> HttpTarget:
        return target_settings(self.settings, "http", name, HttpTarget)

    def _headers(self, name: str, target: HttpTarget, url: str) -> dict[str, str]:
        return target_headers(
            target.bearer_token,
            url,
            target.credential_hosts(),
            f"targets.http.{name}.allowed_hosts",
        )

    async def _send(self, name: str, method: str, json_body: Any = None) -> httpx.Response:
        target = self.target(name)
        url = target.url(target.maintenance_path)
        try:
            response = await self.http.request(
                method,
                url,
                headers=self._headers(name, target, url),
                json=json_body,
                timeout=target.timeout_s,
            )
        except httpx.RequestError as exc:
            raise transport_error(method, url, exc, target.timeout_s) from exc
        if not 200 <= response.status_code < 300:
            raise status_error(method, url, response.status_code, response.text, "2xx")
        return response

    async def read(self, name: str) -> bool:
        response = await self._send(name, "GET")
        try:
            enabled = response.json().get("enabled")
        except (ValueError, AttributeError):
            enabled = None
        if not isinstance(enabled, bool):
            raise refused(
                f"maintenance endpoint of {name!r} answered {response.text[:200]!r}; expected "
                '{"enabled": true|false}',
                target=name,
            )
        return enabled

    async def _switch(
        self, module_name: str, request: MaintenanceInput, enabled: bool
    ) -> MaintenanceChange:
        async with running(module_name) as progress:
            current = await self.read(request.target)
            if not request.apply:
                return MaintenanceChange(
                    target=request.target, previous=current, enabled=current, changed=False
                )
            earlier = progress.earlier
            previous = bool(earlier["previous"]) if earlier else current
            if current != enabled:
                progress.record(previous=previous)
                started = time.perf_counter()
                await self._send(
                    request.target, "PUT", {"enabled": enabled, "reason": request.reason}
                )
                log.info(
                    "maintenance switched",
                    target=request.target,
                    enabled=enabled,
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
                )
            return MaintenanceChange(
                target=request.target,
                previous=previous,
                enabled=enabled,
                changed=previous != enabled,
            )

    @_switch_module("application.maintenance_on", True, "application.maintenance_off")
    async def maintenance_on(self, request: MaintenanceInput) -> MaintenanceChange:
        """Switch maintenance mode on, recording the state it found."""
        return await self._switch("application.maintenance_on", request, True)

    @_switch_module("application.maintenance_off", False, "application.maintenance_on")
    async def maintenance_off(self, request: MaintenanceInput) -> MaintenanceChange:
        """Switch maintenance mode off, recording the state it found."""
        return await self._switch("application.maintenance_off", request, False)

    @check("application.maintenance_is", domain="application", local=False)
    async def maintenance_is(self, probe: MaintenanceIsInput) -> CheckResult:
        """Whether maintenance mode is in the expected state, read from the endpoint."""
        async with running("application.maintenance_is"):
            current = await self.read(probe.target)
        satisfied = current == probe.enabled
        return state_result(
            f"maintenance mode of {probe.target}",
            _state(current),
            _state(probe.enabled),
            satisfied=satisfied,
            observed={"enabled": current},
            expected={"enabled": probe.enabled},
        )

    async def _preview(self, request: MaintenanceInput, enabled: bool) -> Preview:
        current = await self.read(request.target)
        after = enabled if request.apply else current
        return setting_preview(
            Change(
                target=f"http:{request.target}",
                attribute="maintenance",
                before=current,
                after=after,
            ),
            f"maintenance mode of {request.target}: {_state(current)} -> {_state(after)}",
            "services",
            f"switch it back {_state(current)}" if current != after else "nothing to undo",
        )

    @preview("application.maintenance_on")
    async def maintenance_on_preview(self, request: MaintenanceInput) -> Preview:
        return await self._preview(request, True)

    @preview("application.maintenance_off")
    async def maintenance_off_preview(self, request: MaintenanceInput) -> Preview:
        return await self._preview(request, False)
