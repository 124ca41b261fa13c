"""The line-keeping YAML loader, the playbook spec models, durations and the catalog."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fireline.catalog.model import Catalog, load_catalog
from fireline.errors import CompileError
from fireline.playbook.durations import format_duration, parse_duration
from fireline.playbook.loader import Problem, parse_yaml, validate
from fireline.playbook.spec import STEP_LIST_KEYS, PlaybookSpec


def _line(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def _spec_problems(text: str) -> list[Problem]:
    doc, problems = parse_yaml(text, "pb.yaml")
    assert problems == []
    assert doc is not None
    spec, problems = validate(doc, PlaybookSpec, step_keys=STEP_LIST_KEYS)
    assert spec is None
    return problems


VALID = textwrap.dedent(
    """\
    name: demo
    version: 3
    inputs:
      host: {type: string, required: true}
    steps:
      - id: first
        uses: core.notify
        with: {message: hi}
        timeout: 30s
        retry: {initial_interval: 500ms, max_interval: 2m}
      - id: group
        parallel:
          - id: inner
            uses: core.wait
            with: {seconds: 1}
    """
)


class TestParseYaml:
    def test_records_the_line_of_every_key_and_item(self) -> None:
        """Mapping keys and list items keep the line they were written on."""
        doc, problems = parse_yaml(VALID, "pb.yaml")
        assert problems == []
        assert doc is not None
        assert doc.line_of(("steps", 0, "uses")) == _line(VALID, "uses: core.notify")
        assert doc.line_of(("steps", 1)) == _line(VALID, "- id: group")
        assert doc.line_of(("steps", 1, "parallel", 0, "with", "seconds")) == _line(
            VALID, "seconds: 1"
        )

    def test_missing_key_falls_back_to_its_nearest_written_parent(self) -> None:
        """A key that was not written points at the mapping that should hold it."""
        doc, _ = parse_yaml(VALID, "pb.yaml")
        assert doc is not None
        assert doc.line_of(("steps", 0, "approval", "role")) == _line(VALID, "- id: first")

    def test_duplicate_key_is_an_error_at_the_second_occurrence(self) -> None:
        """PyYAML would keep the last value silently; the loader refuses both."""
        text = "name: a\nsteps: []\nname: b\n"
        doc, problems = parse_yaml(text, "pb.yaml")
        assert doc is None
        assert [(p.line, p.field) for p in problems] == [(3, "name")]
        assert "duplicate key 'name' (first written at line 1)" in problems[0].message

    def test_merge_keys_may_be_overridden_without_a_duplicate_error(self) -> None:
        """Keys merged with ``<<:`` are defaults, so overriding them is intended."""
        text = textwrap.dedent(
            """\
            base: &base {method: GET, url: a}
            call:
              <<: *base
              url: b
            """
        )
        doc, problems = parse_yaml(text, "pb.yaml")
        assert problems == []
        assert doc is not None
        assert doc.data["call"] == {"method": "GET", "url": "b"}

    def test_keys_stay_as_written(self) -> None:
        """YAML 1.1 would read the key ``on`` as True and ``200`` as a number; keys stay text."""
        doc, problems = parse_yaml("on: 1\n200: ok\nyes: [a]\n", "pb.yaml")
        assert problems == []
        assert doc is not None
        assert doc.data == {"on": 1, "200": "ok", "yes": ["a"]}
        assert doc.line_of(("yes", 0)) == 3

    def test_syntax_error_carries_the_line_of_the_mark(self) -> None:
        """A YAML syntax error is a problem at the line PyYAML points to."""
        text = "name: a\nsteps:\n  - id: x\n    with: {a: 1\n"
        doc, problems = parse_yaml(text, "bad.yaml")
        assert doc is None
        assert len(problems) == 1
        assert problems[0].message.startswith("YAML syntax error")
        assert problems[0].line is not None
        assert problems[0].line >= 4
        assert str(problems[0]).startswith(f"bad.yaml:{problems[0].line}: YAML syntax error")

    def test_empty_file_is_a_problem(self) -> None:
        """An empty file is reported instead of validating None."""
        doc, problems = parse_yaml("# nothing here\n", "empty.yaml")
        assert doc is None
        assert [p.message for p in problems] == ["the file is empty"]


class TestSpecValidation:
    def test_valid_playbook_turns_durations_into_seconds(self) -> None:
        """Durations become seconds and a numeric version becomes a string."""
        doc, _ = parse_yaml(VALID, "pb.yaml")
        assert doc is not None
        spec, problems = validate(doc, PlaybookSpec, step_keys=STEP_LIST_KEYS)
        assert problems == []
        assert spec is not None
        assert spec.version == "3"
        assert spec.steps[0].timeout == 30.0
        assert spec.steps[0].retry is not None
        assert spec.steps[0].retry.initial_interval == 0.5
        assert spec.steps[0].retry.max_interval == 120.0

    def test_unknown_key_suggests_the_close_one_at_its_line(self) -> None:
        """A misspelt key names the step, the line and what was probably meant."""
        text = VALID.replace("    with: {message: hi}", "    wiht: {message: hi}")
        problems = _spec_problems(text)
        assert len(problems) == 1
        problem = problems[0]
        assert (problem.line, problem.step) == (_line(text, "wiht:"), "first")
        assert problem.message == "unknown key 'wiht' (did you mean 'with'?)"
        assert str(problem) == f"pb.yaml:{problem.line}: step 'first': {problem.message}"

    def test_unknown_key_deep_inside_a_parallel_branch(self) -> None:
        """Unknown keys inside nested models name the innermost step and the allowed key."""
        text = VALID.replace(
            "        with: {seconds: 1}",
            "        with: {seconds: 1}\n        approval: {role: x, tmeout: 5m}",
        )
        problems = _spec_problems(text)
        assert [(p.line, p.step, p.field) for p in problems] == [
            (_line(text, "tmeout"), "inner", "approval.tmeout")
        ]
        assert "did you mean 'timeout'?" in problems[0].message

    def test_unknown_key_without_a_close_match_lists_the_allowed_keys(self) -> None:
        """When nothing is close, the message lists what may be written there."""
        text = VALID.replace("retry: {", "retry: {zzz: 1, ")
        problems = _spec_problems(text)
        assert len(problems) == 1
        assert "unknown key 'zzz'; allowed here: backoff, initial_interval" in problems[0].message

    def test_bad_duration_points_at_the_key(self) -> None:
        """A duration that cannot be read says how to write one."""
        text = VALID.replace("timeout: 30s", "timeout: 30 parsecs")
        problems = _spec_problems(text)
        assert [(p.line, p.field) for p in problems] == [(_line(text, "parsecs"), "timeout")]
        assert "is not a duration: use a number of seconds" in problems[0].message

    def test_bad_step_id(self) -> None:
        """Step ids must be usable in expressions."""
        text = VALID.replace("- id: first", "- id: First-Step")
        problems = _spec_problems(text)
        assert [p.line for p in problems] == [_line(text, "First-Step")]
        assert "step id 'First-Step' must use only lowercase letters" in problems[0].message

    def test_bad_playbook_name(self) -> None:
        """Playbook names are lowercase with dashes."""
        text = VALID.replace("name: demo", "name: Demo_Playbook")
        problems = _spec_problems(text)
        assert [p.line for p in problems] == [1]
        assert "playbook name 'Demo_Playbook' must be" in problems[0].message

    def test_bad_input_name_points_at_the_input(self) -> None:
        """An input that expressions cannot name is refused at its own line."""
        text = VALID.replace("  host: {type", "  bad-name: {type")
        problems = _spec_problems(text)
        assert [p.line for p in problems] == [_line(text, "bad-name")]
        assert "input name 'bad-name'" in problems[0].message

    def test_missing_required_key(self) -> None:
        """A step without an id is reported at the step's line."""
        text = VALID.replace("  - id: first\n    uses", "  - uses")
        problems = _spec_problems(text)
        assert len(problems) == 1
        assert problems[0].line == _line(text, "- uses: core.notify")
        assert problems[0].message == "missing required key 'id'"

    def test_tier_out_of_range(self) -> None:
        """Approval tiers are 0 to 3."""
        text = VALID.replace(
            "    with: {message: hi}",
            "    with: {message: hi}\n    approval: {role: sre, tier: 5}",
        )
        problems = _spec_problems(text)
        assert [(p.line, p.field) for p in problems] == [(_line(text, "tier: 5"), "approval.tier")]
        assert "less than or equal to 3" in problems[0].message


