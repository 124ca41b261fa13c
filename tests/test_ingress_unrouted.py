"""The unrouted log: durable, bounded, counted across rotation and restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.ingress.unrouted import UnroutedStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def alert(n: int) -> Alert:
    return Alert(
        source=AlertSource.generic,
        notification_id=f"generic:{n}",
        group_key="g",
        status=AlertStatus.firing,
        name=f"orphan-{n % 3}",
        labels={"n": str(n), "pad": "x" * 200},
        received_at=NOW,
    )


class TestUnroutedStore:
    async def test_counts_survive_rotation_and_restart(self, tmp_path: Path) -> None:
        store = UnroutedStore(tmp_path, max_bytes=4096)
        for n in range(40):
            await store.append([alert(n)], NOW)
        summary = store.summary(limit=5)
        assert summary.total == 40
        assert summary.kept < 40  # older lines rotated away
        assert [a.labels["n"] for a in summary.latest] == ["39", "38", "37", "36", "35"]
        on_disk = store.path.stat().st_size + store.rotated.stat().st_size
        assert on_disk <= 2 * 4096 + 1024
        again = UnroutedStore(tmp_path, max_bytes=4096)  # a restarted API process
        await again.append([alert(40), alert(41)], NOW)
        assert again.summary(limit=1).total == 42
        assert again.summary(limit=1).latest[0].seq == 42

    async def test_torn_last_line_is_skipped(self, tmp_path: Path) -> None:
        store = UnroutedStore(tmp_path)
        await store.append([alert(1), alert(2)], NOW)
        with store.path.open("a") as handle:
            handle.write('{"seq": 3, "stored_at": ')  # a crash mid-write
        summary = store.summary()
        assert summary.kept == 2
        assert summary.by_name == {"orphan-1": 1, "orphan-2": 1}
        restarted = UnroutedStore(tmp_path)
        await restarted.append([alert(3)], NOW)
        after = restarted.summary()
        assert after.total == 3  # counting goes on from the last whole line
        assert [a.seq for a in after.latest] == [3, 2, 1]
