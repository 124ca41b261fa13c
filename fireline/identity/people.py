"""Who the catalog knows: a credential may prove only a person listed there.

People are the catalog's roster (its ``people`` and the members of its roles), so a token or
an OIDC login for someone the catalog has never heard of is refused (403) even when the
credential itself is genuine. The catalog is re-read when its file changes, so adding or
removing a person needs no restart.
"""

from __future__ import annotations

from pathlib import Path

from fireline.catalog.model import CATALOG_FILE, Catalog, load_catalog
from fireline.errors import CompileError
from fireline.runtime.settings import Settings


def known_people(catalog: Catalog) -> set[str]:
    return set(catalog.roster())


def first_person(catalog: Catalog) -> str | None:
    """The first approver of the lowest-tier role naming any, in catalog order (the dev person)."""
    for name, role in sorted(catalog.roles.items(), key=lambda item: item[1].tier):
        approvers = catalog.approvers(name)
        if approvers:
            listed = role.members or approvers
            return listed[0]
    return None


def catalog_path(settings: Settings) -> Path:
    return settings.playbooks_dir / CATALOG_FILE


class People:
    """The catalog's people, re-read when the catalog file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._catalog: Catalog | None = None

    @classmethod
    def of(cls, settings: Settings) -> People:
        return cls(catalog_path(settings))

    def catalog(self) -> Catalog | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._catalog = None, None
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._catalog = load_catalog(self.path)
            except CompileError:
                # A catalog being edited keeps the last good roster rather than locking out;
                # the first read of a broken catalog is an error the caller reports.
                if self._catalog is None:
                    raise
                return self._catalog
            self._stamp = stamp
        return self._catalog

    def names(self) -> set[str]:
        catalog = self.catalog()
        return known_people(catalog) if catalog is not None else set()

    def first(self) -> str | None:
        catalog = self.catalog()
        return first_person(catalog) if catalog is not None else None

    def __contains__(self, person: object) -> bool:
        return isinstance(person, str) and person in self.names()
