"""The embedded dev-server runner against the real ``temporal`` binary.

Each test starts its own server on free loopback ports with a temporary data folder, so none
of them touches 7233/8233 or the session ``env`` server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio import workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, RegisterNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from fireline.messages import SEARCH_ATTRIBUTES
from fireline.runtime.client import make_client
from fireline.runtime.settings import Settings
from fireline.runtime.stack import (
    SQLITE_PRAGMAS,
    TUNING_FLAGS,
    DevServer,
    DevServerError,
    StackInfo,
    dev_server_args,
    ensure_search_attributes,
    port_in_use,
    run_stack,
)


@workflow.defn(name="DevServerEcho")
class EchoWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        return text


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nobody listens on (held open together so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port_with_ui() -> int:
    """A port P with P+1000 also free, for runners that derive the UI port from P."""
    for _ in range(50):
        (port,) = free_ports(1)
        if port + 1000 < 65536 and not port_in_use("127.0.0.1", port + 1000):
            return port
    raise RuntimeError("no free port pair found")


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port held by a real listening socket, as another Temporal would hold it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def make_settings(data_dir: Path, **extra: object) -> Settings:
    return Settings(data_dir=data_dir, **extra)  # type: ignore[arg-type]


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def registered_attributes(client: Client, namespace: str) -> dict[str, int]:
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(response.custom_attributes)


class TestDevServerArgs:
    def test_persistent_tuned_loopback_server(self, tmp_path: Path) -> None:
        """The command binds loopback, persists to the db file and carries the tuning flags."""
        args = dev_server_args(
            make_settings(tmp_path), port=7300, ui_port=8300, db_file=tmp_path / "t.db"
        )
        assert args[:2] == ["server", "start-dev"]
        assert args[args.index("--ip") + 1] == "127.0.0.1"
        assert args[args.index("--port") + 1] == "7300"
        assert args[args.index("--ui-port") + 1] == "8300"
        assert args[args.index("--db-filename") + 1] == str(tmp_path / "t.db")
        pragmas = [args[i + 1] for i, a in enumerate(args) if a == "--sqlite-pragma"]
        assert pragmas == list(SQLITE_PRAGMAS)
        joined = " ".join(args)
        assert " ".join(TUNING_FLAGS) in joined
        assert args[-2:] == ["--log-level", "warn"]

    def test_one_search_attribute_flag_per_attribute(self, tmp_path: Path) -> None:
        """Every Fireline search attribute is registered at start-up, with its type."""
        args = dev_server_args(make_settings(tmp_path), port=1, ui_port=2, db_file=tmp_path)
        flags = [args[i + 1] for i, a in enumerate(args) if a == "--search-attribute"]
        assert flags == [f"{name}={kind}" for name, kind in SEARCH_ATTRIBUTES.items()]

    def test_namespace_flag_only_when_not_default(self, tmp_path: Path) -> None:
        """The default namespace always exists; any other one is created at launch."""
        plain = dev_server_args(make_settings(tmp_path), port=1, ui_port=2, db_file=tmp_path)
        other = dev_server_args(
            make_settings(tmp_path, temporal_namespace="incidents"),
            port=1,
            ui_port=2,
            db_file=tmp_path,
        )
        assert "--namespace" not in plain
        assert other[other.index("--namespace") + 1] == "incidents"


class TestDevServer:
    async def test_serves_persists_and_stops(self, tmp_path: Path) -> None:
        """A run survives a restart on the same db file; stopping ends the started PID."""
        port, ui_port = free_ports(2)
        settings = make_settings(tmp_path / "data", temporal_namespace="fireline-test")
        workflow_id = f"echo-{uuid.uuid4().hex[:8]}"
        queue = f"q-{uuid.uuid4().hex[:8]}"

        server = DevServer(settings, port=port, ui_port=ui_port)
        async with server:
            first_pid = server.pid
            assert server.client is not None
            attributes = await registered_attributes(server.client, "fireline-test")
            assert set(SEARCH_ATTRIBUTES) <= set(attributes)
            async with Worker(
                server.client,
                task_queue=queue,
                workflows=[EchoWorkflow],
                workflow_runner=UnsandboxedWorkflowRunner(),  # the sandbox is not under test
            ):
                result = await server.client.execute_workflow(
                    EchoWorkflow.run, "still here", id=workflow_id, task_queue=queue
                )
            assert result == "still here"
        assert first_pid is not None
        assert_gone(first_pid)
        assert (tmp_path / "data" / "temporal.db").exists()
        assert "start-dev" in (tmp_path / "data" / "temporal.log").read_text()

        async with DevServer(settings, port=port, ui_port=ui_port) as again:
            assert again.pid != first_pid
            assert again.client is not None
            handle = again.client.get_workflow_handle(workflow_id)
            description = await handle.describe()
            assert description.status == WorkflowExecutionStatus.COMPLETED
            assert await handle.result() == "still here"
        assert again.pid is not None
        assert_gone(again.pid)

    async def test_port_in_use_is_refused(self, tmp_path: Path, listener: int) -> None:
        """A taken gRPC port fails fast with a hint, and starts no process."""
        server = DevServer(make_settings(tmp_path), port=listener, ui_port=free_ports(1)[0])
        with pytest.raises(DevServerError) as caught:
            await server.start()
        assert str(caught.value) == (
            f"port {listener} in use: is another Temporal running? "
            f"set FIRELINE_TEMPORAL_ADDRESS to use it"
        )
        assert server.pid is None

    async def test_ui_port_in_use_is_refused(self, tmp_path: Path, listener: int) -> None:
        """A taken UI port is refused before the server starts, naming the UI."""
        server = DevServer(make_settings(tmp_path), port=free_ports(1)[0], ui_port=listener)
        with pytest.raises(DevServerError, match=f"port {listener} \\(Temporal UI\\) in use"):
            await server.start()
        assert server.pid is None

    async def test_early_exit_quotes_the_log(self, tmp_path: Path) -> None:
        """When the binary dies during start-up the error carries the tail of its log."""
        (tmp_path / "temporal.db").mkdir()  # a directory where the SQLite file should be
        port, ui_port = free_ports(2)
        server = DevServer(make_settings(tmp_path), port=port, ui_port=ui_port)
        with pytest.raises(DevServerError, match="exited with code") as caught:
            await server.start()
        head, _, tail = str(caught.value).partition(f"{tmp_path / 'temporal.log'}:")
        assert "before it was ready" in head
        assert "start-dev" in tail  # our header line, then the binary's own complaint
        assert re.search(r"(?i)error", tail)
        assert server.pid is not None
        assert_gone(server.pid)


class TestEnsureSearchAttributes:
    async def test_existing_server_keeps_its_attributes(self, client: Client) -> None:
        """Against a server that already has them, nothing is added and nothing fails."""
        namespace = client.namespace
        assert await ensure_search_attributes(client, namespace) == []
        assert set(SEARCH_ATTRIBUTES) <= set(await registered_attributes(client, namespace))

    async def test_adds_missing_attributes(self, client: Client) -> None:
        """A fresh namespace without Fireline's attributes gets them all, exactly once."""
        namespace = f"bare-{uuid.uuid4().hex[:8]}"
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace,
                workflow_execution_retention_period=Duration(seconds=86400),
            )
        )
        before = await _when_namespace_answers(client, namespace)
        assert not set(SEARCH_ATTRIBUTES) & set(before)
        assert await ensure_search_attributes(client, namespace) == sorted(SEARCH_ATTRIBUTES)
        assert set(SEARCH_ATTRIBUTES) <= set(await registered_attributes(client, namespace))
        assert await ensure_search_attributes(client, namespace) == []


