"""Compiling playbooks to Plans: structure of the plan, and one test per rejection rule."""

from __future__ import annotations

import textwrap
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from fireline.catalog.model import Catalog
from fireline.compile.compiler import (
    MAX_INCLUDE_DEPTH,
    PlaybookLibrary,
    Problem,
    apply_input_defaults,
    input_defaults,
)
from fireline.errors import CompileError
from fireline.modules import CheckRef, Registry, load_registry, module
from fireline.plan import (
    WAIT_MODULE,
    IncludeNode,
    OnFailure,
    ParallelNode,
    Plan,
    Risk,
    StepNode,
)
from fireline.playbook.library import UnknownPlaybook
from tests.support import fact_modules

REGISTRY: Registry = load_registry(["core"]).extended(fact_modules)
"""The core modules plus the test.* modules, for this file only."""


CATALOG = Catalog.model_validate(
    {
        "roles": {
            "sre-oncall": {"tier": 1, "members": ["bob", "alice"]},
            "sre-senior": {"tier": 2, "members": ["carol", "erin"]},
            "anyone": {"tier": 1},
        }
    }
)


def _write(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "playbooks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def _library(tmp_path: Path, files: dict[str, str], catalog: Catalog | None = CATALOG):
    return PlaybookLibrary.load(_write(tmp_path, files), catalog=catalog, registry=REGISTRY)


def _compile(tmp_path: Path, text: str, *others: str) -> Plan:
    files = {"main.yaml": text} | {f"other{i}.yaml": t for i, t in enumerate(others)}
    return _library(tmp_path, files).compile(_name(text))


def _problems(tmp_path: Path, text: str, *others: str) -> list[Problem]:
    with pytest.raises(CompileError) as caught:
        _compile(tmp_path, text, *others)
    problems = caught.value.problems
    assert problems
    assert all(isinstance(p, Problem) for p in problems)
    return problems  # type: ignore[return-value]


def _only(tmp_path: Path, text: str, *others: str) -> Problem:
    problems = _problems(tmp_path, text, *others)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def _name(text: str) -> str:
    for line in textwrap.dedent(text).splitlines():
        if line.startswith("name:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no name")


def _line(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line of ``text`` containing ``needle``."""
    seen = 0
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == nth:
                return number
    raise AssertionError(f"{needle!r} not in text")


HAPPY = """\
name: happy
version: 2
owner: team-x
outage_class: demo
description: All the shapes.
on_failure: halt
inputs:
  flag: {type: string, required: true, description: which flag}
  replicas: {type: integer, default: 3}
steps:
  - id: look
    uses: test.read
    with: {target: "${{ inputs.flag }}"}
  - id: observe
    name: Observe first
    uses: test.probe
    with: {target: "${{ steps.look.outputs.target }}"}
  - id: flip
    uses: test.toggle
    with: {flag: "${{ inputs.flag }}", enabled: true}
    preconditions:
      - check: test.probe
        with: {target: "${{ input.flag }}"}
    postconditions:
      - check: test.probe
        with: {target: "${{ output.flag }}"}
        deadline: 2m
        interval: 5s
    timeout: 45s
    heartbeat: 10s
    retry: {max_attempts: 5, initial_interval: 2s}
    on_failure: ask
    decision_timeout: 30m
  - id: both
    name: Both at once
    parallel:
      - id: left
        uses: test.read
        with: {target: left}
      - id: right
        uses: core.wait
        with: {seconds: 5}
  - id: scale
    uses: test.scale
    with: {replicas: "${{ inputs.replicas }}", undo: {replicas: 1}}
  - id: approved
    uses: test.scale
    with: {replicas: 2}
    approval: {role: sre-oncall, timeout: 15m, min_approvals: 2}
outputs:
  seen: "${{ steps.observe.outputs.observed }}"
  left: "${{ steps.left.outputs.target }}"
"""


class TestPlanStructure:
    def test_steps_parallel_groups_and_metadata(self, tmp_path: Path) -> None:
        """A playbook compiles to a sealed Plan mirroring its steps, groups and metadata."""
        plan = _compile(tmp_path, HAPPY)
        assert (plan.name, plan.version, plan.owner, plan.outage_class) == (
            "happy",
            "2",
            "team-x",
            "demo",
        )
        assert plan.hash == plan.content_hash()
        assert [n.id for n in plan.nodes] == [
            "look",
            "observe",
            "flip",
            "both",
            "scale",
            "approved",
        ]
        both = plan.nodes[3]
        assert isinstance(both, ParallelNode)
        assert both.name == "Both at once"
        assert [b.id for b in both.branches] == ["left", "right"]
        right = both.branches[1]
        assert isinstance(right, StepNode)
        assert right.action.module == WAIT_MODULE
        assert plan.outputs == {
            "seen": "${{ steps.observe.outputs.observed }}",
            "left": "${{ steps.left.outputs.target }}",
        }
        assert plan.source is not None
        assert plan.source.file.endswith("main.yaml")

    def test_inputs_become_input_specs(self, tmp_path: Path) -> None:
        """Declared inputs keep their order, types, defaults and descriptions."""
        plan = _compile(tmp_path, HAPPY)
        assert [(i.name, i.type, i.required, i.default, i.description) for i in plan.inputs] == [
            ("flag", "string", True, None, "which flag"),
            ("replicas", "integer", False, 3, ""),
        ]

    def test_step_carries_module_facts_and_overrides(self, tmp_path: Path) -> None:
        """Timeouts, retry, policy and source come from the step, the rest from the module."""
        plan = _compile(tmp_path, HAPPY)
        flip = plan.nodes[2]
        assert isinstance(flip, StepNode)
        assert flip.action.module == "test.toggle"
        assert flip.action.domain == "core"
        assert flip.action.with_ == {"flag": "${{ inputs.flag }}", "enabled": True}
        assert (flip.action.start_to_close_s, flip.action.heartbeat_s) == (45.0, 10.0)
        assert (flip.action.retry.max_attempts, flip.action.retry.initial_interval_s) == (5, 2.0)
        assert flip.action.retry.max_interval_s == 30.0  # kept from the module
        assert (flip.risk, flip.mutates, flip.idempotent) == (Risk.medium, True, True)
        assert (flip.on_failure, flip.decision_timeout_s) == (OnFailure.ask, 1800.0)
        assert flip.source is not None
        assert flip.source.line == _line(HAPPY, "- id: flip")

    def test_defaults_apply_where_the_step_says_nothing(self, tmp_path: Path) -> None:
        """Playbook on_failure, module timeout and retry, and 1 h decision timeout by default."""
        plan = _compile(tmp_path, HAPPY)
        look = plan.nodes[0]
        assert isinstance(look, StepNode)
        assert look.name == "look"
        assert look.on_failure == OnFailure.halt
        assert look.decision_timeout_s == 3600.0
        assert look.action.start_to_close_s == 60.0
        assert look.action.retry.max_attempts == 3
        assert look.gate is None
        assert look.compensation is None

    def test_checks_and_check_steps(self, tmp_path: Path) -> None:
        """Step checks become CheckCalls with deadlines; a check as a step is marked."""
        plan = _compile(tmp_path, HAPPY)
        observe, flip = plan.nodes[1], plan.nodes[2]
        assert isinstance(observe, StepNode)
        assert isinstance(flip, StepNode)
        assert observe.is_check
        assert observe.action.local
        assert not flip.is_check
        [pre] = flip.preconditions
        assert (pre.name, pre.deadline_s, pre.poll_interval_s, pre.local) == (
            "test.probe",
            60.0,
            2.0,
            True,
        )
        [post] = flip.postconditions
        assert (post.deadline_s, post.poll_interval_s) == (120.0, 5.0)
        assert post.with_ == {"target": "${{ output.flag }}"}

    def test_module_compensation_is_resolved_into_the_step(self, tmp_path: Path) -> None:
        """A mapping compensation is copied; a whole-expression one becomes ``$from``."""
        plan = _compile(tmp_path, HAPPY)
        flip, scale = plan.nodes[2], plan.nodes[4]
        assert isinstance(flip, StepNode)
        assert isinstance(scale, StepNode)
        assert flip.compensation is not None
        assert flip.compensation.module == "test.toggle"
        assert flip.compensation.with_ == {
            "flag": "${{ input.flag }}",
            "enabled": "${{ output.previous }}",
        }
        assert scale.compensation is not None
        assert scale.compensation.with_ == {"$from": "${{ input.undo }}"}
        assert scale.compensation.when is None  # undo is written out, so it always exists

    def test_gate_resolves_approvers_from_the_catalog(self, tmp_path: Path) -> None:
        """Tier defaults to the role's, approvers are the sorted members."""
        plan = _compile(tmp_path, HAPPY)
        approved = plan.nodes[5]
        assert isinstance(approved, StepNode)
        assert approved.gate is not None
        assert approved.gate.model_dump() == {
            "role": "sre-oncall",
            "tier": 1,
            "timeout_s": 900.0,
            "min_approvals": 2,
            "approvers": ["alice", "bob"],
        }

    def test_role_without_members_admits_anyone(self, tmp_path: Path) -> None:
        """A role without members compiles to approvers=None."""
        text = HAPPY.replace("{role: sre-oncall, timeout: 15m, min_approvals: 2}", "{role: anyone}")
        approved = _compile(tmp_path, text).nodes[5]
        assert isinstance(approved, StepNode)
        assert approved.gate is not None
        assert approved.gate.approvers is None
        assert approved.gate.timeout_s == 900.0

    def test_declared_postcondition_follows_its_when_input(self, tmp_path: Path) -> None:
        """A module's check appears only when its ``when`` input is set; guarded if dynamic."""
        base = """\
        name: restore
        inputs: {url: {type: string}}
        steps:
          - id: compat
            uses: test.check_compat
            with: {app_version: "1", schema_version: "2"}
          - id: restore
            uses: test.restore_database
            with: {backup_id: b1%s}
            approval: {role: sre-senior}
        """
        without = _compile(tmp_path / "a", base % "").nodes[1]
        static = _compile(tmp_path / "b", base % ", verify_url: http://x").nodes[1]
        dynamic = _compile(tmp_path / "c", base % ', verify_url: "${{ inputs.url }}"').nodes[1]
        joined = ', verify_url: "${{ inputs.url }}/x/${{ inputs.url }}"'
        text = _compile(tmp_path / "d", base % joined).nodes[1]
        assert isinstance(without, StepNode)
        assert isinstance(static, StepNode)
        assert isinstance(dynamic, StepNode)
        assert without.postconditions == []
        assert [(c.name, c.when) for c in static.postconditions] == [("test.probe", None)]
        assert [(c.name, c.when) for c in dynamic.postconditions] == [
            ("test.probe", "input.verify_url")
        ]
        assert dynamic.postconditions[0].with_ == {"target": "${{ input.verify_url }}"}
        assert isinstance(text, StepNode)
        assert [c.when for c in text.postconditions] == [None]  # text is never null
        assert (dynamic.risk, dynamic.requires, dynamic.idempotent) == (
            Risk.critical,
            ["app_compatible"],
            False,
        )

    def test_step_compensate_overrides_the_module(self, tmp_path: Path) -> None:
        """``compensate:`` replaces the module's own compensation."""
        text = """\
        name: override
        steps:
          - id: flip
            uses: test.toggle
            with: {flag: f, enabled: true}
            compensate:
              uses: test.scale
              with: {replicas: "${{ output.previous }}"}
        """
        flip = _compile(tmp_path, text).nodes[0]
        assert isinstance(flip, StepNode)
        assert flip.compensation is not None
        assert flip.compensation.module == "test.scale"
        assert flip.compensation.with_ == {"replicas": "${{ output.previous }}"}


class TestHash:
    def test_same_yaml_same_hash(self, tmp_path: Path) -> None:
        """Compiling the same file twice yields the same content hash."""
        library = _library(tmp_path, {"main.yaml": HAPPY})
        first, second = library.compile("happy"), library.compile("happy")
        assert first.hash == second.hash
        assert len(first.hash) == 64
        assert (
            PlaybookLibrary.load(tmp_path / "playbooks", catalog=CATALOG, registry=REGISTRY)
            .compile("happy")
            .hash
            == first.hash
        )

    def test_changed_yaml_changes_the_hash(self, tmp_path: Path) -> None:
        """Any change to what runs changes the hash."""
        before = _compile(tmp_path / "a", HAPPY).hash
        after = _compile(tmp_path / "b", HAPPY.replace("enabled: true", "enabled: false")).hash
        assert before != after


PARENT = """\
name: parent
inputs: {flag: {type: string, required: true}}
steps:
  - id: first
    uses: test.read
    with: {target: x}
  - id: child
    playbook: child
    with: {flag: "${{ inputs.flag }}"}
    approval: {role: sre-senior}
    on_failure: halt
  - id: after
    uses: test.read
    with: {target: "${{ steps.child.outputs.flipped }}"}
outputs:
  flipped: "${{ steps.child.outputs.flipped }}"
"""

CHILD = """\
name: child
inputs:
  flag: {type: string, required: true}
  mode: {type: string, default: fast}
  extra: {type: string}
steps:
  - id: flip
    uses: test.toggle
    with: {flag: "${{ inputs.flag }}", enabled: true}
outputs:
  flipped: "${{ steps.flip.outputs.flag }}"
"""


class TestIncludes:
    def test_include_embeds_the_compiled_child(self, tmp_path: Path) -> None:
        """An include carries the child's sealed Plan, its gate and the filled-in inputs."""
        plan = _compile(tmp_path, PARENT, CHILD)
        include = plan.nodes[1]
        assert isinstance(include, IncludeNode)
        assert include.plan.name == "child"
        assert include.plan.hash == include.plan.content_hash()
        assert include.plan == _library(tmp_path, {}).compile("child")
        assert include.with_ == {"flag": "${{ inputs.flag }}", "mode": "fast", "extra": None}
        assert include.gate is not None
        assert (include.gate.role, include.gate.tier, include.gate.approvers) == (
            "sre-senior",
            2,
            ["carol", "erin"],
        )
        assert include.on_failure == OnFailure.halt

    def test_unknown_playbook(self, tmp_path: Path) -> None:
        """Including a playbook that does not exist names the close one."""
        text = PARENT.replace("playbook: child", "playbook: chlid")
        problem = _only(tmp_path, text, CHILD)
        assert (problem.line, problem.step) == (_line(text, "playbook: chlid"), "child")
        assert "no playbook named 'chlid' (did you mean 'child'?)" in problem.message

    def test_include_inputs_are_checked(self, tmp_path: Path) -> None:
        """Unknown and missing child inputs are errors at the include."""
        text = PARENT.replace('with: {flag: "${{ inputs.flag }}"}', "with: {flga: x}")
        messages = [(p.line, p.message) for p in _problems(tmp_path, text, CHILD)]
        assert (
            _line(text, "flga"),
            "playbook 'child' has no input 'flga' (did you mean 'flag'?); its inputs are: "
            "flag, mode, extra",
        ) in messages
        assert (
            _line(text, "flga"),
            "playbook 'child' requires input 'flag' (string); add it under with:",
        ) in messages

    def test_include_output_must_exist_in_the_child(self, tmp_path: Path) -> None:
        """``steps.<include>.outputs.X`` must be one of the child's outputs."""
        text = PARENT.replace(
            'target: "${{ steps.child.outputs.flipped }}"',
            'target: "${{ steps.child.outputs.flopped }}"',
        )
        problem = _only(tmp_path, text, CHILD)
        assert problem.line == _line(text, "flopped")
        assert "step 'child' (playbook child) has no output 'flopped'" in problem.message
        assert "did you mean 'flipped'?" in problem.message

    def test_include_cycle_names_the_chain(self, tmp_path: Path) -> None:
        """a includes b includes a is refused, naming the chain."""
        a = """\
        name: a
        steps:
          - id: to_b
            playbook: b
        """
        b = """\
        name: b
        steps:
          - id: to_a
            playbook: a
        """
        problems = _problems(tmp_path, a, b)
        cycle = [p for p in problems if "include cycle" in p.message]
        assert len(cycle) == 1
        assert cycle[0].message.startswith("include cycle: a -> b -> a")
        assert cycle[0].file.endswith("other0.yaml")
        assert (cycle[0].line, cycle[0].step) == (4, "to_a")

    def test_self_include(self, tmp_path: Path) -> None:
        """A playbook including itself is a cycle too."""
        text = """\
        name: loop
        steps:
          - id: again
            playbook: loop
        """
        problem = _only(tmp_path, text)
        assert problem.message.startswith("include cycle: loop -> loop")
        assert problem.line == 4

    def test_broken_child_fails_the_parent(self, tmp_path: Path) -> None:
        """The child's own problems are reported along with the include that uses it."""
        child = CHILD.replace("uses: test.toggle", "uses: test.togle")
        problems = _problems(tmp_path, PARENT, child)
        files = {(Path(p.file).name, p.line) for p in problems}
        assert ("other0.yaml", _line(child, "test.togle")) in files
        assert ("main.yaml", _line(PARENT, "playbook: child")) in files


class TestUnknownNames:
    def test_unknown_module_suggests_close_names(self, tmp_path: Path) -> None:
        """An unknown module is reported at its ``uses:`` line with a suggestion."""
        text = HAPPY.replace("uses: test.toggle", "uses: test.togle")
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step, problem.field) == (
            _line(text, "test.togle"),
            "flip",
            "uses",
        )
        assert "unknown module or check 'test.togle' (did you mean 'test.toggle'?)" in (
            problem.message
        )
        assert str(problem).endswith(f":{problem.line}: step 'flip': {problem.message}")

    def test_unknown_check(self, tmp_path: Path) -> None:
        """A precondition naming an unknown check, or a module, is refused."""
        text = HAPPY.replace(
            '- check: test.probe\n        with: {target: "${{ input.flag }}"}',
            '- check: test.prob\n        with: {target: "${{ input.flag }}"}',
        )
        problem = _only(tmp_path, text)
        assert (problem.line, problem.field) == (_line(text, "check: test.prob"), "preconditions")
        assert "unknown check 'test.prob' (did you mean 'test.probe'?)" in problem.message
        as_module = HAPPY.replace("- check: test.probe", "- check: test.read", 1)
        problem = _only(tmp_path / "m", as_module)
        assert "'test.read' is a module, not a check" in problem.message

    def test_duplicate_step_ids(self, tmp_path: Path) -> None:
        """Step ids are unique across the playbook, including inside parallel groups."""
        text = HAPPY.replace("- id: right", "- id: look")
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, "- id: look", 2), "look")
        assert problem.message.startswith(
            f"duplicate step id 'look' (first used at line {_line(text, '- id: look')})"
        )

    def test_step_needs_exactly_one_kind(self, tmp_path: Path) -> None:
        """uses, parallel and playbook exclude each other; extra keys per kind are refused."""
        text = """\
        name: kinds
        steps:
          - id: both
            uses: test.read
            playbook: other
          - id: group
            parallel:
              - {id: a, uses: test.read, with: {target: x}}
            retry: {max_attempts: 2}
        """
        problems = _problems(tmp_path, text)
        assert [(p.line, p.step) for p in problems] == [(3, "both"), (9, "group")]
        assert "exactly one of uses" in problems[0].message
        assert "(found uses, playbook)" in problems[0].message
        assert problems[1].message.startswith("'retry' does not apply here: a parallel group")


