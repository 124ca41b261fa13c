"""Rich rendering of runs, modules and validation results for the terminal.

Kept apart from the CLI so the same views can be printed, shown live, or captured in tests,
and so ``fireline.operator.cli`` stays about arguments and exit codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from fireline.messages import (
    CheckObservation,
    CompensationRecord,
    RunPhase,
    RunState,
    StepState,
    StepStatus,
)
from fireline.operator.plan_preview import PlannedStep, PlanPreview, StepKind
from fireline.plan import Preview

_STATUS_STYLE: dict[str, str] = {
    StepStatus.pending: "dim",
    StepStatus.checking: "cyan",
    StepStatus.awaiting_approval: "bold yellow",
    StepStatus.running: "cyan",
    StepStatus.verifying: "cyan",
    StepStatus.awaiting_decision: "bold yellow",
    StepStatus.succeeded: "green",
    StepStatus.skipped: "dim",
    StepStatus.failed: "bold red",
    StepStatus.rejected: "red",
    StepStatus.cancelled: "yellow",
    StepStatus.compensated: "magenta",
    StepStatus.compensation_failed: "bold red",
}
_PHASE_STYLE: dict[str, str] = {
    RunPhase.running: "cyan",
    RunPhase.awaiting_approval: "bold yellow",
    RunPhase.awaiting_decision: "bold yellow",
    RunPhase.compensating: "magenta",
    RunPhase.succeeded: "bold green",
    RunPhase.failed: "bold red",
    RunPhase.compensated: "magenta",
    RunPhase.compensation_failed: "bold red",
    RunPhase.cancelled: "yellow",
}


def _row(table: Table, *cells: RenderableType) -> None:
    """Add a row whose strings are data, never markup: a ``[Errno 111]`` must stay visible."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def _time(at: datetime | None) -> str:
    return at.strftime("%H:%M:%S") if at else ""


def _short(value: Any, width: int = 40) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def phase_text(phase: RunPhase) -> Text:
    return Text(phase.value, style=_PHASE_STYLE.get(phase, ""))


def check_line(obs: CheckObservation) -> str:
    """``post replica_lag ✓ observed=0 expected<=5 (2 tries)``: the evidence in one line."""
    mark = "✓" if obs.satisfied else "✗"
    parts = [f"{obs.stage} {obs.check} {mark}", f"observed={_short(obs.observed, 30)}"]
    if obs.expected is not None:
        parts.append(f"expected={_short(obs.expected, 30)}")
    if obs.detail:
        parts.append(_short(obs.detail, 60))
    if obs.attempts > 1:
        parts.append(f"({obs.attempts} tries)")
    return " ".join(parts)


def identity_mark(verified: bool | None) -> str:
    """How a person's name is shown: proven by a signature, taken at their word, or unknown
    (recorded before decisions were signed)."""
    return {True: " [verified]", False: " [unverified]", None: ""}[verified]


def approvals_text(step: StepState) -> str:
    return ", ".join(
        f"{'✓' if a.decision == 'approved' else '✗'} {a.by}"
        + (f" ({_short(a.comment, 30)})" if a.comment else "")
        + (" [unverified]" if a.verified is False else "")
        for a in step.approvals
    )


def steps_table(state: RunState, *, checks: bool = True) -> Table:
    """One row per step: status, attempts, who approved, what the checks observed."""
    table = Table(title=f"{state.playbook} v{state.version}", title_justify="left", expand=False)
    table.add_column("step", no_wrap=True)
    table.add_column("module")
    table.add_column("risk")
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("approvals")
    if checks:
        table.add_column("checks")
    table.add_column("note")
    for step in state.steps:
        note = step.error or ""
        if step.status == StepStatus.awaiting_approval and step.gate:
            note = f"needs {step.gate.role} (tier {step.gate.tier})"
            if step.gate_deadline:
                note += f" by {_time(step.gate_deadline)}"
        row: list[RenderableType] = [
            step.id if step.kind == "step" else f"{step.id} [{step.kind}]",
            step.module or "",
            step.risk.value,
            Text(step.status.value, style=_STATUS_STYLE.get(step.status, "")),
            str(step.attempts),
            approvals_text(step),
        ]
        if checks:
            row.append("\n".join(check_line(c) for c in step.checks))
        row.append(_short(note, 60))
        _row(table, *row)
    return table


