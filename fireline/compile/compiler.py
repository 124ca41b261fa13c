"""Compile YAML playbooks into sealed Plans, or explain precisely why they cannot run.

Everything that can be known before an incident is checked here, at the keyboard, rather than
at 3 a.m. in the middle of a rollback: modules and their inputs, expressions and what they
refer to, include cycles, facts a step needs from earlier steps, compensations and approval
gates for anything that changes a system, and the people who may approve. Each problem names
the file, line, step and what to do about it.

Here: ``PlaybookLibrary`` (compile one playbook, validate them all) and the walk of one file
into Plan nodes. Beside it: ``fireline.playbook.library`` (files, names, catalog),
``references`` (what expressions may refer to), ``facts`` (requires/provides across the whole
plan) and ``inputs`` (typed run inputs).

The module registry is an object the caller passes (``fireline.modules.load_registry()`` by
default), so this module never imports implementations and tests can add modules of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from fireline.catalog.model import CATALOG_FILE, Catalog
from fireline.compile.facts import fact_problems
from fireline.compile.inputs import apply_input_defaults, coerce_input
from fireline.compile.policy import apply_policy, freeze_rights
from fireline.compile.references import (
    Place,
    ReferenceCheck,
    StepInfo,
    contains_expression,
    whole_expression,
)
from fireline.errors import CompileError
from fireline.modules import (
    IRREVERSIBLE,
    CheckRef,
    CheckResult,
    CompensationRef,
    ModuleSpec,
    Registry,
    load_registry,
)
from fireline.plan import (
    ActivityCall,
    CheckCall,
    GateSpec,
    IncludeNode,
    InputSpec,
    Node,
    ParallelNode,
    Plan,
    RetrySpec,
    SourceRef,
    StepNode,
)
from fireline.playbook.durations import format_duration
from fireline.playbook.expressions import EXPRESSION, ExpressionError, parse_path
from fireline.playbook.library import PlaybookFiles, PlaybookSource
from fireline.playbook.loader import PathKey, Problem, YamlDocument, field_keys, suggestion
from fireline.playbook.spec import (
    KIND_KEYS,
    STEP_LIST_KEYS,
    ApprovalEntry,
    CheckEntry,
    InputDecl,
    PlaybookSpec,
    RetryEntry,
    StepEntry,
    yaml_key,
)

__all__ = ["PlaybookLibrary", "Problem", "apply_input_defaults", "coerce_input"]

DEFAULT_CHECK_DEADLINE_S = 60.0
DEFAULT_CHECK_INTERVAL_S = 2.0
DEFAULT_DECISION_TIMEOUT_S = 3600.0
MAX_INCLUDE_DEPTH = 16
"""Deepest chain of playbooks including playbooks; each level nests the Plan further."""
FROM_KEY = "$from"
"""An ActivityCall ``with_`` of ``{"$from": "${{ expr }}"}`` resolves to the whole object."""

_CHECK_FIELDS = frozenset(CheckResult.model_fields)


class PlaybookLibrary:
    """A set of playbooks that may include each other, plus the catalog their gates name."""

    def __init__(self, files: PlaybookFiles, registry: Registry | None = None) -> None:
        self.files = files
        self.registry = registry if registry is not None else load_registry()
        self._cache: dict[str, tuple[Plan | None, list[Problem]]] = {}
        self._uses_lines: dict[tuple[str, str], int | None] = {}

    @classmethod
    def load(
        cls, *paths: Path, catalog: Catalog | None = None, registry: Registry | None = None
    ) -> PlaybookLibrary:
        """Parse every playbook under ``paths`` (directories or files); never raises.

        Without ``catalog``, ``catalog.yaml`` of the first directory (or, given only files, of
        the first file's directory) is used when present.
        """
        return cls(PlaybookFiles.load(*paths, catalog=catalog), registry)

    def names(self) -> list[str]:
        return self.files.names()

    def compile(self, name_or_path: str) -> Plan:
        """The sealed Plan of a playbook (by name, or by file path); raises CompileError."""
        self._fresh()
        plan, problems = self._compile_top(self.files.find(str(name_or_path)))
        if plan is None or problems:
            raise CompileError(problems)
        return plan

    def compile_by_name(self, name: str) -> Plan:
        """The sealed Plan of the library's playbook called ``name``: never a file path.

        For names that come from outside (the API): nothing but the library's own files is
        read, and an unknown name raises ``UnknownPlaybook`` (a CompileError) listing the
        known ones.
        """
        self._fresh()
        plan, problems = self._compile_top(self.files.by_name(name))
        if plan is None or problems:
            raise CompileError(problems)
        return plan

    def validate_all(self) -> dict[str, list[Problem]]:
        """Every file of the library (and the catalog) mapped to its problems; [] means fine."""
        self._fresh()
        out: dict[str, list[Problem]] = {src.file: [] for src in self.files.sources}
        if self.files.catalog_file is not None:
            out[self.files.catalog_file] = list(self.files.catalog_problems)
        for src in self.files.sources:
            _, problems = self._compile_top(src)
            for problem in problems:
                bucket = out.setdefault(problem.file, [])
                if problem not in bucket:
                    bucket.append(problem)
        return out

    def _fresh(self) -> None:
        """Forget earlier compilations: the registry may have gained modules since."""
        self._cache = {}
        self._uses_lines = {}

    def _compile_top(self, src: PlaybookSource) -> tuple[Plan | None, list[Problem]]:
        plan, problems = self._compile_source(src, ())
        problems = list(problems)
        if plan is not None:
            problems += fact_problems(plan.nodes, self._uses_lines, self.registry)
        return (plan if not problems else None), list(dict.fromkeys(problems))

    def _compile_source(
        self, src: PlaybookSource, stack: tuple[str, ...]
    ) -> tuple[Plan | None, list[Problem]]:
        """Compiled once per file and top-level compilation, however often it is included."""
        if src.spec is None or src.doc is None:
            return None, list(src.problems)
        if src.file not in self._cache:
            unit = _Unit(self, src, (*stack, src.spec.name))
            plan = unit.run()
            problems = [*src.problems, *unit.problems]
            self._cache[src.file] = (plan if not problems else None, problems)
        return self._cache[src.file]


class _Unit:
    """Compilation of one playbook file; collects problems instead of stopping at the first."""

    def __init__(self, lib: PlaybookLibrary, src: PlaybookSource, stack: tuple[str, ...]) -> None:
        assert src.spec is not None
        assert src.doc is not None
        self.lib = lib
        self.spec: PlaybookSpec = src.spec
        self.doc: YamlDocument = src.doc
        self.file = src.file
        self.stack = stack
        self.problems: list[Problem] = []
        self.steps: dict[str, StepInfo] = {}
        self.references = ReferenceCheck(self.spec.inputs, self.steps, self.problem)

    def problem(
        self, path: PathKey, step: str | None, message: str, field: str | None = None
    ) -> None:
        if field is None and len(path) > 2 and path[0] == "steps":
            field = _field_name(path)
        self.problems.append(Problem(self.file, self.doc.line_of(path), step, field, message))

    def run(self) -> Plan | None:
        inputs = self._inputs()
        self._index(self.spec.steps, ("steps",), ())
        nodes = self._sequence(self.spec.steps, ("steps",), set())
        self._outputs()
        catalog = self.lib.files.catalog
        rights = freeze_rights(catalog, self.spec.owner) if catalog is not None else None
        if rights is not None:
            self.problems += apply_policy(nodes, rights, self.file)
        if self.problems:
            return None
        return Plan(
            name=self.spec.name,
            version=self.spec.version,
            owner=self.spec.owner,
            outage_class=self.spec.outage_class,
            description=self.spec.description,
            inputs=inputs,
            nodes=nodes,
            outputs=dict(self.spec.outputs),
            on_failure=self.spec.on_failure,
            source=SourceRef(file=self.file),
            rights=rights,
        ).sealed()

    # -- inputs and outputs ---------------------------------------------------------------

    def _inputs(self) -> list[InputSpec]:
        out: list[InputSpec] = []
        for name, decl in self.spec.inputs.items():
            spec = _input_spec(name, decl)
            path: PathKey = ("inputs", name)
            if decl.required and decl.default is not None:
                self.problem(
                    (*path, "default"),
                    None,
                    f"input '{name}' is required and has a default; a default means it may be "
                    "left out, so drop one of the two",
                )
            elif decl.default is not None:
                try:
                    coerce_input(spec, decl.default, from_text=False)
                except ValueError as exc:
                    self.problem((*path, "default"), None, f"default of input {exc}")
            out.append(spec)
        return out

    def _outputs(self) -> None:
        visible = set(self.steps)
        for key, value in self.spec.outputs.items():
            self.references.check(value, ("outputs", key), "outputs", None, visible)

    # -- steps ----------------------------------------------------------------------------

    def _index(self, entries: list[StepEntry], path: PathKey, groups: tuple[str, ...]) -> None:
        for i, entry in enumerate(entries):
            p = (*path, i)
            if entry.id in self.steps:
                first = self.doc.line_of(self.steps[entry.id].path)
                self.problem(
                    (*p, "id"),
                    entry.id,
                    f"duplicate step id '{entry.id}' (first used at line {first}); step ids "
                    "must be unique within a playbook, including inside parallel groups",
                )
                continue
            self.steps[entry.id] = self._info(entry, p, groups)
            if entry.parallel:
                self._index(entry.parallel, (*p, "parallel"), (*groups, entry.id))

    def _info(self, entry: StepEntry, path: PathKey, groups: tuple[str, ...]) -> StepInfo:
        kind: str | None = None
        outputs: frozenset[str] | None = None
        label = "a step"
        if entry.uses is not None:
            kind = "uses"
            spec = self.lib.registry.get(entry.uses)
            if spec is not None:
                label = spec.name
                outputs = (
                    _CHECK_FIELDS if spec.kind == "check" else _model_fields(spec.output_model)
                )
        elif entry.playbook is not None:
            kind = "playbook"
            child = self.lib.files.named(entry.playbook)
            label = f"playbook {entry.playbook}"
            if child is not None and child.spec is not None:
                outputs = frozenset(child.spec.outputs)
        elif entry.parallel is not None:
            kind = "parallel"
            label = "parallel group"
        return StepInfo(entry.id, path, len(self.steps), kind, groups, outputs, label)

    def _sequence(self, entries: list[StepEntry], path: PathKey, visible: set[str]) -> list[Node]:
        done = set(visible)
        nodes: list[Node] = []
        for i, entry in enumerate(entries):
            node = self._node(entry, (*path, i), done)
            if node is not None:
                nodes.append(node)
            done |= _ids(entry)
        return nodes  # a step left out has always reported a problem

    def _node(self, entry: StepEntry, path: PathKey, visible: set[str]) -> Node | None:
        kinds = [k for k in ("uses", "parallel", "playbook") if getattr(entry, k) is not None]
        if len(kinds) != 1:
            found = f" (found {', '.join(kinds)})" if kinds else ""
            self.problem(
                path,
                entry.id,
                f"a step needs exactly one of uses (a module or check), parallel (a list of "
                f"steps) or playbook (a playbook to include){found}",
            )
            return None
        kind = kinds[0]
        for name in sorted(entry.model_fields_set - KIND_KEYS[kind]):
            key = yaml_key(name)
            what = {
                "parallel": "a parallel group takes only id, name and parallel; put it on its "
                "branches",
                "playbook": "an included playbook takes only id, name, playbook, with, approval, "
                "on_failure and decision_timeout",
                "uses": "a module step takes no parallel or playbook",
            }[kind]
            self.problem((*path, key), entry.id, f"'{key}' does not apply here: {what}")
        if kind == "parallel":
            return self._parallel(entry, path, visible)
        if kind == "playbook":
            return self._include(entry, path, visible)
        return self._step(entry, path, visible)

    def _parallel(self, entry: StepEntry, path: PathKey, visible: set[str]) -> ParallelNode | None:
        assert entry.parallel is not None
        branches = [
            self._node(branch, (*path, "parallel", j), visible)
            for j, branch in enumerate(entry.parallel)
        ]
        if any(b is None for b in branches):
            return None
        return ParallelNode(
            id=entry.id,
            name=entry.name or entry.id,
            branches=[b for b in branches if b is not None],
            source=self._source(path),
        )

    def _include(self, entry: StepEntry, path: PathKey, visible: set[str]) -> IncludeNode | None:
        assert entry.playbook is not None
        name = entry.playbook
        child = self.lib.files.named(name)
        child_plan: Plan | None = None
        if child is None:
            self.problem(
                (*path, "playbook"),
                entry.id,
                f"no playbook named '{name}'{suggestion(name, self.lib.names())}; known "
                f"playbooks: {', '.join(self.lib.names()) or 'none'}",
            )
        elif name in self.stack:
            chain = " -> ".join([*self.stack[self.stack.index(name) :], name])
            self.problem(
                (*path, "playbook"),
                entry.id,
                f"include cycle: {chain}; a playbook cannot include itself, directly or not",
            )
        elif len(self.stack) > MAX_INCLUDE_DEPTH:
            self.problem(
                (*path, "playbook"),
                entry.id,
                f"includes nest more than {MAX_INCLUDE_DEPTH} playbooks deep "
                f"({' -> '.join([*self.stack, name])}); include fewer levels",
            )
        else:
            child_plan, child_problems = self.lib._compile_source(child, self.stack)
            if child_plan is None:
                self.problems.extend(child_problems)
                self.problem(
                    (*path, "playbook"),
                    entry.id,
                    f"included playbook '{name}' does not compile; fix the problems reported "
                    f"for {child.file}",
                )
        with_ = dict(entry.with_)
        if child is not None and child.spec is not None:
            with_ = self._include_inputs(child.spec, with_, (*path, "with"), entry.id)
        self._with_expressions(entry, path, visible)
        gate = self._gate(entry.approval, (*path, "approval"), entry.id)
        if child_plan is None:
            return None
        return IncludeNode(
            id=entry.id,
            name=entry.name or entry.id,
            plan=child_plan,
            with_=with_,
            gate=gate,
            on_failure=entry.on_failure or self.spec.on_failure,
            decision_timeout_s=entry.decision_timeout or DEFAULT_DECISION_TIMEOUT_S,
            source=self._source(path),
        )

    def _include_inputs(
        self, child: PlaybookSpec, with_: dict[str, Any], path: PathKey, step: str
    ) -> dict[str, Any]:
        """Check an include's ``with:`` against the child's inputs; fill the child's defaults."""
        specs = {name: _input_spec(name, d) for name, d in child.inputs.items()}
        for key, value in with_.items():
            if key not in specs:
                self.problem(
                    (*path, key),
                    step,
                    f"playbook '{child.name}' has no input '{key}'{suggestion(key, specs)}; "
                    f"its inputs are: {', '.join(specs) or 'none'}",
                )
            elif not contains_expression(value):
                try:
                    coerce_input(specs[key], value, from_text=False)
                except ValueError as exc:
                    self.problem((*path, key), step, f"input {exc}")
        out = dict(with_)
        for spec in specs.values():
            if spec.name in with_:
                continue
            if spec.required:
                self.problem(
                    path,
                    step,
                    f"playbook '{child.name}' requires input '{spec.name}' ({spec.type}); add it "
                    "under with:",
                )
            else:
                out[spec.name] = spec.default
        return out

    def _step(self, entry: StepEntry, path: PathKey, visible: set[str]) -> StepNode | None:
        assert entry.uses is not None
        spec = self.lib.registry.get(entry.uses)
        if spec is None:
            self.problem(
                (*path, "uses"),
                entry.id,
                f"unknown module or check '{entry.uses}'"
                f"{suggestion(entry.uses, self.lib.registry.names())}; "
                "`fireline modules` lists what is registered",
            )
            self._with_expressions(entry, path, visible)
            return None
        with_ = dict(entry.with_)
        self._check_with(spec, with_, (*path, "with"), entry.id)
        self._with_expressions(entry, path, visible)
        gate = self._gate(entry.approval, (*path, "approval"), entry.id)
        is_check = spec.kind == "check"
        inputs = field_keys(spec.input_model)
        outputs = _CHECK_FIELDS if is_check else _model_fields(spec.output_model)
        declared_pre = self._declared_checks(spec, spec.preconditions, with_, path, entry.id)
        own_pre = self._own_checks(
            entry.preconditions, (*path, "preconditions"), entry.id, visible, inputs, None
        )
        declared_post = self._declared_checks(spec, spec.postconditions, with_, path, entry.id)
        own_post = self._own_checks(
            entry.postconditions, (*path, "postconditions"), entry.id, visible, inputs, outputs
        )
        pre, post = declared_pre + own_pre, declared_post + own_post
        compensation = self._compensation(entry, spec, with_, path, visible, inputs, outputs)
        self._fill_defaults(
            spec,
            with_,
            [(c, True) for c in (*declared_pre, *declared_post)]
            + [(c, False) for c in (*own_pre, *own_post)],
            (compensation, entry.compensate is None) if compensation else None,
            path,
            entry.id,
        )
        self._gate_or_undo(entry, spec, gate, compensation, path)
        retry = self._retry(spec.retry, entry.retry, (*path, "retry"), entry.id)
        self.lib._uses_lines[(self.file, entry.id)] = self.doc.line_of((*path, "uses"))
        return StepNode(
            id=entry.id,
            name=entry.name or entry.id,
            action=ActivityCall(
                **_call_settings(
                    spec, timeout=entry.timeout, heartbeat=entry.heartbeat, retry=retry
                ),
                with_=with_,
                preview=spec.preview,
            ),
            risk=spec.risk,
            mutates=spec.mutates,
            idempotent=spec.idempotent,
            preconditions=pre,
            postconditions=post,
            gate=gate,
            compensation=compensation,
            on_failure=entry.on_failure or self.spec.on_failure,
            decision_timeout_s=entry.decision_timeout or DEFAULT_DECISION_TIMEOUT_S,
            is_check=is_check,
            requires=list(spec.requires),
            provides=list(spec.provides),
            source=self._source(path),
        )

    # -- parts of a step ------------------------------------------------------------------

    def _check_with(
        self, spec: ModuleSpec, with_: dict[str, Any], path: PathKey, step: str
    ) -> None:
        """Unknown and missing inputs, and static values that cannot validate."""
        model = spec.input_model
        keys = field_keys(model)
        if model.model_config.get("extra") != "allow":
            for key in with_:
                if key not in keys:
                    self.problem(
                        (*path, key),
                        step,
                        f"{spec.name} has no input '{key}'{suggestion(str(key), keys)}; its "
                        f"inputs are: {', '.join(sorted(keys)) or 'none'}",
                    )
        dynamic: set[str] = set()
        for name, info in model.model_fields.items():
            spellings = {name, info.alias or name}
            if spellings & {k for k in with_ if contains_expression(with_[k])}:
                dynamic |= spellings
            if info.is_required() and not spellings & set(with_):
                self.problem(
                    path,
                    step,
                    f"{spec.name} requires input '{info.alias or name}'; add it under with:",
                )
        static = {k: v for k, v in with_.items() if k in keys and k not in dynamic}
        try:
            model.model_validate(static)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                if err["type"] == "missing" or (loc and str(loc[0]) in dynamic):
                    continue
                if not loc and dynamic:
                    continue  # a whole-model rule may depend on values known only at run time
                where = ".".join(str(p) for p in loc)
                self.problem(
                    (*path, *loc),
                    step,
                    f"with.{where}: {err['msg']}" if where else f"with: {err['msg']}",
                )

    def _declared_checks(
        self,
        spec: ModuleSpec,
        refs: tuple[CheckRef, ...],
        with_: dict[str, Any],
        path: PathKey,
        step: str,
    ) -> list[CheckCall]:
        """A module's own pre/postconditions, switched on by their ``when`` input."""
        calls: list[CheckCall] = []
        effective = {**input_defaults(spec.input_model), **with_}
        for ref in refs:
            present, when = _switch(ref.when, effective)
            if not present:
                continue
            check = self.lib.registry.get(ref.check)
            if check is None or check.kind != "check":
                self.problem(
                    (*path, "uses"),
                    step,
                    f"{spec.name} declares the check '{ref.check}', which is not a registered "
                    "check; load its domain or fix the module",
                )
                continue
            calls.append(_check_call(check, ref.with_, when, ref.deadline_s, ref.poll_interval_s))
        return calls

    def _own_checks(
        self,
        entries: list[CheckEntry],
        path: PathKey,
        step: str,
        visible: set[str],
        inputs: set[str],
        outputs: frozenset[str] | None,
    ) -> list[CheckCall]:
        calls: list[CheckCall] = []
        where: Place = "postconditions" if outputs is not None else "preconditions"
        for j, entry in enumerate(entries):
            p = (*path, j)
            check = self.lib.registry.get(entry.check)
            self.references.check(entry.with_, (*p, "with"), where, step, visible, inputs, outputs)
            if check is None or check.kind != "check":
                checks = self.lib.registry.names("check")
                what = (
                    f"'{entry.check}' is a module, not a check"
                    if check is not None
                    else f"unknown check '{entry.check}'"
                )
                self.problem((*p, "check"), step, f"{what}{suggestion(entry.check, checks)}")
                continue
            self._check_with(check, dict(entry.with_), (*p, "with"), step)
            calls.append(_check_call(check, entry.with_, None, entry.deadline, entry.interval))
        return calls

    def _compensation(
        self,
        entry: StepEntry,
        spec: ModuleSpec,
        with_: dict[str, Any],
        path: PathKey,
        visible: set[str],
        inputs: set[str],
        outputs: frozenset[str] | None,
    ) -> ActivityCall | None:
        if entry.compensate is not None:
            p = (*path, "compensate")
            self.references.check(
                entry.compensate.with_,
                (*p, "with"),
                "compensate",
                entry.id,
                visible,
                inputs,
                outputs,
            )
            if spec.kind == "check":
                self.problem(
                    p, entry.id, f"{spec.name} is a check and changes nothing: drop compensate:"
                )
                return None
            undo = self.lib.registry.get(entry.compensate.uses)
            if undo is None or undo.kind != "module":
                modules = self.lib.registry.names("module")
                what = (
                    f"'{entry.compensate.uses}' is a check, not a module"
                    if undo is not None
                    else f"unknown module '{entry.compensate.uses}'"
                )
                hint = suggestion(entry.compensate.uses, modules)
                self.problem((*p, "uses"), entry.id, f"compensate: {what}{hint}")
                return None
            comp_with = dict(entry.compensate.with_)
            self._check_with(undo, comp_with, (*p, "with"), entry.id)
            return _call(undo, comp_with)
        ref = spec.compensation
        if not isinstance(ref, CompensationRef):
            return None
        present, when = _switch(ref.when, {**input_defaults(spec.input_model), **with_})
        if not present:
            return None
        undo = self.lib.registry.get(ref.module)
        if undo is None:
            self.problem(
                (*path, "uses"),
                entry.id,
                f"{spec.name} is compensated by '{ref.module}', which is not registered; load "
                "its domain or fix the module",
            )
            return None
        comp_with = {FROM_KEY: ref.with_} if isinstance(ref.with_, str) else dict(ref.with_)
        return _call(undo, comp_with, when=when)

    def _fill_defaults(
        self,
        spec: ModuleSpec,
        with_: dict[str, Any],
        checks: list[tuple[CheckCall, bool]],
        compensation: tuple[ActivityCall, bool] | None,
        path: PathKey,
        step: str,
    ) -> None:
        """Give the step's checks and compensation the input the module validates, not only
        what the playbook wrote.

        At run time ``input.*`` is the step's resolved ``with:``, so a check reading an optional
        input the playbook left out would fail with "not found" in the middle of an incident.
        Each such input with a default is written into ``with_`` (the value the module's model
        fills in anyway, so the action is unchanged, a retry's new inputs still win, and
        approvers see the value the check uses); one without a default is a problem here,
        unless the call exists only when that input is set (its ``when``).
        ``checks`` and ``compensation`` pair each call with whether the module declares it.
        """
        model = spec.input_model
        keys = field_keys(model)
        defaults = input_defaults(model)
        calls: list[tuple[ActivityCall, bool]] = [
            *checks,
            *([compensation] if compensation else []),
        ]
        for call, declared in calls:
            guard = _when_field(call.when)
            for field in _input_fields(call):
                if field in with_ or field not in keys:
                    continue
                if field in defaults:
                    with_[field] = defaults[field]
                elif field != guard and not _is_required(model, field):
                    if isinstance(call, CheckCall):
                        what = f"the check {call.name}" + (
                            f" that {spec.name} declares" if declared else ""
                        )
                    else:
                        what = f"{spec.name}'s compensation" if declared else "the compensation"
                    self.problem(
                        (*path, "with"),
                        step,
                        f"{what} reads input.{field}, which this step does not set and "
                        f"which has no default, so it would fail when the step runs: set "
                        f"with.{field}",
                    )

    def _gate_or_undo(
        self,
        entry: StepEntry,
        spec: ModuleSpec,
        gate: GateSpec | None,
        compensation: ActivityCall | None,
        path: PathKey,
    ) -> None:
        """A step that changes something is either undoable or approved by a human first."""
        if not spec.mutates or gate is not None or entry.approval is not None:
            return
        p = (*path, "uses")
        if spec.compensation == IRREVERSIBLE:
            self.problem(
                p,
                entry.id,
                f"{spec.name} is irreversible ({spec.risk.value} risk) and cannot be undone, so it "
                "needs an approval gate: add `approval: {role: <catalog role>}` to this step",
            )
        elif compensation is None:
            ref = spec.compensation
            fix = "add `compensate: {uses: <module>, with: {...}}` or an `approval:`"
            if isinstance(ref, CompensationRef) and ref.when:
                fix = f"set with.{ref.when} (which enables {spec.name}'s own compensation), " + fix
            self.problem(
                p,
                entry.id,
                f"{spec.name} changes the target system but this step has neither a "
                f"compensation nor an approval gate: {fix}",
            )
        elif compensation.when is not None and not self._always_set(entry, spec):
            ref = spec.compensation
            field = ref.when if isinstance(ref, CompensationRef) else None
            written = entry.with_.get(field) if field else None
            self.problem(
                (*path, "with", field) if field else p,
                entry.id,
                f"{spec.name}'s undo comes from with.{field} = {written!r}, which may be empty "
                "when the step runs (an optional input without a default, or an earlier "
                "step's output), and then the step would change the system with neither an "
                "undo nor a gate: make the input required or give it a default, or add an "
                "`approval:`",
            )

    def _always_set(self, entry: StepEntry, spec: ModuleSpec) -> bool:
        """Whether the expression enabling a module's own undo can never resolve to null.

        Only a playbook input that is required or has a default is known to be set; a run
        refuses a required input given as null.
        """
        ref = spec.compensation
        if not isinstance(ref, CompensationRef) or ref.when is None:
            return True
        value = entry.with_.get(ref.when)
        match = EXPRESSION.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            return value is not None
        try:
            parts = parse_path(match.group(1))
        except ExpressionError:
            return False
        if len(parts) != 2 or parts[0] not in ("inputs", "input"):
            return False
        decl = self.spec.inputs.get(str(parts[1]))
        return decl is not None and (decl.required or decl.default is not None)

    def _gate(self, entry: ApprovalEntry | None, path: PathKey, step: str) -> GateSpec | None:
        if entry is None:
            return None
        files = self.lib.files
        catalog = files.catalog
        if catalog is None:
            if files.catalog_problems:
                self.problems.extend(files.catalog_problems)
                why = f"{files.catalog_file} does not load"
            else:
                why = f"no catalog is loaded (put {CATALOG_FILE} next to the playbooks)"
            self.problem((*path, "role"), step, f"role '{entry.role}' cannot be checked: {why}")
            return None
        role = catalog.roles.get(entry.role)
        if role is None:
            known = ", ".join(sorted(catalog.roles)) or "none"
            self.problem(
                (*path, "role"),
                step,
                f"unknown role '{entry.role}'{suggestion(entry.role, catalog.roles)}; roles in "
                f"the catalog: {known}",
            )
            return None
        approvers = catalog.approvers(entry.role)
        if approvers is not None and entry.min_approvals > len(approvers):
            self.problem(
                (*path, "min_approvals"),
                step,
                f"min_approvals is {entry.min_approvals} but role '{entry.role}' has only "
                f"{len(approvers)} member(s) ({', '.join(approvers)}); lower it or add members "
                "to the role in the catalog",
            )
            return None
        return GateSpec(
            role=entry.role,
            tier=entry.tier if entry.tier is not None else role.tier,
            timeout_s=entry.timeout,
            min_approvals=entry.min_approvals,
            approvers=approvers,
        )

    def _retry(
        self, base: RetrySpec, entry: RetryEntry | None, path: PathKey, step: str
    ) -> RetrySpec:
        if entry is None:
            return base.model_copy(deep=True)
        updates = {
            "max_attempts": entry.max_attempts,
            "initial_interval_s": entry.initial_interval,
            "backoff": entry.backoff,
            "max_interval_s": entry.max_interval,
            "non_retryable": entry.non_retryable,
        }
        retry = base.model_copy(update={k: v for k, v in updates.items() if v is not None})
        if retry.max_interval_s < retry.initial_interval_s:
            self.problem(
                (*path, "max_interval"),
                step,
                f"retry max_interval ({format_duration(retry.max_interval_s)}) is shorter than "
                f"initial_interval ({format_duration(retry.initial_interval_s)})",
            )
        return retry

    def _with_expressions(self, entry: StepEntry, path: PathKey, visible: set[str]) -> None:
        """A step's or include's ``with:``: playbook inputs and earlier steps' outputs."""
        self.references.check(entry.with_, (*path, "with"), "with", entry.id, visible)

    def _source(self, path: PathKey) -> SourceRef:
        return SourceRef(file=self.file, line=self.doc.line_of(path))


# -- small helpers ------------------------------------------------------------------------


def _ids(entry: StepEntry) -> set[str]:
    out = {entry.id}
    for branch in entry.parallel or ():
        out |= _ids(branch)
    return out


def _field_name(path: PathKey) -> str | None:
    """The first key below the innermost step in a YAML path (``with``, ``approval``...)."""
    last_step = 0
    for i, part in enumerate(path):
        if part in STEP_LIST_KEYS and i + 1 < len(path) and isinstance(path[i + 1], int):
            last_step = i + 2
    rest = path[last_step:]
    return str(rest[0]) if rest else None


def _model_fields(model: type[BaseModel]) -> frozenset[str]:
    """Output fields under both their names and aliases (either may reach the workflow)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
    return frozenset(names)


def input_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The defaults ``model`` fills in for inputs left out, under every key they may be
    written as, for those that survive the trip through a Plan's JSON unchanged.

    A default made by a factory counts only for the empty containers (``list``, ``dict``):
    any other factory may give a different value per call (a timestamp, an id), which a
    compiled plan must not freeze. A default holding ``${{`` would read as an expression.
    """
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            continue
        if info.default_factory is not None:
            if info.default_factory not in (list, dict):
                continue
            value: Any = info.default_factory()
        else:
            value = info.default
        try:
            plain = json.loads(json.dumps(to_jsonable_python(value), allow_nan=False))
        except (TypeError, ValueError, PydanticSerializationError):
            continue
        if contains_expression(plain):
            continue
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        for key in {name, alias or name}:
            out[key] = plain
    return out


def _is_required(model: type[BaseModel], key: str) -> bool:
    for name, info in model.model_fields.items():
        if key in (name, info.alias, info.validation_alias):
            return info.is_required()
    return False


def _when_field(when: str | None) -> str | None:
    """``input.x`` -> ``x``: the field a run-time guard skips the call on."""
    if when and when.startswith("input."):
        return when.split(".", 2)[1]
    return None


def _input_fields(call: ActivityCall) -> list[str]:
    """Fields of the step's own input a call refers to (a whole ``input`` is validated by
    the module it is given to, so it needs nothing here)."""
    out = [str(p[1]) for p in _references(call.with_) if len(p) > 1 and p[0] == "input"]
    field = _when_field(call.when)
    return [*out, field] if field else out


def _references(value: Any) -> list[list[str | int]]:
    """Well-formed references only: malformed ones are reported where they are written."""
    out: list[list[str | int]] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str):
            for match in EXPRESSION.finditer(item):
                try:
                    out.append(parse_path(match.group(1)))
                except ExpressionError:
                    continue
    return out


