"""A page sink: a loopback HTTP server that answers 200 and notes when each page arrived.

Fireline's ``core.page`` posts real webhooks to it (as it would to a paging provider), and the
raw twins' page activity posts the same way, so both sides pay for one HTTP request per page
and the arrival times come from one clock (``time.monotonic`` in this process).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

THREAD_HEADER = b"x-fireline-thread"
MAX_BODY = 1 << 20


class PageSink:
    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.url = ""
        self.open: set[asyncio.StreamWriter] = set()
        """Kept-alive connections, closed when the sink stops so none is cut mid-read."""

    def count(self, thread: str) -> int:
        return len(self.arrivals.get(thread, ()))

    def nth(self, thread: str, n: int) -> float | None:
        """When the ``n``-th (1-based) page for ``thread`` arrived, if it has."""
        seen = self.arrivals.get(thread, [])
        return seen[n - 1] if len(seen) >= n else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                thread, length = "", 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == THREAD_HEADER:
                        thread = value.strip().decode(errors="replace")
                    elif name == b"content-length":
                        length = min(int(value.strip() or 0), MAX_BODY)
                if length:
                    await reader.readexactly(length)
                self.arrivals[thread].append(time.monotonic())
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()


@asynccontextmanager
async def page_sink() -> AsyncIterator[PageSink]:
    sink = PageSink()
    server = await asyncio.start_server(sink._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink.url = f"http://127.0.0.1:{port}/page"
    try:
        yield sink
    finally:
        server.close()
        for writer in list(sink.open):
            writer.close()
        await server.wait_closed()
