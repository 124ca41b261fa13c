"""Playbooks written to hurt: each is refused with a clear problem, in bounded memory.

The loader caps file size, nesting depth and values after alias expansion; these tests feed it
what an attacker (or a careless generator) would, and check that the answer is a located
problem rather than a hang, a RecursionError or a misleading hashing error, and that one such
file in a folder leaves the other playbooks compilable.
"""

from __future__ import annotations

import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fireline.catalog.model import Catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.errors import CompileError
from fireline.modules import Registry, load_registry
from fireline.playbook.loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_VALUES,
    Problem,
    parse_yaml,
    read_yaml,
)
from fireline.playbook.spec import STEP_LIST_KEYS
from tests.support import fact_modules

REGISTRY: Registry = load_registry(["core"]).extended(fact_modules)
CATALOG = Catalog.model_validate({"roles": {"sre": {"tier": 1}}})

GOOD = """\
name: good
steps:
  - id: pause
    uses: core.wait
    with: {seconds: 1}
"""


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    """The classic alias bomb: a few hundred bytes that expand to width**levels strings."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "name: bomb\nsteps:\n  - id: boom\n    uses: core.wait\n    with:\n" + "".join(
        f"      {line}\n" for line in lines
    )


def nested_with(depth: int) -> str:
    """A playbook whose one step carries a value nested ``depth`` mappings deep."""
    value = "1"
    for _ in range(depth):
        value = "{a: " + value + "}"
    return (
        "name: deep\nsteps:\n  - id: scale\n    uses: test.scale\n"
        f"    with: {{replicas: 1, undo: {value}}}\n"
    )


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], float]]:
    """Peak traced allocation in MB since the test started."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def _only(text: str) -> Problem:
    doc, problems = parse_yaml(text, "hostile.yaml", step_keys=STEP_LIST_KEYS)
    assert doc is None
    assert len(problems) == 1, problems
    return problems[0]


def _library(tmp_path: Path, files: dict[str, str]) -> PlaybookLibrary:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return PlaybookLibrary.load(folder, catalog=CATALOG, registry=REGISTRY)


class TestAliasBombs:
    def test_billion_laughs_is_refused_in_bounded_memory(
        self, peak_memory: Callable[[], float]
    ) -> None:
        """Alias expansion is counted while building, so the bomb stops at the cap."""
        problem = _only(billion_laughs())
        assert f"more than {MAX_VALUES} values once its aliases are expanded" in problem.message
        assert problem.step == "boom"
        assert peak_memory() < 64

    def test_one_bomb_in_a_folder_does_not_block_the_others(
        self, tmp_path: Path, peak_memory: Callable[[], float]
    ) -> None:
        """The bomb is a problem of its own file; the good playbook beside it compiles."""
        library = _library(tmp_path, {"bomb.yaml": billion_laughs(), "good.yaml": GOOD})
        assert library.compile("good").name == "good"
        report = library.validate_all()
        bomb = next(problems for file, problems in report.items() if file.endswith("bomb.yaml"))
        assert len(bomb) == 1
        assert "aliases are expanded" in bomb[0].message
        assert next(p for f, p in report.items() if f.endswith("good.yaml")) == []
        assert peak_memory() < 64

    def test_aliases_chained_ever_deeper_stop_at_the_depth_cap(self) -> None:
        """Each alias nests its anchor one level further; the expanded depth is capped too."""
        lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 2 * MAX_DEPTH)]
        problem = _only("\n".join(lines) + "\n")
        assert f"nested more than {MAX_DEPTH} levels deep once its aliases" in problem.message

    def test_a_few_aliases_are_fine(self) -> None:
        """Anchors and merges that real playbooks use keep working."""
        text = "base: &b {method: GET}\ncalls:\n  - <<: *b\n    url: a\n  - *b\n"
        doc, problems = parse_yaml(text, "ok.yaml")
        assert problems == []
        assert doc is not None
        assert doc.data["calls"] == [{"method": "GET", "url": "a"}, {"method": "GET"}]


