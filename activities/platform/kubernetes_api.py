"""The Kubernetes calls Fireline makes, through lightkube: thin on purpose.

Four reads (a deployment, its ReplicaSets, a node) and two kinds of patch (JSON merge patch,
JSON patch) are all the modules need; everything else is plain logic over the JSON objects,
so recorded API responses cover the driver. lightkube is imported when a client is built,
never at module import, so compiling a playbook never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
K8sName = Annotated[str, StringConstraints(pattern=K8S_NAME_PATTERN, max_length=253)]
"""A DNS-1123 subdomain, as object names and namespaces are: no '/', so never a path."""

LAST_CHANGE = "fireline.io/last-change"
"""Annotation on the object a step changed: its idempotency key and what it found, so a retry
on any worker restores what the first attempt found."""
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"


class KubernetesTarget(BaseModel):
    """One cluster: its API server and the credential Fireline uses there."""

    model_config = ConfigDict(extra="forbid")

    server: str = Field(description="API server URL, e.g. https://10.0.0.1:6443")
    token: SecretStr | None = Field(default=None, description="bearer token (service account)")
    ca_file: str | None = Field(default=None, description="CA bundle that signed the server")
    insecure: bool = Field(default=False, description="skip TLS verification (tests only)")
    namespace: K8sName = "default"
    timeout_s: float = Field(default=15.0, gt=0, le=300)


class KubeError(Exception):
    """What the API server said (or that it said nothing)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Kube:
    """A lightkube AsyncClient for one target, with errors turned into :class:`KubeError`."""

    def __init__(self, target: KubernetesTarget) -> None:
        import httpx2
        from lightkube import AsyncClient
        from lightkube.config.kubeconfig import KubeConfig
        from lightkube.config.models import Cluster, User
        from lightkube.resources.apps_v1 import Deployment, ReplicaSet
        from lightkube.resources.core_v1 import Node

        self._httpx = httpx2
        self._kinds: dict[str, Any] = {
            "deployment": Deployment,
            "replicaset": ReplicaSet,
            "node": Node,
        }
        user = User(token=target.token.get_secret_value() if target.token else None)
        config = KubeConfig.from_one(
            cluster=Cluster(
                server=target.server,
                certificate_auth=target.ca_file,
                insecure=target.insecure,
            ),
            user=user,
            namespace=target.namespace,
        )
        self.namespace = target.namespace
        self.server = target.server
        self._client = AsyncClient(
            config=config,
            namespace=target.namespace,
            field_manager="fireline",
            trust_env=False,
            timeout=httpx2.Timeout(target.timeout_s),
        )

    async def get(self, kind: Literal["deployment", "node"], name: str, ns: str | None) -> Any:
        return await self._call(
            f"get {kind} {name}", self._client.get(self._kinds[kind], name, namespace=ns)
        )

    async def replicasets(self, ns: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        async def collect() -> list[dict[str, Any]]:
            found = self._client.list(self._kinds["replicaset"], namespace=ns, labels=dict(labels))
            return [item.to_dict() async for item in found]

        items: list[dict[str, Any]] = await self._call("list replicasets", collect())
        return items

    async def patch(
        self,
        kind: Literal["deployment", "node"],
        name: str,
        ns: str | None,
        body: dict[str, Any] | list[dict[str, Any]],
    ) -> Any:
        """A JSON merge patch (a dict) or a JSON patch (a list of operations)."""
        from lightkube.types import PatchType

        patch_type = PatchType.JSON if isinstance(body, list) else PatchType.MERGE
        return await self._call(
            f"patch {kind} {name}",
            self._client.patch(self._kinds[kind], name, body, namespace=ns, patch_type=patch_type),
        )

    async def _call(self, what: str, call: Any) -> Any:
        from lightkube import ApiError

        try:
            result = await call
        except ApiError as exc:
            # A proxy in front of the API may answer without a Status object: fall back on HTTP.
            status = (exc.status.code if exc.status is not None else None) or (
                exc.response.status_code if exc.response is not None else None
            )
            reason = (exc.status.message if exc.status is not None else None) or (
                exc.response.text if exc.response is not None else str(exc)
            )
            raise KubeError(f"{what}: {status} {_short(reason)}", status) from None
        except self._httpx.HTTPError as exc:
            raise KubeError(f"{what}: {type(exc).__name__}: {_short(str(exc))}") from None
        except (ValueError, TypeError) as exc:
            # lightkube decodes into typed models: an answer that does not fit is not usable.
            raise KubeError(
                f"{what}: the answer is not a valid object ({_short(str(exc))})"
            ) from None
        return result.to_dict() if hasattr(result, "to_dict") else result

    async def aclose(self) -> None:
        await self._client.close()


def _short(text: str, limit: int = 300) -> str:
    return re.sub(r"\s+", " ", text)[:limit]
