"""The catalog (``playbooks/catalog.yaml``): people, roles, decision rights, embargoes, services.

Compilation resolves approval roles against it, so a gate names people who exist and a
``min_approvals`` that can be met, and freezes the roster and rights into the plan
(``fireline.compile.policy``). Services are kept open (``dict[str, Any]``) until alert
routing gives them a shape.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from fireline.catalog.embargo import EmbargoSpec
from fireline.catalog.people import PersonSpec
from fireline.catalog.rights import RightsSpec
from fireline.catalog.services import PinnedLevel, PinnedPolicy, Service
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
    people: dict[str, PersonSpec] = Field(default_factory=dict)
    roles: dict[str, Role] = Field(default_factory=dict)
    decision_rights: RightsSpec = Field(default_factory=RightsSpec)
    embargoes: dict[str, EmbargoSpec] = Field(default_factory=dict)
    services: dict[str, Service] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        for name, person in self.people.items():
            unknown = sorted(set(person.roles) - set(self.roles))
            if unknown:
                raise ValueError(f"person {name} holds unknown role(s): {', '.join(unknown)}")
        rights = self.decision_rights
        named = {r for rule in rights.risks.values() for r in rule.roles}
        named |= set(rights.owners.values())
        unknown = sorted(named - set(self.roles))
        if unknown:
            raise ValueError(f"decision_rights name unknown role(s): {', '.join(unknown)}")
        return self

    def approvers(self, role: str) -> list[str] | None:
        """Who may act for ``role``: its members and the people who list it; None: anyone."""
        members = self.roles[role].members
        holders = {name for name, p in self.people.items() if role in p.roles}
        if members is None and not holders:
            return None
        return sorted(set(members or ()) | holders)

    def roles_of(self, person: str) -> list[str]:
        held = set(self.people[person].roles) if person in self.people else set()
        held |= {name for name, r in self.roles.items() if r.members and person in r.members}
        return sorted(held)

    def tier_of(self, person: str) -> int:
        """The person's own tier, else the highest tier among their roles."""
        spec = self.people.get(person)
        if spec is not None and spec.tier is not None:
            return spec.tier
        return max((self.roles[r].tier for r in self.roles_of(person)), default=0)

    def roster(self) -> list[str]:
        """Everyone the catalog knows: listed people and role members."""
        names = set(self.people)
        for role in self.roles.values():
            names |= set(role.members or ())
        return sorted(names)


def pin_policy(catalog: Catalog, service: Service) -> PinnedPolicy:
    """Snapshot ``service``'s policy, roles resolved to their members now."""
    policy = service.policy()
    levels: list[PinnedLevel] = []
    for level in policy.levels:
        people: list[str] = []
        rotation = False
        for target in level.targets:
            if target.person is not None:
                people.append(target.person)
            elif target.role is not None:
                role = catalog.roles.get(target.role)
                members = role.members if role is not None and role.members else []
                people.extend(members or [f"role:{target.role}"])
            else:
                rotation = True
        deduped = list(dict.fromkeys(people))
        levels.append(
            PinnedLevel(
                tier=level.tier,
                delay=level.delay,
                people=deduped,
                rotation=rotation,
                strategy=level.strategy,
            )
        )
    return PinnedPolicy(
        levels=levels,
        repeat=policy.repeat,
        ack_timeout=policy.ack_timeout,
        rotation=service.rotation,
    )


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
