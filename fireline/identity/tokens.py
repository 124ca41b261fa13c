"""API tokens: issued once in clear, stored only as hashes, each bound to one catalog person.

A token reads ``fl_<id>_<secret>``: ``id`` (8 hex) lets the store find the one record to
compare against and lets ``fireline token revoke ID`` name it without the secret; ``secret`` is
32 random bytes. SHA-256 is the right hash here, not bcrypt/argon2: those slow down guessing a
low-entropy password, but a 256-bit random secret cannot be guessed, so a fast hash loses
nothing and keeps every request cheap. Comparison is constant time (``hmac.compare_digest``).

The store is a JSON file (``Settings.tokens_file``, default ``DATA_DIR/identity/tokens.json``),
written atomically with mode 0600; nothing in it lets anyone act.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from fireline.runtime.settings import Settings

PREFIX = "fl_"
_TOKEN = re.compile(r"^fl_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
MAX_TOKEN_LENGTH = 4096
"""Longest bearer credential looked at (OIDC JWTs included); longer ones are refused unread."""


class TokenRecord(BaseModel):
    """One issued token, as stored: never the token itself."""

    id: str = Field(pattern=r"^[0-9a-f]{8}$")
    person: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str = Field(default="", max_length=200)
    created_at: datetime
    expires_at: datetime | None = None
    """None: valid until revoked."""


class TokenFile(BaseModel):
    version: int = 1
    tokens: list[TokenRecord] = Field(default_factory=list)


def tokens_path(settings: Settings) -> Path:
    return settings.tokens_file or settings.data_dir / "identity" / "tokens.json"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(credential: str) -> bool:
    """A Fireline token rather than an OIDC JWT (which has two dots and no ``fl_`` prefix)."""
    return credential.startswith(PREFIX)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600 (the folder made 0700 if new)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TokenStore:
    """The hashed tokens of one deployment; re-read when the file changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._data = TokenFile()

    @classmethod
    def of(cls, settings: Settings) -> TokenStore:
        return cls(tokens_path(settings))

    def _load(self) -> TokenFile:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._data = None, TokenFile()
            return self._data
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._data = TokenFile.model_validate_json(self.path.read_text())
            self._stamp = stamp
        return self._data

    def _save(self, data: TokenFile) -> None:
        write_private(self.path, data.model_dump_json(indent=2) + "\n")
        self._stamp = None

    def records(self) -> list[TokenRecord]:
        return list(self._load().tokens)

    def issue(
        self, person: str, label: str = "", *, valid_for: timedelta | None = None
    ) -> tuple[str, TokenRecord]:
        """A new token for ``person``: the clear text (shown once) and what is stored."""
        data = self._load().model_copy(deep=True)
        taken = {r.id for r in data.tokens}
        token_id = secrets.token_hex(4)
        while token_id in taken:
            token_id = secrets.token_hex(4)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = datetime.now(UTC)
        record = TokenRecord(
            id=token_id,
            person=person,
            sha256=digest(token),
            label=label,
            created_at=now,
            expires_at=now + valid_for if valid_for is not None else None,
        )
        data.tokens.append(record)
        self._save(data)
        return token, record

    def revoke(self, token_id: str) -> TokenRecord | None:
        """Remove one token by its id; returns what was removed, or None."""
        data = self._load().model_copy(deep=True)
        found = next((r for r in data.tokens if r.id == token_id), None)
        if found is not None:
            data.tokens = [r for r in data.tokens if r.id != token_id]
            self._save(data)
        return found

    def person_of(self, token: str, now: datetime | None = None) -> str | None:
        """The person a presented token proves; None for an unknown, expired or malformed one."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        match = _TOKEN.match(token)
        if match is None:
            return None
        wanted = digest(token)
        now = now or datetime.now(UTC)
        person: str | None = None
        for record in self._load().tokens:
            # Every record with the id is compared, in constant time per comparison.
            if record.id == match.group(1) and hmac.compare_digest(record.sha256, wanted):
                expired = record.expires_at is not None and now >= record.expires_at
                person = None if expired else record.person
        return person


def dump_records(records: list[TokenRecord]) -> str:
    return json.dumps([r.model_dump(mode="json", exclude={"sha256"}) for r in records], indent=2)
