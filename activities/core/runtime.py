"""What every module does around its real work: keys, headers, log context, heartbeats,
errors, and finding the target a step names.

These are the same for every target system, so they live here once and the domain files stay
about their targets. Other domains import them too (``from activities.core import runtime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import structlog
from pydantic import BaseModel, SecretStr, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from fireline import errors
from fireline.modules import ModuleSet
from fireline.runtime.settings import Settings

T = TypeVar("T", bound=BaseModel)

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


class Progress:
    """What a running step has recorded so far, carried by its heartbeats.

    A step that reads prior state and then changes it records that state before the change;
    Temporal keeps the last heartbeat's details for the next attempt of the same activity, so
    a retry after a crash restores what the first attempt found, not what it left behind.
    """

    def __init__(self, module: str, earlier: dict[str, Any] | None) -> None:
        self.module = module
        self.earlier = earlier
        """Details the previous attempt of this activity recorded, if any."""
        self.details: dict[str, Any] | None = earlier

    def record(self, **details: Any) -> None:
        self.details = details
        activity.heartbeat(*self.beat())

    def beat(self) -> tuple[Any, ...]:
        return (self.module,) if self.details is None else (self.module, self.details)


def _earlier_details(module: str) -> dict[str, Any] | None:
    details = list(activity.info().heartbeat_details or ())
    if len(details) == 2 and details[0] == module and isinstance(details[1], dict):
        return details[1]
    return None


@contextlib.contextmanager
def step_logging(module: str, **context: Any) -> Iterator[None]:
    """Bind the step's identity (and ``context``) to every log line while the body runs."""
    info = activity.info()
    with structlog.contextvars.bound_contextvars(
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        activity_id=info.activity_id,
        attempt=info.attempt,
        module=module,
        **context,
    ):
        yield


@contextlib.asynccontextmanager
async def heartbeating(beat: Callable[[], tuple[Any, ...]]) -> AsyncIterator[None]:
    """Heartbeat ``beat()`` three times per heartbeat timeout while the body runs.

    The loop only starts when the activity was scheduled with a heartbeat timeout; a slow
    target then does not look like a dead worker, and a cancelled run reaches us quickly.
    """
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return
    interval = max(timeout.total_seconds() / 3, 0.05)
    task = asyncio.create_task(_heartbeat(beat, interval))
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


async def _heartbeat(beat: Callable[[], tuple[Any, ...]], interval: float) -> None:
    while True:
        activity.heartbeat(*beat())
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(module: str) -> AsyncIterator[Progress]:
    """Bind the step's identity to every log line and heartbeat while the body runs; the
    heartbeats carry what the step recorded (see :class:`Progress`)."""
    progress = Progress(module, _earlier_details(module))
    with step_logging(module):
        async with heartbeating(progress.beat):
            yield progress


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


def configured_target(settings: Settings, kind: str, name: str) -> dict[str, Any]:
    """The raw settings of target ``name`` of ``kind`` (``settings.targets[kind][name]``).

    A step names its target; connection settings and credentials stay on the worker. An
    unknown name is an input error listing what is configured, so a typo in a playbook is
    found on the first attempt rather than after the retries. Every domain looks targets up
    here, so all refuse in the same words.
    """
    configured: dict[str, Any] = settings.targets.get(kind, {})
    if name not in configured:
        known = ", ".join(sorted(configured)) or "none"
        raise invalid_input(
            f"unknown {kind} target {name!r}: there is no {kind} target named {name!r} in "
            f"settings (FIRELINE_TARGETS or [targets.{kind}.{name}] in fireline.toml); "
            f"configured: {known}",
            kind=kind,
            target=name,
        )
    return configured[name]