class TestWithInputs:
    def test_unknown_input_field(self, tmp_path: Path) -> None:
        """A ``with:`` key the module does not take is refused with a suggestion."""
        text = HAPPY.replace("with: {target: left}", "with: {target: left, limt: 3}")
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step, problem.field) == (
            _line(text, "limt"),
            "left",
            "with",
        )
        assert problem.message.startswith(
            "test.read has no input 'limt' (did you mean 'limit'?); its inputs are: limit, target"
        )

    def test_missing_required_input_field(self, tmp_path: Path) -> None:
        """A required module input left out is an error naming it."""
        text = HAPPY.replace("with: {target: left}", "with: {limit: 3}")
        problem = _only(tmp_path, text)
        assert problem.line == _line(text, "with: {limit: 3}")
        assert problem.message == "test.read requires input 'target'; add it under with:"

    def test_static_value_of_the_wrong_type(self, tmp_path: Path) -> None:
        """Values known at compile time are validated against the input model."""
        text = HAPPY.replace("with: {target: left}", "with: {target: left, limit: many}")
        problem = _only(tmp_path, text)
        assert problem.line == _line(text, "limit: many")
        assert problem.message.startswith("with.limit: Input should be a valid integer")

    def test_expression_values_skip_type_checks_but_must_exist(self, tmp_path: Path) -> None:
        """``${{ }}`` values are typed at run time, yet their key must be a real input."""
        ok = HAPPY.replace(
            "with: {target: left}", 'with: {target: left, limit: "${{ inputs.flag }}"}'
        )
        assert _compile(tmp_path / "ok", ok).nodes
        bad = HAPPY.replace(
            "with: {target: left}", 'with: {target: left, lim: "${{ inputs.flag }}"}'
        )
        problem = _only(tmp_path / "bad", bad)
        assert "test.read has no input 'lim'" in problem.message

    def test_check_with_is_validated(self, tmp_path: Path) -> None:
        """A check's ``with:`` is validated against the check's input model."""
        text = HAPPY.replace('with: {target: "${{ output.flag }}"}', "with: {targt: x}")
        messages = [p.message for p in _problems(tmp_path, text)]
        assert any("test.probe has no input 'targt'" in m for m in messages)
        assert "test.probe requires input 'target'; add it under with:" in messages

    def test_compensate_with_is_validated(self, tmp_path: Path) -> None:
        """A step's own compensation is validated against its module's inputs."""
        text = """\
        name: comp
        steps:
          - id: flip
            uses: test.toggle
            with: {flag: f, enabled: true}
            compensate:
              uses: test.scale
              with: {replicas: -1}
        """
        problem = _only(tmp_path, text)
        assert problem.line == _line(text, "replicas: -1")
        assert "with.replicas: Input should be greater than or equal to 0" in problem.message


