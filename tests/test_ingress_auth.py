"""Credential schemes per source: bearer, basic, Grafana HMAC with its replay window, PagerDuty."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import ValidationError

from fireline.ingress.auth import Unauthorized, parse_auth

BODY = b'{"status":"firing"}'
NOW = 1_800_000_000.0


def table(**conf: dict[str, object]) -> object:
    return parse_auth(conf, open_by_default=False)


def sign(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = parse_auth(
    {
        "generic": {"kind": "bearer", "tokens": ["old-token", "new-token"]},
        "alertmanager": {"kind": "basic", "users": {"am": "pw"}},
        "grafana": {
            "kind": "hmac",
            "secrets": ["g-secret"],
            "timestamp_header": "X-Grafana-Alerting-Signature-Timestamp",
            "window_seconds": 300,
        },
        "pagerduty": {"kind": "pagerduty", "secrets": ["pd-old", "pd-new"]},
        "read": {"kind": "none"},
    },
    open_by_default=False,
)


def refused(source: str, headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(Unauthorized) as info:
        AUTH.check(source, headers, body, now=NOW)
    return str(info.value)


class TestBearer:
    def test_any_listed_token(self) -> None:
        """Both tokens pass, so a token can be rotated without refusals."""
        AUTH.check("generic", {"Authorization": "Bearer old-token"}, BODY, now=NOW)
        AUTH.check("generic", {"authorization": "bearer new-token"}, BODY, now=NOW)

    def test_missing_and_wrong(self) -> None:
        assert "missing" in refused("generic", {})
        assert "wrong" in refused("generic", {"Authorization": "Bearer nope"})
        assert "missing" in refused("generic", {"Authorization": "Basic abc"})


class TestBasic:
    def test_alertmanager_basic_auth(self) -> None:
        AUTH.check("alertmanager", {"Authorization": basic("am", "pw")}, BODY, now=NOW)

    def test_wrong_password_unknown_user_garbage(self) -> None:
        assert "wrong" in refused("alertmanager", {"Authorization": basic("am", "pX")})
        assert "wrong" in refused("alertmanager", {"Authorization": basic("eve", "pw")})
        assert "malformed" in refused("alertmanager", {"Authorization": "Basic !!!"})
        no_colon = "Basic " + base64.b64encode(b"ampw").decode()
        assert "wrong" in refused("alertmanager", {"Authorization": no_colon})


class TestGrafanaHmac:
    def headers(self, stamp: str, signature: str) -> dict[str, str]:
        return {
            "X-Grafana-Alerting-Signature": signature,
            "X-Grafana-Alerting-Signature-Timestamp": stamp,
        }

    def test_signed_timestamp_and_body(self) -> None:
        stamp = str(int(NOW))
        good = sign("g-secret", f"{stamp}:".encode() + BODY)
        AUTH.check("grafana", self.headers(stamp, good), BODY, now=NOW)

    def test_replay_window(self) -> None:
        """Inside the window passes; a correctly signed but old (or future) request does not."""
        for offset in (-299, 299):
            stamp = str(int(NOW + offset))
            AUTH.check(
                "grafana",
                self.headers(stamp, sign("g-secret", f"{stamp}:".encode() + BODY)),
                BODY,
                now=NOW,
            )
        for offset in (-301, 301):
            stamp = str(int(NOW + offset))
            signature = sign("g-secret", f"{stamp}:".encode() + BODY)
            assert "replay window" in refused("grafana", self.headers(stamp, signature))

    def test_tampered_wrong_secret_missing(self) -> None:
        stamp = str(int(NOW))
        good = sign("g-secret", f"{stamp}:".encode() + BODY)
        assert "does not match" in refused("grafana", self.headers(stamp, good), BODY + b" ")
        bad = sign("other", f"{stamp}:".encode() + BODY)
        assert "does not match" in refused("grafana", self.headers(stamp, bad))
        # the timestamp is part of what is signed: moving it breaks the signature
        moved = str(int(NOW) + 1)
        assert "does not match" in refused("grafana", self.headers(moved, good))
        assert "missing" in refused("grafana", {"X-Grafana-Alerting-Signature": good})
        assert "missing" in refused("grafana", {})
        assert "Unix seconds" in refused("grafana", self.headers("yesterday", good))

    def test_body_only_when_no_timestamp_header(self) -> None:
        auth = parse_auth(
            {"grafana": {"kind": "hmac", "secrets": ["s"], "timestamp_header": None}},
            open_by_default=False,
        )
        auth.check("grafana", {"X-Grafana-Alerting-Signature": sign("s", BODY)}, BODY, now=NOW)


class TestPagerDuty:
    def test_rotation_several_signatures(self) -> None:
        """PagerDuty lists one signature per active secret; any match passes."""
        header = f"v1={sign('pd-unknown', BODY)},v1={sign('pd-new', BODY)}"
        AUTH.check("pagerduty", {"X-PagerDuty-Signature": header}, BODY, now=NOW)
        AUTH.check("pagerduty", {"x-pagerduty-signature": f"v1={sign('pd-old', BODY)}"}, BODY)

    def test_wrong_missing_other_version(self) -> None:
        assert "matches" in refused(
            "pagerduty", {"X-PagerDuty-Signature": f"v1={sign('nope', BODY)}"}
        )
        assert "missing" in refused("pagerduty", {})
        assert "missing" in refused(
            "pagerduty", {"X-PagerDuty-Signature": f"v2={sign('pd-new', BODY)}"}
        )
        assert "matches" in refused(
            "pagerduty", {"X-PagerDuty-Signature": f"v1={sign('pd-new', BODY)}"}, BODY + b"x"
        )


class TestDefaults:
    def test_unconfigured_source_is_closed(self) -> None:
        """Outside dev mode a source nobody configured refuses everything."""
        auth = parse_auth({}, open_by_default=False)
        with pytest.raises(Unauthorized, match="no credentials are configured"):
            auth.check("generic", {"Authorization": "Bearer anything"}, BODY)

    def test_dev_mode_is_open(self) -> None:
        parse_auth({}, open_by_default=True).check("generic", {}, BODY)

    def test_typo_fails_at_load(self) -> None:
        with pytest.raises(ValidationError):
            parse_auth({"generic": {"kind": "bearer", "token": "x"}}, open_by_default=False)
        with pytest.raises(ValidationError):
            parse_auth({"generic": {"kind": "beerer"}}, open_by_default=False)