async def _when_namespace_answers(client: Client, namespace: str) -> dict[str, int]:
    """A just-registered namespace reaches the server's namespace cache after a moment."""
    for _ in range(150):
        try:
            return await registered_attributes(client, namespace)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError(f"namespace {namespace} never became visible")


class TestRunStack:
    async def test_embedded_stack_polls_and_stops_cleanly(self, tmp_path: Path) -> None:
        """run_stack starts the server, workers poll every queue, and stop ends the PID."""
        port = free_port_with_ui()
        settings = make_settings(
            tmp_path / "data",
            temporal_address=f"127.0.0.1:{port}",
            task_queue_prefix=f"fl-{uuid.uuid4().hex[:8]}",
        )
        stop = asyncio.Event()
        ready: asyncio.Future[StackInfo] = asyncio.get_running_loop().create_future()
        stack = asyncio.create_task(
            run_stack(settings, api=False, embedded=True, stop=stop, on_ready=ready.set_result)
        )
        info = await asyncio.wait_for(asyncio.shield(ready), timeout=90)
        assert info.embedded
        assert info.temporal_address == f"127.0.0.1:{port}"
        assert info.ui_url == f"http://127.0.0.1:{port + 1000}"
        assert info.api_url is None
        assert info.data_dir == (tmp_path / "data").resolve()
        assert info.task_queues[0] == settings.workflow_task_queue
        assert settings.domain_task_queue("core") in info.task_queues
        client = await make_client(settings)
        assert await wait_for_poller(client, settings.workflow_task_queue)
        for queue in info.task_queues[1:]:
            assert await wait_for_poller(client, queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
        stop.set()
        await asyncio.wait_for(stack, timeout=60)
        assert info.server_pid is not None
        assert_gone(info.server_pid)

    async def test_serves_the_api_against_the_embedded_server(self, tmp_path: Path) -> None:
        """With api=True the HTTP API answers on the chosen loopback port, healthy."""
        port = free_port_with_ui()
        (api_port,) = free_ports(1)
        settings = make_settings(
            tmp_path / "data",
            temporal_address=f"127.0.0.1:{port}",
            task_queue_prefix=f"fl-{uuid.uuid4().hex[:8]}",
        )
        stop = asyncio.Event()
        ready: asyncio.Future[StackInfo] = asyncio.get_running_loop().create_future()
        stack = asyncio.create_task(
            run_stack(
                settings,
                api_port=api_port,
                embedded=True,
                stop=stop,
                on_ready=ready.set_result,
            )
        )
        try:
            info = await asyncio.wait_for(asyncio.shield(ready), timeout=90)
            assert info.api_url == f"http://127.0.0.1:{api_port}"
            async with httpx.AsyncClient(base_url=info.api_url, timeout=10) as http:
                response = await http.get("/healthz")
            assert response.status_code == 200
            assert response.json()["temporal"] == f"127.0.0.1:{port}"
        finally:
            stop.set()
            await asyncio.wait_for(stack, timeout=60)
        assert not port_in_use("127.0.0.1", api_port)

    async def test_a_dead_server_stops_the_stack_with_its_log(self, tmp_path: Path) -> None:
        """When the dev server dies under the stack, run_stack ends, saying so and why."""
        port = free_port_with_ui()
        settings = make_settings(
            tmp_path / "data",
            temporal_address=f"127.0.0.1:{port}",
            task_queue_prefix=f"fl-{uuid.uuid4().hex[:8]}",
        )
        ready: asyncio.Future[StackInfo] = asyncio.get_running_loop().create_future()
        stack = asyncio.create_task(
            run_stack(settings, api=False, embedded=True, on_ready=ready.set_result)
        )
        info = await asyncio.wait_for(asyncio.shield(ready), timeout=90)
        assert info.server_pid is not None
        os.kill(info.server_pid, signal.SIGKILL)
        with pytest.raises(DevServerError, match=f"pid {info.server_pid}\\) exited with code -9"):
            await asyncio.wait_for(stack, timeout=60)

    async def test_workers_that_cannot_drain_after_the_server_died_are_cut_off(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Once the dev server has died, a worker stuck retrying against it is cancelled after
        the bound, and the server's death is what the stack reports. Plain tasks stand in for
        the worker (a worker's hang needs a server dying mid-start, too rare to stage)."""
        from fireline.runtime import stack

        monkeypatch.setattr(stack, "DEAD_SERVER_DRAIN_S", 0.2)

        async def died() -> None:
            raise DevServerError("the temporal dev server (pid 1) exited with code -9")

        server = asyncio.create_task(died(), name="dev-server")
        stuck = asyncio.create_task(asyncio.Event().wait(), name="fireline-workers")
        await asyncio.sleep(0)
        results = await asyncio.wait_for(stack._settle([stuck, server]), timeout=10)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[1], DevServerError)

    async def test_api_port_in_use_is_refused(self, tmp_path: Path, listener: int) -> None:
        """A taken API port fails before any server is started."""
        settings = make_settings(tmp_path, temporal_address=f"127.0.0.1:{free_port_with_ui()}")
        with pytest.raises(DevServerError, match=f"API port {listener} in use"):
            await run_stack(settings, api_port=listener, embedded=True)
        assert not (tmp_path / "temporal.log").exists()

    async def test_uses_an_existing_cluster(self, client: Client, tmp_path: Path) -> None:
        """With embedded=False it serves the configured cluster and starts no server."""
        settings = make_settings(
            tmp_path,
            temporal_address=client.service_client.config.target_host,
            temporal_namespace=client.namespace,
            task_queue_prefix=f"fl-{uuid.uuid4().hex[:8]}",
        )
        stop = asyncio.Event()
        ready: asyncio.Future[StackInfo] = asyncio.get_running_loop().create_future()
        stack = asyncio.create_task(
            run_stack(settings, api=False, embedded=False, stop=stop, on_ready=ready.set_result)
        )
        try:
            info = await asyncio.wait_for(asyncio.shield(ready), timeout=60)
            assert not info.embedded
            assert info.server_pid is None
            assert info.ui_url == settings.temporal_ui_url
            assert await wait_for_poller(client, settings.workflow_task_queue)
        finally:
            stop.set()
            await asyncio.wait_for(stack, timeout=60)
        assert not (tmp_path / "temporal.log").exists()

    async def test_unreachable_cluster_is_reported(self, tmp_path: Path) -> None:
        """An address where nothing answers fails with the address and a way out."""
        (port,) = free_ports(1)
        settings = make_settings(tmp_path, temporal_address=f"127.0.0.1:{port}")
        with pytest.raises(DevServerError, match=f"cannot reach Temporal at 127.0.0.1:{port}"):
            await run_stack(settings, api=False, embedded=False)

    async def test_refuses_embedded_on_a_remote_address(self, tmp_path: Path) -> None:
        """The embedded server binds loopback only, so a remote address cannot be embedded."""
        settings = make_settings(tmp_path, temporal_address="temporal.example:7233")
        with pytest.raises(DevServerError, match=re.escape("listens on 127.0.0.1 only")):
            await run_stack(settings, api=False, embedded=True)


async def wait_for_poller(
    client: Client,
    queue: str,
    kind: TaskQueueType.ValueType = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
) -> bool:
    """True once the server reports a poller on the queue (False after ~30 s)."""
    for _ in range(150):
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=kind,
            )
        )
        if response.pollers:
            return True
        await asyncio.sleep(0.2)
    return False


