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
from fireline.playbook.spec import PLAYBOOK_NAME, STEP_LIST_KEYS, PlaybookSpec

__all__ = ["PlaybookFiles", "PlaybookSource", "UnknownPlaybook", "parse_playbook"]

_SUFFIXES = (".yaml", ".yml")
_SHOWN_NAME = 80
"""How much of an unknown name a refusal quotes back."""


class UnknownPlaybook(CompileError):
    """No playbook of the library has that name; ``known`` lists the names there are."""

    def __init__(self, name: str, known: list[str]) -> None:
        shown = name if len(name) <= _SHOWN_NAME else name[:_SHOWN_NAME] + "..."
        self.name = name
        self.known = known
        super().__init__(
            [
                Problem(
                    "playbook",
                    None,
                    None,
                    "playbook",
                    f"no playbook named {shown!r}{suggestion(shown, known)}; known playbooks: "
                    f"{', '.join(known) or 'none'}",
                )
            ]
        )


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
    doc, problems = read_yaml(path, step_keys=STEP_LIST_KEYS)
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
        neighbours: list[Path] | None = None,
    ) -> None:
        self.sources = sources
        self.catalog = catalog
        self.catalog_file = catalog_file
        self.catalog_problems = list(catalog_problems or [])
        self._by_name: dict[str, list[PlaybookSource]] = {}
        # Folders of playbooks given one by one: their siblings are found for `playbook:`
        # includes (parsed on first need), but are not validated as part of this set.
        self._neighbour_dirs = list(neighbours or [])
        self._neighbours: dict[str, PlaybookSource] | None = None
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
        dirs: list[Path] = []
        neighbours: list[Path] = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                first_dir = first_dir or path
                dirs.append(path.resolve())
                files.extend(_playbook_files(path))
            else:
                files.append(path)
                if path.parent.resolve() not in neighbours:
                    neighbours.append(path.parent.resolve())
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
        neighbours = [d for d in neighbours if d not in dirs]
        return cls(sources, catalog, catalog_file, catalog_problems, neighbours)

    def names(self) -> list[str]:
        return sorted(set(self._by_name) | set(self._neighbours or {}))

    def named(self, name: str) -> PlaybookSource | None:
        """The playbook called ``name``; of two with one name, the later (already a problem).

        A name not among the given playbooks is looked up among the siblings of the files
        given one by one, so validating one file still resolves its includes.
        """
        same = self._by_name.get(name)
        if same:
            return same[-1]
        return self._neighbour_sources().get(name)

    def _neighbour_sources(self) -> dict[str, PlaybookSource]:
        if self._neighbours is None:
            given = {src.path.resolve() for src in self.sources}
            self._neighbours = {}
            for folder in self._neighbour_dirs:
                for path in _playbook_files(folder):
                    if path.resolve() in given:
                        continue
                    src = parse_playbook(path)
                    if src.name is not None and src.name not in self._by_name:
                        self._neighbours.setdefault(src.name, src)
        return self._neighbours

    def by_name(self, name: str) -> PlaybookSource:
        """The playbook called ``name``, never a file path: for names from untrusted callers.

        Raises :class:`UnknownPlaybook` (a CompileError) listing the known names.
        """
        src = self.named(name) if PLAYBOOK_NAME.fullmatch(name) else None
        if src is None:
            raise UnknownPlaybook(name, self.names())
        return src

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
        if self._neighbours is not None and src.name is not None:
            self._neighbours.pop(src.name, None)
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


def _playbook_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and f.suffix in _SUFFIXES and f.name != CATALOG_FILE
    )
