"""Incidents open with their search attributes set by ingress, and write none of their own.

Real dev servers: the session's (Fireline's search attributes registered) and, for the
fallback, a second one started bare, as a namespace nobody ran ``fireline up`` against.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from fireline.incident import (
    INCIDENT_WORKFLOW,
    SA_INCIDENT_KEY,
    SA_SERVICE,
    SA_SEVERITY,
    SA_VALUE_BYTES,
    SIGNAL_ALERTS,
    AlertBatch,
    IncidentPhase,
    IncidentStart,
    incident_workflow_id,
)
from fireline.ingress.delivery import TemporalStarter, attribute_refusal
from fireline.messages import SA_PLAYBOOK
from fireline.runtime.binaries import temporal_cli
from tests.support.target import Reply, Target
from tests.support.workers import fireline_workers
from tests.test_incident_workflow import PLAIN, alert, key, until, with_plan
from workflows.incident import (
    BASELINE,
    CHECKED_CHANGES,
    CHECKED_REPORTS,
    RUN_PRIORITY,
    RUN_REPORTS,
    STEADY_TIMER,
)

SERVICE = {"escalation": {"levels": [{"tier": 1, "delay": "5m", "targets": [{"person": "al"}]}]}}
LABELS = {SA_SERVICE, SA_SEVERITY, SA_INCIDENT_KEY, SA_PLAYBOOK}


@pytest.fixture
def paging(monkeypatch: pytest.MonkeyPatch, target: Target) -> Target:
    target.route("POST", "/page", Reply(200))
    target.route("POST", "/restart", Reply(200))
    monkeypatch.setenv(
        "FIRELINE_TARGETS", json.dumps({"webhook": {"default": {"url": target.url("/page")}}})
    )
    return target


@pytest.fixture
async def bare_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server whose namespace has none of Fireline's search attributes."""
    environment = await WorkflowEnvironment.start_local(
        ip="127.0.0.1",
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_cli()),
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


def planned(tmp_path: Path, prefix: str, paging: Target) -> IncidentStart:
    start = with_plan(tmp_path, PLAIN, SERVICE, prefix, paging.base_url, key())
    return start.model_copy(update={"severity": "critical"})


def batch() -> AlertBatch:
    return AlertBatch(batch_id=uuid.uuid4().hex, alerts=[alert()])


def upserted(event: HistoryEvent) -> set[str]:
    attributes = event.upsert_workflow_search_attributes_event_attributes
    return set(attributes.search_attributes.indexed_fields)