# --- fireline up as a real process ----------------------------------------------------------

UP_COMMAND = (sys.executable, "-m", "fireline.runtime.stack", "--embedded")
UP_CATALOG = "roles:\n  sre-oncall: {tier: 1, members: [alice, bob]}\n"
UP_PLAYBOOK = """\
name: quick
steps:
  - id: pause
    uses: core.wait
    with: {seconds: 0}
"""


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (read from /proc, as ``ps --ppid`` would)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def gone_within(pids: list[int], seconds: float) -> list[int]:
    """The PIDs still running after up to ``seconds`` (empty when all ended)."""
    for _ in range(int(seconds * 10)):
        if not any(alive(p) for p in pids):
            return []
        await asyncio.sleep(0.1)
    return [p for p in pids if alive(p)]


class Up:
    """A ``fireline up`` process this test started, and what it serves."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port_with_ui()
        (self.api_port,) = free_ports(1)
        self.data_dir = tmp_path / "data"
        self.playbooks = tmp_path / "playbooks"
        self.playbooks.mkdir()
        (self.playbooks / "catalog.yaml").write_text(UP_CATALOG)
        (self.playbooks / "quick.yaml").write_text(UP_PLAYBOOK)
        self.settings = make_settings(
            self.data_dir,
            temporal_address=f"127.0.0.1:{self.port}",
            task_queue_prefix=f"fl-{uuid.uuid4().hex[:8]}",
            playbooks_dir=self.playbooks,
        )
        self.log = tmp_path / "up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()
        """Every child PID looked up, so cleanup can end them even once orphaned."""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "FIRELINE_TEMPORAL_ADDRESS": self.settings.temporal_address,
            "FIRELINE_DATA_DIR": str(self.data_dir),
            "FIRELINE_PLAYBOOKS_DIR": str(self.playbooks),
            "FIRELINE_TASK_QUEUE_PREFIX": self.settings.task_queue_prefix,
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*UP_COMMAND, "--api-port", str(self.api_port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self, within: float = 90) -> None:
        assert self.process is not None
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(int(within * 5)):
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    if (await http.get(f"{self.api}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"fireline up never became healthy:\n{self.log.read_text()[-3000:]}")

    def server_pid(self) -> int:
        pid = int(json.loads((self.data_dir / "temporal.pid").read_text())["pid"])
        self.seen.add(pid)
        return pid

    def api_pid(self) -> int:
        assert self.process is not None
        (pid,) = [p for p in children_of(self.process.pid) if p != self.server_pid()]
        self.seen.add(pid)
        return pid

    def stop(self) -> None:
        """Kill whatever of ours still runs, by the PIDs we know."""
        pids = [self.process.pid] if self.process else []
        with contextlib.suppress(Exception):
            pids += [self.server_pid()]
        if self.process is not None:
            pids += children_of(self.process.pid)
        for pid in [*pids, *self.seen]:
            if not alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    stack = Up(tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


async def slow_request(url: str, seconds: float) -> None:
    """A client that sends its request headers one byte at a time (a slowloris)."""
    parts = httpx.URL(url)
    with contextlib.suppress(OSError):
        _reader, writer = await asyncio.open_connection(parts.host, parts.port)
        request = b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        for i in range(len(request)):
            writer.write(request[i : i + 1])
            await writer.drain()
            await asyncio.sleep(seconds / len(request))
        writer.close()


async def huge_body(url: str) -> int:
    """A 20 MB run request; the status the API answered with."""
    body = b'{"playbook": "quick", "inputs": {"x": "' + b"x" * (20 * 1024 * 1024) + b'"}}'
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            return (await http.post(f"{url}/runs", content=body)).status_code
        except httpx.HTTPError:
            return 413  # the API may close the connection while the client still sends


class TestFirelineUp:
    async def test_api_abuse_never_delays_a_run_and_sigkill_leaves_nothing_behind(
        self, up: Up
    ) -> None:
        """Huge bodies and slow clients hit the API while a run completes; /healthz keeps
        answering; the API is a process of its own (frozen, runs still complete; killed, it
        is restarted); SIGKILL of fireline up ends the dev server and the API with it."""
        up.start()
        await up.ready()
        server_pid, api_pid = up.server_pid(), up.api_pid()
        assert up.process is not None
        assert api_pid != up.process.pid
        client = await make_client(up.settings)
        token = (up.data_dir / "identity" / "dev-credential").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=up.api, timeout=30, headers=headers) as http:
            abuse = [asyncio.create_task(slow_request(up.api, 8)) for _ in range(20)]
            abuse += [asyncio.create_task(huge_body(up.api)) for _ in range(4)]
            started = await http.post("/runs", json={"playbook": "quick"})
            assert started.status_code == 201, started.text
            handle = client.get_workflow_handle(started.json()["workflow_id"])
            for _ in range(5):
                assert (await http.get("/healthz")).status_code == 200
                await asyncio.sleep(0.2)
            await asyncio.wait_for(handle.result(), timeout=60)
            statuses = await asyncio.gather(*abuse)
            assert [s for s in statuses if s is not None] == [413] * 4

            # A frozen API costs the workers nothing: a run started past it completes.
            os.kill(api_pid, signal.SIGSTOP)
            try:
                from fireline.operator import operations

                run = await operations.start_run(client, up.settings, "quick", {}, "tester")
                await asyncio.wait_for(
                    client.get_workflow_handle(run.workflow_id).result(), timeout=60
                )
            finally:
                os.kill(api_pid, signal.SIGCONT)

            # A dead API is restarted by the supervisor.
            os.kill(api_pid, signal.SIGKILL)
            await up.ready(within=30)
            assert up.api_pid() != api_pid
            api_pid = up.api_pid()

        up.process.kill()
        up.process.wait(timeout=10)
        assert await gone_within([server_pid, api_pid], 10) == []

    async def test_ctrl_c_stops_everything_in_order(self, up: Up) -> None:
        """SIGINT to fireline up (a Ctrl-C) stops API, workers and server, and exits 0."""
        up.start()
        await up.ready()
        server_pid, api_pid = up.server_pid(), up.api_pid()
        assert up.process is not None
        up.process.send_signal(signal.SIGINT)
        for _ in range(600):
            if up.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert up.process.returncode == 0, up.log.read_text()[-3000:]
        assert await gone_within([server_pid, api_pid], 5) == []
        assert not (up.data_dir / "temporal.pid").exists()
        text = up.log.read_text()
        assert text.index("api stopped") < text.index("workers stopped")
        assert text.index("workers stopped") < text.index("temporal dev server stopped")

    async def test_next_start_stops_an_orphaned_server_knowingly(self, tmp_path: Path) -> None:
        """A server a crashed run left (recorded in temporal.pid) is stopped, then replaced."""
        port, ui_port = free_ports(2)
        settings = make_settings(tmp_path / "data")
        first = DevServer(settings, port=port, ui_port=ui_port)
        # Start the binary as an orphan would be: not our child once we forget it.
        first.data_dir.mkdir(parents=True)
        orphan = subprocess.Popen(  # noqa: ASYNC220  (returns at once)
            first.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            first.pid_file.write_text(
                json.dumps({"pid": orphan.pid, "db": str(first.db_file), "port": port})
            )
            for _ in range(300):
                if port_in_use("127.0.0.1", port):
                    break
                await asyncio.sleep(0.1)
            async with DevServer(settings, port=port, ui_port=ui_port) as again:
                assert orphan.wait(timeout=1) is not None
                assert again.pid != orphan.pid
                assert json.loads(again.pid_file.read_text())["pid"] == again.pid
            assert not again.pid_file.exists()
        finally:
            with contextlib.suppress(ProcessLookupError):
                orphan.kill()
            orphan.wait(timeout=10)

    async def test_pidfile_of_another_process_is_left_alone(self, tmp_path: Path) -> None:
        """A recorded PID that is not our server (reused by something else) is never signalled."""
        settings = make_settings(tmp_path)
        server = DevServer(settings, port=free_ports(1)[0])
        server.data_dir.mkdir(parents=True, exist_ok=True)
        bystander = subprocess.Popen(  # noqa: ASYNC220  (returns at once)
            [sys.executable, "-c", "import time; time.sleep(60)"]
        )
        try:
            server.pid_file.write_text(
                json.dumps({"pid": bystander.pid, "db": str(server.db_file)})
            )
            assert server.orphan_pid() is None
            await server._stop_orphan()
            assert bystander.poll() is None
            assert not server.pid_file.exists()
        finally:
            bystander.kill()
            bystander.wait()
