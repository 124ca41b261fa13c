"""Route matchers, templates and first-match order (pure functions, table-driven)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from fireline.catalog.routes import (
    MAX_KEY_LENGTH,
    AlertFacts,
    Matcher,
    Route,
    route_alert,
    service_routes,
)
from fireline.ingress.routing import RoutingTable
from fireline.runtime.settings import Settings


def facts(**labels: str) -> AlertFacts:
    return AlertFacts(
        source="alertmanager",
        name=labels.get("alertname", "X"),
        group_key='fireline/{}:{alertname="X"}',
        severity=labels.get("severity"),
        labels=labels,
        annotations={"summary": "it broke"},
    )


class TestMatcher:
    @pytest.mark.parametrize(
        ("text", "labels", "expected"),
        [
            ('severity="critical"', {"severity": "critical"}, True),
            ('severity="critical"', {"severity": "critical2"}, False),
            ("severity=critical", {"severity": "critical"}, True),
            ('severity!="critical"', {"severity": "warning"}, True),
            ('severity!="critical"', {}, True),
            ('severity=""', {}, True),
            ('severity=~"crit.*"', {"severity": "critical"}, True),
            # anchored: a regex must match the whole value, as in Alertmanager
            ('severity=~"crit"', {"severity": "critical"}, False),
            ('severity=~"crit|page"', {"severity": "xpage"}, False),
            ('severity=~"crit|page"', {"severity": "page"}, True),
            ('severity!~"crit.*"', {"severity": "critical"}, False),
            ('severity!~"crit"', {"severity": "critical"}, True),
            ('severity=~".*"', {}, True),
            ('severity=~".+"', {}, False),
            ('summary="say \\"hi\\""', {"summary": 'say "hi"'}, True),
        ],
    )
    def test_table(self, text: str, labels: dict[str, str], expected: bool) -> None:
        """Each matcher form means what it means in an alertmanager.yml."""
        assert Matcher.model_validate(text).matches(labels) is expected

    def test_bad_regex_refused(self) -> None:
        """A regex that does not compile is refused when the catalog loads, naming it."""
        with pytest.raises(ValidationError, match="bad regex"):
            Matcher.model_validate('a=~"("')

    def test_not_a_matcher(self) -> None:
        with pytest.raises(ValidationError, match="not a matcher"):
            Matcher.model_validate("just words")

    def test_anchoring_cannot_be_escaped_by_alternation(self) -> None:
        """``a|b`` is wrapped in a group, so ``^a|b$`` cannot half-match."""
        m = Matcher.model_validate('x=~"a|b"')
        assert not m.matches({"x": "ab"})
        assert not m.matches({"x": "ba"})


class TestRoute:
    def test_first_match_in_catalog_order(self) -> None:
        services = service_routes(
            {
                "checkout": {"routes": [{"matchers": ['service="checkout"'], "playbook": "p1"}]},
                "catch-all": {"routes": [{"matchers": [], "playbook": "p2"}]},
            }
        )
        assert route_alert(facts(service="checkout"), services).service == "checkout"  # type: ignore[union-attr]
        assert route_alert(facts(service="other"), services).service == "catch-all"  # type: ignore[union-attr]

    def test_unrouted(self) -> None:
        services = service_routes({"a": {"routes": [{"matchers": ['service="a"']}]}})
        assert route_alert(facts(service="b"), services) is None

    def test_playbook_per_kind_and_inputs(self) -> None:
        route = Route.model_validate(
            {
                "matchers": ['service=~"checkout.*"'],
                "playbook": "generic-triage",
                "playbooks": {"HighErrorRate": "api-outage"},
                "inputs": {
                    "host": "{labels.instance}",
                    "why": "{annotations.summary}",
                    "zone": "{labels.zone}",
                },
                "incident_key": "{service}/{labels.cluster}/{name}",
            }
        )
        match = route_alert(
            facts(alertname="HighErrorRate", service="checkout-api", instance="a:1", cluster="eu"),
            [("checkout", [route])],
        )
        assert match is not None
        assert match.playbook == "api-outage"
        assert match.inputs == {"host": "a:1", "why": "it broke"}
        assert match.missing_inputs == ["zone"]
        assert match.incident_key == "checkout/eu/HighErrorRate"
        other = route_alert(facts(alertname="Other", service="checkout"), [("checkout", [route])])
        assert other is not None
        assert other.playbook == "generic-triage"

    def test_default_key_is_service_and_group_key(self) -> None:
        match = route_alert(facts(), [("svc", [Route()])])
        assert match is not None
        assert match.incident_key == 'svc/fireline/{}:{alertname="X"}'
        assert match.route == "svc#0"

    def test_long_key_is_bounded_and_distinct(self) -> None:
        route = Route(incident_key="{labels.big}")
        one = route_alert(facts(big="a" * 500 + "1"), [("s", [route])])
        two = route_alert(facts(big="a" * 500 + "2"), [("s", [route])])
        assert one is not None
        assert two is not None
        assert len(one.incident_key) <= MAX_KEY_LENGTH
        assert one.incident_key != two.incident_key

    def test_sources_filter(self) -> None:
        route = Route(sources=["grafana"])
        assert route_alert(facts(), [("s", [route])]) is None

    def test_unknown_placeholder_refused(self) -> None:
        with pytest.raises(ValidationError, match="unknown placeholder"):
            Route.model_validate({"inputs": {"x": "{secrets.token}"}})

    def test_unknown_route_field_refused(self) -> None:
        with pytest.raises(ValidationError):
            Route.model_validate({"matcher": ["a=b"]})

    def test_typed_service_model_is_read(self) -> None:
        """The catalog's Service model (routes as dicts) is read as well as plain mappings."""
        from fireline.catalog.services import Service

        svc = Service.model_validate({"routes": [{"matchers": ['service="x"']}]})
        routes = service_routes({"x": svc})
        assert route_alert(facts(service="x"), routes) is not None


class TestRoutingTable:
    def test_bad_route_leaves_its_service_out(self, tmp_path: Path) -> None:
        """A route that does not validate is reported; its alerts fall through, never vanish."""
        (tmp_path / "catalog.yaml").write_text(
            "roles: {}\n"
            "services:\n"
            "  broken:\n"
            "    routes: [{matchers: ['a=~\"(\"']}]\n"
            "  fine:\n"
            "    routes: [{matchers: []}]\n"
        )
        table = RoutingTable(Settings(playbooks_dir=tmp_path), reload_seconds=0)
        table.refresh()
        assert [name for name, _ in table.routes] == ["fine"]
        assert table.problems[0].startswith("service broken:")

    def test_reload_on_change(self, tmp_path: Path) -> None:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text("roles: {}\nservices: {}\n")
        table = RoutingTable(Settings(playbooks_dir=tmp_path), reload_seconds=0)
        table.refresh()
        assert table.routes == []
        catalog.write_text("roles: {}\nservices:\n  s:\n    routes: [{matchers: []}]\n")
        os.utime(catalog, (time.time() + 5, time.time() + 5))
        table.refresh()
        assert [name for name, _ in table.routes] == ["s"]
