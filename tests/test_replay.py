"""Replay safety: recorded histories of every main path must replay on the current code.

The JSON files in tests/histories were recorded by ``python -m tests.record_histories`` on an
earlier version; a change to workflows/ that would break a run already in flight makes the
replay raise a nondeterminism error here before it reaches a real incident.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from fireline.messages import WORKFLOW_NAME, RunRequest, RunResult
from tests.record_histories import history_id
from workflows import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(history_id(path.stem), path.read_text())


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class SkipsEverything:
    """A "new version" of the workflow that decides differently from the recorded runs."""

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        await workflow.sleep(1)
        return RunResult(phase="succeeded")


class TestReplay:
    def test_every_main_path_has_a_recorded_history(self):
        """Histories exist for success, rollback, gates, ask, parallel/include, cancel, a run
        judged by decision rights (forged signal, signed approvals, a reopened gate), and an
        incident (paged, admitted by the guard, acknowledged, its run done, resolved) with the
        guard it asked, and that incident again as ingress opens it now (labelled at start, one
        patch baseline), also with a gate its run reports (checked before it pages), and that one
        under the second baseline (its report of a change checked too)."""
        assert {p.stem for p in HISTORIES} >= {
            "succeeded",
            "compensated",
            "approved",
            "ask_retry",
            "parallel_include",
            "cancelled",
            "rights_reopened",
            "incident_guarded",
            "incident_labelled",
            "incident_gated",
            "incident_checked",
            "guard_ledger",
        }

    @pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
    async def test_recorded_history_replays(self, path: Path):
        """The current workflow code makes exactly the decisions the recorded run made."""
        replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
        result = await replayer.replay_workflow(load(path), raise_on_replay_failure=True)
        assert result.replay_failure is None

    async def test_a_changed_workflow_is_caught(self):
        """The replayer rejects code that would decide differently, so the guard is real."""
        replayer = Replayer(workflows=[SkipsEverything], data_converter=pydantic_data_converter)
        with pytest.raises(NondeterminismError):
            await replayer.replay_workflow(load(HISTORIES[0]))
