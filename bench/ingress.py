"""``python -m bench.ingress``: alert storms through the API against raw signal-with-start.

One dev server (tuned, SQLite, as ``fireline up`` runs it), one run, four figures:

- same-key storm: ``--storm`` notifications over ``--keys`` incident keys from
  ``--connections`` connections, driven by ``wrk`` (C, a fraction of a core) with a Lua script
  that gives every notification its own id; the API (``fireline api`` in a
  process of its own) group-commits them into the real ``IncidentWorkflow``;
- its raw twin: the same number of signal-with-start calls (one per notification, to a
  workflow that only counts) from as many concurrent client calls;
- distinct keys: ``--distinct`` notifications over as many keys (each opens an incident), and
  its raw twin with as many distinct workflow ids;
- beside each raw twin, the same calls made straight to ``IncidentWorkflow`` (one
  signal-with-start per notification, no API), which separates what the incident workflow costs
  the server from what the API adds or saves.

After each API run the incidents are queried: the bench checks that exactly the expected
number of incidents exist and that their alert counts add up to the notifications sent
(redeliveries wrk sends after its share change nothing and are not counted). The Fireline
worker (workflow + core queues) runs in this process, the raw twin's too.

Each measurement starts on a server at rest: the incidents one opens may go on working (their
runs, pages, guard asks) after their notifications are answered, and that work must not land
on the next figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.incidents import server_pid, until_quiet
from fireline.incident import QUERY_STATUS, IncidentState, incident_workflow_id
from fireline.ingress.alert import Alert, AlertSource, AlertStatus

RAW_WORKFLOW = "BenchRawIncident"
RAW_SIGNAL = "alert"
RAW_QUERY = "count"
TOKEN = "bench-token"
RESULTS = Path(__file__).resolve().parent / "results" / "ingress.json"
REPO = Path(__file__).resolve().parent.parent

CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice]}
services:
  storm:
    paging: []
    routes:
      - matchers: ['alertname="Storm"']
        incident_key: "storm/{labels.key}"
"""

LUA = r"""
-- Every request is one generic alert with its own id; after its share a thread re-sends
-- earlier ones (redeliveries: the incident dedupes them), until it has `share` answers.
local counter, answers, refused = 0, 0, 0
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  share = tonumber(args[1]); keys = tonumber(args[2]); prefix = args[3]; mode = args[4]
end

function request()
  local n = counter
  if counter >= share then n = counter % share end
  counter = counter + 1
  local global = tid * share + n
  local key
  if mode == "distinct" then key = global else key = global % keys end
  local body = string.format(
    '{"title":"storm","id":"%s-%d","dedup_key":"storm","labels":{"alertname":"Storm","key":"%s-%d"}}',
    prefix, global, prefix, key)
  return wrk.format("POST", "/v1/alerts",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench-token"}, body)
end

function response(status, headers, body)
  answers = answers + 1
  if status ~= 202 then refused = refused + 1 end
  if answers >= share then wrk.thread:stop() end
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"timeouts":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.timeout,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class RawState(BaseModel):
    alerts: int = 0


@workflow.defn(name=RAW_WORKFLOW)
class RawIncident:
    """The hand-written twin: one signal per alert, a counter, waits until terminated."""

    def __init__(self) -> None:
        self.state = RawState()

    @workflow.run
    async def run(self) -> RawState:
        await workflow.wait_condition(lambda: False)
        return self.state

    @workflow.signal(name=RAW_SIGNAL)
    def alert(self, alert: Alert) -> None:
        self.state.alerts += 1

    @workflow.query(name=RAW_QUERY)
    def count(self) -> RawState:
        return self.state


class Figure(BaseModel):
    name: str
    notifications: int
    keys: int
    seconds: float
    per_second: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    refused: int = 0
    exact: bool | None = None
    detail: dict[str, Any] = {}


@dataclass
class Api:
    url: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn_api(port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """``fireline api``, exactly as an operator starts it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from fireline.operator.cli import main; main()",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )


