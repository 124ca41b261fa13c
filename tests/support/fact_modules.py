"""Test-only modules for the compiler's policies (facts, compensation, gates, checks).

They are registered under a ``test.`` prefix in the ``core`` domain and do trivial work
(echo their input): they exist only so compiler tests can build playbooks that need a fact
provided earlier, an irreversible step, a ``when``-guarded compensation or a declared check,
without depending on how the real domain modules evolve. ``MODULES`` lists them for a
test registry (``load_registry(["core"]).extended(fact_modules)``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from fireline.modules import (
    IRREVERSIBLE,
    CheckRef,
    CheckResult,
    CompensationRef,
    check,
    module,
)
from fireline.plan import Risk


class ReadInput(BaseModel):
    target: str
    limit: int = 10


class ReadOutput(BaseModel):
    target: str
    items: list[str] = Field(default_factory=list)


@module("test.read", domain="core", description="Read something; changes nothing.")
async def read(request: ReadInput) -> ReadOutput:
    return ReadOutput(target=request.target)


class CompatInput(BaseModel):
    app_version: str
    schema_version: str


class CompatOutput(BaseModel):
    compatible: bool


@module(
    "test.check_compat",
    domain="core",
    provides=["app_compatible"],
    description="Establish that the application works with the schema being restored.",
)
async def check_compat(request: CompatInput) -> CompatOutput:
    return CompatOutput(compatible=True)


class RestoreInput(BaseModel):
    backup_id: str
    verify_url: str | None = None


class RestoreOutput(BaseModel):
    restored_from: str


@module(
    "test.restore_database",
    domain="core",
    risk=Risk.critical,
    mutates=True,
    idempotent=False,
    compensation=IRREVERSIBLE,
    requires=["app_compatible"],
    provides=["database_restored"],
    postconditions=[
        CheckRef(check="test.probe", with_={"target": "${{ input.verify_url }}"}, when="verify_url")
    ],
    description="Restore a database from a backup; cannot be undone.",
)
async def restore_database(request: RestoreInput) -> RestoreOutput:
    return RestoreOutput(restored_from=request.backup_id)


class ToggleInput(BaseModel):
    flag: str
    enabled: bool


class ToggleOutput(BaseModel):
    flag: str
    previous: bool


@module(
    "test.toggle",
    domain="core",
    risk=Risk.medium,
    mutates=True,
    compensation=CompensationRef(
        module="test.toggle",
        with_={"flag": "${{ input.flag }}", "enabled": "${{ output.previous }}"},
    ),
    description="Flip a flag; undone by flipping it back.",
)
async def toggle(request: ToggleInput) -> ToggleOutput:
    return ToggleOutput(flag=request.flag, previous=not request.enabled)


class ScaleInput(BaseModel):
    replicas: int = Field(ge=0)
    undo: dict[str, Any] | None = None


class ScaleOutput(BaseModel):
    replicas: int


@module(
    "test.scale",
    domain="core",
    risk=Risk.high,
    mutates=True,
    compensation=CompensationRef(module="test.scale", with_="${{ input.undo }}", when="undo"),
    description="Scale something; undoable only when the caller says how (with.undo).",
)
async def scale(request: ScaleInput) -> ScaleOutput:
    return ScaleOutput(replicas=request.replicas)


class ProbeInput(BaseModel):
    target: str
    expect: Any = None


@check("test.probe", domain="core", description="Observe a target; satisfied when it is set.")
async def probe(request: ProbeInput) -> CheckResult:
    return CheckResult(satisfied=bool(request.target), observed=request.target)


MODULES = [read, check_compat, restore_database, toggle, scale, probe]
