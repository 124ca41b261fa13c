"""The recording HTTP target that other tests program: replies, holds, records, subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.target import HITS_PATH, Reply, Target, start_target

ROOT = Path(__file__).resolve().parent.parent


class TestTarget:
    def test_replies_in_order_then_the_last_repeats(self, target: Target) -> None:
        """Each request takes the next reply; the last one answers every later request."""
        target.route("post", "/x", Reply(503), Reply(201, {"n": 2}))
        statuses = [httpx.post(target.url("/x")).status_code for _ in range(3)]
        assert statuses == [503, 201, 201]
        assert httpx.post(target.url("/x")).json() == {"n": 2}

    def test_default_body_and_unrouted_404(self, target: Target) -> None:
        """A reply without json sends {"ok": true}; an unrouted request gets 404 with a reason."""
        target.route("GET", "/ok", Reply())
        assert httpx.get(target.url("/ok")).json() == {"ok": True}
        missing = httpx.delete(target.url("/nope"))
        assert missing.status_code == 404
        assert missing.json() == {"error": "no route for DELETE /nope"}

    def test_records_method_path_query_headers_and_json(self, target: Target) -> None:
        """Requests are recorded with lower-cased headers, parsed query and JSON body."""
        target.route("PATCH", "/flags", Reply(200))
        httpx.patch(target.url("/flags?env=prod&x="), json={"on": False}, headers={"X-Who": "ana"})
        [hit] = target.hits("PATCH", "/flags")
        assert (hit.method, hit.path, hit.query) == ("PATCH", "/flags", {"env": "prod", "x": ""})
        assert hit.headers["x-who"] == "ana"
        assert hit.json == {"on": False}
        assert json.loads(hit.body) == {"on": False}
        assert target.hits("GET") == []

    def test_hold_blocks_until_released(self, target: Target) -> None:
        """A held request is recorded at once and answered only after the event is set."""
        target.route("POST", "/slow", Reply(200, {"done": True}))
        release = target.hold("POST", "/slow")
        answers: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: answers.append(httpx.post(target.url("/slow"))))
        sender.start()
        target.wait_for_hits("POST", "/slow", 1, timeout_s=10)
        assert answers == []
        release.set()
        sender.join(timeout=10)
        assert answers[0].json() == {"done": True}

    def test_wait_for_hits_times_out(self, target: Target) -> None:
        """Waiting for requests that never come raises, listing what did come."""
        httpx.get(target.url("/other"))
        with pytest.raises(
            TimeoutError, match=r"wanted 1 x POST /x, got 0; all hits: \['GET /other'\]"
        ):
            target.wait_for_hits("POST", "/x", 1, timeout_s=0.1)

    def test_close_releases_held_requests(self) -> None:
        """Closing the server lets a held request finish instead of hanging."""
        server = start_target()
        server.route("GET", "/held", Reply(200))
        server.hold("GET", "/held")
        answers: list[int] = []
        sender = threading.Thread(
            target=lambda: answers.append(httpx.get(server.url("/held")).status_code)
        )
        sender.start()
        server.wait_for_hits("GET", "/held", 1, timeout_s=10)
        server.close()
        sender.join(timeout=10)
        assert answers == [200]


class TestTargetProcess:
    def test_serves_routes_file_and_lists_hits(self, tmp_path: Path) -> None:
        """``python -m tests.support.target`` serves a routes file and reports its hits."""
        routes = tmp_path / "routes.json"
        routes.write_text(
            json.dumps([{"method": "GET", "path": "/health", "replies": [{"json": {"up": 1}}]}])
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.target", "--routes", str(routes)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert httpx.get(f"{base_url}/health?probe=1").json() == {"up": 1}
            [hit] = httpx.get(base_url + HITS_PATH).json()
            assert (hit["method"], hit["path"], hit["query"]) == ("GET", "/health", {"probe": "1"})
        finally:
            process.terminate()
            process.wait(timeout=10)
        assert process.returncode == 0