class TestDepth:
    @pytest.mark.parametrize(
        "text",
        [
            "a: " + "[" * 5000 + "]" * 5000 + "\n",
            "a: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
            "".join("  " * i + f"k{i}:\n" for i in range(400)) + "  " * 400 + "leaf\n",
            "- " * 5000 + "x\n",
        ],
        ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"],
    )
    def test_thousands_deep_is_a_clear_error_not_a_recursion_error(self, text: str) -> None:
        """However the nesting is written, the answer is one problem with its line."""
        problem = _only(text)
        assert problem.message.startswith(f"the document is nested more than {MAX_DEPTH} levels")
        assert problem.line is not None

    def test_hundreds_deep_names_file_and_line_instead_of_a_hashing_error(
        self, tmp_path: Path
    ) -> None:
        """A few hundred levels used to crash plan hashing; now loading refuses them."""
        library = _library(tmp_path, {"deep.yaml": nested_with(300)})
        ((file, problems),) = library.validate_all().items()
        (problem,) = problems
        assert file.endswith("deep.yaml")
        assert str(problem).startswith(f"{file}:5: the document is nested more than")
        with pytest.raises(CompileError) as caught:
            library.compile(str(tmp_path / "playbooks" / "deep.yaml"))
        assert "Circular reference" not in str(caught.value)

    def test_nesting_just_under_the_cap_compiles_and_hashes(self, tmp_path: Path) -> None:
        """The deepest accepted document still compiles to a sealed, hashable Plan."""
        library = _library(tmp_path, {"deep.yaml": nested_with(MAX_DEPTH - 5)})
        plan = library.compile("deep")
        assert plan.hash == plan.content_hash()


class TestSize:
    def test_huge_string_is_refused_unread(self, tmp_path: Path) -> None:
        """A file over the size cap is refused before it is parsed, naming the cap."""
        path = tmp_path / "huge.yaml"
        path.write_text(GOOD + "description: '" + "x" * MAX_FILE_BYTES + "'\n")
        doc, problems = read_yaml(path)
        assert doc is None
        assert [p.message.split(",")[0] for p in problems] == [
            f"the file is {path.stat().st_size} bytes"
        ]
        assert f"more than the {MAX_FILE_BYTES}" in problems[0].message

    def test_huge_list_under_the_size_cap_stops_at_the_value_cap(self) -> None:
        """Many tiny items fit in few bytes; the value count is what stops them."""
        text = "items: [" + ",".join(["1"] * (MAX_VALUES + 10)) + "]\n"
        assert len(text) < MAX_FILE_BYTES
        assert "values once its aliases are expanded" in _only(text).message

    def test_many_steps_compile(self, tmp_path: Path) -> None:
        """Hundreds of ordinary steps are not hostile: they compile, in document order."""
        steps = "".join(
            f"  - id: s{i}\n    uses: core.wait\n    with: {{seconds: 1}}\n" for i in range(500)
        )
        library = _library(tmp_path, {"many.yaml": f"name: many\nsteps:\n{steps}"})
        plan = library.compile("many")
        assert [n.id for n in plan.nodes][:3] == ["s0", "s1", "s2"]
        assert len(plan.nodes) == 500

    def test_deep_expression_is_a_located_problem(self, tmp_path: Path) -> None:
        """A reference path thousands of segments long is refused, not resolved."""
        path = ".".join(["x"] * 3000)
        text = GOOD.replace("with: {seconds: 1}", f'with: {{seconds: "${{{{ inputs.{path} }}}}"}}')
        library = _library(tmp_path, {"expr.yaml": text})
        with pytest.raises(CompileError) as caught:
            library.compile("good")
        problems: list[Any] = caught.value.problems
        assert all(p.step == "pause" for p in problems)
        assert any("inputs" in p.message for p in problems)


class TestTags:
    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ('!!python/object/apply:os.system ["touch /tmp/pwned"]', "!!python/object/apply"),
            ("!!python/name:os.system", "!!python/name:os.system"),
            ("!!python/object:object {}", "!!python/object:object"),
            ("!!set {a, b}", "!!set"),
            ("!custom thing", "!custom"),
        ],
    )
    def test_non_plain_tags_are_refused_and_never_constructed(
        self, tmp_path: Path, value: str, shown: str
    ) -> None:
        """Like safe_load, nothing is ever turned into an object; unlike it, tags are named."""
        marker = tmp_path / "pwned"
        problem = _only(
            textwrap.dedent(
                f"""\
                name: tags
                steps:
                  - id: evil
                    uses: core.wait
                    with:
                      seconds: {value.replace("/tmp/pwned", str(marker))}
                """
            )
        )
        assert problem.step == "evil"
        assert problem.line == 6
        assert f"the tag '{shown}" in problem.message
        assert "is not allowed" in problem.message
        assert not marker.exists()
