"""The module contract: what turns an async function into a Fireline module or check.

``@module`` and ``@check`` register the function as a Temporal activity under its dotted name
and record everything the compiler and ``fireline modules`` need: typed input and output
models, domain, risk, whether it mutates and is idempotent, declared pre- and postconditions,
the facts it requires and provides, and its compensation (or that it is irreversible).

Modules that hold clients are methods of a :class:`ModuleSet` subclass whose constructor takes
the settings; the worker instantiates each set once and registers the bound methods.

The decorators only describe: they attach a :class:`ModuleSpec` to the function and register
nothing globally. A :class:`Registry` is built explicitly from the domain packages (each lists
what it offers in ``MODULES``), so tests and tools can hold registries of their own, and
importing ``fireline`` never imports ``activities`` or a driver.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from fireline import errors
from fireline.plan import CheckResult, Preview, RetrySpec, Risk
from fireline.runtime.settings import DOMAINS, Settings


class CheckRef(BaseModel):
    """A check a module declares, with parameters as expressions over its ``input``/``output``.

    ``when`` names an input field: the check applies only when that field is set, so optional
    verification data (a health URL, say) turns the check on without a second module.
    """

    model_config = ConfigDict(populate_by_name=True)

    check: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    when: str | None = None
    deadline_s: float | None = None
    poll_interval_s: float | None = None


class CompensationRef(BaseModel):
    """How to undo a module: another module and its input derived from this one's.

    ``with_`` may be a mapping of expressions, or a single expression string naming a whole
    object (``${{ input.compensation }}``). ``when`` names an input field that must be set for
    the compensation to exist; without it the step counts as having no compensation.
    """

    model_config = ConfigDict(populate_by_name=True)

    module: str
    with_: dict[str, Any] | str = Field(default_factory=dict, alias="with")
    when: str | None = None


IRREVERSIBLE: Literal["irreversible"] = "irreversible"

__all__ = [
    "IRREVERSIBLE",
    "MODULE_PACKAGE",
    "CheckRef",
    "CheckResult",
    "CompensationRef",
    "ModuleSet",
    "ModuleSpec",
    "Preview",
    "Registry",
    "bind_activities",
    "check",
    "load_registry",
    "module",
    "preview",
    "preview_activity",
]

MODULE_PACKAGE = "activities"
"""Where the domain packages live: ``activities.<domain>``, each with a ``MODULES`` list."""

SPEC_ATTR = "__fireline_spec__"
PREVIEW_ATTR = "__fireline_preview_of__"


def preview_activity(module_name: str) -> str:
    """The activity name of a module's preview."""
    return f"{module_name}.preview"


@dataclass(frozen=True)
class ModuleSpec:
    """Everything known about one registered module or check."""

    name: str
    kind: Literal["module", "check"]
    domain: str
    fn: Callable[..., Any]
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    description: str
    risk: Risk = Risk.low
    mutates: bool = False
    idempotent: bool = True
    preconditions: tuple[CheckRef, ...] = ()
    postconditions: tuple[CheckRef, ...] = ()
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    compensation: CompensationRef | Literal["irreversible"] | None = None
    local: bool = False
    timeout: timedelta = timedelta(seconds=60)
    heartbeat: timedelta | None = None
    retry: RetrySpec = field(default_factory=RetrySpec)
    owner: type[ModuleSet] | None = None
    """The ModuleSet class whose bound method implements it, if any (set by the Registry)."""
    preview_fn: Callable[..., Any] | None = None
    """What the module would change, read from real state (mutating modules; set by the
    Registry from the ``@preview`` function of the same set or package)."""

    @property
    def preview(self) -> str | None:
        """The preview's activity name, when the module has one."""
        return preview_activity(self.name) if self.preview_fn is not None else None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for ``fireline modules``."""
        comp: Any = self.compensation
        if isinstance(comp, CompensationRef):
            comp = comp.model_dump(by_alias=True)
        return {
            "name": self.name,
            "kind": self.kind,
            "domain": self.domain,
            "description": self.description,
            "risk": self.risk.value,
            "mutates": self.mutates,
            "idempotent": self.idempotent,
            "local": self.local,
            "preconditions": [
                c.model_dump(by_alias=True, exclude_none=True) for c in self.preconditions
            ],
            "postconditions": [
                c.model_dump(by_alias=True, exclude_none=True) for c in self.postconditions
            ],
            "requires": list(self.requires),
            "provides": list(self.provides),
            "compensation": comp,
            "preview": self.preview,
            "timeout_s": self.timeout.total_seconds(),
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }


class ModuleSet:
    """Base for modules that share clients; subclasses are instantiated once per worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def aclose(self) -> None:
        """Release clients; the worker calls it on shutdown."""


