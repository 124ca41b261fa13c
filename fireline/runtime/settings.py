"""Settings read from the environment (``FIRELINE_*``) or a ``fireline.toml`` file.

Everything that differs between a laptop and a cluster lives here, so the same commands point
at the embedded dev server or an existing Temporal deployment. Secrets stay here too: activities
read them from settings, never from workflow inputs, so they never enter workflow history.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DOMAINS: tuple[str, ...] = ("core", "platform", "database", "application")


class Settings(BaseSettings):
    """Fireline configuration; see the README for every variable."""

    model_config = SettingsConfigDict(
        env_prefix="FIRELINE_", toml_file="fireline.toml", extra="ignore"
    )

    temporal_address: str = Field(
        default="127.0.0.1:7233", description="host:port of the Temporal frontend"
    )
    temporal_namespace: str = "default"
    temporal_api_key: SecretStr | None = None
    temporal_tls: bool = False
    temporal_ui_url: str = Field(
        default="http://127.0.0.1:8233", description="base URL of the Temporal Web UI"
    )
    task_queue_prefix: str = Field(
        default="fireline", description="workflow queue is PREFIX, domain queues PREFIX-DOMAIN"
    )
    playbooks_dir: Path = Path("playbooks")
    data_dir: Path = Path("data")
    workflow_sandbox: bool = Field(
        default=False,
        description=(
            "run workflow code in Temporal's sandbox; the test suite always does, which is "
            "where it catches non-determinism, so production skips its per-task cost"
        ),
    )
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    http_timeout_seconds: float = Field(default=30.0, gt=0)
    http_bearer_token: SecretStr | None = Field(
        default=None, description="sent as Authorization to core.http_* targets that ask for it"
    )
    http_bearer_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "host[:port] entries the bearer token may be sent to (exact match; https unless the "
            "host is loopback); a step asking for the token elsewhere fails without sending it"
        ),
    )
    # --- identity: who may act through the operator API, and how the API signs decisions ---
    dev_mode: bool = Field(
        default=False,
        description=(
            "embedded default only (`fireline up` sets it): requests without a credential are "
            "accepted when the API is bound to loopback, and recorded as unverified"
        ),
    )
    dev_person: str | None = Field(
        default=None,
        max_length=200,
        description="who the development credential belongs to (default: the catalog's first)",
    )
    tokens_file: Path | None = Field(
        default=None, description="hashed API tokens (default: DATA_DIR/identity/tokens.json)"
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer (the `iss` claim)")
    oidc_audience: str | None = Field(default=None, description="the `aud` the API demands")
    oidc_jwks_url: str | None = Field(default=None, description="where the issuer's keys are")
    oidc_person_claim: str = Field(
        default="preferred_username", description="the claim naming the catalog person"
    )
    oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"],
        description="accepted JWT algorithms; asymmetric only (never none or HS*)",
    )
    oidc_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    decision_key_file: Path | None = Field(
        default=None,
        description="Ed25519 key the API signs decisions with (default: DATA_DIR/identity/)",
    )
    decision_trusted_keys: dict[str, str] = Field(
        default_factory=dict,
        description="extra key_id -> public key runs accept (other API deployments, rotation)",
    )
    decision_ttl_seconds: float = Field(default=300.0, gt=0, le=86400)
    api_url: str = Field(
        default="http://127.0.0.1:8080", description="the operator API the CLI talks to"
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="largest request body the API reads; larger ones get 413 before being read",
    )
    token: SecretStr | None = Field(
        default=None, description="the CLI's credential (FIRELINE_TOKEN); else `fireline login`"
    )
    credentials_file: Path | None = Field(
        default=None, description="where `fireline login` keeps it (default: ~/.config/fireline)"
    )
    notify_webhook_url: str | None = Field(
        default=None, description="default target of core.notify when a step names none"
    )
    targets: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description=(
            "systems modules act on: kind -> target name -> connection settings (DSN, socket, "
            "URL, credentials); each domain's ModuleSet validates its own kind. Steps name a "
            "target, so credentials never enter a playbook or workflow history"
        ),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment wins over the TOML file; init arguments win over both."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def workflow_task_queue(self) -> str:
        return self.task_queue_prefix

    def domain_task_queue(self, domain: str) -> str:
        return f"{self.task_queue_prefix}-{domain}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
