"""Kubernetes modules: rollout restart, scale, roll back, cordon and uncordon.

Each change writes the step's idempotency key and what it found into the changed object's
``fireline.io/last-change`` annotation in the same patch, so a retry on any worker sees that
its change was made and what was there before, and a compensation restores that. Targets come
from settings (``targets.kubernetes.<name>``: server, token, CA), never from inputs.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from temporalio.exceptions import ApplicationError

from activities.core.evidence import setting_preview, state_result
from activities.core.runtime import idempotency_key, refused, target_settings, unavailable
from activities.platform.kubernetes_api import (
    LAST_CHANGE,
    RESTARTED_AT,
    REVISION,
    K8sName,
    Kube,
    KubeError,
    KubernetesTarget,
)
from activities.platform.runtime import stepping
from fireline.modules import (
    IRREVERSIBLE,
    CheckRef,
    CompensationRef,
    ModuleSet,
    check,
    module,
    preview,
)
from fireline.plan import Change, CheckResult, Preview, Risk
from fireline.runtime.settings import Settings

log = structlog.get_logger(__name__)

KIND = "kubernetes"
POD_TEMPLATE_HASH = "pod-template-hash"
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Answers that mean "not now": a conflict is a concurrent writer, retried after a re-read."""


def _rollout_check() -> CheckRef:
    """The rollout check given the step's whole input (``$from``): an optional namespace the
    step left out falls back on the target's, and scale's ``replicas`` is insisted on."""
    return CheckRef(
        check="platform.k8s_rollout_complete",
        with_={"$from": "${{ input }}"},
        deadline_s=600,
        poll_interval_s=5,
    )


def _node_check(schedulable: bool) -> CheckRef:
    return CheckRef(
        check="platform.k8s_node_schedulable",
        with_={
            "target": "${{ input.target }}",
            "node": "${{ input.node }}",
            "schedulable": schedulable,
        },
        deadline_s=30,
        poll_interval_s=1,
    )


def _node_undo(module_name: str) -> CompensationRef:
    return CompensationRef(
        module=module_name,
        with_={
            "target": "${{ input.target }}",
            "node": "${{ input.node }}",
            "apply": "${{ output.altered }}",
        },
    )


# -- inputs and outputs -------------------------------------------------------------------


class DeploymentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="name of the cluster in settings (targets.kubernetes.NAME)")
    deployment: K8sName
    namespace: K8sName | None = Field(default=None, description="defaults to the target's")


class WaitingInput(DeploymentRef):
    wait_s: float = Field(default=600.0, ge=0, le=3600, description="wait for the rollout")
    poll_interval_s: float = Field(default=2.0, gt=0, le=60)


class RestartInput(WaitingInput):
    pass


class ScaleInput(WaitingInput):
    replicas: int = Field(ge=0, le=10_000)


class RollbackInput(WaitingInput):
    to_revision: int | None = Field(
        default=None, ge=1, description="revision to go back to; the one before current if unset"
    )


class NodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    node: K8sName
    apply: bool = Field(
        default=True,
        description="false makes the step a no-op: the undo of a step that changed nothing",
    )


class RolloutStatus(BaseModel):
    generation: int
    observed_generation: int
    replicas: int = Field(description="spec.replicas")
    updated: int
    ready: int
    available: int
    total: int = Field(description="status.replicas, old pods included")
    complete: bool
    failed: bool = False
    detail: str


class RestartOutput(BaseModel):
    deployment: str
    namespace: str
    restarted_at: str
    previous_restarted_at: str | None
    restarted: bool = Field(description="this attempt sent the restart (false on a repeat)")
    rollout: RolloutStatus


class ScaleOutput(BaseModel):
    deployment: str
    namespace: str
    previous_replicas: int
    replicas: int
    changed: bool
    rollout: RolloutStatus


class RollbackOutput(BaseModel):
    deployment: str
    namespace: str
    from_revision: int
    to_revision: int
    images_before: list[str]
    images_after: list[str]
    changed: bool
    rollout: RolloutStatus


class NodeOutput(BaseModel):
    node: str
    previous_unschedulable: bool
    unschedulable: bool
    altered: bool = Field(description="the node is left differently than the step found it")
    changed: bool = Field(description="this attempt sent a patch")


