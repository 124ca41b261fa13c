"""The playbooks shipped in ``playbooks/`` compile against the registered modules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fireline.catalog.model import load_catalog
from fireline.catalog.routes import route_alert, service_routes
from fireline.compile.compiler import PlaybookLibrary
from fireline.ingress.alert import Alert
from fireline.ingress.alertmanager import AlertmanagerPayload, normalise
from fireline.ingress.routing import RoutingTable, facts
from fireline.plan import IncludeNode, ParallelNode, StepNode
from fireline.runtime.settings import DOMAINS, Settings

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


ALERTMANAGER = {
    "version": "4",
    "groupKey": '{}:{alertname="HighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "fireline",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {"alertname": "HighErrorRate", "job": "api", "severity": "page"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "HighErrorRate",
                "job": "api",
                "severity": "page",
                "cluster": "eu-1",
                "instance": "api-3.eu-1:8080",
            },
            "annotations": {
                "summary": "5xx ratio 12% on api (eu-1)",
                "cache_pattern": "api:v2:user:*",
            },
            "startsAt": "2026-12-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "b1946ac92492d234",
        }
    ],
}


class TestShippedRoutes:
    """The shipped catalog routes an Alertmanager alert to a shipped playbook that compiles."""

    def _alerts(self, **labels: str) -> list[Alert]:
        payload = json.loads(json.dumps(ALERTMANAGER))
        payload["alerts"][0]["labels"].update(labels)
        return normalise(AlertmanagerPayload.model_validate(payload), datetime.now(UTC))

    def test_high_error_rate_opens_degraded_api_with_inputs_from_the_alert(
        self, tmp_path: Path
    ) -> None:
        """alertname=~"HighErrorRate|HighLatency" on job api -> degraded-api, inputs complete."""
        table = RoutingTable(Settings(playbooks_dir=PLAYBOOKS, data_dir=tmp_path))
        table.refresh()
        assert table.problems == []
        (alert,) = self._alerts()
        match = table.route(alert)
        assert match is not None
        assert (match.service, match.route, match.playbook) == (
            "api",
            "api-degraded",
            "degraded-api",
        )
        assert match.incident_key == "api/degraded/eu-1"
        assert match.missing_inputs == []
        start = table.start(match, alert, previous=None)
        assert start.plan is not None
        assert start.plan.name == "degraded-api"
        assert start.plan.hash == start.plan.content_hash()
        assert start.inputs["cache_pattern"] == "api:v2:user:*"
        assert start.inputs["health_url"] == "http://api-3.eu-1:8080/healthz"
        required = {i.name for i in start.plan.inputs if i.required}
        assert required <= set(start.inputs), "every required input is filled from the alert"
        # The service's ladder, paging channel and guard are pinned into the incident.
        assert [level.people for level in start.policy.levels] == [
            ["alice", "bob"],
            ["carol"],
            ["dana"],
        ]
        assert start.policy.levels[0].strategy.value == "round_robin"
        assert [(c.kind, c.target) for c in start.paging] == [("webhook", "oncall")]
        assert start.guard.max_runs == 3
        assert start.rights is not None
        assert start.rights.commanders == ["dana"]
        assert start.rights.owners == ["alice", "bob"]

    @pytest.mark.parametrize(
        ("labels", "routed"),
        [
            ({"alertname": "HighLatency"}, True),
            ({"alertname": "HighErrorRateX"}, False),  # anchored, as Alertmanager anchors
            ({"job": "worker"}, False),
            ({"severity": "info"}, False),
        ],
    )
    def test_other_alerts_are_not_taken(self, labels: dict[str, str], routed: bool) -> None:
        """Only the API's paging alerts take the route; the rest stay unrouted (counted)."""
        catalog = load_catalog(PLAYBOOKS / "catalog.yaml")
        (alert,) = self._alerts(**labels)
        found = route_alert(facts(alert), service_routes(catalog.services))
        assert (found is not None) is routed
