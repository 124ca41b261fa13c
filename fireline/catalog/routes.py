"""Alert routes: which service an alert belongs to, which playbook it runs, with which inputs.

A service in the catalog lists its routes; the first route (in catalog order) whose label
matchers all hold takes the alert, as an Alertmanager route tree without ``continue`` would.
Matchers speak Alertmanager's language (``=``, ``!=``, ``=~``, ``!~``) and regular expressions
are anchored the way Alertmanager anchors them (``^(?:RE)$``), so a matcher copied from an
``alertmanager.yml`` means here what it meant there. Kept standalone (no import of the
service model), so the catalog's service shape can grow around it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

MAX_KEY_LENGTH = 200
"""Incident keys longer than this are shortened to a digest (workflow ids must stay short)."""

_MATCHER = re.compile(
    r"""^\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>.*?)\s*$""",
    re.DOTALL,
)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)(?:\.([A-Za-z0-9_]+))?\}")
_TEMPLATE_ROOTS = frozenset(
    {"labels", "annotations", "service", "name", "group_key", "source", "severity", "route"}
)


class MatchOp(StrEnum):
    eq = "="
    ne = "!="
    re = "=~"
    not_re = "!~"


class Matcher(BaseModel):
    """One label condition; a missing label counts as the empty string (as in Alertmanager)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse_matcher(data)
        return data

    @model_validator(mode="after")
    def _compile(self) -> Matcher:
        if self.op in (MatchOp.re, MatchOp.not_re):
            try:
                self._regex = re.compile(f"^(?:{self.value})$", re.DOTALL)
            except re.error as exc:
                raise ValueError(f"{self.label}{self.op}{self.value!r}: bad regex: {exc}") from exc
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        given = labels.get(self.label, "")
        if self.op is MatchOp.eq:
            return given == self.value
        if self.op is MatchOp.ne:
            return given != self.value
        assert self._regex is not None
        found = self._regex.match(given) is not None
        return found if self.op is MatchOp.re else not found

    def __str__(self) -> str:
        return f'{self.label}{self.op.value}"{self.value}"'


def parse_matcher(text: str) -> dict[str, str]:
    """``severity=~"crit.*"`` -> its parts; the value may be quoted (with ``\\"``) or bare."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(
            f"{text!r} is not a matcher; write LABEL=VALUE, LABEL!=VALUE, LABEL=~REGEX or "
            "LABEL!~REGEX"
        )
    value = found["value"]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return {"label": found["label"], "op": found["op"], "value": value}


def _check_template(template: str) -> str:
    for root, _ in _PLACEHOLDER.findall(template):
        if root not in _TEMPLATE_ROOTS:
            known = ", ".join(sorted(_TEMPLATE_ROOTS))
            raise ValueError(f"unknown placeholder {{{root}}} in {template!r}; known: {known}")
    return template


class Route(BaseModel):
    """Alerts whose labels satisfy every matcher belong to the service holding this route.

    ``playbooks`` picks the playbook by alert kind (the ``alertname`` / rule title), with
    ``playbook`` for every other kind; neither set: the incident opens without a run.
    ``inputs`` and ``incident_key`` are templates: ``{labels.NAME}``, ``{annotations.NAME}``,
    ``{service}``, ``{name}``, ``{group_key}``, ``{source}``, ``{severity}``, ``{route}``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    matchers: list[Matcher] = Field(default_factory=list)
    sources: list[str] | None = Field(
        default=None, description="only alerts from these senders (default: any)"
    )
    playbook: str | None = None
    playbooks: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    incident_key: str | None = Field(
        default=None, description="template; default: SERVICE/<the sender's group key>"
    )
    severity: str | None = Field(default=None, description="overrides the alert's severity")

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        for template in value.values():
            _check_template(template)
        return value

    @field_validator("incident_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return _check_template(value) if value is not None else None

    def matches(self, labels: Mapping[str, str], source: str) -> bool:
        if self.sources is not None and source not in self.sources:
            return False
        return all(m.matches(labels) for m in self.matchers)

    def playbook_for(self, kind: str) -> str | None:
        return self.playbooks.get(kind, self.playbook)


class AlertFacts(BaseModel):
    """What a route looks at in an alert; the ingress Alert model satisfies it field by field."""

    source: str
    name: str
    group_key: str
    severity: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RouteMatch(BaseModel):
    """Where a routed alert goes: the service, its incident key, its playbook and inputs."""

    service: str
    route: str
    incident_key: str
    playbook: str | None
    inputs: dict[str, str] = Field(default_factory=dict)
    missing_inputs: list[str] = Field(
        default_factory=list, description="inputs left out: their template named absent labels"
    )
    severity: str | None = None


def render(template: str, facts: AlertFacts, service: str, route: str) -> tuple[str, bool]:
    """The template filled in, and whether every placeholder it named had a value."""
    complete = True

    def one(found: re.Match[str]) -> str:
        nonlocal complete
        root, key = found[1], found[2]
        if root in ("labels", "annotations"):
            values = facts.labels if root == "labels" else facts.annotations
            if key is None or key not in values:
                complete = False
                return ""
            return values[key]
        scalar = {
            "service": service,
            "route": route,
            "name": facts.name,
            "group_key": facts.group_key,
            "source": facts.source,
            "severity": facts.severity or "",
        }[root]
        if not scalar:
            complete = False
        return scalar

    return _PLACEHOLDER.sub(one, template), complete


def bounded_key(key: str) -> str:
    """The key itself if short enough, else a prefix plus a digest of the whole."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{key[: MAX_KEY_LENGTH - 34]}~{digest}"


def route_alert(
    facts: AlertFacts, services: Iterable[tuple[str, Iterable[Route]]]
) -> RouteMatch | None:
    """The first matching route, in catalog order, or None: the alert is unrouted."""
    for service, routes in services:
        for index, route in enumerate(routes):
            if not route.matches(facts.labels, facts.source):
                continue
            route_name = route.name or f"{service}#{index}"
            inputs: dict[str, str] = {}
            missing: list[str] = []
            for name, template in route.inputs.items():
                value, complete = render(template, facts, service, route_name)
                if complete:
                    inputs[name] = value
                else:
                    missing.append(name)
            if route.incident_key is not None:
                key, _ = render(route.incident_key, facts, service, route_name)
            else:
                key = f"{service}/{facts.group_key}"
            return RouteMatch(
                service=service,
                route=route_name,
                incident_key=bounded_key(key),
                playbook=route.playbook_for(facts.name),
                inputs=inputs,
                missing_inputs=missing,
                severity=route.severity or facts.severity,
            )
    return None


def service_routes(services: Mapping[str, Any]) -> list[tuple[str, list[Route]]]:
    """Routes of each catalog service, whatever shape the service entry has.

    A service is a model with a ``routes`` attribute or (until the catalog types services) a
    mapping with a ``routes`` key; entries are validated into :class:`Route` either way.
    """
    out: list[tuple[str, list[Route]]] = []
    for name, service in services.items():
        raw = (
            service.get("routes", [])
            if isinstance(service, Mapping)
            else getattr(service, "routes", [])
        )
        routes = [r if isinstance(r, Route) else Route.model_validate(r) for r in raw or []]
        out.append((name, routes))
    return out