def checks_table(state: RunState) -> Table:
    """Every check observation, one per row: the evidence behind each step's verdict."""
    table = Table(title="checks", title_justify="left")
    for col in ("step", "stage", "check", "", "tries", "observed", "expected", "detail"):
        table.add_column(col)
    for step in state.steps:
        for obs in step.checks:
            mark = Text("✓", style="green") if obs.satisfied else Text("✗", style="red")
            _row(
                table,
                step.id,
                obs.stage,
                obs.check,
                mark,
                str(obs.attempts),
                _short(obs.observed, 40),
                _short(obs.expected, 30),
                _short(obs.detail, 80),
            )
    return table


def compensations_table(records: Sequence[CompensationRecord]) -> Table:
    table = Table(title="compensations", title_justify="left")
    for col in ("for step", "module", "status", "verified", "error"):
        table.add_column(col)
    for rec in records:
        verified = "" if rec.verified is None else ("✓" if rec.verified else "✗")
        _row(table, rec.step, rec.module, rec.status, verified, _short(rec.error, 60))
    return table


def timeline_table(state: RunState) -> Table:
    table = Table(title="timeline", title_justify="left")
    for col in ("at", "actor", "event", "step", "message"):
        table.add_column(col)
    for event in state.events:
        _row(
            table,
            _time(event.at),
            event.actor + identity_mark(event.verified),
            event.kind,
            event.step or "",
            _short(event.message, 80),
        )
    return table


def header(state: RunState) -> Text:
    text = Text()
    text.append(f"{state.workflow_id}  ", style="bold")
    text.append_text(phase_text(state.phase))
    text.append(f"\nplaybook {state.playbook} v{state.version}  plan {state.plan_hash[:12]}")
    text.append(f"  requested by {state.requested_by}")
    if state.started_at:
        text.append(f"\nstarted {state.started_at.isoformat(timespec='seconds')}")
    if state.finished_at:
        text.append(f"  finished {state.finished_at.isoformat(timespec='seconds')}")
    if state.reason:
        text.append(f"\nreason: {state.reason}", style=_PHASE_STYLE.get(state.phase, ""))
    return text


def preview_lines(preview: Preview | None, error: str | None, *, indent: str = "  ") -> list[str]:
    """What a step would change, as its module's preview read it: summary, each change as
    before -> after, blast radius, rollback and warnings (plain text, never markup)."""
    if error is not None:
        return [f"{indent}preview unavailable: {_short(error, 300)}"]
    if preview is None:
        return []
    lines = [f"{indent}would change: {_short(preview.summary, 300)}"]
    for change in preview.changes[:20]:
        where = f"{_short(change.target, 40)} {_short(change.attribute, 40)}"
        lines.append(
            f"{indent}  {where}: {_short(change.before, 60)} -> {_short(change.after, 60)}"
        )
    if len(preview.changes) > 20:
        lines.append(f"{indent}  … and {len(preview.changes) - 20} more")
    if preview.blast_radius:
        radius = ", ".join(f"{k} {v}" for k, v in preview.blast_radius.items())
        lines.append(f"{indent}blast radius: {_short(radius, 200)}")
    if preview.rollback:
        lines.append(f"{indent}rollback: {_short(preview.rollback, 300)}")
    lines += [f"{indent}warning: {_short(w, 300)}" for w in preview.warnings[:10]]
    return lines


def gate_previews(state: RunState) -> list[Text]:
    """For each step waiting at its gate, what approving it would change."""
    out: list[Text] = []
    for step in state.steps:
        if step.status != StepStatus.awaiting_approval:
            continue
        lines = preview_lines(step.preview, step.preview_error)
        if not lines:
            continue
        title = Text(f"{step.id} waits for approval", style="bold yellow")
        out.append(Text.assemble(title, "\n", "\n".join(lines)))
    return out


