"""Figures, their raw twins, the verdicts, and how they are shown (rich table or JSON)."""

from __future__ import annotations

import statistics
from typing import Literal

from pydantic import BaseModel, Field, computed_field
from rich.console import Console
from rich.table import Table

from bench.server import ServerProfile


class Summary(BaseModel):
    """Samples of one figure in milliseconds; the median is what gets compared."""

    samples_ms: list[float]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def p90_ms(self) -> float | None:
        """Only with three samples or more: fewer say nothing about the tail."""
        if len(self.samples_ms) < 3:
            return None
        return statistics.quantiles(self.samples_ms, n=10, method="inclusive")[8]


class Target(BaseModel):
    """``ratio``: fireline/raw must stay at or under ``limit``; ``delta``: fireline - raw in ms."""

    kind: Literal["ratio", "delta", "none"]
    limit: float | None = None

    def text(self) -> str:
        if self.kind == "ratio":
            return f"<= {self.limit:g}x raw"
        if self.kind == "delta":
            return f"<= raw + {self.limit:g} ms"
        return "(reported)"


class CpuFigures(BaseModel):
    """CPU time of the bench process (client and workers, not the server) per sample unit."""

    fireline: Summary
    raw: Summary


class Metric(BaseModel):
    name: str
    label: str
    fireline: Summary
    raw: Summary
    target: Target
    cpu: CpuFigures | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ratio(self) -> float:
        return self.fireline.p50_ms / self.raw.p50_ms

    @computed_field  # type: ignore[prop-decorator]
    @property
    def delta_ms(self) -> float:
        return self.fireline.p50_ms - self.raw.p50_ms

    @computed_field  # type: ignore[prop-decorator]
    @property
    def verdict(self) -> Literal["meets", "misses", "n/a"]:
        if self.target.kind == "none" or self.target.limit is None:
            return "n/a"
        value = self.ratio if self.target.kind == "ratio" else self.delta_ms
        return "meets" if value <= self.target.limit else "misses"


class Scale(BaseModel):
    """A figure measured once per side at scale (a storm, a burst): value, raw twin, verdict.

    ``unit`` ``/s`` is a rate (higher is better); the others are costs (lower is better).
    """

    name: str
    label: str
    unit: Literal["ms", "/s", "MB"]
    fireline: float | None
    """None: the scenario did not finish (``note`` says why)."""
    raw: float | None
    target: Target
    note: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ratio(self) -> float | None:
        if self.fireline is None or not self.raw:
            return None
        return self.fireline / self.raw

    @computed_field  # type: ignore[prop-decorator]
    @property
    def verdict(self) -> Literal["meets", "misses", "n/a"]:
        if self.target.kind == "none" or self.target.limit is None or self.ratio is None:
            return "n/a"
        value = (
            self.ratio if self.target.kind == "ratio" else (self.fireline or 0) - (self.raw or 0)
        )
        return "meets" if value <= self.target.limit else "misses"


class HistoryCount(BaseModel):
    """Events and workflow tasks one run of a scenario wrote: what each step costs the server."""

    scenario: str
    steps: int
    fireline_events: int
    raw_events: int
    fireline_workflow_tasks: int
    raw_workflow_tasks: int
    fireline_task_ms: float
    """Mean time a workflow task took from started to completed: the worker's share."""
    raw_task_ms: float
    fireline_by_type: dict[str, int] = Field(default_factory=dict)
    raw_by_type: dict[str, int] = Field(default_factory=dict)


