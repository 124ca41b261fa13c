"""PagerDuty v3 webhooks -> :class:`Alert` (one event per delivery).

``incident.triggered`` opens or joins the incident keyed by the PagerDuty incident id,
``incident.acknowledged`` acknowledges, ``incident.resolved`` resolves, ``incident.reopened``
fires again; every other event type is recorded with status ``other``. The identity is
``event.id`` (PagerDuty redelivers for about 20 minutes with the same id and the same
``X-Webhook-Id``), so a redelivery changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.ingress.alertmanager import _Loose

STATUS_BY_EVENT: dict[str, AlertStatus] = {
    "incident.triggered": AlertStatus.firing,
    "incident.reopened": AlertStatus.firing,
    "incident.acknowledged": AlertStatus.acknowledged,
    "incident.resolved": AlertStatus.resolved,
}


class PdReference(_Loose):
    id: str | None = Field(default=None, max_length=128)
    summary: str | None = Field(default=None, max_length=1024)
    html_url: str | None = Field(default=None, max_length=2048)


class PdData(_Loose):
    id: str | None = Field(default=None, max_length=128)
    type: str | None = None
    html_url: str | None = Field(default=None, max_length=2048)
    number: int | None = None
    status: str | None = None
    incident_key: str | None = Field(default=None, max_length=512)
    title: str | None = Field(default=None, max_length=1024)
    urgency: str | None = None
    service: PdReference | None = None
    priority: PdReference | None = None
    escalation_policy: PdReference | None = None
    created_at: datetime | None = None


class PdEvent(_Loose):
    id: str | None = Field(default=None, min_length=1, max_length=128)
    event_type: str = Field(min_length=1, max_length=128)
    resource_type: str = Field(default="", max_length=128)
    occurred_at: datetime | None = None
    agent: dict[str, Any] | None = None
    data: PdData = Field(default_factory=PdData)


class PagerDutyPayload(_Loose):
    event: PdEvent


def normalise(
    payload: PagerDutyPayload, received_at: datetime, webhook_id: str | None, body_digest: str
) -> list[Alert]:
    """``event.id`` is the identity; without it ``X-Webhook-Id``, else the body's digest."""
    event, data = payload.event, payload.event.data
    identity = event.id or webhook_id or body_digest
    labels: dict[str, str] = {"event_type": event.event_type}
    for name, value in (
        ("resource_type", event.resource_type),
        ("incident_id", data.id),
        ("incident_key", data.incident_key),
        ("urgency", data.urgency),
        ("service", data.service.summary if data.service else None),
        ("service_id", data.service.id if data.service else None),
        ("priority", data.priority.summary if data.priority else None),
        ("escalation_policy", data.escalation_policy.summary if data.escalation_policy else None),
    ):
        if value:
            labels[name] = value
    annotations = {"html_url": data.html_url} if data.html_url else {}
    status = STATUS_BY_EVENT.get(event.event_type, AlertStatus.other)
    return [
        Alert(
            source=AlertSource.pagerduty,
            notification_id=f"pagerduty:{identity[:200]}",
            group_key=data.id or identity[:200],
            status=status,
            name=data.title or event.event_type,
            summary=data.title or "",
            severity=data.urgency,
            labels=labels,
            annotations=annotations,
            fingerprint=(data.id or identity)[:256],  # the PD incident: what fires and resolves
            starts_at=data.created_at,
            generator_url=data.html_url,
            event_type=event.event_type,
            received_at=received_at,
        )
    ]
