"""Record the workflow histories that tests/test_replay.py replays on every change.

Run ``python -m tests.record_histories`` after an intended change to workflow behaviour that
old runs will never meet (and say so in the change); otherwise never re-record: these files are
what proves that runs started by an older Fireline still replay on the new code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from fireline.catalog.model import Catalog
from fireline.identity.signing import (
    DecisionClaim,
    SignedDecision,
    generate_key,
    inputs_digest,
    sign_decision,
)
from fireline.incident import (
    INCIDENT_WORKFLOW,
    SIGNAL_ALERTS,
    UPDATE_ACK,
    Ack,
    AlertBatch,
    IncidentState,
    incident_start,
    search_attributes,
)
from fireline.incident import QUERY_STATUS as INCIDENT_STATUS
from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.messages import (
    QUERY_STATUS,
    SEARCH_ATTRIBUTES,
    SIGNAL_APPROVE,
    UPDATE_APPROVE,
    UPDATE_DECIDE,
    Approval,
    Decision,
    DecisionAction,
    RunState,
    StepStatus,
)
from fireline.runtime.binaries import temporal_cli
from fireline.runtime.settings import Settings
from fireline.runtime.stack import TUNING_FLAGS
from tests.support.target import Reply, Target, start_target
from tests.support.workers import compile_playbooks, fireline_workers, start_run
from workflows.guard import guard_workflow_id

HERE = Path(__file__).parent / "histories"

STEP = """
  - id: {id}
    uses: core.http_request
    with: {{url: "${{{{ inputs.base }}}}/{id}", compensation: {{url: "${{{{ inputs.base }}}}/undo/{id}"}}}}"""


def playbook(name: str, body: str, outputs: str = "") -> str:
    return (
        f"name: {name}\ninputs: {{base: {{type: string, required: true}}}}\nsteps:{body}\n{outputs}"
    )


async def wait_status(handle: WorkflowHandle[Any, Any], step: str, status: StepStatus) -> None:
    # Polling a remote query: there is no local event to wait on.
    while (await handle.query(QUERY_STATUS, result_type=RunState)).step(step).status is not status:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


def history_id(name: str) -> str:
    """Replay needs the recorded run's workflow id (child ids derive from it)."""
    return f"history-{name}"


@dataclass
class Scenario:
    name: str
    files: dict[str, str]
    routes: dict[str, Reply] = field(default_factory=dict)
    act: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None = None
    trusted_keys: dict[str, str] | None = None
    """Given at start as the API gives its public key; decisions are then signed."""


