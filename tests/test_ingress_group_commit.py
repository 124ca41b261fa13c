"""The group commit engine on its own: coalescing, ordering, failures, bounds, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from fireline.ingress.group_commit import (
    CommitTimeout,
    GroupCommitter,
    Overloaded,
    _Entry,
    take_batch,
)


class Recorder:
    """A write that waits for the test's go-ahead, so batches form deterministically."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.started = asyncio.Event()

    async def __call__(self, key: str, items: list[int]) -> None:
        self.calls.append((key, list(items)))
        self.started.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class TestCoalescing:
    async def test_waiting_items_go_out_as_one_batch(self) -> None:
        """While one write is in flight, later submissions for the key share the next write."""
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        first = asyncio.create_task(commit.submit("k", [1]))
        await flush.started.wait()
        rest = [asyncio.create_task(commit.submit("k", [i])) for i in range(2, 12)]
        await settle()
        assert not any(t.done() for t in [first, *rest])
        flush.gate.set()
        await asyncio.gather(first, *rest)
        assert flush.calls == [("k", [1]), ("k", list(range(2, 12)))]
        assert commit.stats.flushes == 2
        assert commit.stats.flushed_items == 11

    async def test_spacing_writes_the_first_at_once_and_gathers_the_rest(self) -> None:
        """A quick write does not open the lane to a stream of tiny ones: what arrives within
        ``spacing`` of the last write's start waits for it, then goes as one batch; another
        key is not held by it; after the lane idles past its spacing, the next arrival is a
        write of its own."""
        flush = Recorder()  # lands at once: without spacing, every arrival is its own write
        commit: GroupCommitter[int] = GroupCommitter(flush, spacing=1.0)
        await commit.submit("k", [1])  # the first is written at once
        trickle = []
        for i in range(2, 7):
            trickle.append(asyncio.create_task(commit.submit("k", [i])))
            await asyncio.sleep(0.02)
        await settle()
        assert flush.calls == [("k", [1])]  # the trickle waits out the spacing
        await commit.submit("other", [100])  # its own lane: not held by k's spacing
        assert not any(t.done() for t in trickle)
        await asyncio.gather(*trickle)
        await asyncio.sleep(1.1)  # k's lane idles past its spacing and closes
        await commit.submit("k", [7])
        assert [c for c in flush.calls if c[0] == "k"] == [
            ("k", [1]),
            ("k", [2, 3, 4, 5, 6]),
            ("k", [7]),
        ]

    async def test_nobody_answered_before_their_write_lands(self) -> None:
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        task = asyncio.create_task(commit.submit("k", [1]))
        await flush.started.wait()
        await settle()
        assert not task.done()
        flush.gate.set()
        await task

    async def test_keys_are_independent(self) -> None:
        flush = Recorder()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        await asyncio.gather(*(commit.submit(f"k{i % 3}", [i]) for i in range(30)))
        per_key: dict[str, list[int]] = {}
        for key, items in flush.calls:
            per_key.setdefault(key, []).extend(items)
        assert {k: sorted(v) for k, v in per_key.items()} == {
            f"k{j}": [i for i in range(30) if i % 3 == j] for j in range(3)
        }

    async def test_batch_size_bounded_and_entries_whole(self) -> None:
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush, max_batch=5)
        first = asyncio.create_task(commit.submit("k", [0]))
        await flush.started.wait()
        tasks = [asyncio.create_task(commit.submit("k", [i, i])) for i in range(1, 7)]
        await settle()
        flush.gate.set()
        await asyncio.gather(first, *tasks)
        sizes = [len(items) for _, items in flush.calls[1:]]
        assert all(s <= 5 for s in sizes)
        assert all(s % 2 == 0 for s in sizes)
        assert sum(sizes) == 12

    def test_take_batch_bounded_by_bytes(self) -> None:
        """A few large notifications never share one signal past the byte bound."""
        loop = asyncio.new_event_loop()
        try:
            pending = [_Entry([i], loop.create_future(), 400_000) for i in range(5)]
            sizes = []
            while pending:
                sizes.append(len(take_batch(pending, 500, 1_000_000)))
            assert sizes == [2, 2, 1]
            huge = [_Entry([1], loop.create_future(), 3_000_000), _Entry([2], loop.create_future())]
            assert len(take_batch(huge, 500, 1_000_000)) == 1
        finally:
            loop.close()

    def test_take_batch_oversized_entry_goes_alone(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            pending = [_Entry([1] * 9, loop.create_future()), _Entry([2], loop.create_future())]
            assert [len(e.items) for e in take_batch(pending, 5)] == [9]
            assert [len(e.items) for e in take_batch(pending, 5)] == [1]
        finally:
            loop.close()


class TestFailures:
    async def test_write_failure_reaches_every_waiter_of_that_batch(self) -> None:
        flush = Recorder()
        flush.gate.clear()
        flush.fail = RuntimeError("temporal said no")
        commit: GroupCommitter[int] = GroupCommitter(flush)
        tasks = [asyncio.create_task(commit.submit("k", [i])) for i in range(4)]
        await flush.started.wait()
        flush.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert commit.stats.failures >= 1
        flush.fail = None
        await commit.submit("k", [9])  # the lane recovers
        assert flush.calls[-1] == ("k", [9])

    async def test_overloaded_at_once(self) -> None:
        """Beyond max_pending the caller is told to come back, without waiting."""
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush, max_pending=3, retry_after=7)
        tasks = [asyncio.create_task(commit.submit("k", [i])) for i in range(3)]
        await settle()
        with pytest.raises(Overloaded) as info:
            await commit.submit("k", [99])
        assert info.value.retry_after == 7
        flush.gate.set()
        await asyncio.gather(*tasks)
        await commit.submit("k", [100])  # room again once written

    async def test_deadline_withdraws_unwritten_items(self) -> None:
        """A caller that gives up before its items are taken is not written at all."""
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        first = asyncio.create_task(commit.submit("k", [1]))
        await flush.started.wait()
        with pytest.raises(CommitTimeout):
            await commit.submit("k", [2], within=0.01)
        assert commit.waiting == 1  # only the item riding in the write
        flush.gate.set()
        await first
        await settle()
        assert flush.calls == [("k", [1])]

    async def test_hopeless_entries_are_shed_not_sent(self) -> None:
        """A caller with less time left than a write takes is answered at once, not written."""
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        first = asyncio.create_task(commit.submit("k", [0]))
        await flush.started.wait()
        hopeless = asyncio.create_task(commit.submit("k", [1], within=1.0))
        patient = asyncio.create_task(commit.submit("k", [2], within=10.0))
        await settle()
        commit.expected_write = 5.0  # as if the server had been taking 5 s per write
        flush.gate.set()
        await first
        with pytest.raises(CommitTimeout, match="deadline"):
            await hopeless
        await patient
        assert flush.calls == [("k", [0]), ("k", [2])]
        assert commit.stats.shed == 1

    async def test_newest_is_sent_as_a_probe(self) -> None:
        """Even when every caller looks hopeless, one write per lane goes on (the estimate heals)."""
        flush = Recorder()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        commit.expected_write = 5.0
        await commit.submit("k", [1], within=1.0)
        assert flush.calls == [("k", [1])]
        assert commit.expected_write < 5.0

    async def test_no_probe_while_other_writes_are_in_flight(self) -> None:
        """With distinct keys every lane holds one entry: late ones are shed, not all probes."""
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        busy = asyncio.create_task(commit.submit("a", [0]))
        await flush.started.wait()
        commit.expected_write = 5.0
        with pytest.raises(CommitTimeout, match="deadline"):
            await commit.submit("b", [1], within=1.0)
        assert flush.calls == [("a", [0])]
        flush.gate.set()
        await busy

    async def test_close_fails_waiters(self) -> None:
        flush = Recorder()
        flush.gate.clear()
        commit: GroupCommitter[int] = GroupCommitter(flush)
        tasks = [asyncio.create_task(commit.submit("k", [i])) for i in range(3)]
        await flush.started.wait()
        await commit.aclose()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, (CommitTimeout, asyncio.CancelledError)) for r in results)
