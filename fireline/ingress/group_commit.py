"""Group commit: many concurrent notifications for one incident key, one durable write.

Temporal takes a few hundred signals a second on a small server; an alert storm sends
thousands of notifications a second for a handful of keys. Each key gets a lane: while one
write for the key is in flight, everything that arrives for it waits in the lane, and when the
write lands the whole lane goes out as the next batch. Every caller is answered only when the
write that carries its items has landed (or failed), so "answered 2xx" still means "durable".
A lane also waits out ``spacing`` from the start of one write to the next: a key's first
notification is written at once, and a storm's go in a few large signals a second per key
rather than in as many small ones as a quick server would take (on the embedded server, 0.15 s
halved the server's CPU in a 10-key storm and raised the API's throughput by half).

At most one write per key is in flight (batches of a key land in order), at most
``max_in_flight`` across keys, and at most ``max_pending`` items wait in all lanes together:
beyond that :meth:`GroupCommitter.submit` raises :class:`Overloaded` at once, which the API
answers 503 with ``Retry-After`` instead of letting the sender time out. Pure asyncio, no
Temporal: the write is a function given to the constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

Flush = Callable[[str, list[T]], Awaitable[None]]


class Overloaded(Exception):
    """Too much is waiting already; come back after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CommitTimeout(Exception):
    """The write did not land before the caller's deadline; it may still land later."""


@dataclass(eq=False)
class _Entry(Generic[T]):
    items: list[T]
    done: asyncio.Future[None]
    size: int = 0
    """Bytes the items take on the wire, roughly (what the notification's body weighed)."""
    deadline: float | None = None
    """``loop.time()`` after which the caller no longer waits."""


