"""YAML loading that remembers where everything was written.

PyYAML's plain ``safe_load`` forgets line numbers and silently keeps the last of two equal keys,
so a typo'd playbook would fail far from its cause or, worse, run with the wrong value. Here
the node tree from ``yaml.compose`` is turned into plain Python values while every mapping key
and sequence item records its line, duplicate keys become errors, and pydantic validation
errors are mapped back to ``file:line`` of the offending key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
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


MAX_FILE_BYTES = 512 * 1024
"""A playbook or catalog larger than this is refused unread: real ones are a few kilobytes."""
MAX_DEPTH = 50
"""Deepest nesting of lists and mappings, aliases expanded. Far beyond any real playbook, far
below Python's recursion limit and the depth at which a Plan could no longer be hashed."""
MAX_VALUES = 20_000
"""Most values one document may hold once its aliases are expanded; a "billion laughs" alias
bomb is a few hundred bytes that expand to billions, so expansion is counted, not the text."""

_TOO_DEEP = (
    f"the document is nested more than {MAX_DEPTH} levels deep; a playbook never needs that "
    "many: flatten it"
)
_TOO_MANY = (
    f"the document holds more than {MAX_VALUES} values once its aliases are expanded (an "
    "alias '*name' repeats everything its anchor '&name' holds, so aliases of aliases "
    "multiply); split the playbook or write the values out"
)
_STANDARD = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(
    _STANDARD + t for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")
)