class TestExpressions:
    def test_unknown_input(self, tmp_path: Path) -> None:
        """``inputs.X`` must be declared."""
        text = HAPPY.replace(
            'with: {target: "${{ inputs.flag }}"}', 'with: {target: "${{ inputs.flg }}"}'
        )
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, "inputs.flg"), "look")
        assert "unknown input 'flg' (did you mean 'flag'?)" in problem.message

    def test_later_step(self, tmp_path: Path) -> None:
        """A step cannot use the outputs of a step that runs after it."""
        text = HAPPY.replace(
            "with: {target: left}", 'with: {target: "${{ steps.scale.outputs.replicas }}"}'
        )
        problem = _only(tmp_path, text)
        assert problem.step == "left"
        assert "step 'scale' runs after this one" in problem.message

    def test_sibling_in_the_same_parallel_group(self, tmp_path: Path) -> None:
        """Branches of one parallel group cannot use each other's outputs."""
        text = HAPPY.replace(
            "with: {seconds: 5}", 'with: {seconds: 5, reason: "${{ steps.left.outputs.target }}"}'
        )
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, "steps.left.outputs"), "right")
        assert "step 'left' runs in parallel with this one" in problem.message

    def test_own_outputs(self, tmp_path: Path) -> None:
        """A step's ``with:`` cannot use its own outputs."""
        text = HAPPY.replace(
            "with: {target: left}", 'with: {target: "${{ steps.left.outputs.target }}"}'
        )
        problem = _only(tmp_path, text)
        assert "cannot use its own outputs" in problem.message

    def test_unknown_output_field(self, tmp_path: Path) -> None:
        """The field must exist in the step's output model."""
        text = HAPPY.replace("steps.look.outputs.target", "steps.look.outputs.tagret")
        problem = _only(tmp_path, text)
        assert problem.line == _line(text, "tagret")
        assert "step 'look' (test.read) has no output 'tagret' (did you mean 'target'?)" in (
            problem.message
        )

    def test_check_step_outputs_are_check_result_fields(self, tmp_path: Path) -> None:
        """A check used as a step has the CheckResult fields as outputs."""
        text = HAPPY.replace("steps.observe.outputs.observed", "steps.observe.outputs.target")
        problem = _only(tmp_path, text)
        assert problem.field is None
        assert problem.line == _line(text, "steps.observe.outputs.target")
        assert "its outputs are: detail, expected, observed, satisfied" in problem.message

    def test_parallel_group_has_no_outputs(self, tmp_path: Path) -> None:
        """A parallel group's id cannot be used as a source of outputs."""
        text = HAPPY.replace("steps.left.outputs.target", "steps.both.outputs.target")
        problem = _only(tmp_path, text)
        assert "'both' is a parallel group and has no outputs" in problem.message

    def test_input_and_output_only_in_checks_and_compensation(self, tmp_path: Path) -> None:
        """``input.*`` in a step's ``with:`` is refused; ``output.*`` in preconditions too."""
        text = HAPPY.replace(
            'with: {target: "${{ input.flag }}"}', 'with: {target: "${{ output.flag }}"}'
        ).replace("with: {target: left}", 'with: {target: "${{ input.target }}"}')
        problems = _problems(tmp_path, text)
        assert [(p.step, p.line) for p in problems] == [
            ("flip", _line(text, "${{ output.flag }}")),
            ("left", _line(text, "input.target")),
        ]
        assert "output.* is not available in preconditions" in problems[0].message
        assert "input.* exists only in a step's checks and compensation" in problems[1].message

    def test_input_field_must_belong_to_the_step(self, tmp_path: Path) -> None:
        """``input.X`` in a check must be one of the step's module inputs."""
        text = HAPPY.replace("${{ input.flag }}", "${{ input.flg }}")
        problem = _only(tmp_path, text)
        assert "the step has no input 'flg' (did you mean 'flag'?)" in problem.message

    def test_malformed_expression(self, tmp_path: Path) -> None:
        """Expressions are dotted paths only; anything else reports the resolver's message."""
        text = HAPPY.replace(
            '${{ inputs.flag }}"}\n  - id: observe', '${{ inputs.flag + 1 }}"}\n  - id: observe'
        )
        problem = _only(tmp_path, text)
        assert problem.step == "look"
        assert "is not a reference: use a dotted path" in problem.message

    def test_unclosed_expression(self, tmp_path: Path) -> None:
        """An expression without its closing braces is not silently left as text."""
        text = HAPPY.replace("with: {target: left}", 'with: {target: "${{ inputs.flag"}')
        problem = _only(tmp_path, text)
        assert problem.message.startswith("unclosed expression")

    def test_playbook_outputs_reference_real_steps(self, tmp_path: Path) -> None:
        """Playbook outputs must name existing steps and fields."""
        text = HAPPY.replace(
            'left: "${{ steps.left.outputs.target }}"', 'left: "${{ steps.lfet.outputs.target }}"'
        )
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, "steps.lfet"), None)
        assert "no step 'lfet' in this playbook (did you mean 'left'?)" in problem.message