class TestDurations:
    @pytest.mark.parametrize(
        ("written", "seconds"),
        [
            ("500ms", 0.5),
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("2d", 172800),
            (12, 12),
            ("1h30m", 5400),
            ("2.5", 2.5),
        ],
    )
    def test_parses(self, written: object, seconds: float) -> None:
        """Every documented spelling turns into seconds."""
        assert seconds == parse_duration(written)

    @pytest.mark.parametrize("written", ["", "5x", "-3s", 0, True, "m5", None])
    def test_refuses(self, written: object) -> None:
        """Anything else is an error saying how to write a duration."""
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(written)

    def test_formats_back(self) -> None:
        """Seconds render in the shortest exact spelling."""
        assert [format_duration(s) for s in (0.25, 30, 90, 3600, 90061)] == [
            "250ms",
            "30s",
            "1m30s",
            "1h",
            "1d1h1m1s",
        ]


class TestCatalog:
    def test_loads_roles_and_resolves_approvers(self, tmp_path: Path) -> None:
        """Listed members become sorted approvers; a role without members admits anyone."""
        path = tmp_path / "catalog.yaml"
        path.write_text(
            "roles:\n  oncall: {tier: 1, members: [bob, alice]}\n  anyone: {tier: 2}\n"
            "services: {api: {owner_team: team-api}}\n"
        )
        catalog = load_catalog(path)
        assert isinstance(catalog, Catalog)
        assert catalog.approvers("oncall") == ["alice", "bob"]
        assert catalog.approvers("anyone") is None
        assert catalog.services["api"].owner_team == "team-api"

    def test_problems_carry_file_and_line(self, tmp_path: Path) -> None:
        """A bad catalog raises CompileError with every problem located."""
        path = tmp_path / "catalog.yaml"
        path.write_text("roles:\n  oncall:\n    tier: 1\n    membres: [a]\n  lead: {tier: 7}\n")
        with pytest.raises(CompileError) as caught:
            load_catalog(path)
        problems = caught.value.problems
        assert [(p.line, p.message) for p in problems] == [  # type: ignore[attr-defined]
            (4, "unknown key 'membres' (did you mean 'members'?)"),
            (5, "roles.lead.tier: Input should be less than or equal to 3"),
        ]

    def test_empty_member_list_is_refused(self, tmp_path: Path) -> None:
        """An empty list would mean nobody may approve."""
        path = tmp_path / "catalog.yaml"
        path.write_text("roles:\n  oncall: {members: []}\n")
        with pytest.raises(CompileError, match="nobody can approve"):
            load_catalog(path)


