"""Ingress settings: credentials per source, limits, queue bounds, the answer deadline.

Read from ``FIRELINE_INGRESS_*`` or the ``[ingress]`` table of fireline.toml, next to (not
inside) the main :class:`~fireline.runtime.settings.Settings`, so the webhook side can be
tuned and its secrets rotated without touching the rest.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_MAX_BODY = 1024 * 1024
"""1 MiB per notification; PagerDuty guarantees delivery up to 55 KB."""


class IngressSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FIRELINE_INGRESS_",
        toml_file="fireline.toml",
        extra="ignore",
    )

    auth: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="source -> credential scheme (see fireline.ingress.auth)",
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=1024, le=64 * 1024 * 1024)
    max_body_by_source: dict[str, int] = Field(
        default_factory=dict, description="per-source overrides of max_body_bytes"
    )
    deadline_seconds: float = Field(
        default=4.0,
        gt=0,
        le=60,
        description="answer 503 + Retry-After past this (PagerDuty gives up after 5 s)",
    )
    max_pending: int = Field(
        default=20_000, ge=1, description="alerts waiting to be written, all keys together"
    )
    max_batch: int = Field(default=500, ge=1, le=5000, description="alerts per signal")
    max_batch_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="body bytes per signal (Temporal refuses payloads over 2 MB by default)",
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        le=4096,
        description=(
            "signal-with-start calls under way at once, all keys together (one per key at a "
            "time); a loaded server answers each call slowly, so throughput needs many in flight"
        ),
    )
    key_spacing_seconds: float = Field(
        default=0.15,
        ge=0,
        le=5,
        description=(
            "least time between the starts of two writes for one incident key: a key's first "
            "notification is written at once, a storm's are gathered into fewer, larger signals "
            "(each costs the server a write and the incident a task); a storm's answers wait "
            "up to this much longer"
        ),
    )
    retry_after_seconds: int = Field(default=2, ge=1, le=3600)
    unrouted_max_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)
    reload_seconds: float = Field(
        default=5.0, ge=0, description="how often the catalog and playbooks are checked"
    )

    def body_limit(self, source: str) -> int:
        return self.max_body_by_source.get(source, self.max_body_bytes)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _IngressToml(settings_cls))


class _IngressToml(TomlConfigSettingsSource):
    """Only the ``[ingress]`` table of fireline.toml."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        table = self.toml_data.get("ingress", {})
        self.toml_data = table if isinstance(table, dict) else {}
        self.init_kwargs = self.toml_data