def run_view(state: RunState, *, timeline: bool = True) -> Group:
    """The full status page of one run."""
    parts: list[RenderableType] = [header(state), steps_table(state, checks=False)]
    parts += gate_previews(state)
    if any(step.checks for step in state.steps):
        parts.append(checks_table(state))
    if state.compensations:
        parts.append(compensations_table(state.compensations))
    if state.outputs:
        parts.append(Text("outputs: " + ", ".join(f"{k}={v}" for k, v in state.outputs.items())))
    if timeline and state.events:
        parts.append(timeline_table(state))
    return Group(*parts)


def live_view(state: RunState) -> Group:
    """Compact view for ``run --follow`` on a terminal: header, steps, how to approve."""
    hints = [
        Text(f"approve: fireline approve {state.workflow_id} {s.id}", style="yellow")
        for s in state.steps
        if s.status == StepStatus.awaiting_approval
    ]
    return Group(header(state), steps_table(state, checks=False), *gate_previews(state), *hints)


def changes(previous: RunState | None, current: RunState) -> list[str]:
    """What changed between two polls, one line each, for output that is not a terminal."""
    lines: list[str] = []
    before = {s.id: s for s in previous.steps} if previous else {}
    phase_changed = previous is None or previous.phase != current.phase
    if phase_changed and not current.phase.terminal:
        lines.append(f"run {current.phase.value}")
    for step in current.steps:
        old = before.get(step.id)
        if old is None and step.status == StepStatus.pending:
            continue
        if old is None or old.status != step.status:
            line = f"step {step.id}: {step.status.value}"
            if step.status == StepStatus.awaiting_approval and step.gate:
                line += f" (needs {step.gate.role})"
            if step.error and step.status in (StepStatus.failed, StepStatus.compensation_failed):
                line += f": {step.error}"
            lines.append(line)
        seen = len(old.checks) if old else 0
        lines += [f"  {step.id} {check_line(c)}" for c in step.checks[seen:]]
    if phase_changed and current.phase.terminal:
        # Last, after the step changes that caused it; the reason is the caller's outcome line.
        lines.append(f"run {current.phase.value}")
    return lines


def modules_table(descriptions: Iterable[dict[str, Any]]) -> Table:
    table = Table(title="modules", title_justify="left")
    for col in (
        "name",
        "kind",
        "domain",
        "risk",
        "mutates",
        "pre / post",
        "requires / provides",
        "compensation",
    ):
        table.add_column(col, overflow="fold")
    for d in descriptions:
        _row(
            table,
            d["name"],
            d["kind"],
            d["domain"],
            d["risk"],
            "yes" if d["mutates"] else "",
            _checks_cell(d),
            _facts_cell(d),
            _compensation_cell(d["compensation"]),
        )
    return table


def _checks_cell(d: dict[str, Any]) -> str:
    pre = ", ".join(c["check"] for c in d["preconditions"])
    post = ", ".join(c["check"] for c in d["postconditions"])
    return f"{pre or '-'} / {post or '-'}" if pre or post else ""


def _facts_cell(d: dict[str, Any]) -> str:
    req, prov = ", ".join(d["requires"]), ", ".join(d["provides"])
    return f"{req or '-'} / {prov or '-'}" if req or prov else ""


def _compensation_cell(comp: Any) -> str:
    if comp is None:
        return ""
    if isinstance(comp, dict):
        return str(comp.get("module", ""))
    return str(comp)


