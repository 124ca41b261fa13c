"""YAML loading that remembers where everything was written.

PyYAML's plain ``safe_load`` forgets line numbers and silently keeps the last of two equal keys,
so a typo'd playbook would fail far from its cause or, worse, run with the wrong value. Here
the node tree from ``yaml.compose`` is turned into plain Python values while every mapping key
and sequence item records its line, duplicate keys become errors, and pydantic validation
errors are mapped back to ``file:line`` of the offending key.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Key = str | int
PathKey = tuple[Key, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a playbook or catalog, located precisely enough to fix it."""

    file: str
    line: int | None
    step: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        step = f" step '{self.step}':" if self.step else ""
        return f"{where}:{step} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class YamlDocument:
    """Plain data from one YAML file plus the line of every key and list item in it."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[Key]) -> int | None:
        """Line of ``path`` or, when it was not written, of its nearest written parent."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get(())


def display_path(path: Path) -> str:
    """Relative to the working directory when below it, so messages are short and clickable."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def suggestion(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a close match, else an empty string."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Builder:
    """Turns composed nodes into Python values, recording lines and refusing duplicate keys."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        if id(node) in self._active:
            self._problem(node, "an alias refers to itself; recursive YAML is not supported")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self.constructor.construct_object(node)
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                out: list[Any] = []
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = item.start_mark.line + 1
                    out.append(self.build(item, (*path, index)))
                return out
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            raise TypeError(f"unexpected YAML node {node!r}")
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        # Keys written here must be unique; keys merged in with `<<:` may be overridden.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._key(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.problems.append(
                    Problem(
                        self.file,
                        line,
                        None,
                        _render((*path, key)) if isinstance(key, str | int) else None,
                        f"duplicate key '{key}' (first written at line {seen[key]}); "
                        "YAML would silently keep only the last one: remove one of them",
                    )
                )
            else:
                seen[key] = line
        try:
            self.constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            self.problems.append(_from_mark(self.file, exc))
            return {}
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            if isinstance(key, str | int):
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        return out

    def _key(self, node: yaml.Node) -> Any:
        # Keys are kept as written: YAML 1.1 would turn `on:` into True and `200:` into an int.
        if not isinstance(node, yaml.ScalarNode):
            self._problem(node, "a mapping key must be a plain value, not a list or mapping")
            return f"<key at line {node.start_mark.line + 1}>"
        return str(node.value)

    def _problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, None, None, message))


def _from_mark(file: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    text = " ".join(
        part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part
    )
    return Problem(file, line, None, None, f"YAML syntax error: {text or exc}")


def parse_yaml(text: str, file: str) -> tuple[YamlDocument | None, list[Problem]]:
    """Parse one YAML document; problems instead of exceptions, each with its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        return None, [_from_mark(file, exc)]
    if root is None:
        return None, [Problem(file, None, None, None, "the file is empty")]
    builder = _Builder(file)
    builder.lines[()] = root.start_mark.line + 1
    try:
        data = builder.build(root, ())
    except yaml.YAMLError as exc:
        return None, [*builder.problems, _from_mark(file, exc)]
    if builder.problems:
        return None, builder.problems
    return YamlDocument(file, data, builder.lines), []


def read_yaml(path: Path) -> tuple[YamlDocument | None, list[Problem]]:
    file = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(file, None, None, None, f"cannot read the file: {exc}")]
    return parse_yaml(text, file)


def validate(
    doc: YamlDocument, model: type[M], *, step_keys: tuple[str, ...] = ()
) -> tuple[M | None, list[Problem]]:
    """Validate ``doc.data`` as ``model``; every error located at its key's line.

    ``step_keys`` names list fields whose items are steps with an ``id``, so problems inside
    them name the step (``steps``, ``parallel``) instead of a list index.
    """
    try:
        return model.model_validate(doc.data), []
    except ValidationError as exc:
        problems = [_problem_from_error(doc, model, err, step_keys) for err in exc.errors()]
        return None, sorted(set(problems), key=lambda p: (p.line or 0, p.message))


def _problem_from_error(
    doc: YamlDocument, model: type[BaseModel], err: Any, step_keys: tuple[str, ...]
) -> Problem:
    loc: PathKey = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if "key" in ctx:  # model-level errors about one key point at that key
        loc = (*loc, ctx["key"])
    step, rest = _split_step(doc.data, loc, step_keys)
    line = doc.line_of(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = allowed_keys(model, loc[:-1])
        hint = suggestion(key, allowed) or (
            f"; allowed here: {', '.join(sorted(allowed))}" if allowed else ""
        )
        return Problem(doc.file, line, step, _render(rest), f"unknown key '{key}'{hint}")
    if kind == "missing":
        parent = _render(rest[:-1])
        where = f" in {parent}" if parent else ""
        return Problem(
            doc.file, line, step, _render(rest), f"missing required key '{loc[-1]}'{where}"
        )
    message = str(err["msg"]).removeprefix("Value error, ")
    prefix = f"{_render(rest)}: " if rest else ""
    return Problem(doc.file, line, step, _render(rest) or None, prefix + message)


def _split_step(data: Any, loc: PathKey, step_keys: tuple[str, ...]) -> tuple[str | None, PathKey]:
    """The innermost step a location is in, and the rest of the location below that step."""
    step: str | None = None
    rest: PathKey = loc
    current = data
    i = 0
    while i < len(loc):
        part = loc[i]
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if part in step_keys and isinstance(nxt, int) and isinstance(current, dict):
            items = current.get(part)
            if isinstance(items, list) and nxt < len(items):
                current = items[nxt]
                if isinstance(current, dict) and isinstance(current.get("id"), str):
                    step = current["id"]
                else:
                    step = f"#{nxt + 1}"
                rest = loc[i + 2 :]
                i += 2
                continue
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
        i += 1
    return step, rest


def _render(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_keys(model: type[BaseModel]) -> set[str]:
    """Keys a user may write for ``model``: aliases, and names when the model accepts them."""
    by_name = bool(model.model_config.get("populate_by_name")) or bool(
        model.model_config.get("validate_by_name")
    )
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        keys.add(alias or name)
        if by_name or not alias:
            keys.add(name)
    return keys


def allowed_keys(model: type[BaseModel], loc: PathKey) -> set[str]:
    """Keys allowed at ``loc`` below ``model`` (following lists, dicts and optional fields)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = _field_by_key(current, str(part))
            if info is None:
                return set()
            current = info.annotation
        else:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin in (list, tuple) and args:
                current = args[0]
            elif origin is dict and len(args) == 2:
                current = args[1]
            else:
                return set()
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return field_keys(current)
    return set()


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` to ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