class RolloutInput(DeploymentRef):
    # A module's whole input is handed to it as its pre/postcondition: fields it does not
    # know (wait_s, to_revision) are not its business.
    model_config = ConfigDict(extra="ignore")

    replicas: int | None = Field(default=None, ge=0, description="also insist on this many")


class SchedulableInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    node: K8sName
    schedulable: bool


# -- pure logic over the API objects --------------------------------------------------------


def rollout_status(deployment: dict[str, Any]) -> RolloutStatus:
    """kubectl rollout status's rules: observed, updated, old pods gone, available."""
    meta, status = (deployment.get(k) or {} for k in ("metadata", "status"))
    generation = int(meta.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    replicas = spec_replicas(deployment)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    name = meta.get("name", "?")
    failed = False
    if observed < generation:
        detail, complete = f"{name}: waiting for the controller to observe generation", False
    else:
        progressing: dict[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == "Progressing"), {}
        )
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            failed, complete = True, False
            detail = f"{name}: rollout failed: {progressing.get('message', 'deadline exceeded')}"
        elif updated < replicas:
            detail, complete = f"{name}: {updated} of {replicas} updated", False
        elif total > updated:
            detail, complete = (
                f"{name}: {total - updated} old replica(s) pending termination",
                False,
            )
        elif available < updated:
            detail, complete = f"{name}: {available} of {updated} updated available", False
        else:
            detail, complete = (
                f"{name}: {available} of {replicas} available, rollout complete",
                True,
            )
    return RolloutStatus(
        generation=generation,
        observed_generation=observed,
        replicas=replicas,
        updated=updated,
        ready=ready,
        available=available,
        total=total,
        complete=complete,
        failed=failed,
        detail=detail,
    )


def last_change(obj: dict[str, Any], module_name: str) -> dict[str, Any] | None:
    """What this step (same key, same module) recorded on the object, if it got that far."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(LAST_CHANGE)
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    if (
        isinstance(record, dict)
        and record.get("key") == idempotency_key()
        and record.get("module") == module_name
    ):
        return record
    return None


def change_record(module_name: str, **found: Any) -> str:
    return json.dumps(
        {"key": idempotency_key(), "module": module_name, **found}, separators=(",", ":")
    )


def recording(
    patch: dict[str, Any], record: dict[str, Any] | None, module_name: str, **found: Any
) -> dict[str, Any]:
    """``patch`` (a merge patch) that also records ``found`` on the object, unless this step
    recorded it already: the compensation restores what the first attempt found."""
    if record is None:
        patch["metadata"] = {"annotations": {LAST_CHANGE: change_record(module_name, **found)}}
    return patch


def spec_replicas(deployment: dict[str, Any]) -> int:
    """``spec.replicas``, with the API server's default of 1 when it is unset."""
    return int((deployment.get("spec") or {}).get("replicas", 1))


def is_unschedulable(node: dict[str, Any]) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def images(template: dict[str, Any]) -> list[str]:
    containers = (template.get("spec") or {}).get("containers") or []
    return [f"{c.get('name')}={c.get('image')}" for c in containers]