def _models(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    hints = inspect.get_annotations(fn, eval_str=True)
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    if len(params) != 1:
        raise TypeError(f"{fn.__qualname__}: a module takes exactly one pydantic model")
    inp, out = hints.get(params[0]), hints.get("return")
    if not (isinstance(inp, type) and issubclass(inp, BaseModel)):
        raise TypeError(f"{fn.__qualname__}: input must be a pydantic model")
    if not (isinstance(out, type) and issubclass(out, BaseModel)):
        raise TypeError(f"{fn.__qualname__}: output must be a pydantic model")
    return inp, out


_MAX_REPORTED_ERRORS = 10


def invalid_input_error(name: str, exc: ValidationError) -> ApplicationError:
    """A non-retryable failure naming every field that does not validate (never its value).

    Retrying cannot fix an input, so the step fails at once with the reason an operator can
    act on, instead of Temporal's retried "Failed decoding arguments".
    """
    errors_ = exc.errors(include_url=False, include_input=False, include_context=False)
    fields = [
        {"field": ".".join(str(p) for p in err["loc"]) or "(input)", "problem": err["msg"]}
        for err in errors_[:_MAX_REPORTED_ERRORS]
    ]
    listed = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
    more = f" (and {len(errors_) - len(fields)} more)" if len(errors_) > len(fields) else ""
    return ApplicationError(
        f"{name}: invalid input: {listed}{more}",
        {"fields": fields},
        type=errors.INVALID_INPUT,
        non_retryable=True,
    )


def _decode(name: str, model: type[BaseModel], arg: Any) -> BaseModel:
    """The module's input model from what the worker received (raw payload, dict or model)."""
    if isinstance(arg, model):
        return arg
    try:
        if isinstance(arg, RawValue):
            return model.model_validate_json(arg.payload.data)
        return model.model_validate(arg)
    except ValidationError as exc:
        raise invalid_input_error(name, exc) from None


def _validating(name: str, fn: Callable[..., Any], model: type[BaseModel]) -> Callable[..., Any]:
    """``fn`` registered so that the worker hands it the raw payload, validated here.

    Temporal decodes arguments before any interceptor runs and turns a validation error into
    a retryable "Failed decoding arguments"; taking the payload raw (``RawValue``) and
    validating it with the module's own model makes the field error the step's failure.
    """
    method = "self" in inspect.signature(fn).parameters
    returns = inspect.get_annotations(fn, eval_str=True).get("return")
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):
        if method:

            async def wrapper(self: Any, raw: Any) -> Any:
                return await fn(self, _decode(name, model, raw))
        else:

            async def wrapper(raw: Any) -> Any:
                return await fn(_decode(name, model, raw))
    elif method:

        def wrapper(self: Any, raw: Any) -> Any:
            return fn(self, _decode(name, model, raw))
    else:

        def wrapper(raw: Any) -> Any:
            return fn(_decode(name, model, raw))

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, attr, getattr(fn, attr))
    wrapper.__annotations__ = {"raw": RawValue, "return": returns}
    wrapper.__dict__.update(fn.__dict__)
    return wrapper