RESTORE = """\
name: restore
steps:
  - id: look
    uses: test.read
    with: {target: db}
  - id: restore
    uses: test.restore_database
    with: {backup_id: b1}
    approval: {role: sre-senior}
"""


class TestFacts:
    def test_required_fact_without_provider(self, tmp_path: Path) -> None:
        """A step requiring a fact nobody provided earlier is refused, naming providers."""
        problem = _only(tmp_path, RESTORE)
        assert (problem.line, problem.step, problem.field) == (
            _line(RESTORE, "uses: test.restore_database"),
            "restore",
            "uses",
        )
        assert problem.message == (
            "step 'restore' (test.restore_database) requires fact 'app_compatible', which no "
            "earlier step provides; add a step that provides it before this one (modules "
            "providing it: test.check_compat)"
        )

    def test_provided_earlier_is_fine(self, tmp_path: Path) -> None:
        """A providing step before the requiring one satisfies the rule."""
        text = RESTORE.replace(
            "uses: test.read\n    with: {target: db}",
            "uses: test.check_compat\n    with: {app_version: '1', schema_version: '2'}",
        )
        restore = _compile(tmp_path, text).nodes[1]
        assert isinstance(restore, StepNode)
        assert restore.provides == ["database_restored"]

    def test_provided_later_does_not_count(self, tmp_path: Path) -> None:
        """A provider after the requiring step does not help."""
        text = RESTORE + (
            "  - id: compat\n    uses: test.check_compat\n"
            "    with: {app_version: '1', schema_version: '2'}\n"
        )
        problem = _only(tmp_path, text)
        assert "requires fact 'app_compatible'" in problem.message

    def test_parallel_sibling_does_not_count(self, tmp_path: Path) -> None:
        """A provider running in parallel may not have finished."""
        text = """\
        name: race
        steps:
          - id: both
            parallel:
              - id: compat
                uses: test.check_compat
                with: {app_version: "1", schema_version: "2"}
              - id: restore
                uses: test.restore_database
                with: {backup_id: b1}
                approval: {role: sre-senior}
          - id: again
            uses: test.restore_database
            with: {backup_id: b2}
            approval: {role: sre-senior}
        """
        problem = _only(tmp_path, text)
        assert (problem.step, problem.line) == ("restore", _line(text, "uses: test.restore"))
        assert "a step running in parallel with it provides it" in problem.message

    def test_included_playbook_sees_facts_provided_before_it(self, tmp_path: Path) -> None:
        """Facts flow into an include, and out of it to later steps."""
        child = RESTORE.replace("name: restore", "name: child-restore")
        parent = """\
        name: outer
        steps:
          - id: compat
            uses: test.check_compat
            with: {app_version: "1", schema_version: "2"}
          - id: inner
            playbook: child-restore
        """
        plan = _compile(tmp_path, parent, child)
        assert isinstance(plan.nodes[1], IncludeNode)

    def test_include_without_the_fact_reports_inside_the_child(self, tmp_path: Path) -> None:
        """The missing fact is reported at the child's step, naming the include."""
        child = RESTORE.replace("name: restore", "name: child-restore")
        parent = """\
        name: outer
        steps:
          - id: inner
            playbook: child-restore
        """
        problems = _problems(tmp_path, parent, child)
        facts = [p for p in problems if "requires fact" in p.message]
        assert len(facts) == 1
        assert facts[0].file.endswith("other0.yaml")
        assert facts[0].line == _line(child, "uses: test.restore_database")
        assert "(in playbook 'child-restore' included by step 'inner')" in facts[0].message


