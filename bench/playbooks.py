"""The bench's playbooks, written as YAML and compiled the way the CLI compiles them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.modules import REGISTRY
from fireline.catalog.model import Catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.plan import Plan

ROLE = "bench"
APPROVERS = ["alice", "bob"]
CATALOG = Catalog.model_validate(
    {
        "roles": {ROLE: {"tier": 1, "members": APPROVERS}},
        # Decision rights as a production catalog states them: every risk needs a signed
        # decision by a member of the role, so the bench's gates run the judge and the
        # Ed25519 check (the default lets low-risk steps be approved unsigned).
        "decision_rights": {"unsigned": [], "risks": {"low": {"roles": [ROLE], "min_tier": 1}}},
    }
)
GATED_STEP = "act"


def _step(i: int, uses: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"s{i}", "uses": uses, "with": {"key": f"s{i}"}, **extra}


TARGET_INPUT = {
    "target": {"type": "string", "default": "bench", "description": "what the run acts on"}
}
"""An incident's guard admits one run per target at a time: each bench incident names its own."""


def noop(steps: int) -> dict[str, Any]:
    return {
        "name": f"bench-noop-{steps}",
        "inputs": TARGET_INPUT,
        "steps": [_step(i + 1, "bench.noop") for i in range(steps)],
    }


def checked(steps: int) -> dict[str, Any]:
    """Each step: one precondition, the action, one postcondition (all satisfied at once)."""
    steps_ = []
    for i in range(1, steps + 1):
        probe = {"check": "bench.ok", "with": {"key": f"s{i}"}}
        steps_.append(_step(i, "bench.noop", preconditions=[probe], postconditions=[probe]))
    return {"name": f"bench-checks-{steps}", "steps": steps_}


def gated() -> dict[str, Any]:
    return {
        "name": "bench-gate",
        "inputs": TARGET_INPUT,
        "steps": [
            {
                "id": GATED_STEP,
                "uses": "bench.noop",
                "with": {"key": GATED_STEP},
                "approval": {"role": ROLE, "timeout": "15m"},
            }
        ],
    }


def saga(steps: int) -> dict[str, Any]:
    """``steps - 1`` changes that each push bench.undo, then a step that fails."""
    body = [_step(i + 1, "bench.change") for i in range(steps - 1)]
    return {"name": f"bench-saga-{steps}", "steps": [*body, _step(steps, "bench.fail")]}


def compile_all(docs: list[dict[str, Any]]) -> dict[str, Plan]:
    """Write each playbook to a file in a fresh folder, load the folder, compile every one."""
    with tempfile.TemporaryDirectory(prefix="fireline-bench-playbooks-") as tmp:
        folder = Path(tmp)
        for doc in docs:
            text = yaml.safe_dump(doc, sort_keys=False)
            (folder / f"{doc['name']}.yaml").write_text(text)
        library = PlaybookLibrary.load(folder, catalog=CATALOG, registry=REGISTRY)
        return {doc["name"]: library.compile(doc["name"]) for doc in docs}
