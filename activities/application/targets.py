"""The settings models of the systems application modules act on, one per kind.

A step names its target (``target: main``); ``activities.core.runtime.target_settings`` finds
``settings.targets[KIND][NAME]`` on the worker and validates it with the kind's model here, so
a typo in a setting fails loudly at first use.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from activities.core.runtime import host_port, url_problem

TARGET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""What a step may put in ``target``: a settings key, never a URL or a DSN."""


def credential_hosts(allowed_hosts: list[str], url: str) -> list[str]:
    """Where a target's credential may be sent: ``allowed_hosts``, else its URL's own host."""
    return allowed_hosts or [host_port(httpx.URL(url))]


class RedisTarget(BaseModel):
    """``[targets.redis.NAME]``: a ``url`` (``redis://`` or ``rediss://``), or host and port."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    db: int = Field(default=0, ge=0)
    tls: bool = False
    flag_prefix: str = Field(
        default="flag:", description="a feature flag NAME lives at the key PREFIX + NAME"
    )
    timeout_s: float = Field(default=5.0, gt=0)


class HttpTarget(BaseModel):
    """``[targets.http.NAME]``: an application's admin API.

    ``bearer_token`` is sent only to ``allowed_hosts`` (``host[:port]``, exact), which default
    to the host of ``base_url``; outside loopback only over https.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str
    bearer_token: SecretStr | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    maintenance_path: str = "/maintenance"
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _url(self) -> HttpTarget:
        problem = url_problem(self.base_url)
        if problem:
            raise ValueError(f"base_url: {problem}")
        if not self.maintenance_path.startswith("/"):
            raise ValueError("maintenance_path must start with /")
        return self

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def credential_hosts(self) -> list[str]:
        return credential_hosts(self.allowed_hosts, self.base_url)


class PrometheusTarget(BaseModel):
    """``[targets.prometheus.NAME]``: the Prometheus (or compatible) HTTP API to query."""

    model_config = ConfigDict(extra="forbid")

    url: str
    bearer_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _url(self) -> PrometheusTarget:
        problem = url_problem(self.url)
        if problem:
            raise ValueError(f"url: {problem}")
        if self.bearer_token is not None and self.password is not None:
            raise ValueError("set bearer_token or username/password, not both")
        return self

    def credential_hosts(self) -> list[str]:
        return credential_hosts(self.allowed_hosts, self.url)