class TestUndoOrGate:
    def test_mutating_step_without_compensation_or_gate(self, tmp_path: Path) -> None:
        """A change with no way back and no human decision is refused."""
        text = HAPPY.replace(
            'with: {replicas: "${{ inputs.replicas }}", undo: {replicas: 1}}',
            'with: {replicas: "${{ inputs.replicas }}"}',
        )
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, "uses: test.scale"), "scale")
        assert problem.message.startswith(
            "test.scale changes the target system but this step has neither a compensation "
            "nor an approval gate: set with.undo"
        )

    def test_compensation_guarded_by_an_expression_is_carried_with_when(
        self, tmp_path: Path
    ) -> None:
        """A ``when`` input given as a whole expression guards the compensation at run time."""
        text = HAPPY.replace(
            "replicas: {type: integer, default: 3}",
            "replicas: {type: integer, default: 3}\n  undo: {type: object, required: true}",
        ).replace("undo: {replicas: 1}", 'undo: "${{ inputs.undo }}"')
        scale = _compile(tmp_path, text).nodes[4]
        assert isinstance(scale, StepNode)
        assert scale.compensation is not None
        assert scale.compensation.with_ == {"$from": "${{ input.undo }}"}
        assert scale.compensation.when == "input.undo"

    def test_undo_from_an_optional_input_counts_as_no_undo(self, tmp_path: Path) -> None:
        """An undo that may resolve to nothing at run time is no undo: refused without a gate."""
        text = HAPPY.replace(
            "replicas: {type: integer, default: 3}",
            "replicas: {type: integer, default: 3}\n  undo: {type: object}",
        ).replace("undo: {replicas: 1}", 'undo: "${{ inputs.undo }}"')
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, 'undo: "${{'), "scale")
        assert "may be empty when the step runs" in problem.message
        assert "make the input required or give it a default, or add an `approval:`" in (
            problem.message
        )

    @pytest.mark.parametrize(
        "declaration",
        ["undo: {type: object, default: {replicas: 1}}", "undo: {type: object, required: true}"],
    )
    def test_undo_from_an_input_that_is_always_set(self, tmp_path: Path, declaration: str) -> None:
        """A required input, or one with a default, always carries the undo."""
        text = HAPPY.replace(
            "replicas: {type: integer, default: 3}",
            f"replicas: {{type: integer, default: 3}}\n  {declaration}",
        ).replace("undo: {replicas: 1}", 'undo: "${{ inputs.undo }}"')
        scale = _compile(tmp_path, text).nodes[4]
        assert isinstance(scale, StepNode)
        assert scale.compensation is not None

    def test_undo_from_an_earlier_output_counts_as_no_undo(self, tmp_path: Path) -> None:
        """An earlier step's output may be null, so it does not count as an undo either."""
        text = HAPPY.replace("undo: {replicas: 1}", 'undo: "${{ steps.look.outputs.target }}"')
        problem = _only(tmp_path, text)
        assert problem.step == "scale"
        assert "may be empty when the step runs" in problem.message

    def test_optional_undo_is_accepted_behind_a_gate(self, tmp_path: Path) -> None:
        """With an approval gate a human decides, so the possibly missing undo is allowed."""
        text = HAPPY.replace(
            "replicas: {type: integer, default: 3}",
            "replicas: {type: integer, default: 3}\n  undo: {type: object}",
        ).replace(
            "undo: {replicas: 1}}",
            'undo: "${{ inputs.undo }}"}\n    approval: {role: sre-oncall}',
        )
        scale = _compile(tmp_path, text).nodes[4]
        assert isinstance(scale, StepNode)
        assert scale.gate is not None
        assert scale.compensation is not None
        assert scale.compensation.when == "input.undo"

    def test_irreversible_step_needs_a_gate_even_with_compensate(self, tmp_path: Path) -> None:
        """Irreversible modules always need an approval gate."""
        text = """\
        name: irreversible
        steps:
          - id: compat
            uses: test.check_compat
            with: {app_version: "1", schema_version: "2"}
          - id: restore
            uses: test.restore_database
            with: {backup_id: b1}
            compensate: {uses: test.toggle, with: {flag: f, enabled: false}}
        """
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step) == (_line(text, "uses: test.restore"), "restore")
        assert "test.restore_database is irreversible (critical risk)" in problem.message
        assert "add `approval: {role: <catalog role>}`" in problem.message

    def test_check_step_cannot_be_compensated(self, tmp_path: Path) -> None:
        """Checks change nothing, so ``compensate:`` on them is a mistake."""
        text = HAPPY.replace(
            "    name: Observe first\n",
            "    name: Observe first\n    compensate: {uses: test.read, with: {target: x}}\n",
        )
        problem = _only(tmp_path, text)
        assert "is a check and changes nothing" in problem.message


