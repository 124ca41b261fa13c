"""What the application modules cost on top of the driver call doing the same work.

Each figure runs a module in a real activity context (``ActivityEnvironment``, no Temporal
server: the engine's per-step cost is ``python -m bench``'s business) against a real server on
127.0.0.1, next to its raw twin: the same work written directly against redis-py or httpx.
The difference is Fireline's own work per step: target resolution, input validation, the
idempotency journal, logging context, the CheckResult.

    .venv/bin/python -m bench.application [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from temporalio.testing import ActivityEnvironment

from activities.application.cache import CacheKeysInput, CacheModules, FlushCacheInput
from activities.application.flags import FlagIsInput, FlagModules, SetFlagInput
from activities.application.maintenance import MaintenanceInput, MaintenanceModules
from activities.application.prometheus import PrometheusModules, PromQLInput
from activities.core.http import HttpModules, HttpProbeInput
from fireline.runtime.logging import configure_logging
from fireline.runtime.settings import Settings
from tests.support.admin import AdminApp
from tests.support.prometheus import MetricsApp, start_prometheus
from tests.support.redis import start_redis

QUERY = 'sum(rate(app_requests_total{code=~"5.."}[1m])) / sum(rate(app_requests_total[1m]))'


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
    """Alternate the two, so both meet the same server state (keyspace size, pools, caches)."""
    await module()  # warm the connection pools
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


async def measure(repeat: int, workdir: Path) -> list[dict[str, Any]]:
    rds = start_redis(workdir)
    app = MetricsApp()
    app.start()
    app.set_rates(100, 1)
    prom = start_prometheus(workdir, app)
    admin = AdminApp()
    admin.start()
    settings = Settings(
        targets={
            "redis": {"cache": rds.target()},
            "prometheus": {"main": prom.target()},
            "http": {"api": {"base_url": admin.base_url}},
        }
    )
    flags, cache = FlagModules(settings), CacheModules(settings)
    maintenance, promql, http = (
        MaintenanceModules(settings),
        PrometheusModules(settings),
        HttpModules(settings),
    )
    raw = aioredis.Redis(host="127.0.0.1", port=rds.port)
    client = httpx.AsyncClient()
    out = []
    pattern = "bench:*"

    async def raw_count() -> int:
        found, cursor = 0, 0
        while True:
            cursor, keys = await raw.scan(cursor, match=pattern, count=1000)
            found += len(keys)
            if cursor == 0:
                return found

    async def module_flush() -> None:
        await raw.mset({f"bench:{n}": "v" for n in range(500)})
        await env().run(
            cache.flush_cache,
            FlushCacheInput(target="cache", pattern=pattern, max_keys=10_000, batch_size=200),
        )

    async def raw_flush() -> None:
        await raw.mset({f"bench:{n}": "v" for n in range(500)})
        cursor = 0
        while True:
            cursor, keys = await raw.scan(cursor, match=pattern, count=200)
            if keys:
                await raw.unlink(*keys)
            if cursor == 0:
                return

    async def module_maintenance() -> None:
        await env().run(maintenance.maintenance_on, MaintenanceInput(target="api"))
        await env().run(maintenance.maintenance_off, MaintenanceInput(target="api"))

    async def raw_maintenance() -> None:
        for enabled in (True, False):
            await client.get(admin.base_url + "/maintenance")
            await client.put(admin.base_url + "/maintenance", json={"enabled": enabled})

    async def raw_probe() -> None:
        for _ in range(20):
            await client.get(admin.base_url + "/maintenance")

    few = max(repeat // 4, 5)
    try:
        set_flag = SetFlagInput(target="cache", flag="f", value="on")
        out.append(
            summary(
                "set_flag",
                await paired(
                    lambda: env().run(flags.set_flag, set_flag),
                    lambda: raw.set("flag:f", "on", get=True),
                    repeat,
                ),
                "SET key value GET (the change and the prior value in one call)",
            )
        )
        flag_is = FlagIsInput(target="cache", flag="f", value="on")
        out.append(
            summary(
                "flag_is",
                await paired(
                    lambda: env().run(flags.flag_is, flag_is), lambda: raw.get("flag:f"), repeat
                ),
                "GET key",
            )
        )
        await raw.mset({f"bench:{n}": "v" for n in range(2000)})
        count = CacheKeysInput(target="cache", pattern=pattern, at_most=5000)
        out.append(
            summary(
                "cache_keys (2000 matching keys)",
                await paired(lambda: env().run(cache.cache_keys, count), raw_count, repeat),
                "SCAN MATCH COUNT 1000 loop",
            )
        )
        out.append(
            summary(
                "flush_cache (500 keys, batches of 200, incl. MSET)",
                await paired(module_flush, raw_flush, few),
                "MSET 500, then SCAN + UNLINK loop",
            )
        )
        out.append(
            summary(
                "maintenance_on + maintenance_off",
                await paired(module_maintenance, raw_maintenance, repeat),
                "2 x (GET state, PUT state) with httpx",
            )
        )
        query = PromQLInput(target="main", query=QUERY, threshold=0.5)
        out.append(
            summary(
                "promql",
                await paired(
                    lambda: env().run(promql.promql, query),
                    lambda: client.get(prom.url + "/api/v1/query", params={"query": QUERY}),
                    repeat,
                ),
                "GET /api/v1/query with httpx (no parsing)",
            )
        )
        probe = HttpProbeInput(url=admin.base_url + "/maintenance", samples=20, max_error_rate=0.01)
        out.append(
            summary(
                "http_probe (20 samples)",
                await paired(lambda: env().run(http.http_probe, probe), raw_probe, few),
                "20 sequential GETs with httpx",
            )
        )
    finally:
        for module_set in (flags, cache, maintenance, promql, http):
            await module_set.aclose()
        await raw.aclose()
        await client.aclose()
        admin.stop()
        prom.stop()
        app.stop()
        rds.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")
    with tempfile.TemporaryDirectory(prefix="fireline-bench-app-") as workdir:
        rows = asyncio.run(measure(args.repeat, Path(workdir)))
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    print(f"{'figure':<52} {'module':>9} {'raw':>9} {'overhead':>9} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['figure']:<52} {row['module_p50_us']:>7}us {row['raw_p50_us']:>7}us "
            f"{row['overhead_us']:>7}us {row['ratio']:>6}"
        )


if __name__ == "__main__":
    main()