class BenchReport(BaseModel):
    server: ServerProfile
    python: str
    temporalio: str
    bytecode_cache: bool
    """Whether workflow modules the sandbox re-imports per run come from cached bytecode."""
    steps: int
    repeat: int
    concurrent: int
    quick: bool
    metrics: dict[str, Metric]
    history: list[HistoryCount]
    scale: list[Scale] = Field(default_factory=list)
    """Incident and bulk-approval figures, one measurement per side (see bench/scale.py)."""
    worker_tuning: str = "tuned"
    """``tuned`` (``fireline.runtime.workers.TUNED``) or ``sdk`` (the SDK's defaults)."""
    scenarios: list[str] = Field(default_factory=list)
    duration_s: float
    load_average_end: tuple[float, float, float]
    """Load when the bench finished; with ``server.load_average``, how busy the machine was."""


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def _cell(summary: Summary) -> str:
    p90 = f" (p90 {_ms(summary.p90_ms)})" if summary.p90_ms is not None else ""
    return f"{_ms(summary.p50_ms)}{p90}"


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return _ms(value)
    return f"{value:.0f}{unit}" if unit == "/s" else f"{value:.0f} {unit}"


def render_scale(report: BenchReport, console: Console) -> None:
    if not report.scale:
        return
    table = Table(caption="one measurement per side; ratio = fireline / raw")
    for column in ("at scale", "fireline", "raw", "ratio", "target", "verdict"):
        table.add_column(column, justify="left" if column == "at scale" else "right")
    for s in report.scale:
        colour = {"meets": "green", "misses": "red"}.get(s.verdict, "dim")
        label = f"{s.label} [dim]({s.note})[/dim]" if s.note else s.label
        table.add_row(
            label,
            _value(s.fireline, s.unit),
            _value(s.raw, s.unit),
            "-" if s.ratio is None else f"{s.ratio:.2f}x",
            s.target.text(),
            f"[{colour}]{s.verdict}[/{colour}]",
        )
    console.print(table)


def render(report: BenchReport, console: Console) -> None:
    s = report.server
    console.print(
        f"[bold]Fireline vs raw Temporal[/bold] - server {s.profile}/{s.db}, {s.server_version}, "
        f"{s.cpus} CPUs, load {s.load_average[0]:.2f} at start, "
        f"{report.load_average_end[0]:.2f} at end ({report.duration_s:.0f} s); "
        f"steps {report.steps}, repeat {report.repeat}, "
        f"concurrent {report.concurrent}{' (quick)' if report.quick else ''}; "
        f"workers {report.worker_tuning}; "
        f"Python {report.python}, temporalio {report.temporalio}"
    )
    table = Table(
        caption="p50 of the repeats, p90 in brackets; ratio = fireline p50 / raw p50; "
        "worker CPU = CPU time of the bench process (client + workers), fireline vs raw"
    )
    columns = ("metric", "fireline", "raw", "ratio / delta", "target", "verdict", "worker CPU")
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric in report.metrics.values():
        compare = (
            f"{metric.delta_ms:+.1f} ms"
            if metric.target.kind == "delta"
            else f"{metric.ratio:.2f}x"
        )
        colour = {"meets": "green", "misses": "red"}.get(metric.verdict, "dim")
        table.add_row(
            metric.label,
            _cell(metric.fireline),
            _cell(metric.raw),
            compare,
            metric.target.text(),
            f"[{colour}]{metric.verdict}[/{colour}]",
            "-"
            if metric.cpu is None
            else f"{_ms(metric.cpu.fireline.p50_ms)} vs {_ms(metric.cpu.raw.p50_ms)}",
        )
    console.print(table)
    history = Table(
        caption="last run of each scenario read back with fetch_history(); "
        "task time = mean workflow task, started -> completed (fireline vs raw)"
    )
    history_columns = ("history", "fireline events", "raw events", "workflow tasks", "task time")
    for column in history_columns:
        history.add_column(column, justify="left" if column == "history" else "right")
    for h in report.history:
        history.add_row(
            f"{h.scenario} ({h.steps} steps)",
            f"{h.fireline_events} ({h.fireline_events / h.steps:.1f}/step)",
            f"{h.raw_events} ({h.raw_events / h.steps:.1f}/step)",
            f"{h.fireline_workflow_tasks} vs {h.raw_workflow_tasks}",
            f"{h.fireline_task_ms:.1f} vs {h.raw_task_ms:.1f} ms",
        )
    console.print(history)
    render_scale(report, console)
