"""`fireline api` serves with the same slow-client protection as `fireline up`'s API process.

The command runs as a real process on a free port on 127.0.0.1 (against the session's dev
server), and a client that never finishes its request head is disconnected.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from fireline.operator import cli
from fireline.operator.limits import HEAD_TIMEOUT_S
from tests.test_operations import server_address

FIRELINE = Path(sys.executable).with_name("fireline")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def api_process(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[str]:
    """`fireline api --head-timeout 0.5` in a tmp dir; its base URL once /healthz answers."""
    port = _free_port()
    (tmp_path / "playbooks").mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FIRELINE_")}
    environ |= {
        "FIRELINE_TEMPORAL_ADDRESS": server_address(env),
        "FIRELINE_DATA_DIR": str(tmp_path / "data"),
        "FIRELINE_PLAYBOOKS_DIR": str(tmp_path / "playbooks"),
    }
    log = (tmp_path / "api.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *(str(FIRELINE), "api", "--host", "127.0.0.1", "--port", str(port)),
        *("--head-timeout", "0.5"),
        cwd=tmp_path,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            for _ in range(300):
                if process.returncode is not None:
                    break
                try:
                    if (await http.get("/healthz")).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        if process.returncode is not None:
            raise AssertionError(f"fireline api exited: {(tmp_path / 'api.log').read_text()}")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


class TestApiCommand:
    async def test_a_request_head_that_trickles_in_is_cut_off(self, api_process: str) -> None:
        """Headers never finished: the connection is closed; a prompt client is served."""
        port = int(api_process.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert closed == b""
        async with httpx.AsyncClient(base_url=api_process) as http:
            first = await http.get("/openapi.json")
            await asyncio.sleep(0.6)  # longer than the head deadline, between two requests
            again = await http.get("/openapi.json")  # on the kept-alive connection
        assert (first.status_code, again.status_code) == (200, 200)

    def test_without_the_option_it_uses_fireline_ups_deadline(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """The uvicorn settings the command passes, recorded instead of serving (a real
        server with the 10 s default would make this test wait 10 s)."""
        import uvicorn

        from fireline.runtime import workers

        seen: dict[str, Any] = {}
        monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
        monkeypatch.setattr(workers, "exit_process", lambda code: None)
        monkeypatch.setenv("FIRELINE_DATA_DIR", str(tmp_path))
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(cli.app, ["api", "--port", "9"])
        assert result.exit_code == 0, result.output
        protocol = seen["http"]
        assert protocol.__name__ == "HeadDeadline"
        assert _deadline_of(protocol) == HEAD_TIMEOUT_S
        assert (seen["limit_concurrency"], seen["timeout_keep_alive"]) == (1000, 5)


def _deadline_of(protocol: type) -> float:
    """The seconds a HeadDeadline protocol class was made with (its ``_arm`` closes over it)."""
    cells = protocol._arm.__closure__ or ()
    values = [c.cell_contents for c in cells if isinstance(c.cell_contents, float | int)]
    assert len(values) == 1, values
    return float(values[0])
