"""Alerts no route claims: kept on disk, counted, listed by ``fireline alerts --unrouted``.

A JSON-lines file under the data directory rather than a Temporal workflow: an unrouted alert
must be answered 202 even when the catalog is wrong and even when Temporal is struggling under
the very storm that produced it, and an append plus ``fsync`` costs microseconds and has no
dependency. The price is locality: each API process keeps its own file (point ``data_dir`` at a
shared volume to merge them). Writes go through a group commit of their own, so a storm of
unrouted alerts costs one ``fsync`` per batch. Bounded: when the file passes ``max_bytes`` it
becomes ``unrouted.jsonl.1`` (replacing the previous one), so at most twice that is kept; the
running count survives rotation and restarts because every line carries its sequence number.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from fireline.ingress.alert import Alert, AlertSource, AlertStatus

FILE_NAME = "unrouted.jsonl"


class UnroutedAlert(BaseModel):
    seq: int
    stored_at: datetime
    source: AlertSource
    notification_id: str
    group_key: str
    status: AlertStatus
    name: str
    severity: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = ""


class UnroutedSummary(BaseModel):
    total: int = Field(description="every unrouted alert since the file was first written")
    kept: int = Field(description="how many of them are still on disk")
    by_source: dict[str, int] = Field(default_factory=dict)
    by_name: dict[str, int] = Field(default_factory=dict)
    latest: list[UnroutedAlert] = Field(default_factory=list, description="newest first")


class UnroutedStore:
    def __init__(self, directory: Path, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.path = Path(directory) / FILE_NAME
        self.rotated = self.path.with_name(FILE_NAME + ".1")
        self.max_bytes = max_bytes
        self._seq: int | None = None
        self._lock = asyncio.Lock()

    def _last_seq(self) -> int:
        """The newest sequence number on disk (a torn line from a crash is passed over)."""
        for path in (self.path, self.rotated):
            for line in reversed(_tail_lines(path)):
                try:
                    return int(json.loads(line)["seq"])
                except (ValueError, KeyError, TypeError):
                    continue
        return 0

    async def append(self, alerts: list[Alert], stored_at: datetime) -> None:
        """Durable on return (written and fsynced)."""
        async with self._lock:
            await asyncio.to_thread(self._append, alerts, stored_at)

    def _append(self, alerts: list[Alert], stored_at: datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._seq is None:
            self._seq = self._last_seq()
        lines = []
        for alert in alerts:
            self._seq += 1
            record = UnroutedAlert(
                seq=self._seq,
                stored_at=stored_at,
                source=alert.source,
                notification_id=alert.notification_id,
                group_key=alert.group_key,
                status=alert.status,
                name=alert.name,
                severity=alert.severity,
                labels=alert.labels,
                summary=alert.summary,
            )
            lines.append(record.model_dump_json())
        data = ("\n".join(lines) + "\n").encode()
        if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
            os.replace(self.path, self.rotated)
        elif not _ends_with_newline(self.path):
            data = b"\n" + data  # close a line torn by a crash, so ours starts clean
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def summary(self, limit: int = 50) -> UnroutedSummary:
        records: list[UnroutedAlert] = []
        for path in (self.rotated, self.path):
            if not path.exists():
                continue
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        try:
                            records.append(UnroutedAlert.model_validate_json(line))
                        except ValueError:
                            continue  # a torn last line after a crash: skip it
        total = records[-1].seq if records else 0
        return UnroutedSummary(
            total=total,
            kept=len(records),
            by_source=dict(Counter(r.source.value for r in records).most_common()),
            by_name=dict(Counter(r.name for r in records).most_common(50)),
            latest=list(reversed(records[-limit:])) if limit > 0 else [],
        )


def _tail_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 65536))
        return [
            line.decode("utf-8", "replace") for line in handle.read().splitlines() if line.strip()
        ]


def _ends_with_newline(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return True
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
