"""The playbook YAML format as pydantic models: what people write, before compilation.

Every model forbids unknown keys, so a misspelt ``aproval:`` is an error with a suggestion
instead of a gate that silently is not there. Durations are turned into seconds here; the
rules that need the module registry, the catalog or other playbooks live in the compiler.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from fireline.plan import OnFailure
from fireline.playbook.durations import parse_duration

STEP_ID = re.compile(r"[a-z0-9_]+")
PLAYBOOK_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"},
            ]
        }
    ),
]
"""Seconds, written as ``500ms``, ``30s``, ``15m``, ``1h``, ``2d`` or a bare number."""


def _to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class Strict(BaseModel):
    """Base for every YAML model: unknown keys are errors, YAML keys are the aliases."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class InputDecl(Strict):
    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    description: str = ""
    required: bool = False
    default: Any = None


class ApprovalEntry(Strict):
    """``approval:`` on a step or include: who must say yes before it runs."""

    role: str
    tier: int | None = Field(default=None, ge=0, le=3)
    """Escalation tier of the gate; defaults to the role's tier in the catalog."""
    timeout: Duration = 900.0
    min_approvals: int = Field(default=1, ge=1)


class CheckEntry(Strict):
    """A pre- or postcondition written on a step."""

    check: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    deadline: Duration | None = None
    interval: Duration | None = None


class CompensateEntry(Strict):
    """``compensate:`` on a step: replaces the module's own compensation."""

    uses: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class RetryEntry(Strict):
    """Overrides of the module's retry policy; unset fields keep the module's values."""

    max_attempts: int | None = Field(default=None, ge=1)
    initial_interval: Duration | None = None
    backoff: float | None = Field(default=None, ge=1.0)
    max_interval: Duration | None = None
    non_retryable: list[str] | None = None


class StepEntry(Strict):
    """One entry of ``steps:`` (or of a ``parallel:`` list).

    Exactly one of ``uses``, ``parallel`` and ``playbook`` says what kind of step it is; the
    compiler checks that and which other keys each kind accepts, so those problems point at
    the key that is wrong.
    """

    id: str
    name: str | None = None
    uses: str | None = None
    parallel: list[StepEntry] | None = Field(default=None, min_length=1)
    playbook: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    approval: ApprovalEntry | None = None
    preconditions: list[CheckEntry] = Field(default_factory=list)
    postconditions: list[CheckEntry] = Field(default_factory=list)
    compensate: CompensateEntry | None = None
    timeout: Duration | None = None
    heartbeat: Duration | None = None
    retry: RetryEntry | None = None
    on_failure: OnFailure | None = None
    decision_timeout: Duration | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not STEP_ID.fullmatch(value):
            raise ValueError(
                f"step id '{value}' must use only lowercase letters, digits and underscores "
                "([a-z0-9_]+), so expressions such as steps.<id>.outputs can name it"
            )
        return value


class PlaybookSpec(Strict):
    name: str
    version: Annotated[
        str, BeforeValidator(_to_str), WithJsonSchema({"type": ["string", "number"]})
    ] = "1"
    owner: str = ""
    outage_class: str = ""
    description: str = ""
    on_failure: OnFailure = OnFailure.compensate
    inputs: dict[str, InputDecl] = Field(default_factory=dict)
    steps: list[StepEntry] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PLAYBOOK_NAME.fullmatch(value):
            raise ValueError(
                f"playbook name '{value}' must be lowercase letters, digits and dashes, "
                "starting with a letter or digit ([a-z0-9][a-z0-9-]*)"
            )
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, InputDecl]) -> dict[str, InputDecl]:
        for name in value:
            if not INPUT_NAME.fullmatch(name):
                raise PydanticCustomError(
                    "input_name",
                    "input name '{key}' must start with a letter or underscore and contain "
                    "only letters, digits and underscores, so expressions can name it",
                    {"key": name},
                )
        return value


STEP_LIST_KEYS: tuple[str, ...] = ("steps", "parallel")
"""List fields whose items are steps, for naming the step in validation problems."""

KIND_KEYS: dict[str, frozenset[str]] = {
    "uses": frozenset(StepEntry.model_fields) - {"parallel", "playbook"},
    "parallel": frozenset({"id", "name", "parallel"}),
    "playbook": frozenset(
        {"id", "name", "playbook", "with_", "approval", "on_failure", "decision_timeout"}
    ),
}
"""Which StepEntry fields each kind of step accepts."""


def yaml_key(field_name: str) -> str:
    """The YAML spelling of a StepEntry field (``with_`` is written ``with``)."""
    info = StepEntry.model_fields[field_name]
    return info.alias or field_name
