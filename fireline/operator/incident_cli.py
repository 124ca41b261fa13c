"""``fireline incidents``, ``incident``, ``ack``, ``command``, ``resolve``, ``timeline``,
``postmortem``, ``report``: the incident commands, through the operator API.

:func:`register` adds them to the main ``fireline`` app. Tables keep to a few short columns so
they stay readable in an 80-column terminal; ``--json`` prints the API's answer as it came.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fireline.incident import IncidentState
from fireline.operator import operations
from fireline.operator.client import ApiClient, NotAuthorized
from fireline.operator.report import Report
from fireline.runtime.settings import Settings

T = TypeVar("T")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="the incident's id")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
As = Annotated[
    str | None,
    typer.Option("--as", help="development mode only: act as this person without a credential"),
]
CommentOpt = Annotated[str, typer.Option("--comment", "-m", help="why, for the timeline")]


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, highlight=False).print(
        Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True
    )
    raise typer.Exit(code)


def _call(fn: Callable[[ApiClient], T], as_: str | None = None) -> T:
    try:
        settings = Settings()
        with ApiClient.from_settings(settings, unverified_as=as_) as api:
            return fn(api)
    except NotAuthorized as exc:
        _fail(f"not authorised: {exc}")
    except operations.OperationRefused as exc:
        _fail(f"refused: {exc.reason}")
    except operations.OperationError as exc:
        _fail(str(exc))


def _get(path: str, **params: Any) -> Any:
    clean = {k: v for k, v in params.items() if v is not None}
    return _call(lambda api: api._call("GET", path, params=clean))


def _post(path: str, body: dict[str, Any], as_: str | None) -> Any:
    return _call(lambda api: api._call("POST", path, json=body), as_)


def _text(path: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v is not None}

    def fetch(api: ApiClient) -> str:
        response = api._http.get(path, params=clean, headers={"Accept": "text/markdown"})
        if not response.is_success:
            api._call("GET", path, params=clean)  # raises the mapped error
        return response.text

    return _call(fetch)


def _json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _when(value: str | datetime | None) -> str:
    if value is None:
        return "—"
    text = value.isoformat() if isinstance(value, datetime) else value
    return text[5:16].replace("T", " ")


def incidents_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} incident(s)", expand=False)
    table.add_column("incident", overflow="fold", max_width=34)
    table.add_column("service", overflow="fold", max_width=14)
    table.add_column("sev", max_width=8, overflow="ellipsis")
    table.add_column("phase", max_width=17, overflow="fold")
    table.add_column("opened", no_wrap=True)
    for row in rows:
        phase = row.get("phase") or ("open" if row.get("open") else "closed")
        table.add_row(
            row["incident_id"],
            row.get("service", ""),
            row.get("severity", ""),
            phase,
            _when(row.get("opened_at")),
        )
    return table


def incident_panel(state: IncidentState) -> list[Any]:
    """The incident as a few short lines and two small tables (pages, latest events)."""
    s = state
    head = Text.assemble(
        (f"{s.incident_id}\n", "bold"),
        f"{s.service} · {s.severity} · ",
        (s.phase.value.upper(), "bold"),
        f" · commander {s.commander or 'none'}\n",
        f"alerts {s.alerts.total} ({len(s.firing)} firing, {s.alerts.duplicates} duplicates)",
        f" · acked by {s.acknowledged_by or 'nobody'}",
    )
    out: list[Any] = [head]
    if s.run.workflow_id:
        out.append(Text(f"run {s.run.playbook}: {s.run.phase} ({s.run.workflow_id})"))
    if s.escalation.gate_step:
        out.append(Text(f"waiting at gate `{s.escalation.gate_step}`", style="yellow"))
    if s.guard.reasons:
        out.append(Text("guard: " + "; ".join(s.guard.reasons), style="yellow"))
    if s.resolution:
        out.append(Text(f"resolution: {s.resolution} ({s.resolved_by})"))
    if s.pages:
        pages = Table(title="pages", expand=False)
        for col in ("at", "who", "tier", "via", "ok"):
            pages.add_column(col, overflow="fold", max_width=22)
        for p in s.pages[-10:]:
            pages.add_row(
                _when(p.at), p.person, str(p.tier), p.channel, "yes" if p.delivered else "FAILED"
            )
        out.append(pages)
    events = Table(title="latest events", expand=False)
    events.add_column("at", no_wrap=True)
    events.add_column("what", max_width=14, overflow="fold")
    events.add_column("detail", max_width=46, overflow="fold")
    for e in s.timeline[-10:]:
        events.add_row(_when(e.at), e.kind, e.message)
    out.append(events)
    return out


def report_table(report: Report) -> Table:
    def d(v: float | None) -> str:
        if v is None:
            return "—"
        minutes, seconds = divmod(int(v), 60)
        return f"{minutes}m{seconds:02d}s"

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:.0%}"

    table = Table(
        title=f"incidents: {report.incidents} (drills excluded: {report.drills_excluded})"
    )
    table.add_column("measure", max_width=40, overflow="fold")
    table.add_column("median", justify="right")
    table.add_column("p90", justify="right")
    for label, dur in (
        ("time to acknowledge", report.time_to_acknowledge),
        ("time to containment", report.time_to_containment),
        ("time to resolve", report.time_to_resolve),
    ):
        table.add_row(f"{label} (n={dur.count})", d(dur.median_s), d(dur.p90_s))
    table.add_row("resolved automatically", pct(report.resolved_automatically), "")
    table.add_row(
        f"auto remediations verified (n={report.automatic_remediations})",
        pct(report.verification_passed),
        "",
    )
    ppi = "—" if report.pages_per_incident is None else f"{report.pages_per_incident:.1f}"
    table.add_row("pages per incident", ppi, "")
    for tier, n in report.escalations_per_tier.items():
        table.add_row(f"escalations to tier {tier}", str(n), "")
    for service, n in list(report.per_service.items())[:10]:
        table.add_row(f"incidents: {service}", str(n), "")
    for alert, n in list(report.per_alert.items())[:10]:
        table.add_row(f"alert: {alert}", str(n), "")
    table.add_row("reopened", str(report.reopened), "")
    return table


def register(app: typer.Typer) -> None:
    """Add the incident commands to the main CLI."""

    @app.command("incidents")
    def incidents(
        service: Annotated[str | None, typer.Option(help="only this service")] = None,
        phase: Annotated[str | None, typer.Option(help="only this phase")] = None,
        severity: Annotated[str | None, typer.Option(help="only this severity")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
        as_json: Json = False,
    ) -> None:
        """Incidents, newest first."""
        rows = _get("/v1/incidents", service=service, phase=phase, severity=severity, limit=limit)
        if as_json:
            _json(rows)
        else:
            Console(highlight=False).print(incidents_table(rows))

    @app.command("incident")
    def incident(incident_id: IdArg, as_json: Json = False) -> None:
        """One incident: phase, commander, pages, latest events."""
        data = _get(f"/v1/incidents/{incident_id}")
        if as_json:
            _json(data)
            return
        console = Console(highlight=False)
        for part in incident_panel(IncidentState.model_validate(data)):
            console.print(part)

    def _act(
        incident_id: str, verb: str, body: dict[str, Any], as_: str | None, as_json: bool
    ) -> None:
        data = _post(f"/v1/incidents/{incident_id}/{verb}", body, as_)
        if as_json:
            _json(data)
            return
        state = IncidentState.model_validate(data)
        Console(highlight=False).print(
            f"{verb}: {state.incident_id} is {state.phase.value}; commander "
            f"{state.commander or 'none'}; acknowledged by {state.acknowledged_by or 'nobody'}"
        )

    @app.command("ack")
    def ack(
        incident_id: IdArg, comment: CommentOpt = "", as_: As = None, as_json: Json = False
    ) -> None:
        """Acknowledge: the ladder stops climbing (until the ack times out)."""
        _act(incident_id, "ack", {"comment": comment}, as_, as_json)

    @app.command("command")
    def command(
        incident_id: IdArg,
        handover: Annotated[
            str | None, typer.Option("--handover", help="hand command to NAME")
        ] = None,
        release: Annotated[bool, typer.Option("--release", help="hand command back")] = False,
        comment: CommentOpt = "",
        as_: As = None,
        as_json: Json = False,
    ) -> None:
        """Take command of an incident, hand it over (--handover NAME) or back (--release)."""
        if handover and release:
            _fail("--handover and --release exclude each other", 2)
        action = "handover" if handover else "release" if release else "take"
        _act(
            incident_id,
            "command",
            {"action": action, "to": handover, "comment": comment},
            as_,
            as_json,
        )

    @app.command("resolve")
    def resolve(
        incident_id: IdArg, comment: CommentOpt = "", as_: As = None, as_json: Json = False
    ) -> None:
        """Declare the incident resolved (a run that already changed things finishes first)."""
        _act(incident_id, "resolve", {"comment": comment}, as_, as_json)

    @app.command("incident-approve")
    def incident_approve(
        incident_id: IdArg,
        step: Annotated[str, typer.Argument(help="`guard` for the guard's gate, else a run step")],
        comment: CommentOpt = "",
        as_: As = None,
    ) -> None:
        """Approve a gate of the incident: the guard's (``guard``) or its run's."""
        _json(
            _post(f"/v1/incidents/{incident_id}/approve", {"step": step, "comment": comment}, as_)
        )

    @app.command("incident-reject")
    def incident_reject(
        incident_id: IdArg,
        step: Annotated[str, typer.Argument(help="`guard` for the guard's gate, else a run step")],
        comment: CommentOpt = "",
        as_: As = None,
    ) -> None:
        """Reject a gate of the incident: the guard's (``guard``) or its run's."""
        _json(_post(f"/v1/incidents/{incident_id}/reject", {"step": step, "comment": comment}, as_))

    @app.command("timeline")
    def timeline(
        incident_id: IdArg,
        as_json: Json = False,
        markdown: Annotated[bool, typer.Option("--markdown", help="print Markdown")] = False,
    ) -> None:
        """Every alert, page, ack, decision, action, check and compensation, timestamped."""
        if as_json:
            _json(_get(f"/v1/incidents/{incident_id}/timeline", format="json"))
            return
        text = _text(f"/v1/incidents/{incident_id}/timeline", format="markdown")
        if markdown:
            typer.echo(text)
            return
        table = Table(expand=False)
        table.add_column("at", no_wrap=True)
        table.add_column("what", max_width=16, overflow="fold")
        table.add_column("who", max_width=12, overflow="fold")
        table.add_column("detail", max_width=36, overflow="fold")
        for event in _get(f"/v1/incidents/{incident_id}/timeline", format="json"):
            table.add_row(_when(event["at"]), event["kind"], event["actor"], event["message"])
        Console(highlight=False).print(table)

    @app.command("postmortem")
    def postmortem(incident_id: IdArg) -> None:
        """A Markdown postmortem draft: summary, impact, decisions, checks, review prompts."""
        typer.echo(_text(f"/v1/incidents/{incident_id}/postmortem"))

    @app.command("report")
    def report(
        since: Annotated[
            datetime | None, typer.Option(help="incidents opened since (ISO date or time)")
        ] = None,
        service: Annotated[str | None, typer.Option(help="only this service")] = None,
        as_json: Json = False,
    ) -> None:
        """MTTA, containment, MTTR (median, p90), automation share, escalations, recurrence."""
        data = _get(
            "/v1/reports/incidents", since=since.isoformat() if since else None, service=service
        )
        if as_json:
            _json(data)
        else:
            Console(highlight=False).print(report_table(Report.model_validate(data)))
