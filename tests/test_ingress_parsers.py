"""Each sender's payload, as the sender writes it, normalised into Alerts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fireline.ingress import alertmanager, generic, grafana, pagerduty
from fireline.ingress.alert import AlertSource, AlertStatus

FIXTURES = Path(__file__).parent / "fixtures" / "alerts"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


class TestAlertmanager:
    def test_one_alert_per_alert(self) -> None:
        alerts = alertmanager.normalise(
            alertmanager.AlertmanagerPayload.model_validate(load("alertmanager_firing.json")), NOW
        )
        assert [a.labels["instance"] for a in alerts] == ["api-7f9c:8080", "api-c21d:8080"]
        first = alerts[0]
        assert first.source is AlertSource.alertmanager
        assert first.status is AlertStatus.firing
        assert first.name == "HighErrorRate"
        assert first.severity == "critical"
        assert first.summary == "checkout-api returns 5xx"
        assert first.group_key.startswith("fireline/{}/")
        assert first.notification_id == (
            "alertmanager:5ef77f1f8a3ecfa4:2026-11-30T21:14:05.123000+00:00:firing"
        )

    def test_resolution_is_a_new_notification(self) -> None:
        fired = alertmanager.normalise(
            alertmanager.AlertmanagerPayload.model_validate(load("alertmanager_firing.json")), NOW
        )[0]
        resolved = alertmanager.normalise(
            alertmanager.AlertmanagerPayload.model_validate(load("alertmanager_resolved.json")),
            NOW,
        )[0]
        assert resolved.status is AlertStatus.resolved
        assert resolved.fingerprint == fired.fingerprint
        assert resolved.group_key == fired.group_key
        assert resolved.notification_id != fired.notification_id

    def test_extra_fields_ignored(self) -> None:
        doc = load("alertmanager_firing.json")
        doc["newTopLevelField"] = {"x": 1}
        doc["alerts"][0]["somethingNew"] = [1, 2]
        alerts = alertmanager.normalise(alertmanager.AlertmanagerPayload.model_validate(doc), NOW)
        assert len(alerts) == 2

    def test_missing_group_key_names_the_field(self) -> None:
        doc = load("alertmanager_firing.json")
        del doc["groupKey"]
        with pytest.raises(ValidationError) as info:
            alertmanager.AlertmanagerPayload.model_validate(doc)
        assert info.value.errors()[0]["loc"] == ("groupKey",)

    def test_no_fingerprint_falls_back_to_labels(self) -> None:
        doc = load("alertmanager_firing.json")
        for alert in doc["alerts"]:
            del alert["fingerprint"]
        one = alertmanager.normalise(alertmanager.AlertmanagerPayload.model_validate(doc), NOW)
        two = alertmanager.normalise(alertmanager.AlertmanagerPayload.model_validate(doc), NOW)
        assert one[0].notification_id == two[0].notification_id
        assert one[0].notification_id != one[1].notification_id


class TestGrafana:
    def test_firing_alert(self) -> None:
        [alert] = grafana.normalise(
            grafana.GrafanaPayload.model_validate(load("grafana_firing.json")), NOW
        )
        assert alert.source is AlertSource.grafana
        assert alert.ends_at is None  # 0001-01-01T00:00:00Z means "still firing"
        assert alert.group_key.startswith("1/{}/")
        assert alert.annotations["silence_url"].startswith("https://grafana.example.com/")
        assert alert.annotations["image_url"].endswith(".png")
        assert "value=94.2" in alert.annotations["value_string"]
        assert alert.notification_id.startswith("grafana:1:c6eadffa33fcdf37:")


class TestPagerDuty:
    @pytest.mark.parametrize(
        ("name", "status"),
        [
            ("pagerduty_triggered.json", AlertStatus.firing),
            ("pagerduty_acknowledged.json", AlertStatus.acknowledged),
            ("pagerduty_resolved.json", AlertStatus.resolved),
        ],
    )
    def test_event_types(self, name: str, status: AlertStatus) -> None:
        payload = pagerduty.PagerDutyPayload.model_validate(load(name))
        [alert] = pagerduty.normalise(payload, NOW, None, "digest")
        assert alert.status is status
        assert alert.group_key == "Q1T6BXOJQX0G2F"
        assert alert.labels["service"] == "Payments API"
        assert alert.labels["priority"] == "P1"
        assert alert.notification_id == f"pagerduty:{payload.event.id}"
        # what fires and resolves is the PagerDuty incident: one identity across event types
        assert alert.fingerprint == "Q1T6BXOJQX0G2F"

    def test_reopened_fires_and_others_are_recorded(self) -> None:
        doc = load("pagerduty_triggered.json")
        doc["event"]["event_type"] = "incident.reopened"
        [alert] = pagerduty.normalise(
            pagerduty.PagerDutyPayload.model_validate(doc), NOW, None, "d"
        )
        assert alert.status is AlertStatus.firing
        doc["event"]["event_type"] = "incident.priority_updated"
        [alert] = pagerduty.normalise(
            pagerduty.PagerDutyPayload.model_validate(doc), NOW, None, "d"
        )
        assert alert.status is AlertStatus.other
        assert alert.event_type == "incident.priority_updated"

    def test_webhook_id_when_event_id_missing(self) -> None:
        doc = load("pagerduty_triggered.json")
        del doc["event"]["id"]
        [alert] = pagerduty.normalise(
            pagerduty.PagerDutyPayload.model_validate(doc), NOW, "hook-123", "d"
        )
        assert alert.notification_id == "pagerduty:hook-123"


class TestGeneric:
    def test_documented_fields(self) -> None:
        [alert] = generic.normalise(
            generic.GenericPayload.model_validate(load("generic.json")), NOW, "abc"
        )
        assert alert.source is AlertSource.generic
        assert alert.group_key == "orders-db/backup"
        assert alert.name == "BackupFailed"
        assert alert.severity == "error"
        assert alert.notification_id == "generic:abc"
        assert alert.fingerprint == "orders-db/backup"

    def test_title_required(self) -> None:
        with pytest.raises(ValidationError) as info:
            generic.GenericPayload.model_validate({"status": "firing"})
        assert info.value.errors()[0]["loc"] == ("title",)

    def test_unknown_status_refused(self) -> None:
        with pytest.raises(ValidationError) as info:
            generic.GenericPayload.model_validate({"title": "x", "status": "exploded"})
        assert info.value.errors()[0]["loc"] == ("status",)
