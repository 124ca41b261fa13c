"""Modules that do nothing, so what the bench measures is Fireline and Temporal themselves.

They register in the ``core`` domain (so the product's worker layout serves them unchanged)
under a ``bench.`` prefix; ``REGISTRY`` is the core domain plus them, for the bench alone.
"""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bench import clock
from fireline.modules import CheckResult, CompensationRef, check, load_registry, module

FAILURE_TYPE = "BenchFailure"


class Token(BaseModel):
    """The small payload every bench activity takes and returns, on both sides."""

    key: str = ""
    n: int = 0


@module("bench.noop", domain="core", description="Do nothing; note when the run first acted.")
async def noop(request: Token) -> Token:
    clock.mark(activity.info().workflow_id)
    return Token(key=request.key, n=request.n + 1)


@module(
    "bench.change",
    domain="core",
    mutates=True,
    compensation=CompensationRef(module="bench.undo", with_={"key": "${{ input.key }}"}),
    description="Pretend to change a system; undone by bench.undo.",
)
async def change(request: Token) -> Token:
    clock.mark(activity.info().workflow_id)
    return Token(key=request.key, n=request.n + 1)


@module("bench.undo", domain="core", description="Pretend to undo bench.change.")
async def undo(request: Token) -> Token:
    return Token(key=request.key, n=request.n - 1)


@module("bench.fail", domain="core", description="Fail at once, without retries.")
async def fail(request: Token) -> Token:
    raise ApplicationError(f"bench step {request.key} fails", type=FAILURE_TYPE, non_retryable=True)


@check("bench.ok", domain="core", local=True, description="Always satisfied.")
async def ok(request: Token) -> CheckResult:
    return CheckResult(satisfied=True, observed=request.key, expected=request.key)


REGISTRY = load_registry(["core"]).extended(noop, change, undo, fail, ok)