def revision_of(obj: dict[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def owned_by(rs: dict[str, Any], deployment: dict[str, Any]) -> bool:
    uid = (deployment.get("metadata") or {}).get("uid")
    owners = (rs.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("uid") == uid and o.get("kind") == "Deployment" for o in owners)


def rollback_target(
    deployment: dict[str, Any], replicasets: list[dict[str, Any]], to_revision: int | None
) -> tuple[int, int, dict[str, Any]]:
    """(current revision, chosen revision, its pod template without pod-template-hash)."""
    name = deployment["metadata"]["name"]
    current = revision_of(deployment)
    owned: dict[int, dict[str, Any]] = {}
    for rs in replicasets:
        revision = revision_of(rs)
        if revision is not None and owned_by(rs, deployment):
            owned[revision] = rs
    if current is None:
        raise refused(f"deployment {name} has no {REVISION} annotation: nothing to roll back")
    if to_revision is None:
        earlier = sorted(r for r in owned if r < current)
        if not earlier:
            raise refused(
                f"deployment {name} has no revision before {current} to roll back to "
                f"(revisions kept: {', '.join(map(str, sorted(owned))) or 'none'})"
            )
        to_revision = earlier[-1]
    if to_revision not in owned:
        raise refused(
            f"deployment {name} has no revision {to_revision}; kept: "
            f"{', '.join(map(str, sorted(owned))) or 'none'}"
        )
    template = json.loads(json.dumps(owned[to_revision]["spec"]["template"]))
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop(POD_TEMPLATE_HASH, None)
    return current, to_revision, template


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the modules ----------------------------------------------------------------------------


class KubernetesModules(ModuleSet):
    """Deployment and node modules; one lightkube client per target, made on first use."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._clients: dict[str, Kube] = {}

    def kube(self, target: str) -> Kube:
        if target not in self._clients:
            self._clients[target] = Kube(
                target_settings(self.settings, KIND, target, KubernetesTarget)
            )
        return self._clients[target]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients = {}

    # -- changing ---------------------------------------------------------------------------

    @module(
        "platform.k8s_rollout_restart",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=IRREVERSIBLE,
        preconditions=[_rollout_check()],
        postconditions=[_rollout_check()],
        provides=["kubernetes.pods_replaced"],
        timeout=timedelta(hours=1, minutes=5),
        heartbeat=timedelta(seconds=15),
    )
    async def rollout_restart(self, request: RestartInput) -> RestartOutput:
        """Replace every pod of a deployment (the restartedAt annotation) and wait for it."""
        async with stepping("platform.k8s_rollout_restart", deployment=request.deployment):
            kube, ns = self.kube(request.target), self._ns(request)
            found = await _deployment(kube, request, ns)
            template_annotations = _template_annotations(found)
            record = last_change(found, "platform.k8s_rollout_restart")
            if record is not None:
                restarted_at, previous, sent = record["restarted_at"], record["previous"], False
            else:
                restarted_at, previous, sent = _now(), template_annotations.get(RESTARTED_AT), True
                patch = {
                    "metadata": {
                        "annotations": {
                            LAST_CHANGE: change_record(
                                "platform.k8s_rollout_restart",
                                restarted_at=restarted_at,
                                previous=previous,
                            )
                        }
                    },
                    "spec": {
                        "template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}
                    },
                }
                await _do(kube.patch("deployment", request.deployment, ns, patch), request)
                log.info("rollout restart sent", restarted_at=restarted_at)
            rollout = await self._wait(kube, request, ns)
            return RestartOutput(
                deployment=request.deployment,
                namespace=ns,
                restarted_at=restarted_at,
                previous_restarted_at=previous,
                restarted=sent,
                rollout=rollout,
            )

    @module(
        "platform.k8s_scale",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=CompensationRef(
            module="platform.k8s_scale",
            with_={
                "target": "${{ input.target }}",
                "deployment": "${{ input.deployment }}",
                "namespace": "${{ output.namespace }}",
                "replicas": "${{ output.previous_replicas }}",
            },
        ),
        postconditions=[_rollout_check()],
        provides=["kubernetes.replicas_set"],
        timeout=timedelta(hours=1, minutes=5),
        heartbeat=timedelta(seconds=15),
    )
    async def scale(self, request: ScaleInput) -> ScaleOutput:
        """Set a deployment's replicas and wait until they are available."""
        async with stepping("platform.k8s_scale", deployment=request.deployment):
            kube, ns = self.kube(request.target), self._ns(request)
            found = await _deployment(kube, request, ns)
            current = spec_replicas(found)
            record = last_change(found, "platform.k8s_scale")
            previous = int(record["previous"]) if record is not None else current
            changed = current != request.replicas
            if changed:
                patch = recording(
                    {"spec": {"replicas": request.replicas}},
                    record,
                    "platform.k8s_scale",
                    previous=previous,
                )
                await _do(kube.patch("deployment", request.deployment, ns, patch), request)
                log.info("scaled", previous=previous, replicas=request.replicas)
            rollout = await self._wait(kube, request, ns)
            return ScaleOutput(
                deployment=request.deployment,
                namespace=ns,
                previous_replicas=previous,
                replicas=request.replicas,
                changed=changed,
                rollout=rollout,
            )

    @module(
        "platform.k8s_rollback",
        domain="platform",
        risk=Risk.high,
        mutates=True,
        compensation=CompensationRef(
            module="platform.k8s_rollback",
            with_={
                "target": "${{ input.target }}",
                "deployment": "${{ input.deployment }}",
                "namespace": "${{ output.namespace }}",
                "to_revision": "${{ output.from_revision }}",
            },
        ),
        postconditions=[_rollout_check()],
        provides=["kubernetes.previous_revision_running"],
        timeout=timedelta(hours=1, minutes=5),
        heartbeat=timedelta(seconds=15),
    )
    async def rollback(self, request: RollbackInput) -> RollbackOutput:
        """Put a deployment's pod template back to an earlier revision's (kubectl rollout
        undo): the ReplicaSet of that revision is found by its revision annotation."""
        async with stepping("platform.k8s_rollback", deployment=request.deployment):
            kube, ns = self.kube(request.target), self._ns(request)
            found = await _deployment(kube, request, ns)
            record = last_change(found, "platform.k8s_rollback")
            if record is not None:
                current, chosen = int(record["from_revision"]), int(record["to_revision"])
                before, after = list(record["images_before"]), list(record["images_after"])
                changed = False
            else:
                selector = ((found.get("spec") or {}).get("selector") or {}).get("matchLabels")
                replicasets = await _do(kube.replicasets(ns, selector or {}), request)
                current, chosen, template = rollback_target(found, replicasets, request.to_revision)
                before = images((found.get("spec") or {}).get("template") or {})
                after = images(template)
                record_text = change_record(
                    "platform.k8s_rollback",
                    from_revision=current,
                    to_revision=chosen,
                    images_before=before,
                    images_after=after,
                )
                operations = [
                    {
                        "op": "test",
                        "path": "/metadata/resourceVersion",
                        "value": found["metadata"].get("resourceVersion"),
                    },
                    {"op": "replace", "path": "/spec/template", "value": template},
                    {
                        "op": "add",
                        "path": "/metadata/annotations/" + LAST_CHANGE.replace("/", "~1"),
                        "value": record_text,
                    },
                ]
                await _do(kube.patch("deployment", request.deployment, ns, operations), request)
                changed = True
                log.info("rolled back", from_revision=current, to_revision=chosen)
            rollout = await self._wait(kube, request, ns)
            return RollbackOutput(
                deployment=request.deployment,
                namespace=ns,
                from_revision=current,
                to_revision=chosen,
                images_before=before,
                images_after=after,
                changed=changed,
                rollout=rollout,
            )

    @module(
        "platform.k8s_cordon",
        domain="platform",
        risk=Risk.medium,
        mutates=True,
        compensation=_node_undo("platform.k8s_uncordon"),
        postconditions=[_node_check(False)],
        provides=["kubernetes.node_cordoned"],
        timeout=timedelta(seconds=60),
    )
    async def cordon(self, request: NodeInput) -> NodeOutput:
        """Mark a node unschedulable: running pods stay, no new ones land there."""
        async with stepping("platform.k8s_cordon", node=request.node):
            return await self._schedulable(request, "platform.k8s_cordon", unschedulable=True)

    @module(
        "platform.k8s_uncordon",
        domain="platform",
        risk=Risk.low,
        mutates=True,
        compensation=_node_undo("platform.k8s_cordon"),
        postconditions=[_node_check(True)],
        provides=["kubernetes.node_schedulable"],
        timeout=timedelta(seconds=60),
    )
    async def uncordon(self, request: NodeInput) -> NodeOutput:
        """Mark a node schedulable again."""
        async with stepping("platform.k8s_uncordon", node=request.node):
            return await self._schedulable(request, "platform.k8s_uncordon", unschedulable=False)

    # -- previews -----------------------------------------------------------------------------

    @preview("platform.k8s_rollout_restart")
    async def preview_rollout_restart(self, request: RestartInput) -> Preview:
        async with stepping("preview", deployment=request.deployment):
            ns = self._ns(request)
            found = await _deployment(self.kube(request.target), request, ns)
            replicas = spec_replicas(found)
            status = rollout_status(found)
            return Preview(
                mutates=True,
                summary=f"restart every pod of {ns}/{request.deployment} ({replicas} replicas), "
                "one rollout step at a time",
                changes=[
                    Change(
                        target=f"{request.target}:{ns}/deployment/{request.deployment}",
                        attribute=f"spec.template.metadata.annotations[{RESTARTED_AT}]",
                        before=_template_annotations(found).get(RESTARTED_AT),
                        after="now",
                    )
                ],
                blast_radius={"deployments": 1, "pods": replicas},
                rollback="irreversible: replaced pods are not brought back",
                warnings=[] if status.complete else [f"a rollout is in progress: {status.detail}"],
            )

    @preview("platform.k8s_scale")
    async def preview_scale(self, request: ScaleInput) -> Preview:
        async with stepping("preview", deployment=request.deployment):
            ns = self._ns(request)
            found = await _deployment(self.kube(request.target), request, ns)
            current = spec_replicas(found)
            changes = (
                [
                    Change(
                        target=f"{request.target}:{ns}/deployment/{request.deployment}",
                        attribute="spec.replicas",
                        before=current,
                        after=request.replicas,
                    )
                ]
                if current != request.replicas
                else []
            )
            warnings = (
                ["scales to 0: the deployment serves nothing"] if request.replicas == 0 else []
            )
            return Preview(
                mutates=bool(changes),
                summary=f"scale {ns}/{request.deployment} from {current} to {request.replicas}",
                changes=changes,
                blast_radius={"deployments": 1, "pods": abs(current - request.replicas)},
                rollback=f"platform.k8s_scale back to {current} replicas",
                warnings=warnings,
            )

    @preview("platform.k8s_rollback")
    async def preview_rollback(self, request: RollbackInput) -> Preview:
        async with stepping("preview", deployment=request.deployment):
            kube, ns = self.kube(request.target), self._ns(request)
            found = await _deployment(kube, request, ns)
            selector = ((found.get("spec") or {}).get("selector") or {}).get("matchLabels")
            replicasets = await _do(kube.replicasets(ns, selector or {}), request)
            current, chosen, template = rollback_target(found, replicasets, request.to_revision)
            where = f"{request.target}:{ns}/deployment/{request.deployment}"
            replicas = spec_replicas(found)
            return Preview(
                mutates=True,
                summary=f"roll {ns}/{request.deployment} back from revision {current} to {chosen}",
                changes=[
                    Change(target=where, attribute="revision", before=current, after=chosen),
                    Change(
                        target=where,
                        attribute="containers",
                        before=images((found.get("spec") or {}).get("template") or {}),
                        after=images(template),
                    ),
                ],
                blast_radius={"deployments": 1, "pods": replicas},
                rollback=f"platform.k8s_rollback to revision {current}",
            )

    @preview("platform.k8s_cordon")
    async def preview_cordon(self, request: NodeInput) -> Preview:
        return await self._preview_node(request, unschedulable=True)

    @preview("platform.k8s_uncordon")
    async def preview_uncordon(self, request: NodeInput) -> Preview:
        return await self._preview_node(request, unschedulable=False)

    # -- checks ------------------------------------------------------------------------------

    @check(
        "platform.k8s_rollout_complete",
        domain="platform",
        local=False,
        timeout=timedelta(seconds=30),
    )
    async def rollout_complete(self, request: RolloutInput) -> CheckResult:
        """A deployment's rollout is complete (and, if asked, at the expected replicas)."""
        async with stepping("platform.k8s_rollout_complete", deployment=request.deployment):
            ns = self._ns(request)
            found = await _deployment(self.kube(request.target), request, ns)
            status = rollout_status(found)
            satisfied = status.complete and (
                request.replicas is None or status.replicas == request.replicas
            )
            detail = status.detail
            if request.replicas is not None and status.replicas != request.replicas:
                detail += f"; spec.replicas is {status.replicas}, expected {request.replicas}"
            return CheckResult(
                satisfied=satisfied,
                observed=status.model_dump(exclude={"detail"}),
                expected={"complete": True, "replicas": request.replicas},
                detail=detail,
            )

    @check(
        "platform.k8s_node_schedulable",
        domain="platform",
        local=False,
        timeout=timedelta(seconds=30),
    )
    async def node_schedulable(self, request: SchedulableInput) -> CheckResult:
        """A node is (or is not) schedulable, as expected."""
        async with stepping("platform.k8s_node_schedulable", node=request.node):
            found = await _do(self.kube(request.target).get("node", request.node, None), request)
            schedulable = not is_unschedulable(found)
            want = "schedulable" if request.schedulable else "cordoned"
            seen = "schedulable" if schedulable else "cordoned"
            return state_result(
                f"node {request.node}",
                seen,
                want,
                satisfied=schedulable == request.schedulable,
                observed={"schedulable": schedulable},
                expected={"schedulable": request.schedulable},
            )

    # -- shared -------------------------------------------------------------------------------

    def _ns(self, request: DeploymentRef) -> str:
        return request.namespace or self.kube(request.target).namespace

    async def _wait(self, kube: Kube, request: WaitingInput, ns: str) -> RolloutStatus:
        """Poll the deployment until its rollout completes, fails, or wait_s passes."""
        deadline = time.monotonic() + request.wait_s
        seen = ""
        while True:
            status = rollout_status(await _deployment(kube, request, ns))
            if status.failed:
                raise refused(status.detail, deployment=request.deployment)
            if status.complete:
                return status
            if time.monotonic() >= deadline:
                raise unavailable(
                    f"rollout not complete after {request.wait_s:g} s: {status.detail}",
                    deployment=request.deployment,
                )
            if status.detail != seen:
                log.info("waiting for rollout", detail=status.detail)
                seen = status.detail
            await asyncio.sleep(min(request.poll_interval_s, max(deadline - time.monotonic(), 0)))

    async def _schedulable(
        self, request: NodeInput, module_name: str, *, unschedulable: bool
    ) -> NodeOutput:
        kube = self.kube(request.target)
        found = await _do(kube.get("node", request.node, None), request)
        current = is_unschedulable(found)
        record = last_change(found, module_name)
        previous = bool(record["previous"]) if record is not None else current
        if not request.apply:
            return NodeOutput(
                node=request.node,
                previous_unschedulable=current,
                unschedulable=current,
                altered=False,
                changed=False,
            )
        changed = current != unschedulable
        if changed:
            patch = recording(
                {"spec": {"unschedulable": unschedulable}}, record, module_name, previous=previous
            )
            await _do(kube.patch("node", request.node, None, patch), request)
            log.info("node scheduling changed", unschedulable=unschedulable)
        return NodeOutput(
            node=request.node,
            previous_unschedulable=previous,
            unschedulable=unschedulable,
            altered=previous != unschedulable,
            changed=changed,
        )

    async def _preview_node(self, request: NodeInput, *, unschedulable: bool) -> Preview:
        async with stepping("preview", node=request.node):
            found = await _do(self.kube(request.target).get("node", request.node, None), request)
            current = is_unschedulable(found)
            after = unschedulable if request.apply else current
            verb = "cordon" if unschedulable else "uncordon"
            return setting_preview(
                Change(
                    target=f"{request.target}:node/{request.node}",
                    attribute="spec.unschedulable",
                    before=current,
                    after=after,
                ),
                f"{verb} node {request.node}",
                "nodes",
                f"set spec.unschedulable back to {current}"
                if after != current
                else "nothing to undo",
            )


def _template_annotations(deployment: dict[str, Any]) -> dict[str, Any]:
    template = (deployment.get("spec") or {}).get("template") or {}
    return dict((template.get("metadata") or {}).get("annotations") or {})


async def _deployment(kube: Kube, request: DeploymentRef, ns: str) -> dict[str, Any]:
    found: dict[str, Any] = await _do(kube.get("deployment", request.deployment, ns), request)
    return found


async def _do(call: Any, request: BaseModel) -> Any:
    """Await a driver call; API refusals are final (404 names the object), the rest retried."""
    try:
        return await call
    except KubeError as exc:
        target = getattr(request, "target", "?")
        message = f"kubernetes target {target!r}: {exc}"
        if exc.status is None or exc.status in RETRYABLE_STATUSES:
            raise unavailable(message) from None
        error: ApplicationError = refused(message, status=exc.status)
        raise error from None
