"""The playbook files of a library as parsed, found by name or by path, and the catalog beside them.

Parsing never raises: a file that does not parse or validate is kept with its problems, so
``fireline validate`` reports every file at once and a duplicate name is still noticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fireline.catalog.model import CATALOG_FILE, Catalog, parse_catalog
from fireline.errors import CompileError
from fireline.playbook.loader import (
    Problem,
    YamlDocument,
    display_path,
    read_yaml,
    suggestion,
    validate,
)
from fireline.playbook.spec import STEP_LIST_KEYS, PlaybookSpec

__all__ = ["PlaybookFiles", "PlaybookSource", "parse_playbook"]

_SUFFIXES = (".yaml", ".yml")


@dataclass
class PlaybookSource:
    """One playbook file as parsed (spec is None when it could not be parsed)."""

    file: str
    path: Path
    doc: YamlDocument | None
    spec: PlaybookSpec | None
    problems: list[Problem]

    @property
    def name(self) -> str | None:
        """The playbook's name, read from the raw YAML when the file does not validate."""
        if self.spec is not None:
            return self.spec.name
        raw = self.doc.data.get("name") if self.doc and isinstance(self.doc.data, dict) else None
        return raw if isinstance(raw, str) else None


def parse_playbook(path: Path) -> PlaybookSource:
    doc, problems = read_yaml(path)
    spec: PlaybookSpec | None = None
    if doc is not None:
        spec, problems = validate(doc, PlaybookSpec, step_keys=STEP_LIST_KEYS)
    return PlaybookSource(display_path(path), path, doc, spec, list(problems))


class PlaybookFiles:
    """Parsed playbooks indexed by name, plus the catalog their approval gates name."""

    def __init__(
        self,
        sources: list[PlaybookSource],
        catalog: Catalog | None,
        catalog_file: str | None = None,
        catalog_problems: list[Problem] | None = None,
    ) -> None:
        self.sources = sources
        self.catalog = catalog
        self.catalog_file = catalog_file
        self.catalog_problems = list(catalog_problems or [])
        self._by_name: dict[str, list[PlaybookSource]] = {}
        for src in sources:
            self._register(src)

    @classmethod
    def load(cls, *paths: Path, catalog: Catalog | None = None) -> PlaybookFiles:
        """Parse every playbook under ``paths`` (directories or files); never raises.

        Without ``catalog``, ``catalog.yaml`` of the first directory (or, given only files, of
        the first file's directory) is used when present.
        """
        files: list[Path] = []
        first_dir: Path | None = None
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                first_dir = first_dir or path
                files.extend(
                    sorted(
                        f
                        for f in path.iterdir()
                        if f.is_file() and f.suffix in _SUFFIXES and f.name != CATALOG_FILE
                    )
                )
            else:
                files.append(path)
        unique: dict[Path, Path] = {}
        for f in files:
            unique.setdefault(f.resolve(), f)
        catalog_file: str | None = None
        catalog_problems: list[Problem] = []
        home = first_dir or (files[0].parent if files else None)
        if catalog is None and home is not None and (home / CATALOG_FILE).is_file():
            catalog_path = home / CATALOG_FILE
            catalog_file = display_path(catalog_path)
            catalog, catalog_problems = parse_catalog(catalog_path)
        sources = [parse_playbook(f) for f in unique.values()]
        return cls(sources, catalog, catalog_file, catalog_problems)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def named(self, name: str) -> PlaybookSource | None:
        """The playbook called ``name``; of two with one name, the later (already a problem)."""
        same = self._by_name.get(name)
        return same[-1] if same else None

    def find(self, name_or_path: str) -> PlaybookSource:
        """A playbook by name, or by file path (parsed and added when not loaded yet).

        Raises CompileError naming the known playbooks when neither matches.
        """
        src = self.named(name_or_path)
        if src is not None:
            return src
        path = Path(name_or_path)
        if path.suffix in _SUFFIXES or path.exists():
            resolved = path.resolve()
            for src in self.sources:
                if src.path.resolve() == resolved:
                    return src
            if path.is_file():
                src = parse_playbook(path)
                self.sources.append(src)
                self._register(src)
                return src
        known = ", ".join(self.names()) or "none"
        raise CompileError(
            [
                Problem(
                    name_or_path,
                    None,
                    None,
                    None,
                    f"no playbook named '{name_or_path}'{suggestion(name_or_path, self.names())}"
                    f" and no such file; known playbooks: {known}",
                )
            ]
        )

    def _register(self, src: PlaybookSource) -> None:
        if src.name is None:
            return
        same = self._by_name.setdefault(src.name, [])
        if same and src.doc is not None:
            src.problems.append(
                Problem(
                    src.file,
                    src.doc.line_of(("name",)),
                    None,
                    "name",
                    f"playbook name '{src.name}' is already used by {same[0].file}; "
                    "names must be unique across the library",
                )
            )
        same.append(src)