async def approve_twice(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_status(handle, "b", StepStatus.awaiting_approval)
    for who in ("mallory", "carol", "erin"):
        # mallory is refused: that refusal is part of the recorded history.
        with contextlib.suppress(WorkflowUpdateFailedError):
            await handle.execute_update(UPDATE_APPROVE, Approval(step="b", approver=who))


async def retry_with_fix(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_status(handle, "b", StepStatus.awaiting_decision)
    url = (await handle.query(QUERY_STATUS, result_type=RunState)).inputs["base"] + "/fixed"
    await handle.execute_update(
        UPDATE_DECIDE,
        Decision(step="b", action=DecisionAction.retry, by="alice", inputs={"url": url}),
    )


async def cancel_at_gate(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_status(handle, "b", StepStatus.awaiting_approval)
    await handle.cancel()


SIGNING_PRIVATE, SIGNING_PUBLIC = generate_key()
SIGNING_KEYS = {"recorder": SIGNING_PUBLIC}


async def signed_for(
    handle: WorkflowHandle[Any, Any],
    step: str,
    person: str,
    action: str,
    new: dict[str, Any] | None = None,
) -> SignedDecision:
    state = await handle.query(QUERY_STATUS, result_type=RunState)
    claim = DecisionClaim(
        workflow_id=handle.id,
        step=step,
        action=action,  # type: ignore[arg-type]
        person=person,
        inputs_digest=inputs_digest({**(state.step(step).inputs or {}), **(new or {})}),
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )
    return sign_decision(claim, SIGNING_PRIVATE, "recorder")


async def rights_reopened(handle: WorkflowHandle[Any, Any]) -> None:
    """A forged unsigned signal (refused, audited), a signed approval, a failure, a signed
    retry with a new url that reopens the gate, and a second signed approval."""
    await wait_status(handle, "b", StepStatus.awaiting_approval)
    await handle.signal(SIGNAL_APPROVE, Approval(step="b", approver="carol"))
    signed = await signed_for(handle, "b", "carol", "approve")
    await handle.execute_update(UPDATE_APPROVE, Approval(step="b", approver="carol", signed=signed))
    await wait_status(handle, "b", StepStatus.awaiting_decision)
    url = (await handle.query(QUERY_STATUS, result_type=RunState)).inputs["base"] + "/fixed"
    retry = await signed_for(handle, "b", "erin", "retry", {"url": url})
    await handle.execute_update(
        UPDATE_DECIDE,
        Decision(
            step="b", action=DecisionAction.retry, by="erin", inputs={"url": url}, signed=retry
        ),
    )
    await wait_status(handle, "b", StepStatus.awaiting_approval)
    signed = await signed_for(handle, "b", "erin", "approve")
    await handle.execute_update(UPDATE_APPROVE, Approval(step="b", approver="erin", signed=signed))


GATE = "\n    approval: {role: sre-senior, min_approvals: 2, timeout: 1h}"
GATED = {"p.yaml": playbook("gate", STEP.format(id="a") + STEP.format(id="b") + GATE)}
SCENARIOS = [
    Scenario(
        "succeeded",
        {
            "p.yaml": playbook(
                "ok",
                STEP.format(id="a")
                + STEP.format(id="b")
                + '\n    postconditions: [{check: core.http_probe, with: {url: "${{ inputs.base }}/health"}}]',
                'outputs: {status: "${{ steps.a.outputs.status }}"}',
            )
        },
        {"POST /a": Reply(200), "POST /b": Reply(200), "GET /health": Reply(200)},
    ),
    Scenario(
        "compensated",
        {"p.yaml": playbook("undo", STEP.format(id="a") + STEP.format(id="b"))},
        {"POST /a": Reply(200), "POST /b": Reply(500), "POST /undo/a": Reply(200)},
    ),
    Scenario(
        "approved",
        GATED,
        {"POST /a": Reply(200), "POST /b": Reply(200)},
        approve_twice,
    ),
    Scenario(
        "ask_retry",
        {
            "p.yaml": playbook(
                "ask", STEP.format(id="a") + STEP.format(id="b") + "\n    on_failure: ask"
            )
        },
        {"POST /a": Reply(200), "POST /b": Reply(404), "POST /fixed": Reply(200)},
        retry_with_fix,
    ),
    Scenario(
        "parallel_include",
        {
            "child.yaml": playbook("child", STEP.format(id="c")),
            "p.yaml": playbook(
                "fan",
                "\n  - id: group\n    parallel:"
                + STEP.format(id="a").replace("\n", "\n    ")
                + STEP.format(id="b").replace("\n", "\n    ")
                + '\n  - id: inc\n    playbook: child\n    with: {base: "${{ inputs.base }}"}',
            ),
        },
        {"POST /a": Reply(200), "POST /b": Reply(200), "POST /c": Reply(200)},
    ),
    Scenario(
        "cancelled",
        GATED,
        {"POST /a": Reply(200), "POST /undo/a": Reply(200)},
        cancel_at_gate,
    ),
    Scenario(
        "rights_reopened",
        {
            "p.yaml": playbook(
                "rights",
                STEP.format(id="a")
                + STEP.format(id="b")
                + "\n    approval: {role: sre-senior, timeout: 1h}\n    on_failure: ask",
            )
        },
        {"POST /a": Reply(200), "POST /b": Reply(404), "POST /fixed": Reply(200)},
        rights_reopened,
        trusted_keys=SIGNING_KEYS,
    ),
]


async def record(client: Client, target: Target, scenario: Scenario, out: Path) -> None:
    for route, reply in scenario.routes.items():
        method, path = route.split(" ", 1)
        target.route(method, path, reply)
    prefix = f"rec-{uuid.uuid4().hex[:8]}"
    name = next(
        line.split(":", 1)[1].strip()
        for line in scenario.files["p.yaml"].splitlines()
        if line.startswith("name:")
    )
    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_playbooks(Path(tmp), scenario.files, name)
    async with fireline_workers(client, prefix):
        handle = await start_run(
            client,
            prefix,
            plan,
            {"base": target.base_url},
            workflow_id=history_id(scenario.name),
            trusted_keys=scenario.trusted_keys or {},  # unsigned scenarios as recorded
        )
        if scenario.act:
            await scenario.act(handle)
        # Failed and cancelled runs are histories worth keeping too.
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
        history = await handle.fetch_history()
    text = json.dumps(history.to_json_dict(), indent=1) + "\n"
    out.write_text(text)  # noqa: ASYNC240 (a one-off script, not a server)
    print(f"recorded {out.name}: {len(history.events)} events")


INCIDENT = "incident_guarded"
"""An incident with a routed run: opened, paged, admitted by the guard, acknowledged, its run
succeeded, resolved by its alert."""
GATED_INCIDENT = "incident_gated"
"""A labelled incident whose run waits at a gate: the run's report of the gate is checked
against the run's status before the incident pages for it; bob approves; it resolves."""
INCIDENT_GATE = "\n    approval: {role: sre-oncall, timeout: 1h}"
LABELLED = "incident_labelled"
"""The same incident opened as ingress opens it since the patch baseline: its search
attributes set at start, so it records the one baseline marker and writes no labels itself."""
CHECKED_INCIDENT = "incident_checked"
"""The gated incident again under the second baseline (``baseline-2026-12b``): one marker, and
the run's reports of its gate and of its change are both checked against the run's status."""
GUARD = "guard_ledger"
"""The service's guard as that incident left it: an admission and the run's outcome."""
INCIDENT_CATALOG = {
    "roles": {"sre-oncall": {"tier": 1, "members": ["alice", "bob"]}},
    "services": {
        "payments": {
            "escalation": {
                "levels": [{"tier": 1, "delay": "5m", "targets": [{"role": "sre-oncall"}]}]
            },
            "guard": {"max_runs": 3, "window": "1h"},
        }
    },
}


def _alert(status: str) -> AlertBatch:
    alert = Alert(
        source=AlertSource.alertmanager,
        notification_id=f"rec-{status}",
        group_key="payments",
        status=AlertStatus(status),
        name="HighErrorRate",
        fingerprint="fp-rec",
        received_at=datetime.now(UTC),
    )
    return AlertBatch(batch_id=f"rec-{status}", alerts=[alert])


async def until_incident(
    handle: WorkflowHandle[Any, Any], done: Callable[[IncidentState], bool]
) -> None:
    while not done(await handle.query(INCIDENT_STATUS, result_type=IncidentState)):  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def record_incident(
    client: Client, target: Target, out: Path, labelled: bool = False, gated: bool = False
) -> None:
    """``gated``: step ``a`` waits for an sre-oncall approval, which bob gives once the
    incident has paged for the gate (instead of alice's acknowledgement)."""
    target.route("POST", "/page", Reply(200))
    target.route("POST", "/a", Reply(200))
    prefix = f"rec-{uuid.uuid4().hex[:8]}"
    body = STEP.format(id="a") + (INCIDENT_GATE if gated else "")
    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_playbooks(Path(tmp), {"p.yaml": playbook("fix", body)}, "fix")
    start = incident_start(
        Catalog.model_validate(INCIDENT_CATALOG),
        "payments",
        "am/payments/rec",
        severity="critical",
        plan=plan,
        inputs={"base": target.base_url},
        task_queue_prefix=prefix,
    ).model_copy(update={"upsert_search_attributes": labelled, "run_poll_s": 1.0})
    settings = Settings(targets={"webhook": {"default": {"url": target.url("/page")}}})
    async with fireline_workers(client, prefix, settings=settings):
        handle = await client.start_workflow(
            INCIDENT_WORKFLOW,
            start,
            id=history_id(out.stem),
            task_queue=prefix,
            start_signal=SIGNAL_ALERTS,
            start_signal_args=[_alert("firing")],
            search_attributes=search_attributes(start) if labelled else None,
        )
        if gated:
            await until_incident(handle, lambda s: any(p.reason == "gate" for p in s.pages))
            state = await handle.query(INCIDENT_STATUS, result_type=IncidentState)
            run = client.get_workflow_handle(state.run.workflow_id or "")
            await run.execute_update(UPDATE_APPROVE, Approval(step="a", approver="bob"))
        else:
            await until_incident(handle, lambda s: len(s.pages) == 2)
            await handle.execute_update(UPDATE_ACK, Ack(by="alice"), result_type=IncidentState)
        await until_incident(handle, lambda s: s.run.phase == "succeeded")
        await handle.signal(SIGNAL_ALERTS, _alert("resolved"))
        await handle.result()
        history = await handle.fetch_history()
        guard = await client.get_workflow_handle(
            guard_workflow_id("payments", prefix)
        ).fetch_history()
    recordings = [(out, history)]
    if not labelled and not gated:
        recordings.append((out.with_name(f"{GUARD}.json"), guard))
    for path, recorded in recordings:
        path.write_text(json.dumps(recorded.to_json_dict(), indent=1) + "\n")
        print(f"recorded {path.name}: {len(recorded.events)} events")


async def main(names: list[str]) -> None:
    HERE.mkdir(exist_ok=True)
    # A fresh in-memory server each time, so the fixed workflow ids are free.
    env = await WorkflowEnvironment.start_local(
        ip="127.0.0.1",
        data_converter=pydantic_data_converter,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
        dev_server_existing_path=str(temporal_cli()),
        dev_server_extra_args=list(TUNING_FLAGS),
    )
    try:
        for scenario in SCENARIOS:
            if names and scenario.name not in names:
                continue
            target = start_target()
            try:
                await record(env.client, target, scenario, HERE / f"{scenario.name}.json")
            finally:
                target.close()
        if not names or INCIDENT in names:
            target = start_target()
            try:
                await record_incident(env.client, target, HERE / f"{INCIDENT}.json")
            finally:
                target.close()
        for name, gated in ((LABELLED, False), (GATED_INCIDENT, True), (CHECKED_INCIDENT, True)):
            if names and name not in names:
                continue
            target = start_target()
            try:
                await record_incident(
                    env.client, target, HERE / f"{name}.json", labelled=True, gated=gated
                )
            finally:
                target.close()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