class _LimitExceeded(Exception):
    """A document is too large, too deep or expands too much; carries where it happened."""

    def __init__(self, message: str, line: int | None, path: PathKey = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.path = path


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose composer refuses nesting deeper than ``MAX_DEPTH``.

    The composer recurses once per level, so thousands of nested ``[`` would otherwise end in
    a RecursionError; counting here stops it at the first level too many.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner looks ahead across every open '[' or '{' (quadratic in their number), so
        # flow nesting is cut off here, before the composer would see the first level.
        if self.flow_level >= MAX_DEPTH:
            raise _LimitExceeded(_TOO_DEEP, self.get_mark().line + 1)
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(_TOO_DEEP, mark.line + 1)
            self._nodes += 1
            if self._nodes > MAX_VALUES:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(_TOO_MANY, mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Turns composed nodes into Python values, recording lines and refusing duplicate keys.

    Every value built is counted and every level measured, aliases expanded, so an alias bomb
    or a chain of aliases nesting ever deeper stops at the limit instead of eating memory.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self.problems: list[tuple[PathKey, Problem]] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._values = 0

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self._values += 1
        if self._values > MAX_VALUES:
            raise _LimitExceeded(_TOO_MANY, node.start_mark.line + 1, path)
        if len(path) > MAX_DEPTH:
            raise _LimitExceeded(
                f"the document is nested more than {MAX_DEPTH} levels deep once its aliases "
                "are expanded; flatten it",
                node.start_mark.line + 1,
                path,
            )
        if id(node) in self._active:
            self._problem(node, path, "an alias refers to itself; recursive YAML is not supported")
            return None
        if node.tag not in _ALLOWED_TAGS and node.tag != _STANDARD + "merge":
            self._problem(node, path, _tag_message(node.tag))
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
            key = self._key(key_node, path)
            line = key_node.start_mark.line + 1
            if key in seen:
                self._problem(
                    key_node,
                    (*path, key),
                    f"duplicate key '{key}' (first written at line {seen[key]}); "
                    "YAML would silently keep only the last one: remove one of them",
                )
            else:
                seen[key] = line
        merges = [k for k, _ in node.value if k.tag == "tag:yaml.org,2002:merge"]
        try:
            self.constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            problem = _from_mark(self.file, exc)
            if merges:  # the '<<:' line, not where the anchor it names was written
                problem = replace(problem, line=merges[0].start_mark.line + 1)
            self.problems.append((path, problem))
            return {}
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if isinstance(key, str | int):
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        return out

    def _key(self, node: yaml.Node, path: PathKey) -> Any:
        # Keys are kept as written: YAML 1.1 would turn `on:` into True and `200:` into an int.
        if not isinstance(node, yaml.ScalarNode):
            self._problem(node, path, "a mapping key must be a plain value, not a list or mapping")
            return f"<key at line {node.start_mark.line + 1}>"
        return str(node.value)

    def _problem(self, node: yaml.Node, path: PathKey, message: str) -> None:
        line = node.start_mark.line + 1
        self.problems.append((path, Problem(self.file, line, None, None, message)))


def _tag_message(tag: str) -> str:
    shown = "!!" + tag.removeprefix(_STANDARD) if tag.startswith(_STANDARD) else tag
    return (
        f"the tag '{shown}' is not allowed: a playbook holds plain text, numbers, booleans, "
        "lists and mappings only (it is never turned into objects)"
    )


# (context, problem) prefixes of PyYAML's messages -> what to say instead; ``{line}`` is the
# line where the parser noticed the problem, which may be far below where it began.
_PLAIN: tuple[tuple[str, str, str, bool], ...] = (
    # context prefix, problem prefix, plain words, whether the context mark is the start
    (
        "while scanning a quoted scalar",
        "",
        "a quoted string starts here and is never closed: add the closing quote",
        True,
    ),
    (
        "while scanning a simple key",
        "",
        "this key has no ':' after it: write 'key: value', or quote the text",
        True,
    ),
    (
        "while parsing a flow mapping",
        "",
        "the '{{' opened here is not closed (noticed at line {line}): add the missing '}}' "
        "or a ',' between entries",
        True,
    ),
    (
        "while parsing a flow sequence",
        "",
        "the '[' opened here is not closed (noticed at line {line}): add the missing ']' "
        "or a ',' between items",
        True,
    ),
    (
        "while parsing a block mapping",
        "expected <block end>",
        "this line is indented differently from the keys above it (the mapping starts at line "
        "{start}): line up the keys of one mapping under each other",
        False,
    ),
    (
        "while parsing a block collection",
        "expected <block end>",
        "this line is indented differently from the list items above it (the list starts at "
        "line {start}): line up the '- ' of one list under each other",
        False,
    ),
    (
        "",
        "mapping values are not allowed here",
        "a ':' cannot appear here: quote a value that contains ': ', or fix the indentation "
        "of this line",
        False,
    ),
    (
        "while constructing a mapping",
        "expected a mapping or list of mappings for merging",
        "'<<:' merges in a mapping (an anchor of key: value pairs) or a list of them, "
        "nothing else: point it at such an anchor",
        False,
    ),
    ("", "found character '\\t'", "a tab character: YAML is indented with spaces only", False),
    ("", "found undefined alias", "'*{alias}' names no anchor '&{alias}' defined above it", False),
    (
        "found duplicate anchor",
        "",
        "the anchor '&{anchor}' is defined twice (first at line {start}); give each anchor "
        "its own name",
        False,
    ),
    (
        "expected a single document",
        "",
        "a second YAML document ('---') starts here; a playbook file holds exactly one",
        False,
    ),
    (
        "while parsing a block",
        "",
        "the indentation of this line does not fit the lines above",
        False,
    ),
)


def _from_mark(file: str, exc: yaml.YAMLError) -> Problem:
    """A YAML syntax error in plain words, at the line where the broken construct began."""
    context: str = getattr(exc, "context", None) or ""
    problem: str = getattr(exc, "problem", None) or ""
    context_mark = getattr(exc, "context_mark", None)
    problem_mark = getattr(exc, "problem_mark", None)
    for ctx_prefix, prob_prefix, words, context_is_start in _PLAIN:
        if context.startswith(ctx_prefix) and problem.startswith(prob_prefix):
            mark = (context_mark if context_is_start else None) or problem_mark or context_mark
            names = re.findall(r"'([^']*)'", context + " " + problem)
            message = words.format(
                line=problem_mark.line + 1 if problem_mark else "?",
                start=context_mark.line + 1 if context_mark else "?",
                alias=names[0] if names else "",
                anchor=names[0] if names else "",
            )
            break
    else:
        mark = problem_mark or context_mark
        message = " ".join(part for part in (context, problem) if part) or str(exc)
    line = mark.line + 1 if mark is not None else None
    column = f" (column {mark.column + 1})" if mark is not None else ""
    return Problem(file, line, None, None, f"YAML syntax error{column}: {message}")


def parse_yaml(
    text: str, file: str, *, step_keys: tuple[str, ...] = ()
) -> tuple[YamlDocument | None, list[Problem]]:
    """Parse one YAML document; problems instead of exceptions, each with its line.

    Bounded in size, depth and alias expansion (``MAX_*``), so a hostile file costs at most
    a fraction of a second. ``step_keys`` (as for :func:`validate`) lets problems found while
    reading name the step they are in.
    """
    if len(text) > MAX_FILE_BYTES:
        return None, [_too_large(file, len(text))]
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
    except _LimitExceeded as exc:
        return None, [Problem(file, exc.line, None, None, exc.message)]
    except yaml.YAMLError as exc:
        return None, [_from_mark(file, exc)]
    finally:
        loader.dispose()
    if root is None:
        return None, [Problem(file, None, None, None, "the file is empty")]
    builder = _Builder(file)
    builder.lines[()] = root.start_mark.line + 1
    data: Any = None
    try:
        data = builder.build(root, ())
    except _LimitExceeded as exc:
        step = _step_of_node(root, exc.path, step_keys)
        return None, [Problem(file, exc.line, step, None, exc.message)]
    except yaml.YAMLError as exc:
        return None, [*(p for _, p in builder.problems), _from_mark(file, exc)]
    if builder.problems:
        located = [_located(data, path, p, step_keys) for path, p in builder.problems]
        return None, list(dict.fromkeys(located))
    return YamlDocument(file, data, builder.lines), []


def _located(data: Any, path: PathKey, problem: Problem, step_keys: tuple[str, ...]) -> Problem:
    step, rest = _split_step(data, path, step_keys)
    return replace(problem, step=step, field=_render(rest) or problem.field)


def _step_of_node(root: yaml.Node, path: PathKey, step_keys: tuple[str, ...]) -> str | None:
    """The innermost step along ``path``, read from the composed nodes (nothing is built)."""
    step: str | None = None
    node: yaml.Node | None = root
    previous: Key | None = None
    for part in path:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
            if previous in step_keys and isinstance(node, yaml.MappingNode):
                ids = [v.value for k, v in node.value if k.value == "id"]
                step = ids[0] if ids and isinstance(ids[0], str) else f"#{part + 1}"
        elif isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        else:
            break
        previous = part
    return step


def _too_large(file: str, size: int) -> Problem:
    return Problem(
        file,
        None,
        None,
        None,
        f"the file is {size} bytes, more than the {MAX_FILE_BYTES} a playbook may have; "
        "split it into playbooks that include each other",
    )


def read_yaml(
    path: Path, *, step_keys: tuple[str, ...] = ()
) -> tuple[YamlDocument | None, list[Problem]]:
    """Read and parse one file, never more than ``MAX_FILE_BYTES`` of it."""
    file = display_path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None, [_too_large(file, path.stat().st_size)]
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(file, None, None, None, f"cannot read the file: {exc}")]
    return parse_yaml(text, file, step_keys=step_keys)


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