@contextlib.asynccontextmanager
async def api_process(env: dict[str, str], cwd: Path) -> AsyncIterator[Api]:
    """``fireline api`` in its own process, stopped by its PID afterwards."""
    port = _free_port()
    process = _spawn_api(port, env, cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(300):
                if process.poll() is not None:
                    raise RuntimeError(f"the API exited with {process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the API did not become healthy within 30 s")
        yield Api(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _answered(http: httpx.AsyncClient, url: str) -> tuple[int, int]:
    """(notifications made durable, notifications answered 503) so far."""
    stats = (await http.get(f"{url}/v1/alerts/stats")).json()["stats"]
    return int(stats["routed"]), int(stats["refused"].get("503", 0))


async def run_wrk(
    url: str, script: Path, total: int, keys: int, connections: int, threads: int, mode: str
) -> tuple[dict[str, Any], str, float, int]:
    """Drive one storm; returns wrk's summary, the id prefix, the seconds, the routed count.

    wrk's main thread sleeps for ``-d`` even when every thread has stopped, so the end is
    seen from the API instead: when it has answered ``total`` notifications (durable, or
    503 past the deadline), wrk gets SIGINT and prints its latency summary.
    """
    prefix = uuid.uuid4().hex[:8]
    share = total // threads
    async with httpx.AsyncClient(timeout=10) as http:
        base_routed, base_refused = await _answered(http, url)
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            "-d600s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/v1/alerts",
            "--",
            str(share),
            str(keys),
            prefix,
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        routed, last_change, seen = 0, time.perf_counter(), 0
        while proc.returncode is None:
            await asyncio.sleep(0.02)
            durable, refused = await _answered(http, url)
            routed, answered = durable - base_routed, durable + refused - base_routed - base_refused
            now = time.perf_counter()
            if answered != seen:
                seen, last_change = answered, now
            if answered >= share * threads or now - last_change > 60:
                break
        seconds = time.perf_counter() - began
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        out, err = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary: {err.decode()}")
    return json.loads(lines[-1]), prefix, seconds, routed


async def count_incidents(
    client: Client, prefix: str, keys: int, expected: int, settle_s: float = 60.0
) -> tuple[int, int]:
    """(incidents found, alerts they hold), polled until the sum is right or time runs out."""
    ids = [incident_workflow_id(f"storm/{prefix}-{k}") for k in range(keys)]
    limiter = asyncio.Semaphore(50)

    async def one(workflow_id: str) -> int | None:
        async with limiter:
            try:
                handle = client.get_workflow_handle(workflow_id)
                state = await handle.query(QUERY_STATUS, result_type=IncidentState)
            except Exception:
                return None
            return state.alerts.total

    deadline = time.monotonic() + settle_s
    while True:
        counts = await asyncio.gather(*(one(w) for w in ids))
        found = [c for c in counts if c is not None]
        if sum(found) >= expected or time.monotonic() > deadline:
            return len(found), sum(found)
        await asyncio.sleep(1)


async def raw_storm(
    client: Client, task_queue: str, total: int, keys: int, concurrency: int
) -> Figure:
    """One signal-with-start per notification, ``concurrency`` calls in flight."""
    prefix = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    next_n = 0
    now = datetime.now(UTC)

    async def caller() -> None:
        nonlocal next_n
        while next_n < total:
            n = next_n
            next_n += 1
            alert = Alert(
                source=AlertSource.generic,
                notification_id=f"{prefix}-{n}",
                group_key="storm",
                status=AlertStatus.firing,
                name="Storm",
                labels={"alertname": "Storm", "key": str(n % keys)},
                received_at=now,
            )
            began = time.perf_counter()
            await client.start_workflow(
                RAW_WORKFLOW,
                id=f"raw-{prefix}-{n % keys}",
                task_queue=task_queue,
                start_signal=RAW_SIGNAL,
                start_signal_args=[alert],
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    counted = 0
    for k in range(keys):
        handle = client.get_workflow_handle(f"raw-{prefix}-{k}")
        counted += (await handle.query(RAW_QUERY, result_type=RawState)).alerts
    latencies.sort()
    return Figure(
        name="raw signal-with-start",
        notifications=total,
        keys=keys,
        seconds=round(seconds, 2),
        per_second=round(total / seconds, 1),
        p50_ms=round(latencies[len(latencies) // 2] * 1000, 1),
        p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        exact=counted == total,
        detail={"counted": counted},
    )


async def incident_storm(
    client: Client, playbooks: Path, prefix: str, total: int, keys: int, concurrency: int
) -> Figure:
    """The API's work without the API: one signal-with-start of IncidentWorkflow per alert.

    Separates what the incident workflow costs the server from what the API adds (or, by
    group commit, saves).
    """
    from fireline.catalog.model import load_catalog
    from fireline.incident import INCIDENT_WORKFLOW, SIGNAL_ALERTS, AlertBatch, incident_start

    catalog = load_catalog(playbooks / "catalog.yaml")
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    next_n = 0
    now = datetime.now(UTC)

    async def caller() -> None:
        nonlocal next_n
        while next_n < total:
            n = next_n
            next_n += 1
            key = f"storm/{run}-{n % keys}"
            alert = Alert(
                source=AlertSource.generic,
                notification_id=f"generic:{run}-{n}",
                group_key="storm",
                status=AlertStatus.firing,
                name="Storm",
                fingerprint="storm",
                labels={"alertname": "Storm", "key": f"{run}-{n % keys}"},
                received_at=now,
            )
            start = incident_start(catalog, "storm", key, task_queue_prefix=prefix)
            began = time.perf_counter()
            await client.start_workflow(
                INCIDENT_WORKFLOW,
                start,
                id=incident_workflow_id(key),
                task_queue=prefix,
                start_signal=SIGNAL_ALERTS,
                start_signal_args=[AlertBatch(batch_id=uuid.uuid4().hex, alerts=[alert])],
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    found, alerts = await count_incidents(client, run, keys, total)
    latencies.sort()
    return Figure(
        name="signal-with-start IncidentWorkflow",
        notifications=total,
        keys=keys,
        seconds=round(seconds, 2),
        per_second=round(total / seconds, 1),
        p50_ms=round(latencies[len(latencies) // 2] * 1000, 1),
        p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        exact=found == keys and alerts == total,
        detail={"incidents": found, "alerts_in_incidents": alerts},
    )


def _doc(prefix: str, n: int, key: int) -> dict[str, Any]:
    """Notification ``n`` for incident key ``key``, exactly as the wrk script words it."""
    return {
        "title": "storm",
        "id": f"{prefix}-{n}",
        "dedup_key": "storm",
        "labels": {"alertname": "Storm", "key": f"{prefix}-{key}"},
    }


async def redeliver(url: str, docs: list[dict[str, Any]]) -> None:
    """What an at-least-once sender does: send each again, honouring Retry-After, until 202."""
    limiter = asyncio.Semaphore(20)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:

        async def resend(doc: dict[str, Any]) -> None:
            for _ in range(30):
                async with limiter:
                    answer = await http.post("/v1/alerts", json=doc, headers=headers)
                if answer.status_code == 202:
                    return
                await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
            raise RuntimeError(f"notification {doc['id']} never accepted")

        await asyncio.gather(*(resend(d) for d in docs))


async def resend_missing(client: Client, url: str, prefix: str, keys: int) -> int:
    """Send again each distinct-key notification with no incident yet."""

    async def exists(k: int) -> bool:
        try:
            await client.get_workflow_handle(incident_workflow_id(f"storm/{prefix}-{k}")).describe()
        except Exception:
            return False
        return True

    present = await asyncio.gather(*(exists(k) for k in range(keys)))
    missing = [k for k, ok in enumerate(present) if not ok]
    await redeliver(url, [_doc(prefix, k, k) for k in missing])
    return len(missing)


async def api_storm(
    client: Client,
    url: str,
    script: Path,
    total: int,
    keys: int,
    connections: int,
    threads: int,
    mode: str,
) -> Figure:
    result, prefix, seconds, routed = await run_wrk(
        url, script, total, keys, connections, threads, mode
    )
    async with httpx.AsyncClient(timeout=10) as http:
        during = (await http.get(f"{url}/v1/alerts/stats")).json().get("stats", {})
    refused = result["status_errors"] + result["timeouts"]
    found, alerts = await count_incidents(
        client, prefix, keys, total, settle_s=60.0 if not refused else 5.0
    )
    resent = 0
    if mode == "distinct" and found < keys:
        # What a sender does with a 503: come back after Retry-After with the same notification.
        resent = await resend_missing(client, url, prefix, keys)
        found, alerts = await count_incidents(client, prefix, keys, total)
    elif refused:
        # wrk cannot tell which notification a 503 answered: redeliver them all, as an HA pair
        # of senders would; the incidents dedupe the ones they already hold.
        await redeliver(url, [_doc(prefix, n, n % keys) for n in range(total)])
        resent = total
        found, alerts = await count_incidents(client, prefix, keys, total)
    async with httpx.AsyncClient(timeout=10) as http:
        stats = (await http.get(f"{url}/v1/alerts/stats")).json().get("stats", {})
    return Figure(
        name=f"API, {mode} keys",
        notifications=routed,
        keys=keys,
        seconds=round(seconds, 2),
        per_second=round(routed / seconds, 1),
        p50_ms=round(result["p50_us"] / 1000, 1),
        p99_ms=round(result["p99_us"] / 1000, 1),
        refused=refused,
        exact=found == keys and alerts == total,
        detail={
            "unique_notifications": total,
            "resent_after_503": resent,
            "incidents": found,
            "alerts_in_incidents": alerts,
            "signals_during_storm": during.get("signals"),
            "signals": stats.get("signals"),
            "largest_batch": stats.get("largest_batch"),
            "shed": stats.get("shed"),
            "wrk": result,
        },
    )


async def phase(name: str, server: int | None) -> None:
    """Announce the next measurement once the server has finished the work the last left."""
    waited = await until_quiet(server)
    print(f"{name} ... (server at rest after {waited:.0f} s)", file=sys.stderr)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from bench.server import dev_server
    from fireline.runtime.settings import Settings
    from fireline.runtime.workers import run_workers

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    figures: list[Figure] = []
    async with dev_server("tuned", "sqlite") as (env, profile):
        client = env.client
        address = client.service_client.config.target_host
        with tempfile.TemporaryDirectory(prefix="fireline-bench-ingress-") as tmp:
            root = Path(tmp)
            playbooks = root / "playbooks"
            playbooks.mkdir()
            (playbooks / "catalog.yaml").write_text(textwrap.dedent(CATALOG).lstrip())
            script = root / "storm.lua"
            script.write_text(LUA)
            prefix = f"bench-{uuid.uuid4().hex[:6]}"
            settings = Settings(
                temporal_address=address,
                task_queue_prefix=prefix,
                playbooks_dir=playbooks,
                data_dir=root / "data",
            )
            api_env = {
                "FIRELINE_TEMPORAL_ADDRESS": address,
                "FIRELINE_TASK_QUEUE_PREFIX": prefix,
                "FIRELINE_PLAYBOOKS_DIR": str(playbooks),
                "FIRELINE_DATA_DIR": str(root / "data"),
                "FIRELINE_LOG_LEVEL": "WARNING",
                "FIRELINE_INGRESS_AUTH": json.dumps(
                    {
                        "generic": {"kind": "bearer", "tokens": [TOKEN]},
                        "read": {"kind": "none"},
                    }
                ),
                "FIRELINE_INGRESS_MAX_IN_FLIGHT": str(args.max_in_flight),
            }
            stop = asyncio.Event()
            workers = asyncio.create_task(
                run_workers(settings, ("core",), stop=stop, client=client)
            )
            raw_queue = f"{prefix}-raw"
            try:
                async with (
                    Worker(
                        client,
                        task_queue=raw_queue,
                        workflows=[RawIncident],
                        # as Fireline's production workers (workflow_sandbox=False)
                        workflow_runner=UnsandboxedWorkflowRunner(),
                    ),
                    api_process(api_env, root) as api,
                ):
                    server = server_pid()
                    await phase("same-key storm through the API", server)
                    figures.append(
                        await api_storm(
                            client,
                            api.url,
                            script,
                            args.storm,
                            args.keys,
                            args.connections,
                            args.threads,
                            "same",
                        )
                    )
                    await phase("raw twin", server)
                    figures.append(
                        await raw_storm(client, raw_queue, args.storm, args.keys, args.connections)
                    )
                    await phase("IncidentWorkflow twin", server)
                    figures.append(
                        await incident_storm(
                            client, playbooks, prefix, args.storm, args.keys, args.connections
                        )
                    )
                    await phase("distinct keys through the API", server)
                    figures.append(
                        await api_storm(
                            client,
                            api.url,
                            script,
                            args.distinct,
                            args.distinct,
                            args.connections,
                            args.threads,
                            "distinct",
                        )
                    )
                    await phase("raw twin", server)
                    distinct_raw = await raw_storm(
                        client, raw_queue, args.distinct, args.distinct, args.connections
                    )
                    distinct_raw.name = "raw signal-with-start, distinct keys"
                    figures.append(distinct_raw)
                    await phase("IncidentWorkflow twin", server)
                    distinct_incident = await incident_storm(
                        client, playbooks, prefix, args.distinct, args.distinct, args.connections
                    )
                    distinct_incident.name = "signal-with-start IncidentWorkflow, distinct"
                    figures.append(distinct_incident)
            finally:
                stop.set()
                await workers
    return {
        "server": profile.model_dump(),
        "connections": args.connections,
        "figures": [f.model_dump() for f in figures],
        "ratios": {
            "same_key_vs_raw": round(figures[0].per_second / figures[1].per_second, 2),
            "same_key_vs_incident_twin": round(figures[0].per_second / figures[2].per_second, 2),
            "distinct_vs_raw": round(figures[3].per_second / figures[4].per_second, 2),
            "distinct_vs_incident_twin": round(figures[3].per_second / figures[5].per_second, 2),
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"server: {report['server']['server_version']} ({report['server']['profile']}, "
        f"{report['server']['db']}), {report['server']['cpus']} CPUs, "
        f"load {report['server']['load_average']}",
        f"{'figure':44} {'sent':>7} {'keys':>6} {'s':>7} {'per s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'refused':>7} exact",
    ]
    for f in report["figures"]:
        lines.append(
            f"{f['name']:44} {f['notifications']:>7} {f['keys']:>6} {f['seconds']:>7} "
            f"{f['per_second']:>8} {f['p50_ms']!s:>8} {f['p99_ms']!s:>8} {f['refused']:>7} "
            f"{f['exact']}"
        )
    lines.append(f"ratios: {report['ratios']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress", description=__doc__)
    parser.add_argument("--storm", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--distinct", type=int, default=2_000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if all(f["exact"] for f in report["figures"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