class TestApproval:
    def test_unknown_role(self, tmp_path: Path) -> None:
        """The role must be in the catalog; a close name is suggested."""
        text = HAPPY.replace("role: sre-oncall", "role: sre-oncal")
        problem = _only(tmp_path, text)
        assert (problem.line, problem.step, problem.field) == (
            _line(text, "sre-oncal"),
            "approved",
            "approval",
        )
        assert problem.message.startswith("unknown role 'sre-oncal' (did you mean 'sre-oncall'?)")

    def test_more_approvals_than_members(self, tmp_path: Path) -> None:
        """min_approvals cannot exceed the role's members."""
        text = HAPPY.replace("min_approvals: 2", "min_approvals: 3")
        problem = _only(tmp_path, text)
        assert problem.line == _line(text, "min_approvals: 3")
        assert problem.message.startswith(
            "min_approvals is 3 but role 'sre-oncall' has only 2 member(s) (alice, bob)"
        )

    def test_tier_out_of_range(self, tmp_path: Path) -> None:
        """Tiers are 0 to 3."""
        text = HAPPY.replace("timeout: 15m, min_approvals: 2", "tier: 4")
        problem = _only(tmp_path, text)
        assert (problem.line, problem.field) == (_line(text, "tier: 4"), "approval.tier")

    def test_no_catalog(self, tmp_path: Path) -> None:
        """Without a catalog no gate can be checked, and the message says where to put it."""
        library = _library(tmp_path, {"main.yaml": HAPPY}, catalog=None)
        with pytest.raises(CompileError) as caught:
            library.compile("happy")
        [problem] = caught.value.problems
        assert "no catalog is loaded (put catalog.yaml next to the playbooks)" in str(problem)

    def test_catalog_yaml_of_the_directory_is_used(self, tmp_path: Path) -> None:
        """Without an explicit catalog, the directory's catalog.yaml is loaded."""
        folder = _write(
            tmp_path,
            {
                "main.yaml": HAPPY,
                "catalog.yaml": "roles:\n  sre-oncall: {tier: 2, members: [x, y, z]}\n",
            },
        )
        library = PlaybookLibrary.load(folder, registry=REGISTRY)
        assert library.names() == ["happy"]
        approved = library.compile("happy").nodes[5]
        assert isinstance(approved, StepNode)
        assert approved.gate is not None
        assert (approved.gate.tier, approved.gate.approvers) == (2, ["x", "y", "z"])


class TestLibrary:
    def test_compile_by_path_and_validate_all(self, tmp_path: Path) -> None:
        """Playbooks compile by file path too; validate_all maps every file to its problems."""
        folder = _write(
            tmp_path,
            {
                "good.yaml": HAPPY,
                "bad.yaml": HAPPY.replace("name: happy", "name: bad").replace(
                    "test.toggle", "test.nope"
                ),
                "broken.yml": "name: [\n",
            },
        )
        library = PlaybookLibrary.load(folder, catalog=CATALOG, registry=REGISTRY)
        assert library.names() == ["bad", "happy"]
        assert library.compile(str(folder / "good.yaml")).name == "happy"
        report = {Path(k).name: v for k, v in library.validate_all().items()}
        assert report["good.yaml"] == []
        assert [p.step for p in report["bad.yaml"]] == ["flip"]
        assert len(report["broken.yml"]) == 1
        assert report["broken.yml"][0].message.startswith("YAML syntax error")
        assert report["broken.yml"][0].to_dict()["file"].endswith("broken.yml")

    def test_unknown_name(self, tmp_path: Path) -> None:
        """Asking for a playbook that does not exist suggests the close one."""
        library = _library(tmp_path, {"main.yaml": HAPPY})
        with pytest.raises(
            CompileError, match=r"no playbook named 'hapy' \(did you mean 'happy'\?\)"
        ):
            library.compile("hapy")

    def test_duplicate_names_across_files(self, tmp_path: Path) -> None:
        """Two files may not declare the same playbook name."""
        library = _library(tmp_path, {"a.yaml": HAPPY, "b.yaml": HAPPY})
        with pytest.raises(CompileError) as caught:
            library.compile("happy")
        [problem] = caught.value.problems
        assert "playbook name 'happy' is already used by" in str(problem)
        assert problem.line == 1  # type: ignore[attr-defined]