class TestReadingProblemsNameTheStep:
    def test_duplicate_key_inside_a_step_names_the_step(self) -> None:
        """A key written twice in one step names that step and the key below it."""
        text = VALID.replace("    timeout: 30s\n", "    timeout: 30s\n    timeout: 1m\n")
        doc, problems = parse_yaml(text, "pb.yaml", step_keys=STEP_LIST_KEYS)
        assert doc is None
        assert [(p.line, p.step, p.field) for p in problems] == [
            (_line(text, "timeout: 1m"), "first", "timeout")
        ]
        assert str(problems[0]).startswith(f"pb.yaml:{problems[0].line}: step 'first': duplicate")

    def test_alias_loop_inside_a_parallel_branch_names_the_branch(self) -> None:
        """A recursive alias is refused at its line, naming the innermost step."""
        text = VALID.replace("with: {seconds: 1}", "with: &loop {seconds: *loop}")
        doc, problems = parse_yaml(text, "pb.yaml", step_keys=STEP_LIST_KEYS)
        assert doc is None
        assert [(p.line, p.step) for p in problems] == [(_line(text, "&loop"), "inner")]
        assert "an alias refers to itself" in problems[0].message


class TestSyntaxErrorsInPlainWords:
    @pytest.mark.parametrize(
        ("text", "line", "words"),
        [
            ('name: a\nsteps:\n  - id: "x\n    uses: y\n', 3, "a quoted string starts here"),
            ("name: a\nsteps: [one,\n  two\nowner: x\n", 2, "the '[' opened here is not closed"),
            ("name: a\nwith: {a: 1\n\n\n", 2, "the '{' opened here is not closed"),
            ("name: a\nsteps:\n  - id: x\n    uses: y\n   with: 1\n", 5, "indented differently"),
            ("name: a\ndescription: a: b\n", 2, "a ':' cannot appear here"),
            ("name: a\nsteps:\n\t- id: x\n", 3, "YAML is indented with spaces only"),
            ("name: *nothing\n", 1, "'*nothing' names no anchor '&nothing'"),
            ("name: a\n---\nname: b\n", 2, "a second YAML document"),
            ("a: &x 1\nb:\n  c: 2\n  <<: *x\n", 4, "'<<:' merges in a mapping"),
        ],
        ids=["quote", "list", "mapping", "indent", "colon", "tab", "alias", "documents", "merge"],
    )
    def test_where_the_broken_token_began(self, text: str, line: int, words: str) -> None:
        """The line is where the broken construct starts, the message says what to do."""
        doc, problems = parse_yaml(text, "bad.yaml")
        assert doc is None
        (problem,) = problems
        assert problem.line == line
        assert problem.message.startswith("YAML syntax error (column ")
        assert words in problem.message
        for word in (
            "<block end>",
            "while scanning",
            "while parsing",
            "while constructing",
            "simple key",
        ):
            assert word not in problem.message
