"""``python -m bench``: Fireline vs a hand-written Temporal workflow on one dev server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
QUICK = {"steps": 5, "repeat": 2, "concurrent": 20}
FULL = {"steps": 20, "repeat": 5, "concurrent": 500}


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything else, the dev server's banner included, to stderr: stdout is the JSON.

    The file descriptor itself is redirected, because the server is a child process that
    writes to the descriptor it inherits, not to ``sys.stdout``.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Fireline against a raw Temporal workflow on the same dev server.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--profile", choices=["tuned", "stock"], default="tuned")
    parser.add_argument("--db", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--steps", type=int, help="steps per sequential run (default 20)")
    parser.add_argument("--repeat", type=int, help="measured runs per figure (default 5)")
    parser.add_argument("--concurrent", type=int, help="runs started at once (default 500)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (5 steps, 2 repeats, 20 concurrent)"
    )
    parser.add_argument(
        "--scenarios",
        default="core,incidents,approvals",
        help="comma-separated groups: core, incidents, approvals, storm (the storm alone); "
        "default: core,incidents,approvals",
    )
    parser.add_argument(
        "--workers",
        choices=["tuned", "sdk"],
        default="tuned",
        help="worker tuning for both sides: Fireline's (default) or the SDK's defaults",
    )
    parser.add_argument("--scale", type=int, help="incidents/approvals per scale scenario")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # The workflow sandbox re-imports workflow modules for every new run. Without cached
    # bytecode (PYTHONDONTWRITEBYTECODE=1) each run compiles them from source again, which
    # would measure the interpreter's settings rather than Fireline: cache as Python does.
    sys.dont_write_bytecode = False
    from bench.report import render
    from bench.runner import Options, run_bench
    from bench.scale import QUICK_SIZES, ScaleSizes

    sizes = QUICK if args.quick else FULL
    options = Options(
        profile=args.profile,
        db=args.db,
        steps=args.steps or sizes["steps"],
        repeat=args.repeat or sizes["repeat"],
        concurrent=args.concurrent or sizes["concurrent"],
        quick=args.quick,
        scenarios=tuple(x.strip() for x in args.scenarios.split(",") if x.strip()),
        sizes=QUICK_SIZES if args.quick else ScaleSizes(),
        worker_tuning=args.workers,
    )
    if args.scale:
        n = args.scale
        options.sizes = dataclasses.replace(
            options.sizes, storm=n, waiting=n, timers=n, approvals=n
        )
    unknown = set(options.scenarios) - {"core", "incidents", "approvals", "storm"}
    if unknown or not options.scenarios:
        parser.error(
            f"--scenarios: choose from core, incidents, approvals, storm: {args.scenarios}"
        )
    if options.steps < 1 or options.repeat < 1 or options.concurrent < 1:
        parser.error("--steps, --repeat and --concurrent must be at least 1")
    progress = Console(stderr=True)
    # bench.fail fails on purpose in every saga run; its tracebacks would bury the progress.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    # Fireline logs every page it delivers at info; thousands of them would bury the progress.
    from fireline.runtime.logging import configure_logging

    configure_logging("console", "WARNING")
    with _stdout_to_stderr():
        report = asyncio.run(run_bench(options, progress))
    text = report.model_dump_json(indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    if args.json:
        sys.stdout.write(text + "\n")
    else:
        console = Console()
        if not console.is_terminal:
            console.width = 120  # a file or a pipe still gets the table on one line per row
        render(report, console)
        progress.print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
