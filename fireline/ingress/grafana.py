"""Grafana alerting's webhook contact point (``version`` "1") -> :class:`Alert`.

The body is Alertmanager's shape plus ``orgId``, ``title``, ``state``, ``message`` and, per
alert, ``values``, ``valueString``, ``silenceURL``, ``dashboardURL``, ``panelURL`` and
``imageURL``. While an alert fires its ``endsAt`` is the zero time ``0001-01-01T00:00:00Z``,
which is kept out of the normalised alert (no end yet). Identity as for Alertmanager, within
the organisation.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.ingress.alertmanager import MAX_ALERTS, AmAlert, _iso, _Loose, labels_digest


class GrafanaAlert(AmAlert):
    values: dict[str, float | int | None] | None = None
    valueString: str | None = None
    silenceURL: str | None = None
    dashboardURL: str | None = None
    panelURL: str | None = None
    imageURL: str | None = None


class GrafanaPayload(_Loose):
    version: str = "1"
    orgId: int = 1
    receiver: str = Field(default="", max_length=512)
    groupKey: str = Field(max_length=4096)
    truncatedAlerts: int = 0
    status: AlertStatus = AlertStatus.firing
    title: str = Field(default="", max_length=4096)
    message: str = Field(default="", max_length=65536)
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str | None = None
    alerts: list[GrafanaAlert] = Field(min_length=1, max_length=MAX_ALERTS)


def _end(moment: datetime | None) -> datetime | None:
    """Grafana's zero time (year 1) means "not ended"."""
    return None if moment is None or moment.year <= 1 else moment


def normalise(payload: GrafanaPayload, received_at: datetime) -> list[Alert]:
    group_key = f"{payload.orgId}/{payload.groupKey}"
    out: list[Alert] = []
    for alert in payload.alerts:
        labels = {**payload.commonLabels, **alert.labels}
        annotations = {**payload.commonAnnotations, **alert.annotations}
        if alert.valueString:
            annotations.setdefault("value_string", alert.valueString[:4096])
        for name, url in (
            ("silence_url", alert.silenceURL),
            ("dashboard_url", alert.dashboardURL),
            ("panel_url", alert.panelURL),
            ("image_url", alert.imageURL),
        ):
            if url:
                annotations.setdefault(name, url[:2048])
        fingerprint = alert.fingerprint or labels_digest(labels)
        out.append(
            Alert(
                source=AlertSource.grafana,
                notification_id=(
                    f"grafana:{payload.orgId}:{fingerprint}:{_iso(alert.startsAt)}:"
                    f"{alert.status.value}"
                ),
                group_key=group_key,
                status=alert.status,
                name=labels.get("alertname", payload.title or payload.receiver),
                summary=annotations.get("summary", annotations.get("description", "")),
                severity=labels.get("severity"),
                labels=labels,
                annotations=annotations,
                fingerprint=fingerprint,
                starts_at=alert.startsAt,
                ends_at=_end(alert.endsAt),
                generator_url=alert.generatorURL,
                received_at=received_at,
            )
        )
    return out
