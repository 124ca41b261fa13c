"""The playbooks shipped in ``playbooks/`` compile against the registered modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from fireline.catalog.model import load_catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.plan import IncludeNode, ParallelNode, StepNode
from fireline.runtime.settings import DOMAINS

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
FILES = sorted(p for p in PLAYBOOKS.glob("*.y*ml") if p.name != "catalog.yaml")


@pytest.fixture(scope="module")
def library() -> PlaybookLibrary:
    return PlaybookLibrary.load(PLAYBOOKS)


class TestPlaybooksDirectory:
    def test_there_are_playbooks_and_a_catalog(self) -> None:
        """The directory ships a catalog and at least the demo playbooks."""
        catalog = load_catalog(PLAYBOOKS / "catalog.yaml")
        assert {"sre-oncall", "sre-senior", "incident-commander"} <= set(catalog.roles)
        assert len(FILES) >= 3

    def test_nothing_in_the_directory_has_a_problem(self, library: PlaybookLibrary) -> None:
        """validate_all reports no problem for any file, the catalog included."""
        report = library.validate_all()
        assert {Path(f).name for f in report} == {p.name for p in FILES} | {"catalog.yaml"}
        assert {f: [str(p) for p in ps] for f, ps in report.items() if ps} == {}

    @pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
    def test_each_playbook_compiles(self, library: PlaybookLibrary, path: Path) -> None:
        """Every playbook compiles to a sealed plan whose steps all have a source line."""
        plan = library.compile(str(path))
        assert plan.hash == plan.content_hash()
        for node in plan.walk():
            assert node.source is not None
            assert node.source.line is not None
            if isinstance(node, StepNode):
                assert node.action.module.split(".")[0] in DOMAINS

    def test_api_outage_includes_the_other_two(self, library: PlaybookLibrary) -> None:
        """The composite playbook embeds drain-node (gated) and degraded-api."""
        plan = library.compile("api-outage")
        includes = [n for n in plan.nodes if isinstance(n, IncludeNode)]
        assert [(n.id, n.plan.name) for n in includes] == [
            ("drain", "drain-node"),
            ("recover", "degraded-api"),
        ]
        assert includes[0].gate is not None
        assert includes[0].gate.approvers == ["carol"]
        assert includes[1].plan == library.compile("degraded-api")

    def test_drain_node_drains_in_parallel_with_the_announcement(
        self, library: PlaybookLibrary
    ) -> None:
        """drain-node's drain is compensated and runs alongside the notification."""
        plan = library.compile("drain-node")
        group = next(n for n in plan.nodes if isinstance(n, ParallelNode))
        drain = group.branches[0]
        assert isinstance(drain, StepNode)
        assert drain.mutates
        assert drain.compensation is not None
        assert drain.compensation.module == "platform.haproxy_restore"
        assert drain.compensation.with_["servers"] == "${{ output.previous }}"