def _register(spec_kwargs: dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = spec_kwargs["name"]
        if spec_kwargs["domain"] not in DOMAINS:
            raise ValueError(f"{name}: unknown domain {spec_kwargs['domain']!r}")
        inp, out = _models(fn)
        description = spec_kwargs.pop("description", None) or inspect.getdoc(fn) or ""
        wrapper = _validating(name, fn, inp)
        spec = ModuleSpec(
            fn=wrapper,
            input_model=inp,
            output_model=out,
            description=description.strip().splitlines()[0] if description else "",
            **spec_kwargs,
        )
        setattr(wrapper, SPEC_ATTR, spec)
        return activity.defn(name=name)(wrapper)

    return decorate


def preview(module_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the preview of a mutating module: the same input model in, a :class:`Preview`
    out, reading real state and changing nothing. It runs on the module's domain queue (it
    needs the same credentials) before the step's gate opens."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        inp, out = _models(fn)
        if not issubclass(out, Preview):
            raise TypeError(f"{fn.__qualname__}: a preview returns fireline.plan.Preview")
        name = preview_activity(module_name)
        wrapper = _validating(name, fn, inp)
        setattr(wrapper, PREVIEW_ATTR, module_name)
        return activity.defn(name=name)(wrapper)

    return decorate


def module(
    name: str,
    *,
    domain: str,
    risk: Risk = Risk.low,
    mutates: bool = False,
    idempotent: bool = True,
    compensation: CompensationRef | Literal["irreversible"] | None = None,
    preconditions: list[CheckRef] | None = None,
    postconditions: list[CheckRef] | None = None,
    requires: list[str] | None = None,
    provides: list[str] | None = None,
    timeout: timedelta = timedelta(seconds=60),
    heartbeat: timedelta | None = None,
    retry: RetrySpec | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a remediation step. A mutating module must say how it is undone."""
    if mutates and compensation is None:
        raise ValueError(f"{name}: a mutating module declares a compensation or IRREVERSIBLE")
    if retry is None:
        # Retrying something that is not idempotent can do the damage twice.
        retry = RetrySpec() if idempotent else RetrySpec(max_attempts=1)
    return _register(
        dict(
            name=name,
            kind="module",
            domain=domain,
            risk=risk,
            mutates=mutates,
            idempotent=idempotent,
            compensation=compensation,
            preconditions=tuple(preconditions or ()),
            postconditions=tuple(postconditions or ()),
            requires=tuple(requires or ()),
            provides=tuple(provides or ()),
            timeout=timeout,
            heartbeat=heartbeat,
            retry=retry,
            description=description,
        )
    )


def check(
    name: str,
    *,
    domain: str,
    local: bool = True,
    timeout: timedelta = timedelta(seconds=15),
    retry: RetrySpec | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a probe returning :class:`CheckResult`.

    ``local`` checks run as local activities on the workflow worker (cheap, no credentials);
    checks that need a domain's credentials set ``local=False`` and run on that domain's queue.
    """
    return _register(
        dict(
            name=name,
            kind="check",
            domain=domain,
            local=local,
            timeout=timeout,
            retry=retry or RetrySpec(max_attempts=2, initial_interval_s=0.2),
            description=description,
        )
    )


class Registry:
    """The modules and checks one process knows, by name: built explicitly, never global.

    The compiler reads it to type-check steps, the worker to decide what to serve, the CLI
    and API to describe modules. ``collect`` takes functions, :class:`ModuleSet` classes or
    Python modules listing them in ``MODULES``.
    """

    def __init__(self, specs: Iterable[ModuleSpec] = ()) -> None:
        self._specs: dict[str, ModuleSpec] = {}
        for spec in specs:
            self._add(spec)

    @classmethod
    def collect(cls, *sources: object) -> Registry:
        return cls().extended(*sources)

    def extended(self, *sources: object) -> Registry:
        """A new registry with these sources' modules added to this one's."""
        out = Registry(self._specs.values())
        for source in sources:
            out._collect(source)
        return out

    def _collect(self, source: object) -> None:
        if isinstance(source, ModuleType):
            for item in getattr(source, "MODULES", ()):
                self._collect(item)
            return
        owner = source if isinstance(source, type) and issubclass(source, ModuleSet) else None
        functions: list[Callable[..., Any]] = (
            [f for _, f in inspect.getmembers(owner, inspect.isfunction)]
            if owner
            else [source]
            if callable(source)
            else []
        )
        previews = {getattr(f, PREVIEW_ATTR): f for f in functions if hasattr(f, PREVIEW_ATTR)}
        found = False
        for fn in functions:
            spec = getattr(fn, SPEC_ATTR, None)
            if isinstance(spec, ModuleSpec):
                found = True
                self._add(replace(spec, owner=owner, preview_fn=previews.pop(spec.name, None)))
        for name, fn in previews.items():
            if name not in self._specs:
                raise ValueError(f"{fn.__qualname__}: preview of unknown module {name!r}")
            self._specs[name] = replace(self._specs[name], preview_fn=fn)
            found = True
        if not found:
            raise TypeError(f"{source!r} declares no module, check or preview")

    def _add(self, spec: ModuleSpec) -> None:
        known = self._specs.get(spec.name)
        if known is not None and known.fn is not spec.fn:
            raise ValueError(f"module {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ModuleSpec | None:
        return self._specs.get(name)

    def __getitem__(self, name: str) -> ModuleSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def values(self) -> list[ModuleSpec]:
        return list(self._specs.values())

    def names(self, kind: Literal["module", "check"] | None = None) -> list[str]:
        return [n for n, s in self._specs.items() if kind is None or s.kind == kind]

    def providers(self, fact: str) -> list[str]:
        """Modules that establish ``fact``, for did-you-mean hints."""
        return sorted(s.name for s in self._specs.values() if fact in s.provides)

    def for_worker(self, domains: Iterable[str], *, local_checks: bool) -> list[ModuleSpec]:
        """Registered activities a worker serves.

        Domain workers take their domain's modules and non-local checks; the workflow worker
        takes every local check, because local activities run where the workflow task runs.
        """
        wanted = set(domains)
        specs = self._specs.values()
        chosen = [s for s in specs if s.domain in wanted and not (s.kind == "check" and s.local)]
        if local_checks:
            chosen += [s for s in specs if s.kind == "check" and s.local]
        return chosen


def load_registry(domains: Iterable[str] = DOMAINS) -> Registry:
    """The registry of the installed domain packages (``activities.<domain>``).

    Importing a domain package loads its module declarations, never its drivers: those are
    imported by the ModuleSet when a worker instantiates it.
    """
    sources = []
    for domain in domains:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
        sources.append(importlib.import_module(f"{MODULE_PACKAGE}.{domain}"))
    return Registry.collect(*sources)


def bind_activities(
    specs: Iterable[ModuleSpec], settings: Settings
) -> tuple[list[Callable[..., Any]], list[ModuleSet]]:
    """Callables for the worker: plain functions as they are, set methods bound to instances;
    each module's preview is served beside it."""
    instances: dict[type[ModuleSet], ModuleSet] = {}
    callables: list[Callable[..., Any]] = []
    for spec in specs:
        fns = [spec.fn] if spec.preview_fn is None else [spec.fn, spec.preview_fn]
        if spec.owner is None:
            callables += fns
            continue
        if spec.owner not in instances:
            instances[spec.owner] = spec.owner(settings)
        callables += [getattr(instances[spec.owner], fn.__name__) for fn in fns]
    return callables, list(instances.values())