def patches(events: list[HistoryEvent]) -> list[str]:
    """Patch ids recorded, from the ``core_patch`` markers' details."""
    out = []
    for event in events:
        marker = event.marker_recorded_event_attributes
        if (
            event.HasField("marker_recorded_event_attributes")
            and marker.marker_name == "core_patch"
        ):
            out.append(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
    return out


class TestLabelledAtStart:
    async def test_ingress_sets_them_and_the_first_task_writes_none(
        self, client: Client, task_queue_prefix: str, paging: Target, tmp_path: Path
    ) -> None:
        """The UI filters by the labels from the start; the incident's own tasks upsert no label
        (only the SDK's patch version) and record one baseline marker for every patch."""
        start = planned(tmp_path, task_queue_prefix, paging)
        starter = TemporalStarter(lambda: _ready(client), task_queue_prefix)
        async with fireline_workers(client, task_queue_prefix):
            await starter(start.key, start, batch())
            handle = client.get_workflow_handle(incident_workflow_id(start.key))
            await until(handle, lambda s: s.run.phase == "succeeded", "run succeeded")
            described = await handle.describe()
            history = await handle.fetch_history()
        attributes = {p.key.name: p.value for p in described.typed_search_attributes}
        assert starter.labels is True
        assert attributes[SA_SERVICE] == "payments"
        assert attributes[SA_SEVERITY] == "critical"
        assert attributes[SA_INCIDENT_KEY] == start.key
        assert attributes[SA_PLAYBOOK] == "fix-payments"
        written = [
            upserted(e)
            for e in history.events
            if e.HasField("upsert_workflow_search_attributes_event_attributes")
        ]
        assert all(not (fields & LABELS) for fields in written), written
        first_child = next(
            i
            for i, e in enumerate(history.events)
            if e.HasField("child_workflow_execution_started_event_attributes")
        )
        before = [
            upserted(e)
            for e in history.events[:first_child]
            if e.HasField("upsert_workflow_search_attributes_event_attributes")
        ]
        assert before == [{"TemporalChangeVersion"}], "one patch marker's version, no phase"
        recorded = patches(history.events)
        assert recorded[0] == BASELINE
        assert recorded == [BASELINE], recorded
        assert not {
            RUN_REPORTS,
            RUN_PRIORITY,
            STEADY_TIMER,
            CHECKED_CHANGES,
            CHECKED_REPORTS,
        } & set(recorded)


class TestUnregistered:
    async def test_bare_namespace_opens_incidents_without_labels(
        self, bare_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target, tmp_path: Path
    ) -> None:
        """The namespace refuses the labelled start: the alert still opens its incident, which
        then sets no labels itself (an upsert there would fail every one of its tasks)."""
        client = bare_env.client
        start = planned(tmp_path, task_queue_prefix, paging)
        starter = TemporalStarter(lambda: _ready(client), task_queue_prefix)
        async with fireline_workers(client, task_queue_prefix):
            run_id = await starter(start.key, start, batch())
            handle = client.get_workflow_handle(incident_workflow_id(start.key))
            state = await until(handle, lambda s: s.run.phase == "succeeded", "run succeeded")
            second = planned(tmp_path, task_queue_prefix, paging)
            await starter(second.key, second, batch())  # remembered: no refused start first
            await until(
                client.get_workflow_handle(incident_workflow_id(second.key)),
                lambda s: s.run.phase == "succeeded",
                "second run succeeded",
            )
        assert run_id
        assert starter.labels is False
        assert state.phase is not IncidentPhase.failed
        assert len(state.pages) == 1

    async def test_only_those_refusals_count(self) -> None:
        """A namespace without the attributes turns labels off; values refused (a size limit)
        cost that one start its labels; any other refusal is the caller's to see."""
        from temporalio.service import RPCError, RPCStatusCode

        def refusal(message: str, code: RPCStatusCode = RPCStatusCode.INVALID_ARGUMENT) -> Any:
            return attribute_refusal(RPCError(message, code, b""))

        missing = "Namespace default has no mapping defined for search attribute FirelineService"
        size = "search attribute FirelineIncidentKey value size 4000 exceeds size limit 2048"
        assert refusal(missing) == "unregistered"
        assert refusal(size) == "refused"
        assert refusal("WorkflowId length exceeds limit") is None
        assert refusal("search attribute service unavailable", RPCStatusCode.UNAVAILABLE) is None


class TestHostileKey:
    async def test_a_long_multibyte_key_still_opens_labelled(
        self, client: Client, task_queue_prefix: str, paging: Target, tmp_path: Path
    ) -> None:
        """A key is built from labels a sender chooses: 1,000 emoji are 12,000 bytes of JSON,
        over Temporal's limit for one value. Its attribute is cut to fit on a character
        boundary, so the incident still opens with every label, and so does the next one."""
        hostile = "am/" + "\U0001f525" * 1000
        start = planned(tmp_path, task_queue_prefix, paging).model_copy(update={"key": hostile})
        starter = TemporalStarter(lambda: _ready(client), task_queue_prefix)
        await starter(start.key, start, batch())
        described = await client.get_workflow_handle(incident_workflow_id(hostile)).describe()
        attributes = {p.key.name: p.value for p in described.typed_search_attributes}
        label = attributes[SA_INCIDENT_KEY]
        assert isinstance(label, str)
        assert hostile.startswith(label)
        assert 0 < len(json.dumps(label)) <= SA_VALUE_BYTES
        assert starter.labels is True
        await client.get_workflow_handle(incident_workflow_id(hostile)).terminate("test over")

    async def test_an_incident_started_unlabelled_cuts_the_key_it_labels_itself_with(
        self, client: Client, task_queue_prefix: str, paging: Target, tmp_path: Path
    ) -> None:
        """An incident started without labels (by hand, or by an older API) sets them in its
        first task. Its key label is cut as the starter cuts it: cut by characters, as it once
        was, Temporal refused the upsert and every task of that incident failed."""
        hostile = f"am/{uuid.uuid4().hex}/" + "\U0001f525" * 1000
        start = planned(tmp_path, task_queue_prefix, paging).model_copy(update={"key": hostile})
        async with fireline_workers(client, task_queue_prefix):
            handle = await client.start_workflow(
                INCIDENT_WORKFLOW,
                start,
                id=incident_workflow_id(hostile),
                task_queue=task_queue_prefix,
                start_signal=SIGNAL_ALERTS,
                start_signal_args=[batch()],
            )
            state = await until(handle, lambda s: s.run.phase == "succeeded", "run succeeded")
            described = await handle.describe()
            await handle.terminate("test over")
        attributes = {p.key.name: p.value for p in described.typed_search_attributes}
        label = attributes[SA_INCIDENT_KEY]
        assert isinstance(label, str)
        assert hostile.startswith(label)
        assert 0 < len(json.dumps(label)) <= SA_VALUE_BYTES
        assert attributes[SA_SERVICE] == "payments"
        assert state.phase is not IncidentPhase.failed

    async def test_values_refused_cost_that_incident_its_labels_only(
        self,
        client: Client,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Were a value still too large (here the cut is undone), Temporal refuses the labelled
        start: the alert still opens its incident, unlabelled and told not to label itself (its
        own upsert would fail every task), and the starter keeps labelling the next ones."""
        import fireline.incident

        monkeypatch.setattr(fireline.incident, "fit_search_attribute", lambda value: value)
        hostile = "am/" + "\U0001f525" * 1000
        start = planned(tmp_path, task_queue_prefix, paging).model_copy(update={"key": hostile})
        starter = TemporalStarter(lambda: _ready(client), task_queue_prefix)
        async with fireline_workers(client, task_queue_prefix):
            await starter(start.key, start, batch())
            handle = client.get_workflow_handle(incident_workflow_id(hostile))
            state = await until(handle, lambda s: s.run.phase == "succeeded", "run succeeded")
            described = await handle.describe()
        attributes = {p.key.name for p in described.typed_search_attributes}
        assert SA_INCIDENT_KEY not in attributes
        assert state.phase is not IncidentPhase.failed
        assert starter.labels is True


async def _ready(client: Client) -> Client:
    return client
