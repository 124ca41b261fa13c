"""Headless Debian Chromium, driven over the DevTools protocol on a pipe, for UI tests.

``--remote-debugging-pipe`` makes Chromium read protocol commands from fd 3 and write replies
and events to fd 4, each message JSON ended by a NUL byte. That needs nothing beyond the
standard library and the browser itself: no driver binary, no websocket client, no open port.
The calls here block, so async tests run them in a thread and their workers keep going.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from fireline.messages import SEARCH_ATTRIBUTES
from fireline.runtime.binaries import temporal_cli
from fireline.runtime.stack import TUNING_FLAGS

FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
MISSING = "Debian chromium not installed: apt-get install chromium"


_PAGE_TEXT = """(() => {
    const parts = [];
    const collect = (doc) => {
        if (!doc || !doc.body) return;
        parts.push(doc.body.innerText);
        for (const frame of doc.querySelectorAll("iframe")) {
            let inner = null;
            try { inner = frame.contentDocument; } catch (e) { inner = null; }
            collect(inner);
        }
    };
    collect(document);
    return parts.join("\\n");
})()"""


class BrowserError(RuntimeError):
    """The browser died, refused a command or did not show what was awaited in time."""


def chromium_path() -> str | None:
    """Debian's launcher (it applies /etc/chromium.d and execs the real binary)."""
    return shutil.which("chromium")


class Browser:
    """One Chromium process with one tab; see the module docstring. Call :meth:`close`."""

    def __init__(self, profile_dir: Path, *, width: int = 1440, height: int = 1000) -> None:
        executable = chromium_path()
        if executable is None:
            raise BrowserError(MISSING)
        to_chrome_r, to_chrome_w = _high_pipe()
        from_chrome_r, from_chrome_w = _high_pipe()
        profile_dir.mkdir(parents=True, exist_ok=True)
        self._log = (profile_dir / "chromium.log").open("wb")
        # Chromium wants the pipe on fds 3 (commands in) and 4 (replies out); bash moves
        # them there just before it execs, which is safer than Python code between fork and
        # exec in a process full of threads.
        onto_3_and_4 = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} '
        onto_3_and_4 += f"{to_chrome_r}<&- {from_chrome_w}>&-"
        self.process = subprocess.Popen(
            [
                "/bin/bash",  # dash cannot redirect fds above 9
                "-c",
                onto_3_and_4,
                executable,
                *FLAGS,
                f"--user-data-dir={profile_dir}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(to_chrome_r, from_chrome_w),
            start_new_session=True,  # its helper processes share our PID as group id
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._out = to_chrome_w
        self._in = from_chrome_r
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="chromium-cdp", daemon=True)
        self._reader.start()
        try:
            self._session = self._open_tab(width, height)
        except BaseException:
            self.close()
            raise

    # --- protocol plumbing ---------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._in, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 15.0
    ) -> dict[str, Any]:
        """Send one protocol command to the tab (browser-level for ``Target.*``)."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        try:
            os.write(self._out, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise BrowserError(f"chromium is gone ({method}): {exc}") from exc
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"no answer to {method} ({self._tail()})")
                self._cond.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def _open_tab(self, width: int, height: int) -> str:
        self._session = ""
        target = self.call("Target.createTarget", {"url": "about:blank"}, timeout_s=30)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self._session = attached["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self._session

    def _tail(self) -> str:
        self._log.flush()
        path = Path(self._log.name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "chromium log: " + (text[-600:].strip() or "(empty)")

    # --- what a test does ----------------------------------------------------------------

    def goto(self, url: str) -> None:
        result = self.call("Page.navigate", {"url": url}, timeout_s=30)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        """What a reader sees: the page's rendered text, then that of its same-origin frames.

        The Temporal UI renders Markdown (summaries, details) in iframes of its own origin.
        """
        return str(self.evaluate(_PAGE_TEXT) or "")

    def wait_for_text(self, *needles: str, timeout_s: float = 20.0) -> str:
        """Poll the rendered text until every needle is in it; returns that text."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"page never showed {missing} within {timeout_s:g}s; it showed:\n{text[:3000]}"
                )
            time.sleep(0.25)

    def click_text(self, label: str, selector: str = "button, a, [role=tab]") -> None:
        """Click the first visible element matching ``selector`` whose first text line is
        ``label`` (tabs carry a count badge on a line of their own)."""
        clicked = self.evaluate(
            f"""(() => {{
                const label = {json.dumps(label)};
                for (const el of document.querySelectorAll({json.dumps(selector)})) {{
                    const first = el.innerText.trim().split("\\n")[0].trim();
                    if (el.offsetParent !== null && first === label) {{
                        el.click();
                        return true;
                    }}
                }}
                return false;
            }})()"""
        )
        if not clicked:
            raise BrowserError(f"nothing clickable labelled {label!r}")

    def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the page and return its bytes.

        The Temporal UI scrolls inside a pane, so this is what the window shows.
        """
        result = self.call(
            "Page.captureScreenshot",
            {"format": "png"},
            timeout_s=30,
        )
        data = base64.b64decode(result["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        """Ask Chromium to quit, then end its process group (ours: started in a new session)."""
        with suppress(BrowserError):
            self.call("Browser.close", timeout_s=5)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # helpers that outlived the browser
        for fd in (self._out, self._in):
            with suppress(OSError):
                os.close(fd)
        self._reader.join(timeout=5)
        self._log.close()


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends sit above fd 9, so redirecting onto 3 and 4 never clobbers them."""
    read, write = os.pipe()
    try:
        return (
            fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, 10),
            fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, 10),
        )
    finally:
        os.close(read)
        os.close(write)


def png_colours(data: bytes, limit: int = 64) -> int:
    """How many distinct colours a PNG holds (counting stops at ``limit``).

    Enough of a decoder for Chromium's screenshots (8-bit RGB/RGBA, not interlaced) to tell a
    rendered page from a blank one without an imaging library.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            channels = {2: 3, 6: 4}.get(colour, 0)
            if depth != 8 or not channels or interlace:
                raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour})")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    seen: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        line = _unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        for x in range(0, stride, channels * 7):  # every 7th pixel is plenty
            seen.add(bytes(line[x : x + channels]))
        if len(seen) >= limit:
            return len(seen)
        previous = line
    return len(seen)


def _unfilter(kind: int, line: bytearray, above: bytearray, bpp: int) -> bytearray:
    """Undo one row's PNG filter (none, sub, up, average, Paeth) in place."""
    if kind == 0:
        return line
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = above[i]
        corner = above[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + pred) & 0xFF
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def dev_server_with_ui() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A dev server of its own with the Web UI on a free port and Fireline's search
    attributes registered (as ``fireline up`` registers them); yields it and the UI's URL."""
    ui_port = free_port()
    environment = await WorkflowEnvironment.start_local(
        ip="127.0.0.1",
        ui=True,
        ui_port=ui_port,
        data_converter=pydantic_data_converter,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
        dev_server_existing_path=str(temporal_cli()),
        dev_server_extra_args=list(TUNING_FLAGS),
    )
    try:
        yield environment, f"http://127.0.0.1:{ui_port}"
    finally:
        await environment.shutdown()


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium; CI must have it, elsewhere its absence skips with the fix."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the browser for the UI test. {MISSING}")
        pytest.skip(MISSING)
    return path
