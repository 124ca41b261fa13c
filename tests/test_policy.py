"""Decision rights at compile time and in the catalog: what can never work is refused early."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fireline.catalog.model import Catalog, load_catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.errors import CompileError
from fireline.plan import Plan, Risk, StepNode
from tests.test_decision_rights import REGISTRY

BASE: dict[str, Any] = {
    "people": {"dana": {"tier": 3, "roles": ["lead"]}},
    "roles": {
        "oncall": {"tier": 1, "members": ["alice", "bob"]},
        "senior": {"tier": 2, "members": ["carol"]},
        "lead": {"tier": 3},
        "open": {"tier": 1},
    },
    "decision_rights": {"risks": {"high": {"min_tier": 2}, "critical": {"min_tier": 2}}},
}


def catalog(**changes: Any) -> Catalog:
    return Catalog.model_validate(BASE | changes)


def playbook(uses: str, approval: str, extra: str = "") -> str:
    return f"""
    name: p
    owner: team
    steps:
      - id: first
        uses: core.http_probe
        with: {{url: "http://127.0.0.1:1"}}
      - id: change
        uses: {uses}
        with: {{name: web}}
        approval: {approval}{extra}
    """


def compile_with(tmp_path: Path, text: str, cat: Catalog) -> Plan:
    folder = tmp_path / "pb"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(textwrap.dedent(text))
    return PlaybookLibrary.load(folder, catalog=cat, registry=REGISTRY).compile("p")


def problems(tmp_path: Path, text: str, cat: Catalog) -> list[str]:
    with pytest.raises(CompileError) as caught:
        compile_with(tmp_path, text, cat)
    return [str(p) for p in caught.value.problems]


class TestGatePolicy:
    def test_role_that_cannot_satisfy_the_risk_is_a_compile_error(self, tmp_path: Path) -> None:
        """A tier-1 role gating a high step: refused at the step's line, with a fix."""
        found = problems(tmp_path, playbook("rights.high", "{role: oncall}"), catalog())
        assert len(found) == 1
        assert found[0].endswith(
            "p.yaml:8: step 'change': role 'oncall' cannot approve a high step: it needs "
            "tier 2+, and no one acting for the role has that; use a role whose members "
            "qualify, or change the catalog's decision_rights"
        )

    def test_open_role_below_the_tier_is_refused(self, tmp_path: Path) -> None:
        found = problems(tmp_path, playbook("rights.high", "{role: open}"), catalog())
        assert "role 'open' cannot approve a high step" in found[0]

    def test_critical_asking_one_is_raised_to_two(self, tmp_path: Path) -> None:
        """The floor is the catalog's: a gate asking fewer is raised, not refused."""
        cat = catalog(roles=BASE["roles"] | {"senior": {"tier": 2, "members": ["carol", "erin"]}})
        plan = compile_with(
            tmp_path, playbook("rights.critical", "{role: senior, min_approvals: 1}"), cat
        )
        node = plan.nodes[1]
        assert isinstance(node, StepNode)
        assert node.gate is not None
        assert node.gate.min_approvals == 2

    def test_critical_with_one_qualified_person_is_refused(self, tmp_path: Path) -> None:
        found = problems(tmp_path, playbook("rights.critical", "{role: senior}"), catalog())
        assert found[0].endswith(
            "step 'change': needs 2 approvals (critical steps need 2 distinct approvers) but "
            "only 1 person(s) acting for role 'senior' may approve a critical step (carol); "
            "add qualified members to the role in the catalog, or use another role"
        )

    def test_a_gate_may_ask_more(self, tmp_path: Path) -> None:
        cat = catalog(
            roles=BASE["roles"] | {"senior": {"tier": 2, "members": ["carol", "erin", "fay"]}}
        )
        plan = compile_with(
            tmp_path, playbook("rights.critical", "{role: senior, min_approvals: 3}"), cat
        )
        node = plan.nodes[1]
        assert isinstance(node, StepNode)
        assert node.gate is not None
        assert node.gate.min_approvals == 3

    def test_soft_embargo_without_a_tier_3_person_is_refused(self, tmp_path: Path) -> None:
        """During the window nobody could approve: say so now, not at 3 a.m."""
        embargo = {
            "freeze": {
                "domains": ["database"],
                "weekly": [{"days": ["sat"], "from": "00:00", "to": "23:59"}],
            }
        }
        cat = catalog(people={}, embargoes=embargo, roles=BASE["roles"] | {"lead": {"tier": 2}})
        text = """
        name: p
        steps:
          - id: change
            uses: rights.db
            with: {name: ledger}
        """
        found = problems(tmp_path, text, cat)
        assert "soft embargo 'freeze' covers domain 'database'" in found[0]


