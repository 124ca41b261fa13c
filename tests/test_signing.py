"""Signed decisions: a valid signature verifies; every tampering, expiry or unknown key is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fireline.identity.signing import (
    DecisionClaim,
    SignedDecision,
    generate_key,
    inputs_digest,
    public_key_of,
    sign_decision,
    verify_decision,
)
from fireline.messages import Approval, Decision, RunRequest

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _claim(**changes: object) -> DecisionClaim:
    base: dict[str, object] = {
        "workflow_id": "run-1",
        "step": "drain",
        "action": "approve",
        "person": "carol",
        "inputs_digest": inputs_digest({"pool": "edge", "weight": 0}),
        "expires_at": NOW + timedelta(minutes=5),
    }
    base.update(changes)
    return DecisionClaim.model_validate(base)


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_key()


class TestSigning:
    def test_valid_signature_verifies(self, keys: tuple[str, str]) -> None:
        """A decision signed by a trusted key verifies (None = no refusal)."""
        private, public = keys
        signed = sign_decision(_claim(), private, "api-1")
        assert verify_decision(signed, {"api-1": public}, NOW) is None

    def test_public_key_derives_from_private(self, keys: tuple[str, str]) -> None:
        private, public = keys
        assert public == public_key_of(private)

    def test_survives_the_json_round_trip(self, keys: tuple[str, str]) -> None:
        """What crosses Temporal as JSON still verifies on the other side."""
        private, public = keys
        signed = sign_decision(_claim(), private, "api-1")
        back = SignedDecision.model_validate_json(signed.model_dump_json())
        assert verify_decision(back, {"api-1": public}, NOW) is None

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("person", "mallory"),
            ("step", "promote"),
            ("action", "reject"),
            ("workflow_id", "run-2"),
            ("inputs_digest", inputs_digest({"pool": "other"})),
            ("expires_at", NOW + timedelta(days=1)),
        ],
    )
    def test_tampered_claim_is_refused(
        self, keys: tuple[str, str], field: str, value: object
    ) -> None:
        """Changing any signed field after signing breaks the signature."""
        private, public = keys
        signed = sign_decision(_claim(), private, "api-1")
        forged = signed.model_copy(update={"claim": signed.claim.model_copy(update={field: value})})
        assert verify_decision(forged, {"api-1": public}, NOW) == (
            "signature does not match the decision"
        )

    def test_expired_is_refused(self, keys: tuple[str, str]) -> None:
        private, public = keys
        signed = sign_decision(_claim(), private, "api-1")
        reason = verify_decision(signed, {"api-1": public}, NOW + timedelta(minutes=5))
        assert reason == "signed decision expired at 2026-12-01T10:05:00+00:00"

    def test_unknown_key_is_refused(self, keys: tuple[str, str]) -> None:
        private, public = keys
        signed = sign_decision(_claim(), private, "api-1")
        assert verify_decision(signed, {"other": public}, NOW) == (
            "signed with key 'api-1', which this run does not trust"
        )

    def test_signature_by_another_key_is_refused(self, keys: tuple[str, str]) -> None:
        """A key the attacker made themselves does not pass under a trusted key id."""
        _, public = keys
        attacker_private, _ = generate_key()
        signed = sign_decision(_claim(), attacker_private, "api-1")
        assert verify_decision(signed, {"api-1": public}, NOW) == (
            "signature does not match the decision"
        )

    def test_garbage_signature_is_refused(self, keys: tuple[str, str]) -> None:
        private, public = keys
        signed = sign_decision(_claim(), private, "api-1").model_copy(
            update={"signature": "!!!not base64"}
        )
        assert verify_decision(signed, {"api-1": public}, NOW) is not None

    def test_malformed_trusted_key_is_refused(self, keys: tuple[str, str]) -> None:
        private, _ = keys
        signed = sign_decision(_claim(), private, "api-1")
        assert verify_decision(signed, {"api-1": "AAAA"}, NOW) == "trusted key 'api-1' is malformed"

    def test_naive_expiry_is_rejected(self) -> None:
        """A claim without a time zone cannot be compared with the workflow's clock: refused."""
        with pytest.raises(ValidationError):
            _claim(expires_at=datetime(2026, 12, 1, 10, 5))

    def test_huge_person_is_rejected(self) -> None:
        with pytest.raises(ValidationError):
            _claim(person="x" * 10_000)


class TestDigest:
    def test_key_order_does_not_matter(self) -> None:
        assert inputs_digest({"a": 1, "b": 2}) == inputs_digest({"b": 2, "a": 1})

    def test_any_value_change_changes_it(self) -> None:
        assert inputs_digest({"a": 1}) != inputs_digest({"a": 2})


class TestMessages:
    def test_old_payloads_still_decode(self) -> None:
        """Messages recorded before signing existed decode with the new fields defaulted."""
        approval = Approval.model_validate({"step": "s", "approver": "alice"})
        decision = Decision.model_validate({"step": "s", "action": "retry", "by": "alice"})
        assert approval.signed is None
        assert decision.signed is None

    def test_run_request_defaults(self) -> None:
        request = RunRequest.model_validate(
            {"plan": {"name": "p", "nodes": []}, "requested_by": "alice"}
        )
        assert request.trusted_keys == {}
        assert request.requested_by_verified is False
