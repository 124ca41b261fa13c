"""The catalog (``playbooks/catalog.yaml``): roles and their decision rights, services.

Compilation resolves approval roles against it, so a gate names people who exist and a
``min_approvals`` that can be met. Services are kept open (``dict[str, Any]``) until alert
routing gives them a shape.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from fireline.catalog.services import Service
from fireline.errors import CompileError
from fireline.playbook.loader import Problem, read_yaml, validate
from fireline.playbook.spec import Strict

CATALOG_FILE = "catalog.yaml"


class Role(Strict):
    """Who may approve a gate naming this role, and the escalation tier it sits at."""

    tier: int = Field(default=1, ge=0, le=3)
    members: list[str] | None = None
    """Omitted: anyone who gives their name may approve. Listed: only these people."""
    description: str = ""

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError(
                "an empty member list means nobody can approve; omit `members` "
                "to let anyone named approve, or list the people"
            )
        duplicates = sorted({m for m in value if value.count(m) > 1})
        if duplicates:
            raise ValueError(f"members listed twice: {', '.join(duplicates)}")
        return value


class Catalog(Strict):
    roles: dict[str, Role] = Field(default_factory=dict)
    services: dict[str, Service] = Field(default_factory=dict)

    def approvers(self, role: str) -> list[str] | None:
        members = self.roles[role].members
        return sorted(members) if members is not None else None


def parse_catalog(path: Path) -> tuple[Catalog | None, list[Problem]]:
    """The catalog and the problems found reading it (each with file and line)."""
    doc, problems = read_yaml(path)
    if doc is None:
        return None, problems
    return validate(doc, Catalog)


def load_catalog(path: Path) -> Catalog:
    """Load a catalog; raises CompileError listing every problem, each with its line."""
    catalog, problems = parse_catalog(Path(path))
    if catalog is None:
        raise CompileError(problems)
    return catalog