def _input_spec(name: str, decl: InputDecl) -> InputSpec:
    return InputSpec(
        name=name,
        type=decl.type,
        description=decl.description,
        required=decl.required,
        default=decl.default,
    )


def _switch(when: str | None, with_: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether a ``when``-guarded check or compensation exists, and its run-time guard.

    Absent means left out or null, as the workflow decides for the run-time guard.
    """
    if when is None:
        return True, None
    value = with_.get(when)
    if value is None:
        return False, None
    # Only a value that is one whole expression can turn out null when the step runs.
    return True, (f"input.{when}" if whole_expression(value) else None)


# -- calls --------------------------------------------------------------------------------


def _call_settings(
    spec: ModuleSpec,
    *,
    timeout: float | None = None,
    heartbeat: float | None = None,
    retry: RetrySpec | None = None,
) -> dict[str, Any]:
    """What a call of ``spec`` runs with: the module's declaration, unless the step overrides."""
    return {
        "module": spec.name,
        "domain": spec.domain,
        "local": spec.local,
        "start_to_close_s": timeout or spec.timeout.total_seconds(),
        "heartbeat_s": heartbeat or (spec.heartbeat.total_seconds() if spec.heartbeat else None),
        "retry": retry if retry is not None else spec.retry.model_copy(deep=True),
    }


def _call(spec: ModuleSpec, with_: dict[str, Any], when: str | None = None) -> ActivityCall:
    return ActivityCall(**_call_settings(spec), with_=with_, when=when)


def _check_call(
    spec: ModuleSpec,
    with_: dict[str, Any],
    when: str | None,
    deadline: float | None,
    interval: float | None,
) -> CheckCall:
    return CheckCall(
        **_call_settings(spec),
        name=spec.name,
        with_=dict(with_),
        when=when,
        deadline_s=deadline or DEFAULT_CHECK_DEADLINE_S,
        poll_interval_s=interval or DEFAULT_CHECK_INTERVAL_S,
    )
