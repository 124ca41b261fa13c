"""The module contract: what turns an async function into a Fireline module or check.

``@module`` and ``@check`` register the function as a Temporal activity under its dotted name
and record everything the compiler and ``fireline modules`` need: typed input and output
models, domain, risk, whether it mutates and is idempotent, declared pre- and postconditions,
the facts it requires and provides, and its compensation (or that it is irreversible).

Modules that hold clients are methods of a :class:`ModuleSet` subclass whose constructor takes
the settings; the worker instantiates each set once and registers the bound methods.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity

from fireline.plan import CheckResult, RetrySpec, Risk
from fireline.settings import DOMAINS, Settings


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
    "REGISTRY",
    "CheckRef",
    "CheckResult",
    "CompensationRef",
    "ModuleSet",
    "ModuleSpec",
    "bind_activities",
    "check",
    "load_domains",
    "module",
    "specs_for",
]


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
    owner: str | None = None
    """Name of the ModuleSet class whose bound method implements it, if any."""

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
            "timeout_s": self.timeout.total_seconds(),
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }


REGISTRY: dict[str, ModuleSpec] = {}


class ModuleSet:
    """Base for modules that share clients; subclasses are instantiated once per worker."""

    sets: ClassVar[dict[str, type[ModuleSet]]] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ModuleSet.sets[cls.__qualname__] = cls

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


def _register(spec_kwargs: dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = spec_kwargs["name"]
        if spec_kwargs["domain"] not in DOMAINS:
            raise ValueError(f"{name}: unknown domain {spec_kwargs['domain']!r}")
        if name in REGISTRY and REGISTRY[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"module {name!r} is registered twice")
        inp, out = _models(fn)
        owner = fn.__qualname__.rsplit(".", 1)[0] if "." in fn.__qualname__ else None
        description = spec_kwargs.pop("description", None) or inspect.getdoc(fn) or ""
        REGISTRY[name] = ModuleSpec(
            fn=fn,
            input_model=inp,
            output_model=out,
            owner=owner,
            description=description.strip().splitlines()[0] if description else "",
            **spec_kwargs,
        )
        return activity.defn(name=name)(fn)

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


def load_domains(domains: list[str] | tuple[str, ...] = DOMAINS) -> None:
    """Import the domain packages so their modules register themselves."""
    for domain in domains:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
        importlib.import_module(f"activities.{domain}")


def bind_activities(
    specs: list[ModuleSpec], settings: Settings
) -> tuple[list[Callable[..., Any]], list[ModuleSet]]:
    """Callables for the worker: plain functions as they are, set methods bound to instances."""
    instances: dict[str, ModuleSet] = {}
    callables: list[Callable[..., Any]] = []
    for spec in specs:
        if spec.owner is None:
            callables.append(spec.fn)
            continue
        if spec.owner not in instances:
            instances[spec.owner] = ModuleSet.sets[spec.owner](settings)
        callables.append(getattr(instances[spec.owner], spec.fn.__name__))
    return callables, list(instances.values())


def specs_for(domains: list[str] | tuple[str, ...], *, local_checks: bool) -> list[ModuleSpec]:
    """Registered activities a worker serves.

    Domain workers take their domain's modules and non-local checks; the workflow worker takes
    every local check, because local activities run where the workflow task runs.
    """
    chosen = [
        s for s in REGISTRY.values() if s.domain in domains and not (s.kind == "check" and s.local)
    ]
    if local_checks:
        chosen += [s for s in REGISTRY.values() if s.kind == "check" and s.local]
    return chosen
