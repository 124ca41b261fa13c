"""The deployment's decision key: the Ed25519 key the API signs decisions with.

Stored as one line of urlsafe base64 (the form ``fireline.identity.signing`` uses), mode 0600,
at ``Settings.decision_key_file`` (default ``DATA_DIR/identity/decision-key``). Every API
process of a deployment must read the same key, or decisions signed by one would be refused by
runs another started; extra public keys (a second deployment, a key being rotated out) go in
``Settings.decision_trusted_keys``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import structlog

from fireline.identity import signing
from fireline.identity.tokens import write_private
from fireline.runtime.settings import Settings

log = structlog.get_logger("fireline.identity.keys")


class DecisionKeyError(RuntimeError):
    """The configured key file is missing or does not hold an Ed25519 private key."""


@dataclass(frozen=True)
class DecisionKey:
    key_id: str
    private: str
    public: str

    def trusted(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The keys a run started now accepts: this one and any configured extras."""
        return {**(extra or {}), self.key_id: self.public}


def key_path(settings: Settings) -> Path:
    return settings.decision_key_file or settings.data_dir / "identity" / "decision-key"


def key_id_of(public: str) -> str:
    """Short, stable name of a public key (what a signature says it was made with)."""
    return "fl-" + hashlib.sha256(public.encode()).hexdigest()[:16]


def create_key(path: Path) -> DecisionKey:
    private, _ = signing.generate_key()
    write_private(path, private + "\n")
    return read_key(path)


def read_key(path: Path) -> DecisionKey:
    try:
        private = path.read_text().strip()
        public = signing.public_key_of(private)
    except FileNotFoundError:
        raise DecisionKeyError(f"decision key file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise DecisionKeyError(f"decision key file {path} is unreadable: {exc}") from None
    return DecisionKey(key_id=key_id_of(public), private=private, public=public)


def load_decision_key(settings: Settings) -> DecisionKey:
    """The configured key; without configuration, the one under the data folder, made if new.

    A configured file that is missing is an error (a typo must not silently mint a new key).
    """
    path = key_path(settings)
    if settings.decision_key_file is None and not path.exists():
        key = create_key(path)
        log.warning(
            "generated a decision signing key; every API process must share this file",
            path=str(path),
            key_id=key.key_id,
        )
        return key
    return read_key(path)
