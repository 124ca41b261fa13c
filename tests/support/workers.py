"""Run Fireline's workers in-process for a test, on queues nobody else uses."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from fireline.catalog.model import Catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.identity.signing import (
    DecisionClaim,
    SignedDecision,
    generate_key,
    inputs_digest,
    sign_decision,
)
from fireline.incident import GUARD_QUEUE_SUFFIX
from fireline.messages import (
    QUERY_STATUS,
    SIGNAL_APPROVE,
    UPDATE_APPROVE,
    UPDATE_DECIDE,
    UPDATE_REJECT,
    WORKFLOW_NAME,
    Approval,
    Decision,
    DecisionAction,
    RunRequest,
    RunResult,
    RunState,
    StepState,
    start_attributes,
)
from fireline.modules import Registry, bind_activities, load_registry
from fireline.plan import Plan
from fireline.runtime.settings import Settings
from workflows import WORKFLOWS
from workflows.guard import GuardWorkflow

TEST_KEY_ID = "tests"
TEST_PRIVATE, TEST_PUBLIC = generate_key()
TEST_KEYS = {TEST_KEY_ID: TEST_PUBLIC}
"""The key the tests sign decisions with, as the API signs them; ``start_run`` trusts it."""

CATALOG = Catalog.model_validate(
    {
        "roles": {
            "sre-oncall": {"tier": 1, "members": ["alice", "bob"]},
            "sre-senior": {"tier": 2, "members": ["carol", "erin"]},
            "anyone": {"tier": 1},
        }
    }
)


@asynccontextmanager
async def fireline_workers(
    client: Client,
    prefix: str,
    *,
    domains: tuple[str, ...] = ("core",),
    registry: Registry | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[None]:
    """The workflow worker (with local checks) and one worker per domain.

    ``settings`` (e.g. with ``targets``) is what the module sets get; its queue prefix is
    replaced by ``prefix``.
    """
    registry = registry if registry is not None else load_registry(domains)
    settings = (settings or Settings()).model_copy(update={"task_queue_prefix": prefix})
    async with AsyncExitStack() as stack:
        local, local_sets = bind_activities(registry.for_worker((), local_checks=True), settings)
        workers = [
            Worker(client, task_queue=prefix, workflows=WORKFLOWS, activities=local),
            Worker(client, task_queue=prefix + GUARD_QUEUE_SUFFIX, workflows=[GuardWorkflow]),
        ]
        sets = list(local_sets)
        for domain in domains:
            acts, domain_sets = bind_activities(
                registry.for_worker((domain,), local_checks=False), settings
            )
            sets += domain_sets
            workers.append(Worker(client, task_queue=f"{prefix}-{domain}", activities=acts))
        for worker in workers:
            await stack.enter_async_context(worker)
        try:
            yield
        finally:
            for module_set in sets:
                await module_set.aclose()


def compile_playbooks(tmp_path: Path, files: dict[str, str], name: str) -> Plan:
    """Write YAML playbooks into a folder and compile one of them, as the CLI would."""
    folder = tmp_path / f"playbooks-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    for file_name, text in files.items():
        (folder / file_name).write_text(textwrap.dedent(text))
    return PlaybookLibrary.load(folder, catalog=CATALOG).compile(name)


async def start_run(
    client: Client,
    prefix: str,
    plan: Plan,
    inputs: dict[str, Any] | None = None,
    *,
    requested_by: str = "tester",
    workflow_id: str | None = None,
    search_attributes: bool = True,
    trusted_keys: dict[str, str] | None = None,
) -> WorkflowHandle[Any, Any]:
    """Start a run as ``fireline run`` does; the time-skipping server takes no search attributes.

    The run trusts ``TEST_KEYS`` (as an API-started run trusts the API's key) unless
    ``trusted_keys`` says otherwise (``{}``: a run that signs nothing, as ``temporal workflow
    start`` would). Decide on it with :func:`approve`, :func:`reject` and :func:`decide`.
    """
    return await client.start_workflow(
        WORKFLOW_NAME,
        RunRequest(
            plan=plan,
            inputs=inputs or {},
            requested_by=requested_by,
            task_queue_prefix=prefix,
            trusted_keys=TEST_KEYS if trusted_keys is None else trusted_keys,
        ),
        id=workflow_id or f"test-{plan.name}-{uuid.uuid4().hex[:8]}",
        task_queue=prefix,
        result_type=RunResult,
        search_attributes=start_attributes(plan, requested_by) if search_attributes else None,
    )


async def step_inputs(handle: WorkflowHandle[Any, Any], step: str) -> dict[str, Any]:
    """The step's resolved inputs as the run shows them (what a decision is bound to)."""
    state = await handle.query(QUERY_STATUS, result_type=RunState)
    try:
        return state.step(step).inputs or {}
    except KeyError:
        return {}


async def signed_for(
    handle: WorkflowHandle[Any, Any],
    step: str,
    person: str,
    action: str,
    new_inputs: dict[str, Any] | None = None,
) -> SignedDecision:
    """Sign a decision as the API does: over the step's current inputs (with a retry's new
    values applied), valid for an hour."""
    inputs = {**(await step_inputs(handle, step)), **(new_inputs or {})}
    claim = DecisionClaim(
        workflow_id=handle.id,
        step=step,
        action=action,  # type: ignore[arg-type]
        person=person,
        inputs_digest=inputs_digest(inputs),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    return sign_decision(claim, TEST_PRIVATE, TEST_KEY_ID)


async def approve(
    handle: WorkflowHandle[Any, Any],
    step: str,
    person: str,
    comment: str = "",
    *,
    signal: bool = False,
) -> StepState | None:
    """A signed approval, as an update (the step as the run now sees it) or a signal."""
    signed = await signed_for(handle, step, person, "approve")
    approval = Approval(step=step, approver=person, comment=comment, signed=signed)
    if signal:
        await handle.signal(SIGNAL_APPROVE, approval)
        return None
    return await handle.execute_update(UPDATE_APPROVE, approval, result_type=StepState)


async def reject(
    handle: WorkflowHandle[Any, Any], step: str, person: str, comment: str = ""
) -> StepState:
    signed = await signed_for(handle, step, person, "reject")
    approval = Approval(step=step, approver=person, comment=comment, signed=signed)
    return await handle.execute_update(UPDATE_REJECT, approval, result_type=StepState)


async def decide(
    handle: WorkflowHandle[Any, Any],
    step: str,
    action: DecisionAction,
    person: str,
    *,
    inputs: dict[str, Any] | None = None,
    comment: str = "",
) -> StepState:
    """A signed retry/skip/compensate (a retry's new ``inputs`` covered by the signature)."""
    signed = await signed_for(handle, step, person, action.value, inputs)
    decision = Decision(
        step=step, action=action, by=person, comment=comment, inputs=inputs, signed=signed
    )
    return await handle.execute_update(UPDATE_DECIDE, decision, result_type=StepState)
