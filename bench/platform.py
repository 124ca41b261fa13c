"""What the HAProxy modules cost on top of the raw admin-socket commands doing the same work.

Each figure runs a module in a real activity context (``ActivityEnvironment``, no Temporal
server: the engine's per-step cost is ``python -m bench``'s business) against a real HAProxy
on 127.0.0.1, next to its raw twin: the runtime API commands an operator would type into
socat for the same job. The difference is Fireline's own work per step: target resolution,
input validation, the state it records for the undo, the read-back, the typed output.

    .venv/bin/python -m bench.platform [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.platform.haproxy import (
    DrainInput,
    HaproxyModules,
    HealthyInput,
    RestoreInput,
    ServerSetting,
    WeightsInput,
)
from activities.platform.haproxy_api import HaproxyAdmin, HaproxyTarget
from fireline.runtime.logging import configure_logging
from tests.support.haproxy import running_haproxy


def env() -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id="bench",
        activity_id=f"step-{uuid.uuid4().hex[:12]}",
    )
    return environment


async def paired(
    module: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]], repeat: int
) -> tuple[list[float], list[float]]:
    """Alternate the two, so both meet the same HAProxy state."""
    await module()
    await raw()
    samples: tuple[list[float], list[float]] = ([], [])
    for n in range(repeat * 2):
        fn, into = (module, samples[0]) if n % 2 == 0 else (raw, samples[1])
        started = time.perf_counter()
        await fn()
        into.append((time.perf_counter() - started) * 1e6)
    return samples


def summary(name: str, samples: tuple[list[float], list[float]], note: str) -> dict[str, Any]:
    m, r = statistics.median(samples[0]), statistics.median(samples[1])
    return {
        "figure": name,
        "module_p50_us": round(m),
        "raw_p50_us": round(r),
        "overhead_us": round(m - r),
        "ratio": round(m / r, 2),
        "raw_twin": note,
    }


async def measure(repeat: int) -> list[dict[str, Any]]:
    with running_haproxy() as haproxy:
        modules = HaproxyModules(haproxy.settings())
        admin = HaproxyAdmin(HaproxyTarget(socket=haproxy.socket))

        async def raw(*lines: str) -> None:
            for line in lines:
                await admin.command(line)

        async def drain_and_restore() -> None:
            drained = await env().run(
                modules.drain,
                DrainInput(target="edge", backend="web", servers=["s1"], keep_healthy=1, wait_s=0),
            )
            await env().run(
                modules.restore,
                RestoreInput(
                    target="edge",
                    backend="web",
                    servers=[
                        ServerSetting.model_validate(p.model_dump()) for p in drained.previous
                    ],
                ),
            )

        async def weights() -> None:
            out = await env().run(
                modules.set_weights,
                WeightsInput(
                    target="edge", backend="web", weights={"s1": 0, "s2": 40}, keep_healthy=1
                ),
            )
            await env().run(
                modules.restore,
                RestoreInput(
                    target="edge",
                    backend="web",
                    servers=[ServerSetting.model_validate(p.model_dump()) for p in out.previous],
                ),
            )

        async def healthy() -> None:
            await env().run(modules.healthy, HealthyInput(target="edge", backend="web"))

        figures = [
            summary(
                "haproxy drain + restore",
                await paired(
                    drain_and_restore,
                    lambda: raw(
                        "show servers state web",
                        "set server web/s1 state drain",
                        "show stat",
                        "set server web/s1 state ready",
                    ),
                    repeat,
                ),
                "show servers state; set server state drain; show stat; set server state ready",
            ),
            summary(
                "haproxy set weights + restore",
                await paired(
                    weights,
                    lambda: raw(
                        "show servers state web",
                        "set weight web/s1 0",
                        "set weight web/s2 40",
                        "set weight web/s1 10",
                        "set weight web/s2 20",
                    ),
                    repeat,
                ),
                "show servers state; 2 x set weight; 2 x set weight back",
            ),
            summary(
                "haproxy healthy check",
                await paired(healthy, lambda: raw("show servers state web", "show stat"), repeat),
                "show servers state; show stat",
            ),
        ]
        await modules.aclose()
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.platform", description=__doc__)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")
    figures = asyncio.run(measure(args.repeat))
    if args.json:
        json.dump(figures, sys.stdout, indent=1)
        print()
        return 0
    for f in figures:
        print(
            f"{f['figure']:<32} module {f['module_p50_us']:>7} us  raw {f['raw_p50_us']:>7} us  "
            f"overhead {f['overhead_us']:>6} us  x{f['ratio']}   ({f['raw_twin']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
