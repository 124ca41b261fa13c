"""What every module does around its real work: keys, headers, log context, heartbeats, errors.

These are the same for every target system, so they live here once and the domain files stay
about their targets. Other domains import them too (``from activities.core import runtime``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from fireline import errors
from fireline.modules import ModuleSet
from fireline.runtime.settings import Settings

BODY_EXCERPT_CHARS = 200
"""How much of a refusing target's body goes into an error message."""


def idempotency_key() -> str:
    """``<workflow_id>/<activity_id>``: the same for every retry of one step, unique per step."""
    info = activity.info()
    if info.workflow_id is None:
        return info.activity_id
    return f"{info.workflow_id}/{info.activity_id}"


def run_headers() -> dict[str, str]:
    """Headers every outgoing request carries, so targets can dedupe and trace a run."""
    headers = {"Idempotency-Key": idempotency_key()}
    workflow_id = activity.info().workflow_id
    if workflow_id:
        headers["X-Fireline-Run"] = workflow_id
    return headers


@contextlib.asynccontextmanager
async def running(module: str) -> AsyncIterator[None]:
    """Bind the step's identity to every log line and heartbeat while the body runs.

    The heartbeat loop only starts when the activity was scheduled with a heartbeat timeout; a
    slow target then does not look like a dead worker, and a cancelled run reaches us quickly.
    """
    info = activity.info()
    with structlog.contextvars.bound_contextvars(
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        activity_id=info.activity_id,
        attempt=info.attempt,
        module=module,
    ):
        if not info.heartbeat_timeout:
            yield
            return
        interval = max(info.heartbeat_timeout.total_seconds() / 3, 0.05)
        beat = asyncio.create_task(_heartbeat(module, interval))
        try:
            yield
        finally:
            beat.cancel()
            try:
                await beat
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise


async def _heartbeat(module: str, interval: float) -> None:
    while True:
        activity.heartbeat(module)
        await asyncio.sleep(interval)


def invalid_input(message: str, **details: Any) -> ApplicationError:
    """The input cannot work however often it is retried."""
    return ApplicationError(
        message, *_details(details), type=errors.INVALID_INPUT, non_retryable=True
    )


def refused(message: str, **details: Any) -> ApplicationError:
    """The target said no on purpose; asking again gets the same answer."""
    return ApplicationError(
        message, *_details(details), type=errors.TARGET_REFUSED, non_retryable=True
    )


def unavailable(message: str, **details: Any) -> ApplicationError:
    """The target could not answer properly now; the retry policy may try again."""
    return ApplicationError(message, *_details(details), type=errors.TARGET_UNAVAILABLE)


def _details(details: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (details,) if details else ()


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be requested, or None. Usable by the compiler on literal URLs."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"{url!r} is not a URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return f"{url!r} is not an http or https URL"
    if not parsed.host:
        return f"{url!r} names no host"
    return None


def require_url(url: str, field: str) -> None:
    problem = url_problem(url)
    if problem:
        raise invalid_input(f"{field}: {problem}", field=field)


TRANSIENT_4XX = frozenset({408, 425, 429})
"""4xx answers that mean "not now" rather than "no": timeouts and rate limits are retried."""


def status_error(method: str, url: str, status: int, body: str, expected: str) -> ApplicationError:
    """The error for an answer outside the expected statuses, typed by what a retry could do."""
    excerpt = body[:BODY_EXCERPT_CHARS]
    message = f"{method} {url} answered {status}, expected {expected}: {excerpt}"
    if status >= 500 or status in TRANSIENT_4XX:
        return unavailable(message, method=method, url=url, status=status)
    return refused(message, method=method, url=url, status=status)


def transport_error(
    method: str, url: str, exc: httpx.RequestError, timeout_s: float
) -> ApplicationError:
    """The error for a request that got no answer at all."""
    message = f"{method} {url} failed: {describe_transport(exc, timeout_s)}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return invalid_input(message, method=method, url=url)
    return unavailable(message, method=method, url=url)


def describe_transport(exc: httpx.RequestError, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s ({type(exc).__name__})"
    return f"{type(exc).__name__}: {str(exc) or 'no detail'}"


class HttpClientSet(ModuleSet):
    """A module set sharing one pooled HTTP client per worker, created on first use."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Redirects are answers to judge, not to follow: a 302 from an admin API usually
            # means a login page, and following it would report success for nothing.
            self._client = httpx.AsyncClient(
                timeout=self.settings.http_timeout_seconds, follow_redirects=False
            )
        return self._client

    def bearer_header(self) -> dict[str, str]:
        """Authorization from settings; a step asking for it without one configured is invalid."""
        token = self.settings.http_bearer_token
        if token is None:
            raise invalid_input(
                "use_bearer_token is set but no token is configured (FIRELINE_HTTP_BEARER_TOKEN)"
            )
        return {"Authorization": f"Bearer {token.get_secret_value()}"}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