class TestRunInputs:
    def test_defaults_and_coercion(self, tmp_path: Path) -> None:
        """CLI strings are coerced to declared types and defaults are filled in."""
        plan = _compile(
            tmp_path,
            CHILD.replace(
                "  extra: {type: string}",
                "  extra: {type: string}\n  n: {type: integer}\n  on: {type: boolean}\n"
                "  cfg: {type: object}\n  xs: {type: array}\n  ratio: {type: number}",
            ),
        )
        given = {
            "flag": "f",
            "n": "3",
            "on": "true",
            "cfg": '{"a": 1}',
            "xs": "[1]",
            "ratio": "0.5",
        }
        assert apply_input_defaults(plan, given) == {
            "flag": "f",
            "mode": "fast",
            "extra": None,
            "n": 3,
            "on": True,
            "cfg": {"a": 1},
            "xs": [1],
            "ratio": 0.5,
        }

    def test_unknown_missing_and_wrong_type(self, tmp_path: Path) -> None:
        """Every problem with the run inputs is named in one error."""
        plan = _compile(tmp_path, CHILD.replace("extra: {type: string}", "extra: {type: integer}"))
        with pytest.raises(ValueError, match="playbook 'child': ") as caught:
            apply_input_defaults(plan, {"flg": "x", "extra": "lots"})
        message = str(caught.value)
        assert "unknown input 'flg' (did you mean 'flag'?)" in message
        assert "missing required input 'flag' (string)" in message
        assert "input 'extra' must be an integer, got string \"lots\"" in message

    def test_bad_default_is_a_compile_problem(self, tmp_path: Path) -> None:
        """A default that does not match the declared type is caught when compiling."""
        text = CHILD.replace(
            "mode: {type: string, default: fast}", "mode: {type: integer, default: fast}"
        )
        problem = _only(tmp_path, text)
        assert problem.line == _line(text, "default: fast")
        assert "'mode' must be an integer" in problem.message


LEAF = """\
name: child
steps:
  - id: only
    uses: core.wait
    with: {seconds: 1}
"""
INCLUDER = """\
name: parent
steps:
  - id: inner
    playbook: child
"""


class TestLibraryLookup:
    def test_one_file_resolves_includes_from_its_folder(self, tmp_path: Path) -> None:
        """Validating one file finds the playbooks it includes beside it, checking only it."""
        folder = _write(
            tmp_path, {"parent.yaml": INCLUDER, "child.yaml": LEAF, "broken.yaml": "name: [\n"}
        )
        library = PlaybookLibrary.load(folder / "parent.yaml", catalog=CATALOG, registry=REGISTRY)
        plan = library.compile("parent")
        inner = plan.nodes[0]
        assert isinstance(inner, IncludeNode)
        assert inner.plan.name == "child"
        assert list(library.validate_all()) == [str(folder / "parent.yaml")]
        assert library.validate_all()[str(folder / "parent.yaml")] == []

    def test_compile_by_name_never_reads_a_path(self, tmp_path: Path) -> None:
        """A path, even of a real playbook file, is an unknown name listing the known ones."""
        folder = _write(tmp_path, {"child.yaml": LEAF})
        outside = tmp_path / "secret.yaml"
        outside.write_text(LEAF.replace("name: child", "name: secret"))
        library = PlaybookLibrary.load(folder, catalog=CATALOG, registry=REGISTRY)
        assert library.compile_by_name("child").name == "child"
        for name in (str(outside), "../secret.yaml", "secret", "x" * 5000):
            with pytest.raises(UnknownPlaybook) as caught:
                library.compile_by_name(name)
            assert caught.value.known == ["child"]
            message = str(caught.value)
            assert "known playbooks: child" in message
            assert "core.wait" not in message  # nothing of any file is echoed
            assert len(message) < 300
        assert library.compile(str(outside)).name == "secret"  # the CLI may still pass a path

    def test_include_chain_depth_is_capped(self, tmp_path: Path) -> None:
        """A chain of includes deeper than the cap is refused at the include that is too deep."""
        files = {"p0.yaml": LEAF.replace("name: child", "name: p0")}
        for i in range(1, MAX_INCLUDE_DEPTH + 2):
            files[f"p{i}.yaml"] = INCLUDER.replace("name: parent", f"name: p{i}").replace(
                "playbook: child", f"playbook: p{i - 1}"
            )
        library = _library(tmp_path, files)
        assert library.compile(f"p{MAX_INCLUDE_DEPTH}").name == f"p{MAX_INCLUDE_DEPTH}"
        with pytest.raises(CompileError) as caught:
            library.compile(f"p{MAX_INCLUDE_DEPTH + 1}")
        assert any(
            f"includes nest more than {MAX_INCLUDE_DEPTH} playbooks deep" in str(p)
            for p in caught.value.problems
        )

    def test_the_shipped_api_outage_playbook_validates_alone(self) -> None:
        """`fireline validate playbooks/api-outage.yaml` finds its includes beside it."""
        path = Path(__file__).parent.parent / "playbooks" / "api-outage.yaml"
        library = PlaybookLibrary.load(path)
        report = library.validate_all()
        assert any(file.endswith("api-outage.yaml") for file in report)
        assert all(problems == [] for problems in report.values()), report
        plan = library.compile("api-outage")
        assert any(isinstance(node, IncludeNode) for node in plan.walk())


# -- declared checks over optional inputs -------------------------------------------------


class Mode(StrEnum):
    gentle = "gentle"
    hard = "hard"


class CordonInput(BaseModel):
    pool: str
    keep_healthy: int = 2
    mode: Mode = Mode.gentle
    note: str | None = None
    hosts: list[str] = Field(default_factory=list)
    stamp: str = Field(default_factory=lambda: "made-per-call")
    template: str = "${{ inputs.secret }}"


class CordonOutput(BaseModel):
    pool: str


def _cordon(name: str, check_with: dict[str, str], when: str | None = None) -> object:
    @module(
        name,
        domain="core",
        preconditions=[CheckRef(check="test.probe", with_=check_with, when=when)],
        description="Cordon a pool (a compiler fixture).",
    )
    async def cordon(request: CordonInput) -> CordonOutput:
        return CordonOutput(pool=request.pool)

    return cordon


