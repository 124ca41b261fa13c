"""Temporal workflow code only: deterministic, sandbox-safe, no I/O."""

from __future__ import annotations

from workflows.guard import GuardWorkflow
from workflows.incident import IncidentWorkflow
from workflows.plan_preview import PlanPreviewWorkflow
from workflows.playbook import PlaybookWorkflow

WORKFLOWS: list[type] = [PlaybookWorkflow, IncidentWorkflow, GuardWorkflow, PlanPreviewWorkflow]

__all__ = ["WORKFLOWS", "PlaybookWorkflow"]
