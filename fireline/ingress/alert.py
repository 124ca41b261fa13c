"""The one shape every alert takes once it is inside Fireline, whichever sender it came from.

Alertmanager, Grafana, PagerDuty and the generic webhook each have a parser that turns their
payload into :class:`Alert`; routing, dedupe and the incident workflow only ever see this
model, so adding a sender never touches them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

MAX_LABELS = 64
"""Labels and annotations kept per alert; senders rarely send more than a dozen."""


class AlertSource(StrEnum):
    alertmanager = "alertmanager"
    grafana = "grafana"
    pagerduty = "pagerduty"
    generic = "generic"


class AlertStatus(StrEnum):
    firing = "firing"
    resolved = "resolved"
    acknowledged = "acknowledged"
    """PagerDuty only: a responder acknowledged the incident there."""
    other = "other"
    """An event the source sends that Fireline records but does not act on."""


class Alert(BaseModel):
    """One alert (or PagerDuty event) as a sender reported it, normalised.

    ``notification_id`` is its identity for exact dedupe: a redelivery of the same notification
    (a retry, the second member of an Alertmanager HA pair) carries the same id and changes
    nothing. ``group_key`` is what the sender groups by (Alertmanager ``receiver`` +
    ``groupKey``, Grafana ``orgId`` + ``groupKey``, the PagerDuty incident id, the generic
    ``dedup_key``); the route turns it into the incident key.
    """

    source: AlertSource
    notification_id: str = Field(max_length=512)
    group_key: str = Field(max_length=1024)
    status: AlertStatus
    name: str = Field(max_length=512, description="alertname, rule title or incident title")
    summary: str = Field(default="", max_length=4096)
    severity: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    fingerprint: str | None = Field(default=None, max_length=256)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    generator_url: str | None = Field(default=None, max_length=2048)
    event_type: str | None = Field(
        default=None, max_length=128, description="PagerDuty event.event_type, as sent"
    )
    received_at: datetime
