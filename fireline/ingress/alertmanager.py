"""Prometheus Alertmanager's webhook (``version`` "4", as 0.25+ sends it) -> :class:`Alert`.

A notification carries every alert of one aggregation group. Each alert's identity is its
``fingerprint`` + ``startsAt`` + ``status``: the second member of an HA pair, a retry and a
repeat notification for an alert still firing all carry the same one, so they change nothing;
the same alert resolving (or firing again later) is a new notification.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fireline.ingress.alert import Alert, AlertSource, AlertStatus

MAX_ALERTS = 1000
"""Alerts per notification; Alertmanager's ``max_alerts`` truncates long before this."""


class _Loose(BaseModel):
    """Senders add fields over time; unknown ones are ignored, known ones are checked."""

    model_config = ConfigDict(extra="ignore")


class AmAlert(_Loose):
    status: AlertStatus = AlertStatus.firing
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None


class AlertmanagerPayload(_Loose):
    version: str = "4"
    groupKey: str = Field(max_length=4096)
    truncatedAlerts: int = 0
    status: AlertStatus = AlertStatus.firing
    receiver: str = Field(max_length=512)
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str | None = None
    alerts: list[AmAlert] = Field(min_length=1, max_length=MAX_ALERTS)


def labels_digest(labels: dict[str, str]) -> str:
    """What Alertmanager's fingerprint stands for, for senders that leave it out."""
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""


def normalise(payload: AlertmanagerPayload, received_at: datetime) -> list[Alert]:
    group_key = f"{payload.receiver}/{payload.groupKey}"
    out: list[Alert] = []
    for alert in payload.alerts:
        labels = {**payload.commonLabels, **alert.labels}
        annotations = {**payload.commonAnnotations, **alert.annotations}
        fingerprint = alert.fingerprint or labels_digest(labels)
        out.append(
            Alert(
                source=AlertSource.alertmanager,
                notification_id=(
                    f"alertmanager:{fingerprint}:{_iso(alert.startsAt)}:{alert.status.value}"
                ),
                group_key=group_key,
                status=alert.status,
                name=labels.get("alertname", payload.receiver),
                summary=annotations.get("summary", annotations.get("description", "")),
                severity=labels.get("severity"),
                labels=labels,
                annotations=annotations,
                fingerprint=fingerprint,
                starts_at=alert.startsAt,
                ends_at=alert.endsAt,
                generator_url=alert.generatorURL,
                received_at=received_at,
            )
        )
    return out
