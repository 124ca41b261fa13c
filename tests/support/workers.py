"""Run Fireline's workers in-process for a test, on queues nobody else uses."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from fireline.catalog.model import Catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.messages import WORKFLOW_NAME, RunRequest, RunResult, start_attributes
from fireline.modules import Registry, bind_activities, load_registry
from fireline.plan import Plan
from fireline.runtime.settings import Settings
from workflows import WORKFLOWS

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
        workers = [Worker(client, task_queue=prefix, workflows=WORKFLOWS, activities=local)]
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
    """Start a run as ``fireline run`` does; the time-skipping server takes no search attributes."""
    return await client.start_workflow(
        WORKFLOW_NAME,
        RunRequest(
            plan=plan,
            inputs=inputs or {},
            requested_by=requested_by,
            task_queue_prefix=prefix,
            trusted_keys=trusted_keys or {},
        ),
        id=workflow_id or f"test-{plan.name}-{uuid.uuid4().hex[:8]}",
        task_queue=prefix,
        result_type=RunResult,
        search_attributes=start_attributes(plan, requested_by) if search_attributes else None,
    )
