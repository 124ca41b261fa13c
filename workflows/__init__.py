"""Temporal workflow code only: deterministic, sandbox-safe, no I/O."""

from __future__ import annotations

from workflows.playbook import PlaybookWorkflow

WORKFLOWS: list[type] = [PlaybookWorkflow]

__all__ = ["WORKFLOWS", "PlaybookWorkflow"]