@dataclass(eq=False)
class _Lane(Generic[T]):
    pending: list[_Entry[T]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@dataclass
class Stats:
    """Counters since start; the API shows them and the bench reads them."""

    submitted: int = 0
    items: int = 0
    flushes: int = 0
    flushed_items: int = 0
    failures: int = 0
    overloaded: int = 0
    timeouts: int = 0
    largest_batch: int = 0
    shed: int = 0
    """Entries answered 503 before sending: a write would have landed after their deadline."""


class GroupCommitter(Generic[T]):
    def __init__(
        self,
        flush: Flush[T],
        *,
        max_pending: int = 20_000,
        max_batch: int = 500,
        max_batch_bytes: int = 1024 * 1024,
        max_in_flight: int = 64,
        spacing: float = 0.0,
        retry_after: float = 1.0,
    ) -> None:
        if max_pending < 1 or max_batch < 1 or max_in_flight < 1:
            raise ValueError("limits must be at least 1")
        if spacing < 0:
            raise ValueError("spacing must not be negative")
        self._flush = flush
        self.spacing = spacing
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.retry_after = retry_after
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lanes: dict[str, _Lane[T]] = {}
        self._waiting = 0
        self._in_flight = 0
        self.expected_write = 0.0
        """Seconds a write takes, smoothed; callers with less time left are not sent."""
        self.stats = Stats()

    @property
    def waiting(self) -> int:
        """Items accepted and not yet answered (waiting for, or riding in, a write)."""
        return self._waiting

    async def submit(
        self, key: str, items: Sequence[T], within: float | None = None, size: int = 0
    ) -> None:
        """Return once a write carrying ``items`` has landed; raise what the write raised.

        After ``within`` seconds the items are withdrawn if no write has taken them yet (and
        :class:`CommitTimeout` raised); if a write already carries them, it may still land.
        """
        if not items:
            return
        if self._waiting + len(items) > self.max_pending:
            self.stats.overloaded += 1
            raise Overloaded(
                f"{self._waiting} alerts are waiting to be written", retry_after=self.retry_after
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within if within is not None else None
        entry: _Entry[T] = _Entry(list(items), loop.create_future(), size, deadline)
        lane = self._lanes.setdefault(key, _Lane())
        lane.pending.append(entry)
        self._waiting += len(entry.items)
        self.stats.submitted += 1
        self.stats.items += len(entry.items)
        if lane.task is None:
            lane.task = asyncio.create_task(self._drain(key, lane), name=f"group-commit:{key}")
        try:
            async with asyncio.timeout(within):  # a timer, not a task per caller
                await asyncio.shield(entry.done)
        except TimeoutError:
            self.stats.timeouts += 1
            if entry in lane.pending:
                lane.pending.remove(entry)
                self._waiting -= len(entry.items)
                entry.done.cancel()
            raise CommitTimeout(f"not durable within {within:g} s") from None

    async def _drain(self, key: str, lane: _Lane[T]) -> None:
        batch: list[_Entry[T]] = []
        try:
            while lane.pending:
                async with self._slots:
                    batch = self._live(
                        take_batch(lane.pending, self.max_batch, self.max_batch_bytes)
                    )
                    if not batch:
                        continue
                    items = [item for entry in batch for item in entry.items]
                    began = asyncio.get_running_loop().time()
                    self._in_flight += 1
                    try:
                        await self._flush(key, items)
                    except Exception as exc:
                        self.stats.failures += 1
                        self._settle(batch, exc)
                        batch = []
                        continue
                    finally:
                        self._in_flight -= 1
                    took = asyncio.get_running_loop().time() - began
                    self.expected_write = 0.8 * self.expected_write + 0.2 * took
                    self.stats.flushes += 1
                    self.stats.flushed_items += len(items)
                    self.stats.largest_batch = max(self.stats.largest_batch, len(items))
                    self._settle(batch, None)
                    batch = []
                # Open for the rest of ``spacing``: what arrives meanwhile joins the next write.
                rest = self.spacing - took
                if rest > 0:
                    await asyncio.sleep(rest)
        finally:
            lane.task = None
            # Cancelled mid-way: fail what is in flight and what waits, rather than leave
            # callers hanging (their items may or may not have landed).
            stopped = CommitTimeout("the writer stopped")
            self._settle(batch, stopped)
            self._settle(lane.pending, stopped)
            lane.pending.clear()
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def _live(self, batch: list[_Entry[T]]) -> list[_Entry[T]]:
        """Drop entries whose caller will have given up before a write would land.

        Without this, a server slowed past the deadline gets nothing but writes nobody waits
        for any more (each caller answered 503 and retrying), and useful throughput collapses.
        """
        now = asyncio.get_running_loop().time()
        live: list[_Entry[T]] = []
        late: list[_Entry[T]] = []
        for entry in batch:
            hopeless = entry.deadline is not None and entry.deadline - now < self.expected_write
            (late if hopeless else live).append(entry)
        if not live and late and self._in_flight == 0:
            # Nothing else is being written: send the newest as a probe, so the estimate
            # follows the server back down when it recovers.
            live.append(late.pop())
        if late:
            self.stats.shed += len(late)
            self._settle(late, CommitTimeout("would land after the caller's deadline"))
        return live

    def _settle(self, entries: list[_Entry[T]], error: Exception | None) -> None:
        for entry in entries:
            self._waiting -= len(entry.items)
            if entry.done.done():
                continue
            if error is None:
                entry.done.set_result(None)
            else:
                entry.done.set_exception(error)
                entry.done.exception()  # the caller may have given up: no "never retrieved"

    async def aclose(self) -> None:
        """Stop every writer; callers still waiting get :class:`CommitTimeout`."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def take_batch(
    pending: list[_Entry[T]], max_batch: int, max_bytes: int | None = None
) -> list[_Entry[T]]:
    """Whole entries from the front, up to ``max_batch`` items and ``max_bytes``.

    Entries are never split: one notification's alerts land in one write, all or nothing. An
    entry over either bound goes alone (the body limit keeps it under Temporal's payload
    limit), so one large notification cannot push a whole batch over it.
    """
    taken: list[_Entry[T]] = []
    count = 0
    weight = 0
    while pending:
        head = pending[0]
        over_items = count + len(head.items) > max_batch
        over_bytes = max_bytes is not None and weight + head.size > max_bytes
        if taken and (over_items or over_bytes):
            break
        taken.append(pending.pop(0))
        count += len(head.items)
        weight += head.size
    return taken