def target_settings(settings: Settings, kind: str, name: str, model: type[T]) -> T:
    """The settings of target ``name`` of ``kind``, validated by the kind's own ``model``."""
    raw = configured_target(settings, kind, name)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # Field names only: the values may be credentials.
        fields = ", ".join(
            sorted({".".join(str(p) for p in e["loc"]) or "?" for e in exc.errors()})
        )
        raise invalid_input(
            f"{kind} target {name!r} is misconfigured: check {fields} "
            f"(settings targets.{kind}.{name} are invalid ({fields}); values are not shown)",
            kind=kind,
            target=name,
        ) from None


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


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: traffic that never leaves the machine."""
    try:
        return host.lower() in LOOPBACK_HOSTS or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(url: httpx.URL) -> str:
    """``host:port`` with the scheme's default port filled in, lower-cased, IPv6 bracketed."""
    host = url.host.lower()
    if ":" in host:
        host = f"[{host}]"
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{host}:{port}"


def _normalise_entry(entry: str, scheme: str) -> str:
    parsed = httpx.URL(f"{scheme}://{entry.strip()}")
    return host_port(parsed)


def credential_problem(url: str, allowed_hosts: list[str], setting: str) -> str | None:
    """Why a credential must not be sent to ``url``, or None when it may.

    An entry is ``host`` or ``host:port`` and matches exactly (no wildcards, no suffixes); a
    bare host means the scheme's default port. Outside loopback the URL must be https, so the
    credential never crosses a network in clear.
    """
    problem = url_problem(url)
    if problem:
        return problem
    parsed = httpx.URL(url)
    where = host_port(parsed)
    try:
        allowed = {_normalise_entry(e, parsed.scheme) for e in allowed_hosts if e.strip()}
    except (httpx.InvalidURL, TypeError):
        return f"{setting} has an entry that is not host[:port]"
    if where not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        return (
            f"the credential is not allowed for host {where} (allowed by {setting}: {listed}); "
            "it is sent only to hosts listed for it in settings"
        )
    if parsed.scheme != "https" and not is_loopback(parsed.host):
        return f"the credential is sent to {where} only over https, not {parsed.scheme}"
    return None


def bound_bearer(
    token: SecretStr, url: str, allowed_hosts: list[str], setting: str
) -> dict[str, str]:
    """The Authorization header for ``url``, or a non-retryable error naming the host."""
    problem = credential_problem(url, allowed_hosts, setting)
    if problem:
        raise invalid_input(f"refusing to send a bearer token to {url}: {problem}", url=url)
    return {"Authorization": f"Bearer {token.get_secret_value()}"}


def target_headers(
    token: SecretStr | None, url: str, allowed_hosts: list[str], setting: str
) -> dict[str, str]:
    """The run headers for a request to a target, and its bearer token when it has one
    (bound to ``allowed_hosts`` as :func:`bound_bearer` says)."""
    headers = run_headers()
    if token is not None:
        headers.update(bound_bearer(token, url, allowed_hosts, setting))
    return headers


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

    def bearer_header(self, url: str) -> dict[str, str]:
        """Authorization from settings, for ``url`` only if its host is allow-listed for it.

        A step's URL can come from a playbook input or a ``decide retry``, so the token goes
        only where settings say (``FIRELINE_HTTP_BEARER_HOSTS``), never where a request points.
        """
        token = self.settings.http_bearer_token
        if token is None:
            raise invalid_input(
                "use_bearer_token is set but no token is configured (FIRELINE_HTTP_BEARER_TOKEN)"
            )
        return bound_bearer(
            token, url, self.settings.http_bearer_hosts, "FIRELINE_HTTP_BEARER_HOSTS"
        )

    async def deliver(self, url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        """POST ``body`` as JSON; anything but a 2xx answer raises, typed by what a retry
        could do, so a delivery nobody received is never reported as made."""
        timeout_s = self.settings.http_timeout_seconds
        try:
            response = await self.http.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.RequestError as exc:
            raise transport_error("POST", url, exc, timeout_s) from exc
        if not 200 <= response.status_code < 300:
            raise status_error("POST", url, response.status_code, response.text, "2xx")
        return response

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
