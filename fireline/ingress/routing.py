"""The catalog and playbooks as the router sees them: routes in order, plans compiled once.

Loaded from ``settings.playbooks_dir`` (its ``catalog.yaml``) and checked for changes at most
every ``reload_seconds``, so editing a route needs no restart. A route that does not validate
is logged and left out; its alerts then show up as unrouted rather than vanish.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from fireline.catalog.routes import AlertFacts, Route, RouteMatch, route_alert, service_routes
from fireline.ingress.alert import Alert

if TYPE_CHECKING:
    from fireline.catalog.model import Catalog
    from fireline.compile.compiler import PlaybookLibrary
    from fireline.incident import IncidentStart
    from fireline.plan import Plan
    from fireline.runtime.settings import Settings

log = structlog.get_logger("fireline.ingress.routing")


def facts(alert: Alert) -> AlertFacts:
    return AlertFacts(
        source=alert.source.value,
        name=alert.name,
        group_key=alert.group_key,
        severity=alert.severity,
        labels=alert.labels,
        annotations=alert.annotations,
    )


def _stamp(folder: Path) -> tuple[tuple[str, float], ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted((str(p), p.stat().st_mtime) for p in folder.rglob("*.y*ml") if p.is_file()))


class RoutingTable:
    def __init__(
        self,
        settings: Settings,
        reload_seconds: float = 5.0,
        *,
        trusted_keys: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.trusted_keys = dict(trusted_keys or {})
        self.reload_seconds = reload_seconds
        self._checked = float("-inf")
        self._stamp: tuple[tuple[str, float], ...] | None = None
        self.library: PlaybookLibrary | None = None
        self.catalog: Catalog | None = None
        self.routes: list[tuple[str, list[Route]]] = []
        self.problems: list[str] = []
        self._plans: dict[str, Plan | None] = {}

    def due(self) -> bool:
        return self.library is None or time.monotonic() - self._checked >= self.reload_seconds

    def refresh(self) -> None:
        """Reload if a file changed since the last look (looked at most every reload_seconds)."""
        now = time.monotonic()
        if now - self._checked < self.reload_seconds and self.library is not None:
            return
        self._checked = now
        stamp = _stamp(Path(self.settings.playbooks_dir))
        if stamp == self._stamp and self.library is not None:
            return
        self._load()
        self._stamp = stamp

    def _load(self) -> None:
        from fireline.compile.compiler import PlaybookLibrary

        library = PlaybookLibrary.load(Path(self.settings.playbooks_dir))
        catalog = library.files.catalog
        routes: list[tuple[str, list[Route]]] = []
        problems: list[str] = []
        for name, service in (catalog.services if catalog else {}).items():
            try:
                routes += service_routes({name: service})
            except ValueError as exc:
                problems.append(f"service {name}: {exc}")
                log.error("route does not validate; its alerts stay unrouted", service=name)
        self.library, self.catalog, self.routes, self.problems = library, catalog, routes, problems
        self._plans = {}

    def route(self, alert: Alert) -> RouteMatch | None:
        return route_alert(facts(alert), self.routes)

    def plan(self, playbook: str | None) -> Plan | None:
        """The compiled plan, cached; a playbook that does not compile opens without a run."""
        if playbook is None or self.library is None:
            return None
        if playbook not in self._plans:
            from fireline.errors import CompileError

            try:
                self._plans[playbook] = self.library.compile(playbook)
            except (CompileError, KeyError, ValueError) as exc:
                log.error("routed playbook does not compile", playbook=playbook, error=str(exc))
                self._plans[playbook] = None
        return self._plans[playbook]

    def start(self, match: RouteMatch, alert: Alert, previous: str | None) -> IncidentStart:
        """The incident's start input; used by Temporal only if the incident is new."""
        from fireline.catalog.model import Catalog
        from fireline.incident import incident_start

        plan = self.plan(match.playbook)
        inputs: dict[str, Any] = dict(match.inputs)
        if plan is not None:
            from fireline.compile.compiler import apply_input_defaults

            try:
                inputs = apply_input_defaults(plan, inputs)
            except ValueError as exc:  # the run will refuse them and say why; keep the alert
                log.warning("routed inputs do not fit the playbook", error=str(exc))
        return incident_start(
            self.catalog or Catalog(),
            match.service,
            match.incident_key,
            severity=match.severity or "unknown",
            title=alert.summary or alert.name,
            plan=plan,
            inputs=inputs,
            previous_incident=previous,
            task_queue_prefix=self.settings.task_queue_prefix,
            trusted_keys=self.trusted_keys,
        )
