"""Who the catalog knows: a credential may prove only a person listed there.

People come from the catalog's ``people`` (once it has them) and from the members of its
roles, so a token or an OIDC login for someone the catalog has never heard of is refused (403)
even when the credential itself is genuine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fireline.catalog.model import CATALOG_FILE, Catalog, load_catalog
from fireline.errors import CompileError
from fireline.runtime.settings import Settings


def known_people(catalog: Catalog) -> set[str]:
    """Every person the catalog names, as a person or as a role member."""
    names: set[str] = set()
    people: Any = getattr(catalog, "people", None)
    if isinstance(people, Mapping):
        names |= {str(name) for name in people}
    elif isinstance(people, Iterable) and not isinstance(people, str):
        names |= {str(getattr(p, "name", p)) for p in people}
    for role in catalog.roles.values():
        names |= set(role.members or ())
    return names


def catalog_path(settings: Settings) -> Path:
    return settings.playbooks_dir / CATALOG_FILE


class People:
    """The catalog's people, re-read when the catalog file changes (no restart to add someone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._names: set[str] = set()

    @classmethod
    def of(cls, settings: Settings) -> People:
        return cls(catalog_path(settings))

    def names(self) -> set[str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return set()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._names = known_people(load_catalog(self.path))
            except CompileError:
                # A catalog being edited keeps the last good roster rather than locking out.
                return set(self._names)
            self._stamp = stamp
        return set(self._names)

    def first(self) -> str | None:
        """The first member of the lowest-tier role that lists members (the dev person)."""
        if not self.path.exists():
            return None
        catalog = load_catalog(self.path)
        roles = sorted((r for r in catalog.roles.values() if r.members), key=lambda r: r.tier)
        return roles[0].members[0] if roles and roles[0].members else None

    def __contains__(self, person: object) -> bool:
        return isinstance(person, str) and person in self.names()
