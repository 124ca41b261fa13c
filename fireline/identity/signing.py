"""Signed decisions: Ed25519 over a decision's claim, checked by the workflow itself.

The API proves who is acting (token or OIDC) and signs what that person decided; the workflow
verifies the signature with public keys it was given at start (``RunRequest.trusted_keys``).
So a signal sent straight to Temporal claiming "carol" carries no valid signature and cannot
pass a gate whose policy requires a verified identity.

Keys are 32 raw bytes each, written as urlsafe base64 (no PEM): ``generate_key()`` returns
``(private, public)``, both in that form, and ``public_key_of(private)`` derives the second from
the first. Only public keys ever enter workflow history; private keys stay with the API.

Pure (no I/O, no clock of its own: ``now`` is passed in), so workflow code may import it
through ``workflow.unsafe.imports_passed_through()``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DecisionAction = Literal[
    "approve", "reject", "retry", "skip", "compensate", "cancel", "ack", "command"
]

_NAME = 200
"""Longest person, step, workflow id or key id a claim may carry: bounds hostile input."""


class DecisionClaim(BaseModel):
    """What a person decided, exactly as signed: which run, which step, what, on which inputs."""

    model_config = ConfigDict(frozen=True)

    workflow_id: str = Field(min_length=1, max_length=1000)
    step: str = Field(max_length=_NAME)
    action: DecisionAction
    person: str = Field(min_length=1, max_length=_NAME)
    inputs_digest: str = Field(default="", max_length=64)
    """``inputs_digest(resolved inputs)`` of the step decided on; "" where no inputs apply."""
    expires_at: AwareDatetime
    """After this instant the workflow refuses the decision: a signature cannot be replayed
    into a later, different situation."""

    def canonical(self) -> bytes:
        """The bytes that are signed: canonical JSON (sorted keys, no spaces, UTC 'Z' times)."""
        return _canonical(self.model_dump(mode="json"))


class SignedDecision(BaseModel):
    claim: DecisionClaim
    key_id: str = Field(min_length=1, max_length=_NAME)
    signature: str = Field(min_length=1, max_length=200)
    """urlsafe base64 of the Ed25519 signature over ``claim.canonical()``."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a step's resolved inputs (what an approval binds to)."""
    return hashlib.sha256(_canonical(dict(inputs))).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode())


def generate_key() -> tuple[str, str]:
    """A new key pair ``(private, public)``, each 32 raw bytes as urlsafe base64."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return _b64(private), public_key_of(_b64(private))


def _private(private_key: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_unb64(private_key))


def public_key_of(private: str) -> str:
    """The public half of a private key, in the form ``trusted_keys`` holds."""
    return _b64(_private(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_decision(claim: DecisionClaim, private_key: str, key_id: str) -> SignedDecision:
    signature = _private(private_key).sign(claim.canonical())
    return SignedDecision(claim=claim, key_id=key_id, signature=_b64(signature))


def verify_decision(
    signed: SignedDecision, trusted_keys: Mapping[str, str], now: datetime
) -> str | None:
    """None when the signature is valid, by a trusted key, and not expired; else why not.

    The caller still checks that the claim is about what it is deciding (workflow, step,
    action, person, inputs digest): this function knows only the cryptography and the clock.
    """
    public = trusted_keys.get(signed.key_id)
    if public is None:
        return f"signed with key '{signed.key_id}', which this run does not trust"
    try:
        key = Ed25519PublicKey.from_public_bytes(_unb64(public))
    except (ValueError, binascii.Error):
        return f"trusted key '{signed.key_id}' is malformed"
    try:
        signature = _unb64(signed.signature)
    except (ValueError, binascii.Error):
        return "signature is not valid base64"
    try:
        key.verify(signature, signed.claim.canonical())
    except InvalidSignature:
        return "signature does not match the decision"
    if now >= signed.claim.expires_at:
        return f"signed decision expired at {signed.claim.expires_at.isoformat()}"
    return None
