"""The operator API refuses oversized, malformed and invalid requests with the right status.

Against a real uvicorn server on 127.0.0.1 (the body limit is about bytes on a socket, which
an in-process transport would not exercise), a real dev server and real workers. Oversized
bodies are sent over raw sockets so the test controls how much is sent: the answer must come
while most of the body is still unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from fireline.identity.tokens import TokenStore
from fireline.operator.api import create_app
from fireline.operator.limits import MAX_JSON_DEPTH, BodyLimit, JsonDepth, head_deadline_protocol
from fireline.runtime.settings import Settings
from tests import test_operations as shared
from tests.test_api import serving

playbooks_dir = shared.playbooks_dir
fl_settings = shared.fl_settings
workers = shared.workers

LIMIT = 64 * 1024
HUGE = 20 * 1024 * 1024


@pytest.fixture
def limited(workers: Settings) -> Settings:
    return workers.model_copy(update={"api_max_body_bytes": LIMIT})


@pytest.fixture
def token(fl_settings: Settings) -> str:
    return TokenStore.of(fl_settings).issue("alice")[0]


@pytest.fixture
async def api(limited: Settings, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(limited) as url,
        httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as http,
    ):
        yield http


async def _raw(
    base_url: str, head: bytes, chunks: AsyncIterator[bytes] | None = None
) -> tuple[int, bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers; (status, body, bytes sent)."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    sent = 0
    try:
        writer.write(head)
        await writer.drain()
        answer = asyncio.create_task(reader.read(65536))
        if chunks is not None:
            async for chunk in chunks:
                if answer.done():
                    break
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), timeout=2)
                except (TimeoutError, ConnectionError):
                    break
                sent += len(chunk)
        data = await asyncio.wait_for(answer, timeout=10)
        status_line, _, rest = data.partition(b"\r\n")
        _, _, body = rest.partition(b"\r\n\r\n")
        return int(status_line.split()[1]), body, sent
    finally:
        writer.close()


async def _chunks(total: int, size: int = 16 * 1024, *, chunked: bool) -> AsyncIterator[bytes]:
    piece = b"[" + b"1," * (size // 2 - 1)
    for _ in range(total // size):
        yield (b"%x\r\n%s\r\n" % (len(piece), piece)) if chunked else piece
        await asyncio.sleep(0)


def _head(token: str, extra: str) -> bytes:
    return (
        "POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\n{extra}\r\n"
    ).encode()


class TestBodyLimit:
    async def test_declared_huge_body_is_refused_before_it_is_read(
        self, api: httpx.AsyncClient, token: str
    ) -> None:
        """Content-Length over the limit: 413 while the 20 MB body is still unsent."""
        head = _head(token, f"Content-Length: {HUGE}\r\n")
        status, body, sent = await _raw(str(api.base_url), head, _chunks(HUGE, chunked=False))
        assert status == 413
        assert f"larger than {LIMIT} bytes" in json.loads(body)["detail"]
        assert sent < HUGE // 2
        assert (await api.get("/healthz")).status_code == 200

    async def test_streamed_huge_body_is_cut_off_at_the_limit(
        self, api: httpx.AsyncClient, token: str
    ) -> None:
        """Chunked, with no length declared: counted as it streams and refused at the limit."""
        head = _head(token, "Transfer-Encoding: chunked\r\n")
        status, body, sent = await _raw(str(api.base_url), head, _chunks(HUGE, chunked=True))
        assert status == 413
        assert "larger than" in json.loads(body)["detail"]
        assert sent < HUGE // 2
        assert (await api.get("/healthz")).status_code == 200

    async def test_body_under_the_limit_is_served(self, api: httpx.AsyncClient) -> None:
        """The limit leaves ordinary requests alone: a run starts by its library name."""
        response = await api.post("/runs", json={"playbook": "quick", "inputs": {}})
        assert response.status_code == 201, response.text
        assert response.json()["playbook"] == "quick"


class TestRequestErrors:
    async def test_malformed_json_is_400(self, api: httpx.AsyncClient) -> None:
        """A body that is not JSON is the client's fault, said plainly."""
        response = await api.post(
            "/runs", content=b'{"playbook": "quick",', headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["detail"].startswith("malformed JSON body")

    async def test_too_deep_json_is_400_before_parsing(self, api: httpx.AsyncClient) -> None:
        """Nesting past the cap is refused on the raw bytes, never handed to a parser."""
        deep = '{"playbook": "quick", "inputs": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
        response = await api.post(
            "/runs", content=deep.encode(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert f"nested more than {MAX_JSON_DEPTH} levels" in response.json()["detail"]

    async def test_validation_failure_is_422_with_the_field_path(
        self, api: httpx.AsyncClient
    ) -> None:
        """Each failing field is named by its path; the value sent is not echoed back."""
        response = await api.post(
            "/runs", json={"playbook": "x" * 5000, "inputs": [1], "requested_by": "mallory"}
        )
        assert response.status_code == 422
        fields = sorted(e["field"] for e in response.json()["detail"])
        assert fields == ["inputs", "playbook", "requested_by"]
        assert "x" * 300 not in response.text

    async def test_unknown_run_is_404(self, api: httpx.AsyncClient) -> None:
        """A run id nobody started is not found, for reads and for decisions."""
        assert (await api.get("/runs/no-such-run")).status_code == 404
        response = await api.post("/runs/no-such-run/steps/x/approve", json={})
        assert response.status_code == 404

    async def test_unknown_playbook_names_the_known_ones_and_reads_no_file(
        self, api: httpx.AsyncClient, fl_settings: Settings
    ) -> None:
        """A path is no playbook name: nothing is read, the known names are listed."""
        secret = fl_settings.data_dir / "secret.yaml"
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("name: s3cr3t\nsteps: [{id: a, uses: core.wait}]\n")
        response = await api.post("/runs", json={"playbook": str(secret)})
        assert response.status_code in (404, 422)
        assert "quick" in response.text
        assert "s3cr3t" not in response.text


class TestJsonDepth:
    @pytest.mark.parametrize(
        ("text", "depth"),
        [
            ('{"a": "[[[[{{{{"}', 1),
            ('{"a": "\\\\"}', 1),
            ('{"a": "\\"[[["}', 1),
            ('[[["]]]"]]]', 3),
            ('{"a": [{"b": "]]]"}]}', 3),
        ],
    )
    def test_depth_is_counted_outside_strings_however_the_body_is_split(
        self, text: str, depth: int
    ) -> None:
        """Brackets inside strings and escaped quotes never count, at any chunk boundary."""
        json.loads(text)
        for split in range(len(text) + 1):
            exact = JsonDepth(depth)
            assert exact.feed(text[:split].encode())
            assert exact.feed(text[split:].encode())
            assert exact.depth == 0
            tight = JsonDepth(depth - 1)
            fed = [tight.feed(text[i : i + 1].encode()) for i in range(len(text))]
            assert not all(fed)


class TestMiddlewareAlone:
    def test_conflicting_content_lengths_are_refused(self) -> None:
        """Two different Content-Length headers are a smuggling attempt, not a request."""
        calls: list[str] = []

        async def app(scope: object, receive: object, send: object) -> None:
            calls.append("app")

        middleware = BodyLimit(app, max_bytes=LIMIT)  # type: ignore[arg-type]
        messages: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            messages.append(message)

        scope = {
            "type": "http",
            "headers": [(b"content-length", b"10"), (b"content-length", b"99999999")],
        }
        asyncio.run(middleware(scope, receive, send))  # type: ignore[arg-type]
        assert calls == []
        assert messages[0]["status"] == 400

    def test_every_app_has_the_limit(self) -> None:
        """create_app installs the limit with the configured size."""
        app = create_app(Settings(api_max_body_bytes=2048))
        with TestClient(app) as http:
            response = http.post("/runs", content=b"x" * 4096)
        assert response.status_code == 413


@contextlib.asynccontextmanager
async def deadline_server(settings: Settings, seconds: float = 0.5) -> AsyncIterator[int]:
    """``create_app`` under uvicorn with the head-deadline protocol, on a loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(settings),
        http=head_deadline_protocol(seconds),
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110  (uvicorn exposes only a flag)
            await asyncio.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


class TestSlowClients:
    async def test_pipelined_requests_are_served_then_the_deadline_holds(
        self, fl_settings: Settings
    ) -> None:
        """Two requests in one write are both answered; after them the connection has the
        head deadline again (a third head left unfinished is cut off)."""
        async with deadline_server(fl_settings) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
            writer.write(head + head)
            await writer.drain()
            await asyncio.sleep(0.2)  # the two are answered meanwhile
            writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")  # never finished
            await writer.drain()
            received = await asyncio.wait_for(reader.read(), timeout=10)  # until closed
            writer.close()
        assert received.count(b"HTTP/1.1 200 OK") == 2

    async def test_a_request_head_that_trickles_in_is_cut_off(self, fl_settings: Settings) -> None:
        """A client sending its headers too slowly is disconnected; a prompt one is served."""
        async with deadline_server(fl_settings) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            await writer.drain()
            closed = await asyncio.wait_for(reader.read(), timeout=10)
            assert closed == b""
            writer.close()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                first = await http.get("/openapi.json")
                await asyncio.sleep(0.1)
                again = await http.get("/openapi.json")  # the same kept-alive connection
            assert (first.status_code, again.status_code) == (200, 200)

    @pytest.mark.parametrize(
        "framing",
        [
            b"Content-Length: 2\r\nContent-Length: 40\r\n",
            b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
        ],
        ids=["two-lengths", "length-and-chunked"],
    )
    async def test_an_alert_with_ambiguous_framing_is_refused(
        self, fl_settings: Settings, framing: bytes
    ) -> None:
        """The alert lane skips the app's body middleware, so the parser must refuse bodies a
        proxy in front could frame differently (request smuggling): 400, connection closed,
        nothing read as a second request."""
        async with deadline_server(fl_settings) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            smuggled = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
            writer.write(
                b"POST /v1/alerts HTTP/1.1\r\nHost: x\r\n"
                + framing
                + b"Content-Type: application/json\r\n\r\n{}"
                + smuggled
            )
            await writer.drain()
            received = await asyncio.wait_for(reader.read(), timeout=10)
            writer.close()
        assert received.startswith(b"HTTP/1.1 400 ")
        assert b"openapi" not in received