def module_detail(d: dict[str, Any]) -> Group:
    """One module in full, input schema included, for ``fireline modules NAME``."""
    table = Table(show_header=False, title=d["name"], title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("kind", "domain", "description", "risk", "mutates", "idempotent", "local"):
        _row(table, key, str(d.get(key, "")))
    _row(table, "timeout", f"{d.get('timeout_s', '')} s")
    for key in ("preconditions", "postconditions"):
        _row(table, key, "\n".join(_check_ref(c) for c in d[key]) or "-")
    _row(table, "requires", ", ".join(d["requires"]) or "-")
    _row(table, "provides", ", ".join(d["provides"]) or "-")
    comp = d["compensation"]
    _row(table, "compensation", _check_ref(comp) if isinstance(comp, dict) else str(comp or "-"))
    return Group(
        table, schema_table("input", d["input_schema"]), schema_table("output", d["output_schema"])
    )


def _check_ref(ref: dict[str, Any]) -> str:
    name = ref.get("check") or ref.get("module") or "?"
    args = ref.get("with") or {}
    shown = ", ".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else str(args)
    when = f" when {ref['when']}" if ref.get("when") else ""
    return f"{name}({shown}){when}"


def schema_table(title: str, schema: dict[str, Any]) -> Table:
    """A JSON Schema's top-level properties as rows: name, type, required, default, text."""
    table = Table(title=f"{title} fields", title_justify="left")
    for col in ("field", "type", "required", "default", "description"):
        table.add_column(col, overflow="fold")
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        _row(
            table,
            name,
            _schema_type(prop),
            "yes" if name in required else "",
            "" if "default" not in prop else repr(prop["default"]),
            prop.get("description", ""),
        )
    return table


def _schema_type(prop: dict[str, Any]) -> str:
    if "type" in prop:
        return str(prop["type"])
    if "anyOf" in prop:
        return " | ".join(_schema_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "enum" in prop:
        return "enum"
    return "any"


def runs_table(runs: Iterable[Any]) -> Table:
    table = Table(title="runs", title_justify="left")
    table.add_column("workflow id", no_wrap=True)
    for col in ("playbook", "phase", "status", "risk", "by", "started"):
        table.add_column(col, overflow="fold")
    for run in runs:
        _row(
            table,
            run.workflow_id,
            run.playbook or "",
            run.phase or "",
            run.status,
            run.max_risk or "",
            run.requested_by or "",
            run.start_time.strftime("%Y-%m-%d %H:%M:%S") if run.start_time else "",
        )
    return table


def tokens_table(records: Iterable[Any]) -> Table:
    """``fireline token list``: who holds which token id; never a token or its hash."""
    table = Table(title="tokens", title_justify="left")
    for col in ("id", "person", "label", "created", "expires"):
        table.add_column(col, overflow="fold")
    for record in records:
        _row(
            table,
            record.id,
            record.person,
            record.label,
            record.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            record.expires_at.strftime("%Y-%m-%d %H:%M:%S") if record.expires_at else "never",
        )
    return table


_KIND_STYLE: dict[str, str] = {
    StepKind.mutating: "bold yellow",
    StepKind.read_only: "green",
    StepKind.undetermined: "magenta",
}


def _gate_cell(step: PlannedStep) -> str:
    if step.gate is None:
        return ""
    count = f" x{step.gate.min_approvals}" if step.gate.min_approvals > 1 else ""
    return f"{step.gate.role}{count}"


def plan_table(preview: PlanPreview) -> Table:
    """``fireline plan``: one row per step (id, module and undo stacked in one cell, so the
    table stays readable at 80 columns)."""
    counts = preview.counts()
    title = (
        f"plan {preview.playbook} v{preview.version}: {counts['mutating']} mutating, "
        f"{counts['read-only']} read-only, {counts['undetermined']} undetermined"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("step / module / undo", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("risk", no_wrap=True)
    table.add_column("gate", overflow="fold")
    for step in preview.steps:
        pad = "  " * step.depth
        lines = [f"{pad}{step.id}", f"{pad}  {step.module}"]
        if step.compensation:
            lines.append(f"{pad}  undo: {step.compensation}")
        _row(
            table,
            "\n".join(lines),
            Text(step.kind.value, style=_KIND_STYLE.get(step.kind, "")),
            step.risk.value,
            _gate_cell(step),
        )
    return table


def plan_details(preview: PlanPreview) -> list[str]:
    """Below the table: each mutating step's preview, and why undetermined ones wait."""
    lines: list[str] = []
    for step in preview.steps:
        if step.kind is StepKind.undetermined:
            lines.append(f"{step.id}: undetermined, needs {', '.join(step.depends_on)}")
        elif step.preview is not None or step.preview_error is not None:
            lines.append(f"{step.id}:")
            lines += preview_lines(step.preview, step.preview_error)
    return lines


def plan_view(preview: PlanPreview) -> Group:
    details = [Text(line) for line in plan_details(preview)]
    footer = Text(
        f"plan {preview.plan_hash[:12]}, max risk {preview.max_risk.value}; nothing was changed",
        style="dim",
    )
    return Group(plan_table(preview), *details, footer)