class TestFrozenRights:
    def test_the_plan_carries_roster_and_rules(self, tmp_path: Path) -> None:
        """What the run is judged by is in the plan (and so in its hash and its history)."""
        cat = catalog(
            roles=BASE["roles"] | {"senior": {"tier": 2, "members": ["carol", "erin"]}},
            decision_rights=BASE["decision_rights"] | {"owners": {"team": "oncall"}},
        )
        plan = compile_with(tmp_path, playbook("rights.high", "{role: senior}"), cat)
        rights = plan.rights
        assert rights is not None
        assert set(rights.people) == {"alice", "bob", "carol", "dana", "erin"}
        assert (rights.people["dana"].tier, rights.people["dana"].roles) == (3, ["lead"])
        assert rights.open_roles == {"open": 1}
        assert rights.owners == ["alice", "bob"]
        assert rights.unsigned == [Risk.low]
        assert rights.right(Risk.critical).min_approvals == 2
        assert plan.hash == plan.content_hash()

    def test_a_catalog_edit_does_not_change_a_compiled_plan(self, tmp_path: Path) -> None:
        cat = catalog(roles=BASE["roles"] | {"senior": {"tier": 2, "members": ["carol"]}})
        plan = compile_with(tmp_path, playbook("rights.high", "{role: senior}"), cat)
        later = catalog(roles=BASE["roles"] | {"senior": {"tier": 2, "members": ["mallory"]}})
        again = compile_with(tmp_path, playbook("rights.high", "{role: senior}"), later)
        assert plan.rights is not None
        assert "mallory" not in plan.rights.people
        assert plan.hash != again.hash

    def test_the_preview_is_named_in_the_plan(self, tmp_path: Path) -> None:
        cat = catalog(roles=BASE["roles"] | {"senior": {"tier": 2, "members": ["carol"]}})
        plan = compile_with(tmp_path, playbook("rights.high", "{role: senior}"), cat)
        node = plan.nodes[1]
        assert isinstance(node, StepNode)
        assert node.action.preview == "rights.high.preview"


class TestCatalogRights:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (
                {"decision_rights": {"risks": {"critical": {"min_approvals": 1}}}},
                "critical steps need at least 2 approvers; min_approvals 1 would lower the floor",
            ),
            (
                {"decision_rights": {"separation_of_duties": ["high"]}},
                "separation_of_duties must keep critical",
            ),
            (
                {"decision_rights": {"risks": {"high": {"roles": ["nope"]}}}},
                "decision_rights name unknown role(s): nope",
            ),
            ({"people": {"zed": {"roles": ["nope"]}}}, "person zed holds unknown role(s): nope"),
            (
                {"embargoes": {"e": {"domains": ["database"], "timezone": "Mars/Olympus"}}},
                "unknown time zone 'Mars/Olympus'",
            ),
            (
                {"embargoes": {"e": {"timezone": "UTC", "weekly": []}}},
                "an embargo covers nothing",
            ),
            (
                {"embargoes": {"e": {"domains": ["database"]}}},
                "an embargo needs a window",
            ),
            (
                {
                    "embargoes": {
                        "e": {
                            "domains": ["database"],
                            "start": "2026-12-02T10:00:00",
                            "end": "2026-12-01T10:00:00",
                        }
                    }
                },
                "end must come after start",
            ),
            (
                {
                    "embargoes": {
                        "e": {
                            "domains": ["database"],
                            "start": "2026-12-01T10:00:00+01:00",
                            "end": "2026-12-02T10:00:00",
                        }
                    }
                },
                "write the wall-clock time without an offset",
            ),
            ({"people": {"zed": {"token": "s3cret"}}}, "Extra inputs are not permitted"),
        ],
        ids=lambda v: v if isinstance(v, str) else "",
    )
    def test_refused(self, change: dict[str, Any], message: str) -> None:
        with pytest.raises(ValidationError) as caught:
            Catalog.model_validate(BASE | change)
        assert message in str(caught.value)

    def test_the_shipped_catalog_loads_with_people_rights_and_an_embargo(self) -> None:
        shipped = load_catalog(Path(__file__).parent.parent / "playbooks" / "catalog.yaml")
        assert shipped.tier_of("dana") == 3
        assert "quarter-close" in shipped.embargoes
        assert shipped.decision_rights.rule(Risk.critical).min_approvals == 2

    def test_approvers_include_people_who_list_the_role(self) -> None:
        assert catalog().approvers("lead") == ["dana"]
        assert catalog().approvers("open") is None
