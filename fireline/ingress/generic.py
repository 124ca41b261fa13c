"""The generic JSON alert, for senders Fireline has no parser for (scripts, CI, cron).

``POST /v1/alerts`` with::

    {"title": "disk full on db-1",          required
     "status": "firing" | "resolved",       default firing
     "dedup_key": "db-1/disk",              groups notifications into one incident (default: title)
     "id": "...",                           this notification's identity (default: body digest)
     "severity": "critical", "summary": "...",
     "labels": {"service": "db"}, "annotations": {"runbook": "..."},
     "starts_at": "2026-01-01T00:00:00Z", "ends_at": null, "url": "https://..."}

Unknown fields are ignored, so a sender may add its own.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from fireline.ingress.alert import MAX_LABELS, Alert, AlertSource, AlertStatus
from fireline.ingress.alertmanager import _Loose


class GenericPayload(_Loose):
    title: str = Field(min_length=1, max_length=512)
    status: AlertStatus = AlertStatus.firing
    dedup_key: str | None = Field(default=None, min_length=1, max_length=1024)
    id: str | None = Field(default=None, min_length=1, max_length=256)
    severity: str | None = Field(default=None, max_length=64)
    summary: str = Field(default="", max_length=4096)
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    url: str | None = Field(default=None, max_length=2048)


def normalise(payload: GenericPayload, received_at: datetime, body_digest: str) -> list[Alert]:
    return [
        Alert(
            source=AlertSource.generic,
            notification_id=f"generic:{payload.id or body_digest}",
            group_key=payload.dedup_key or payload.title,
            status=payload.status,
            name=payload.labels.get("alertname", payload.title),
            summary=payload.summary,
            severity=payload.severity or payload.labels.get("severity"),
            labels=payload.labels,
            annotations=payload.annotations,
            fingerprint=(payload.dedup_key or payload.title)[:256],  # what fires and resolves
            starts_at=payload.starts_at,
            ends_at=payload.ends_at,
            generator_url=payload.url,
            received_at=received_at,
        )
    ]
