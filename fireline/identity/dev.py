"""The embedded default's identity set-up: a signing key and a first credential, made once.

``fireline up`` on the embedded dev server calls :func:`ensure_dev_identity`, so a newcomer's
``fireline run try-me`` and ``fireline approve`` work with no key or token set-up: the key goes
to ``DATA_DIR/identity/decision-key``, a token for the development person (``FIRELINE_DEV_PERSON``,
default the first member of the catalog's lowest-tier role) to ``DATA_DIR/identity/dev-credential``,
which the CLI picks up when it talks to a loopback API. Both files are mode 0600.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from fireline.identity.keys import load_decision_key
from fireline.identity.people import People
from fireline.identity.tokens import TokenStore, write_private
from fireline.runtime.settings import Settings

log = structlog.get_logger("fireline.identity.dev")

DEV_MODE_ENV = "FIRELINE_DEV_MODE"


def dev_credential_path(settings: Settings) -> Path:
    return settings.data_dir / "identity" / "dev-credential"


@dataclass(frozen=True)
class DevIdentity:
    person: str | None
    credential_file: Path | None
    key_id: str
    created: tuple[str, ...]
    """What this start made (empty when everything existed already)."""


def _ensure_credential(settings: Settings, person: str) -> bool:
    """A valid dev credential for ``person`` in its file; True when one was issued now."""
    path = dev_credential_path(settings)
    store = TokenStore.of(settings)
    if path.exists() and store.person_of(path.read_text().strip()) == person:
        return False
    token, _ = store.issue(person, label="development credential (fireline up)")
    write_private(path, token + "\n")
    return True


def ensure_dev_identity(settings: Settings) -> Settings:
    """Settings in development mode, with the key and the dev credential made if missing.

    An API started in a process of its own needs ``dev_mode`` passed on (``DEV_MODE_ENV`` in
    its environment); without it the API still works, it only refuses credential-less calls,
    and the CLI sends the development credential anyway.
    """
    created: list[str] = []
    key_file = settings.decision_key_file or settings.data_dir / "identity" / "decision-key"
    existed = key_file.exists()
    key = load_decision_key(settings)
    if not existed:
        created.append(f"decision signing key {key.key_id} in {key_file}")
    person = settings.dev_person or People.of(settings).first()
    credential: Path | None = None
    if person is None:
        log.warning("no person in the catalog: no development credential was made")
    else:
        credential = dev_credential_path(settings)
        if _ensure_credential(settings, person):
            created.append(f"a development credential for {person} in {credential}")
    for what in created:
        log.debug(f"development mode: created {what}")
    if created:
        from rich.console import Console

        Console(stderr=True, highlight=False).print(
            "[bold]Fireline development mode[/]: created "
            + "; ".join(created)
            + ". The CLI uses the credential automatically; see `fireline token --help`.",
            soft_wrap=True,
        )
    identity = DevIdentity(person, credential, key.key_id, tuple(created))
    log.debug("development identity ready", person=identity.person, key_id=identity.key_id)
    return settings.model_copy(update={"dev_mode": True})