DEFAULTS_REGISTRY = REGISTRY.extended(
    _cordon("test.cordon", {"target": "${{ input.pool }}", "expect": "${{ input.keep_healthy }}"}),
    _cordon("test.cordon_mode", {"target": "m-${{ input.mode }}", "expect": "${{ input.hosts }}"}),
    _cordon("test.cordon_note", {"target": "${{ input.pool }}", "expect": "${{ input.note }}"}),
    _cordon("test.cordon_stamp", {"target": "${{ input.stamp }}"}),
    _cordon("test.cordon_template", {"target": "${{ input.template }}"}),
    _cordon("test.cordon_guarded", {"target": "${{ input.stamp }}"}, when="stamp"),
)


CORDON = """\
name: cordon
inputs: {k: {type: integer}, s: {type: string}}
steps:
  - id: cordon
    uses: %s
    with: {pool: web%s}
"""


def _cordon_step(tmp_path: Path, uses: str, extra: str = "") -> StepNode:
    folder = _write(tmp_path, {"main.yaml": CORDON % (uses, extra)})
    library = PlaybookLibrary.load(folder, catalog=CATALOG, registry=DEFAULTS_REGISTRY)
    node = library.compile("cordon").nodes[0]
    assert isinstance(node, StepNode)
    return node


def _cordon_problems(tmp_path: Path, uses: str, extra: str = "") -> list[str]:
    folder = _write(tmp_path, {"main.yaml": CORDON % (uses, extra)})
    library = PlaybookLibrary.load(folder, catalog=CATALOG, registry=DEFAULTS_REGISTRY)
    with pytest.raises(CompileError) as caught:
        library.compile("cordon")
    return [str(p) for p in caught.value.problems]


class TestDeclaredInputDefaults:
    def test_a_default_the_declared_check_reads_is_written_into_the_step(
        self, tmp_path: Path
    ) -> None:
        """The run resolves input.* against the step's with:, so the default goes there."""
        step = _cordon_step(tmp_path, "test.cordon")
        assert step.action.with_ == {"pool": "web", "keep_healthy": 2}
        assert step.preconditions[0].with_ == {
            "target": "${{ input.pool }}",
            "expect": "${{ input.keep_healthy }}",
        }

    def test_only_the_inputs_read_are_filled_in(self, tmp_path: Path) -> None:
        """An enum default goes in as its JSON value, an empty-list factory as []; nothing
        the checks do not read is added (mode and hosts here, keep_healthy not)."""
        step = _cordon_step(tmp_path, "test.cordon_mode")
        assert step.action.with_ == {"pool": "web", "mode": "gentle", "hosts": []}

    def test_a_value_the_playbook_writes_is_kept(self, tmp_path: Path) -> None:
        step = _cordon_step(tmp_path, "test.cordon", ', keep_healthy: "${{ inputs.k }}"')
        assert step.action.with_ == {"pool": "web", "keep_healthy": "${{ inputs.k }}"}

    def test_a_null_default_is_a_default(self, tmp_path: Path) -> None:
        """note defaults to null: the check gets null rather than failing 'not found'."""
        step = _cordon_step(tmp_path, "test.cordon_note")
        assert step.action.with_ == {"pool": "web", "note": None}

    def test_a_default_made_per_call_is_not_frozen_and_is_reported(self, tmp_path: Path) -> None:
        """A factory other than list/dict may differ per call: the plan cannot carry it, so a
        check reading it unset is a compile problem that says what to set."""
        [problem] = _cordon_problems(tmp_path, "test.cordon_stamp")
        assert "input.stamp" in problem
        assert "test.probe that test.cordon_stamp declares" in problem
        assert "set with.stamp" in problem
        step = _cordon_step(tmp_path / "set", "test.cordon_stamp", ", stamp: s1")
        assert step.action.with_ == {"pool": "web", "stamp": "s1"}

    def test_a_default_that_reads_as_an_expression_is_not_written(self, tmp_path: Path) -> None:
        """A default holding ${{ }} would be resolved against the run: it is refused instead."""
        [problem] = _cordon_problems(tmp_path, "test.cordon_template")
        assert "input.template" in problem

    def test_a_check_guarded_by_the_input_it_reads_needs_no_default(self, tmp_path: Path) -> None:
        """when: stamp — left out, the check does not exist; set, it reads what was set."""
        without = _cordon_step(tmp_path, "test.cordon_guarded")
        assert (without.preconditions, without.action.with_) == ([], {"pool": "web"})
        dynamic = _cordon_step(tmp_path / "d", "test.cordon_guarded", ', stamp: "${{ inputs.s }}"')
        assert [c.when for c in dynamic.preconditions] == ["input.stamp"]

    def test_the_playbooks_own_check_reads_defaults_too(self, tmp_path: Path) -> None:
        text = """\
        name: own
        steps:
          - id: look
            uses: test.read
            with: {target: t}
            postconditions:
              - check: test.probe
                with: {target: "${{ input.target }}", expect: "${{ input.limit }}"}
        """
        step = _compile(tmp_path, text).nodes[0]
        assert isinstance(step, StepNode)
        assert step.action.with_ == {"target": "t", "limit": 10}

    def test_the_shipped_playbooks_compile_unchanged(self) -> None:
        """No shipped playbook's check reads an input it leaves out, so no plan grows."""
        library = PlaybookLibrary.load(Path(__file__).parent.parent / "playbooks")
        for name in library.names():
            plan = library.compile(name)
            assert plan.source is not None
            written = _written_with(yaml.safe_load(Path(plan.source.file).read_text())["steps"])
            for node in plan.walk():
                if isinstance(node, StepNode):
                    assert set(node.action.with_) <= written[node.id], (name, node.id)


def _written_with(entries: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The keys each step of a playbook file writes under its with:, by step id."""
    out: dict[str, set[str]] = {}
    for entry in entries:
        out[entry["id"]] = set(entry.get("with") or {})
        if isinstance(entry.get("parallel"), list):
            out |= _written_with(entry["parallel"])
    return out


def test_input_defaults_keep_only_what_survives_a_plan_unchanged() -> None:
    """JSON values (enums as their value, empty containers); not infinities, which the
    workflow's JSON would turn into null, nor expressions, nor per-call factories."""

    class Model(BaseModel):
        need: str
        mode: Mode = Mode.hard
        limit: float = float("inf")
        hosts: dict[str, int] = Field(default_factory=dict)
        stamp: str = Field(default_factory=lambda: "x")
        template: str = "${{ inputs.x }}"
        aliased: int = Field(default=3, alias="aliasedKey")

    assert input_defaults(Model) == {"mode": "hard", "hosts": {}, "aliased": 3, "aliasedKey": 3}
