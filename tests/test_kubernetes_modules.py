"""The Kubernetes modules against recorded API responses, served over real HTTP.

No Kubernetes API server can run on the test machines, so the driver talks (through lightkube,
over real sockets) to a local HTTP server on 127.0.0.1 that answers with responses recorded
from the Kubernetes API reference (``tests/recordings/kubernetes/``). The tests assert on the
requests the driver sends: method, path, query, content-type, the patch body and the bearer
token. The driver is kept thin (get, list, merge patch, JSON patch) so these cover it; what a
real API server would then do with a patch is the API's contract, not ours.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.platform.kubernetes import KubernetesModules, ScaleInput
from activities.platform.kubernetes_api import LAST_CHANGE, RESTARTED_AT
from fireline import errors
from fireline.modules import IRREVERSIBLE, CompensationRef, ModuleSpec, load_registry
from fireline.plan import Preview
from fireline.playbook.expressions import resolve
from fireline.runtime.settings import Settings
from tests.support.target import Reply, Target, start_target
from tests.support.workers import compile_playbooks, fireline_workers, start_run

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "kubernetes"
REGISTRY = load_registry(["platform"])
DEP = "/apis/apps/v1/namespaces/shop/deployments/web"
RS = "/apis/apps/v1/namespaces/shop/replicasets"
NODE = "/api/v1/nodes/node-1"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
TOKEN = "kube-s3cret-token"


def recording(name: str) -> Any:
    return json.loads((RECORDINGS / f"{name}.json").read_text())


def deployment(**status: Any) -> dict[str, Any]:
    """The recorded deployment, with spec/status fields changed as a rollout would."""
    dep = recording("deployment")
    for key, value in status.items():
        if key in ("generation", "resourceVersion"):
            dep["metadata"][key] = value
        elif key == "spec_replicas":
            dep["spec"]["replicas"] = value
        elif key == "annotations":
            dep["metadata"]["annotations"].update(value)
        elif key == "template_annotations":
            dep["spec"]["template"]["metadata"]["annotations"] = value
        else:
            dep["status"][key] = value
    return dep


def node(unschedulable: bool | None = None, annotations: dict[str, str] | None = None) -> Any:
    found = recording("node")
    if unschedulable is not None:
        found["spec"]["unschedulable"] = unschedulable
    found["metadata"]["annotations"].update(annotations or {})
    return found


def record(module: str, key: str = "wf-1/step-a", **found: Any) -> dict[str, str]:
    """The last-change annotation a step with ``key`` leaves on what it changed."""
    return {LAST_CHANGE: json.dumps({"key": key, "module": module, **found})}


def activity_env(activity_id: str = "step-a") -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(), workflow_id="wf-1", activity_id=activity_id
    )
    return environment


@pytest.fixture
def api() -> Iterator[Target]:
    """The recorded API server: a fresh one per test."""
    server = start_target()
    try:
        yield server
    finally:
        # Its serve loop notices a shutdown within half a second; nothing waits for that.
        threading.Thread(target=server.close, daemon=True).start()


@pytest.fixture
async def modules(api: Target) -> AsyncIterator[KubernetesModules]:
    module_set = KubernetesModules(
        Settings(
            targets={
                "kubernetes": {
                    "prod": {"server": api.base_url, "token": TOKEN, "namespace": "shop"}
                }
            }
        )
    )
    yield module_set
    await module_set.aclose()


def bound(
    modules: KubernetesModules, spec: ModuleSpec, preview: bool = False
) -> Callable[..., Any]:
    fn = spec.preview_fn if preview else spec.fn
    assert fn is not None
    return getattr(modules, fn.__name__)  # type: ignore[no-any-return]


async def act(
    modules: KubernetesModules, name: str, payload: dict[str, Any], activity_id: str = "step-a"
) -> dict[str, Any]:
    spec = REGISTRY[name]
    result = await activity_env(activity_id).run(
        bound(modules, spec), spec.input_model.model_validate(payload)
    )
    assert isinstance(result, BaseModel)
    return result.model_dump(mode="json")


async def preview_of(modules: KubernetesModules, name: str, payload: dict[str, Any]) -> Preview:
    spec = REGISTRY[name]
    result = await activity_env("preview").run(
        bound(modules, spec, preview=True), spec.input_model.model_validate(payload)
    )
    assert isinstance(result, Preview)
    return result


def compensation_input(name: str, payload: dict[str, Any], output: dict[str, Any]) -> Any:
    """The undo's input as the workflow derives it from the step's input and output."""
    ref = REGISTRY[name].compensation
    assert isinstance(ref, CompensationRef)
    context = {
        "input": REGISTRY[name].input_model.model_validate(payload).model_dump(),
        "output": output,
    }
    return ref.module, resolve(ref.with_, context)


async def declared_check(
    modules: KubernetesModules, name: str, stage: str, payload: dict[str, Any]
) -> Any:
    spec = REGISTRY[name]
    [ref] = spec.preconditions if stage == "pre" else spec.postconditions
    check = REGISTRY[ref.check]
    context = {"input": spec.input_model.model_validate(payload).model_dump()}
    with_ = ref.with_
    resolved = resolve(with_["$from"] if set(with_) == {"$from"} else with_, context)
    params = check.input_model.model_validate(resolved)
    return await activity_env("check").run(bound(modules, check), params)


async def raises(awaitable: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await awaitable
    return caught.value


def patches(api: Target, path: str) -> list[Any]:
    return [hit.json for hit in api.hits("PATCH", path)]


WEB = {"target": "prod", "deployment": "web", "poll_interval_s": 0.01, "wait_s": 5}


class TestRegistry:
    def test_changes_declare_their_undo_and_preview(self) -> None:
        """Restart cannot be undone; scale, rollback and (un)cordon undo to what they found."""
        names = sorted(
            s.name for s in REGISTRY.values() if s.name.startswith("platform.k8s_") and s.mutates
        )
        assert names == [
            "platform.k8s_cordon",
            "platform.k8s_rollback",
            "platform.k8s_rollout_restart",
            "platform.k8s_scale",
            "platform.k8s_uncordon",
        ]
        for name in names:
            assert REGISTRY[name].preview == f"{name}.preview"
            assert REGISTRY[name].postconditions
        assert REGISTRY["platform.k8s_rollout_restart"].compensation == IRREVERSIBLE
        scale = REGISTRY["platform.k8s_scale"].compensation
        assert isinstance(scale, CompensationRef)
        assert scale.with_["replicas"] == "${{ output.previous_replicas }}"
        cordon = REGISTRY["platform.k8s_cordon"].compensation
        uncordon = REGISTRY["platform.k8s_uncordon"].compensation
        assert isinstance(cordon, CompensationRef)
        assert isinstance(uncordon, CompensationRef)
        assert (cordon.module, uncordon.module) == ("platform.k8s_uncordon", "platform.k8s_cordon")

    def test_compiling_never_imports_the_kubernetes_client(self) -> None:
        """Loading the platform registry and the compiler leaves lightkube unimported."""
        code = (
            "import sys\n"
            "from fireline.modules import load_registry\n"
            "import fireline.compile.compiler\n"
            "load_registry(['platform'])\n"
            "assert not [m for m in sys.modules if m.startswith(('lightkube', 'httpx2'))]\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)

    def test_names_cannot_become_paths(self) -> None:
        """Object names are DNS-1123: a name carrying a path or query never reaches a URL."""
        for bad in ("../secrets", "web/scale", "web?dryRun=All", "Web", ""):
            with pytest.raises(ValidationError):
                ScaleInput(target="prod", deployment=bad, replicas=1)
            with pytest.raises(ValidationError):
                ScaleInput(target="prod", deployment="web", namespace=bad, replicas=1)


class TestRolloutRestart:
    async def test_patches_the_template_and_waits_for_the_rollout(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """One merge patch sets restartedAt (and the step's record); the wait follows the
        rollout through observedGeneration, updated, old pods gone and available."""
        api.route(
            "GET",
            DEP,
            Reply(200, deployment()),
            Reply(200, deployment(generation=8)),
            Reply(
                200, deployment(generation=8, observedGeneration=8, updatedReplicas=1, replicas=4)
            ),
            Reply(200, deployment(generation=8, observedGeneration=8, replicas=4)),
            Reply(200, deployment(generation=8, observedGeneration=8, availableReplicas=2)),
            Reply(200, deployment(generation=8, observedGeneration=8)),
        )
        api.route("PATCH", DEP, Reply(200, deployment(generation=8)))
        output = await act(modules, "platform.k8s_rollout_restart", WEB)

        [patch] = api.hits("PATCH", DEP)
        assert patch.headers["content-type"] == MERGE
        assert patch.headers["authorization"] == f"Bearer {TOKEN}"
        assert patch.query == {"fieldManager": "fireline"}
        restarted = patch.json["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
        assert restarted == output["restarted_at"]
        assert json.loads(patch.json["metadata"]["annotations"][LAST_CHANGE]) == {
            "key": "wf-1/step-a",
            "module": "platform.k8s_rollout_restart",
            "restarted_at": restarted,
            "previous": None,
        }
        assert set(patch.json) == {"metadata", "spec"}
        assert len(api.hits("GET", DEP)) == 6, "it waited through every rollout stage"
        assert (output["restarted"], output["rollout"]["complete"]) == (True, True)
        assert TOKEN not in json.dumps(output)

    async def test_a_repeat_with_the_same_key_restarts_nothing(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """The deployment carries this step's record: no second restart, just the wait."""
        done = deployment(
            generation=8,
            observedGeneration=8,
            annotations=record(
                "platform.k8s_rollout_restart", restarted_at="2026-12-01T09:00:00Z", previous=None
            ),
            template_annotations={RESTARTED_AT: "2026-12-01T09:00:00Z"},
        )
        api.route("GET", DEP, Reply(200, done))
        output = await act(modules, "platform.k8s_rollout_restart", WEB)
        assert api.hits("PATCH", DEP) == []
        assert (output["restarted"], output["restarted_at"]) == (False, "2026-12-01T09:00:00Z")

    async def test_precondition_refuses_mid_rollout(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """A restart is not started on top of a rollout that has not finished."""
        api.route("GET", DEP, Reply(200, deployment(updatedReplicas=1, replicas=4)))
        result = await declared_check(modules, "platform.k8s_rollout_restart", "pre", WEB)
        assert not result.satisfied
        assert result.detail == "web: 1 of 3 updated"
        assert result.observed["updated"] == 1

    async def test_a_failed_rollout_is_final(self, api: Target, modules: KubernetesModules) -> None:
        stuck = deployment(generation=8, observedGeneration=8, updatedReplicas=1)
        stuck["status"]["conditions"][1] = {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "web-9f8e7d6c5" has timed out progressing.',
        }
        api.route("GET", DEP, Reply(200, deployment()), Reply(200, stuck))
        api.route("PATCH", DEP, Reply(200, deployment(generation=8)))
        err = await raises(act(modules, "platform.k8s_rollout_restart", WEB))
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "has timed out progressing" in err.message

    async def test_a_rollout_still_going_at_wait_s_is_retried_without_restarting_again(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """Past wait_s the step fails retryably; the retry (same key) only waits again."""
        going = deployment(generation=8, observedGeneration=8, updatedReplicas=1, replicas=4)
        api.route("GET", DEP, Reply(200, deployment()), Reply(200, going))
        api.route("PATCH", DEP, Reply(200, going))
        err = await raises(act(modules, "platform.k8s_rollout_restart", {**WEB, "wait_s": 0}))
        assert (err.type, err.non_retryable) == (errors.TARGET_UNAVAILABLE, False)
        assert "rollout not complete after 0 s: web: 1 of 3 updated" in err.message
        [patch] = patches(api, DEP)
        marked = deployment(
            generation=8,
            observedGeneration=8,
            annotations={LAST_CHANGE: patch["metadata"]["annotations"][LAST_CHANGE]},
        )
        api.route("GET", DEP, Reply(200, marked))
        output = await act(modules, "platform.k8s_rollout_restart", WEB)
        assert len(patches(api, DEP)) == 1, "the retry did not restart the pods a second time"
        assert output["restarted"] is False

    async def test_preview(self, api: Target, modules: KubernetesModules) -> None:
        api.route("GET", DEP, Reply(200, deployment()))
        preview = await preview_of(modules, "platform.k8s_rollout_restart", WEB)
        assert preview.blast_radius == {"deployments": 1, "pods": 3}
        [change] = preview.changes
        assert (change.target, change.before, change.after) == (
            "prod:shop/deployment/web",
            None,
            "now",
        )
        assert preview.rollback.startswith("irreversible")
        assert api.hits("PATCH") == []


class TestScale:
    async def test_scale_records_the_replicas_it_found_and_the_undo_restores_them(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """3 -> 5, then the compensation scales back to the recorded 3."""
        api.route(
            "GET",
            DEP,
            Reply(200, deployment()),
            Reply(
                200,
                deployment(
                    spec_replicas=5,
                    generation=8,
                    observedGeneration=8,
                    updatedReplicas=5,
                    replicas=5,
                    availableReplicas=5,
                ),
            ),
        )
        api.route("PATCH", DEP, Reply(200, deployment(spec_replicas=5)))
        payload = {**WEB, "replicas": 5}
        output = await act(modules, "platform.k8s_scale", payload)
        [patch] = patches(api, DEP)
        assert patch["spec"] == {"replicas": 5}
        assert json.loads(patch["metadata"]["annotations"][LAST_CHANGE])["previous"] == 3
        assert api.hits("PATCH", DEP)[0].headers["content-type"] == MERGE
        assert (output["previous_replicas"], output["changed"]) == (3, True)

        undo, undo_input = compensation_input("platform.k8s_scale", payload, output)
        assert (undo, undo_input["replicas"], undo_input["namespace"]) == (
            "platform.k8s_scale",
            3,
            "shop",
        )
        scaled = deployment(
            spec_replicas=5,
            annotations=record("platform.k8s_scale", previous=3),
            generation=8,
            observedGeneration=8,
        )
        api.route(
            "GET",
            DEP,
            Reply(200, scaled),
            Reply(200, deployment(generation=9, observedGeneration=9)),
        )
        api.route("PATCH", DEP, Reply(200, deployment()))
        await act(modules, undo, {**undo_input, "poll_interval_s": 0.01}, activity_id="undo")
        assert patches(api, DEP)[1]["spec"] == {"replicas": 3}

    async def test_a_repeat_keeps_the_first_finding(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """Already at 5 with this step's record of 3: no patch, and the undo still says 3."""
        api.route(
            "GET",
            DEP,
            Reply(
                200,
                deployment(
                    spec_replicas=5,
                    updatedReplicas=5,
                    replicas=5,
                    availableReplicas=5,
                    annotations=record("platform.k8s_scale", previous=3),
                ),
            ),
        )
        output = await act(modules, "platform.k8s_scale", {**WEB, "replicas": 5})
        assert patches(api, DEP) == []
        assert (output["previous_replicas"], output["changed"]) == (3, False)

    async def test_postcondition_and_preview(self, api: Target, modules: KubernetesModules) -> None:
        api.route("GET", DEP, Reply(200, deployment()))
        payload = {**WEB, "replicas": 5}
        result = await declared_check(modules, "platform.k8s_scale", "post", payload)
        assert not result.satisfied
        assert result.detail.endswith("spec.replicas is 3, expected 5")
        preview = await preview_of(modules, "platform.k8s_scale", payload)
        [change] = preview.changes
        assert (change.attribute, change.before, change.after) == ("spec.replicas", 3, 5)
        assert preview.blast_radius["pods"] == 2
        assert api.hits("PATCH") == []


class TestRollback:
    async def test_patches_the_previous_revisions_template_back(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """Revision 3 -> 2: the template of the ReplicaSet annotated revision 2 (owned by
        this deployment), without its pod-template-hash label, in one JSON patch."""
        api.route(
            "GET",
            DEP,
            Reply(200, deployment()),
            Reply(200, deployment(generation=8, observedGeneration=8)),
        )
        api.route("GET", RS, Reply(200, recording("replicasets")))
        api.route("PATCH", DEP, Reply(200, deployment(generation=8)))
        output = await act(modules, "platform.k8s_rollback", WEB)

        [listing] = api.hits("GET", RS)
        assert listing.query == {"labelSelector": "app=web"}
        [patch] = api.hits("PATCH", DEP)
        assert patch.headers["content-type"] == JSON_PATCH
        test, replace, add = patch.json
        assert test == {"op": "test", "path": "/metadata/resourceVersion", "value": "918273"}
        assert replace["op"] == "replace"
        assert replace["path"] == "/spec/template"
        assert replace["value"]["metadata"]["labels"] == {"app": "web"}
        assert replace["value"]["spec"]["containers"][0]["image"] == (
            "registry.example/shop/web:1.3.1"
        )
        assert add["path"] == "/metadata/annotations/fireline.io~1last-change"
        assert json.loads(add["value"])["from_revision"] == 3
        assert (output["from_revision"], output["to_revision"]) == (3, 2)
        assert output["images_after"] == ["web=registry.example/shop/web:1.3.1"]

        undo, undo_input = compensation_input("platform.k8s_rollback", WEB, output)
        assert (undo, undo_input["to_revision"]) == ("platform.k8s_rollback", 3)

    async def test_nothing_to_roll_back_to_is_refused_with_what_is_kept(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        only_current = recording("replicasets")
        only_current["items"] = only_current["items"][2:]
        api.route("GET", DEP, Reply(200, deployment()))
        api.route("GET", RS, Reply(200, only_current))
        err = await raises(act(modules, "platform.k8s_rollback", WEB))
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert err.message == (
            "deployment web has no revision before 3 to roll back to (revisions kept: 3)"
        )
        err = await raises(act(modules, "platform.k8s_rollback", {**WEB, "to_revision": 5}))
        assert "has no revision 5; kept: 3" in err.message, "another deployment's RS is not ours"
        assert api.hits("PATCH") == []

    async def test_a_repeat_patches_nothing(self, api: Target, modules: KubernetesModules) -> None:
        rolled = deployment(
            annotations=record(
                "platform.k8s_rollback",
                from_revision=3,
                to_revision=2,
                images_before=["web=a"],
                images_after=["web=b"],
            )
        )
        api.route("GET", DEP, Reply(200, rolled))
        output = await act(modules, "platform.k8s_rollback", WEB)
        assert api.hits("PATCH") == []
        assert api.hits("GET", RS) == []
        assert (output["from_revision"], output["to_revision"], output["changed"]) == (3, 2, False)

    async def test_preview_shows_revision_and_images(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        api.route("GET", DEP, Reply(200, deployment()))
        api.route("GET", RS, Reply(200, recording("replicasets")))
        preview = await preview_of(modules, "platform.k8s_rollback", WEB)
        assert [(c.attribute, c.before, c.after) for c in preview.changes] == [
            ("revision", 3, 2),
            (
                "containers",
                ["web=registry.example/shop/web:1.4.0"],
                ["web=registry.example/shop/web:1.3.1"],
            ),
        ]
        assert api.hits("PATCH") == []


class TestCordon:
    async def test_cordon_then_its_undo(self, api: Target, modules: KubernetesModules) -> None:
        """Cordon records 'was schedulable'; the uncordon it is undone by sets it back."""
        api.route("GET", NODE, Reply(200, node()))
        api.route("PATCH", NODE, Reply(200, node(unschedulable=True)))
        payload = {"target": "prod", "node": "node-1"}
        output = await act(modules, "platform.k8s_cordon", payload)
        [patch] = api.hits("PATCH", NODE)
        assert patch.headers["content-type"] == MERGE
        assert patch.json["spec"] == {"unschedulable": True}
        assert json.loads(patch.json["metadata"]["annotations"][LAST_CHANGE])["previous"] is False
        assert (output["previous_unschedulable"], output["altered"]) == (False, True)

        undo, undo_input = compensation_input("platform.k8s_cordon", payload, output)
        assert (undo, undo_input) == (
            "platform.k8s_uncordon",
            {"target": "prod", "node": "node-1", "apply": True},
        )
        api.route("GET", NODE, Reply(200, node(unschedulable=True)))
        await act(modules, undo, undo_input, activity_id="undo")
        assert patches(api, NODE)[1]["spec"] == {"unschedulable": False}

    async def test_a_node_cordoned_before_stays_cordoned_after_the_undo(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """Cordoning a cordoned node changes nothing, so its undo changes nothing either."""
        api.route("GET", NODE, Reply(200, node(unschedulable=True)))
        payload = {"target": "prod", "node": "node-1"}
        output = await act(modules, "platform.k8s_cordon", payload)
        assert (output["altered"], output["changed"]) == (False, False)
        undo, undo_input = compensation_input("platform.k8s_cordon", payload, output)
        await act(modules, undo, undo_input, activity_id="undo")
        assert api.hits("PATCH") == []

    async def test_a_repeat_keeps_the_first_finding(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        cordoned = node(
            unschedulable=True, annotations=record("platform.k8s_cordon", previous=False)
        )
        api.route("GET", NODE, Reply(200, cordoned))
        output = await act(modules, "platform.k8s_cordon", {"target": "prod", "node": "node-1"})
        assert api.hits("PATCH") == []
        assert (output["previous_unschedulable"], output["altered"]) == (False, True)

    async def test_postcondition_and_preview(self, api: Target, modules: KubernetesModules) -> None:
        api.route("GET", NODE, Reply(200, node()))
        payload = {"target": "prod", "node": "node-1"}
        result = await declared_check(modules, "platform.k8s_cordon", "post", payload)
        assert (result.satisfied, result.detail) == (
            False,
            "node node-1 is schedulable; expected cordoned",
        )
        preview = await preview_of(modules, "platform.k8s_cordon", payload)
        [change] = preview.changes
        assert (change.attribute, change.before, change.after) == (
            "spec.unschedulable",
            False,
            True,
        )
        uncordon = await preview_of(modules, "platform.k8s_uncordon", payload)
        assert (uncordon.mutates, uncordon.changes) == (False, [])


class TestErrors:
    async def test_not_found_is_final_and_names_the_object(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        api.route("GET", DEP, Reply(404, recording("status-404")))
        err = await raises(act(modules, "platform.k8s_scale", {**WEB, "replicas": 1}))
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert 'deployments.apps "web" not found' in err.message

    async def test_an_error_without_a_status_object_still_says_what_happened(
        self, api: Target, modules: KubernetesModules
    ) -> None:
        """A proxy's plain 404 (no route here) is still named with its HTTP status."""
        err = await raises(
            act(modules, "platform.k8s_cordon", {"target": "prod", "node": "node-9"})
        )
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "get node node-9: 404" in err.message

    async def test_forbidden_is_final(self, api: Target, modules: KubernetesModules) -> None:
        api.route("GET", DEP, Reply(200, deployment()))
        api.route("PATCH", DEP, Reply(403, recording("status-403")))
        err = await raises(act(modules, "platform.k8s_scale", {**WEB, "replicas": 4}))
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "cannot patch resource" in err.message
        assert TOKEN not in err.message

    async def test_a_conflict_is_retried(self, api: Target, modules: KubernetesModules) -> None:
        """409: another writer got there first; the retry re-reads the object."""
        api.route("GET", DEP, Reply(200, deployment()))
        api.route("PATCH", DEP, Reply(409, recording("status-409")))
        err = await raises(act(modules, "platform.k8s_scale", {**WEB, "replicas": 4}))
        assert (err.type, err.non_retryable) == (errors.TARGET_UNAVAILABLE, False)

    async def test_unreachable_server_is_retried(self) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = Settings(
            targets={"kubernetes": {"prod": {"server": f"http://127.0.0.1:{port}"}}}
        )
        modules = KubernetesModules(settings)
        try:
            err = await raises(act(modules, "platform.k8s_scale", {**WEB, "replicas": 4}))
        finally:
            await modules.aclose()
        assert (err.type, err.non_retryable) == (errors.TARGET_UNAVAILABLE, False)

    async def test_unknown_target_and_bad_settings(self, api: Target) -> None:
        modules = KubernetesModules(
            Settings(targets={"kubernetes": {"prod": {"server": api.base_url, "tokn": TOKEN}}})
        )
        err = await raises(act(modules, "platform.k8s_scale", {**WEB, "replicas": 4}))
        assert err.type == errors.INVALID_INPUT
        assert "misconfigured: check tokn" in err.message
        assert TOKEN not in err.message
        err = await raises(
            act(modules, "platform.k8s_scale", {**WEB, "target": "staging", "replicas": 4})
        )
        assert "no kubernetes target named 'staging'" in err.message
        assert "configured: prod" in err.message


def test_recordings_are_kubernetes_objects() -> None:
    """Each recording has the apiVersion/kind the real API returns for it."""
    kinds = {
        "deployment": ("apps/v1", "Deployment"),
        "replicasets": ("apps/v1", "ReplicaSetList"),
        "node": ("v1", "Node"),
        "status-404": ("v1", "Status"),
    }
    for name, (version, kind) in kinds.items():
        found = recording(name)
        assert (found["apiVersion"], found["kind"]) == (version, kind)
    assert copy.deepcopy(recording("deployment")) == recording("deployment")


class TestThroughTemporal:
    async def test_a_late_failure_uncordons_the_node_it_cordoned(
        self, client: Client, task_queue_prefix: str, api: Target, tmp_path: Path
    ) -> None:
        """Cordon, then a rollout check that fails: the run uncordons the node through its
        compensation, on a real platform worker of the dev server (recorded API, real HTTP)."""
        plan = compile_playbooks(
            tmp_path,
            {
                "k.yaml": """
                name: cordon-then-check
                steps:
                  - id: cordon
                    uses: platform.k8s_cordon
                    with: {target: prod, node: node-1}
                  - id: rollout
                    uses: platform.k8s_rollout_complete
                    with: {target: prod, deployment: web}
                """
            },
            "cordon-then-check",
        )
        api.route("GET", NODE, Reply(200, node()), Reply(200, node(unschedulable=True)))
        api.route("PATCH", NODE, Reply(200, node(unschedulable=True)))
        api.route("GET", DEP, Reply(200, deployment(updatedReplicas=1, replicas=4)))
        settings = Settings(
            targets={
                "kubernetes": {
                    "prod": {"server": api.base_url, "token": TOKEN, "namespace": "shop"}
                }
            }
        )
        async with fireline_workers(
            client, task_queue_prefix, domains=("core", "platform"), settings=settings
        ):
            handle = await start_run(client, task_queue_prefix, plan)
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
        assert isinstance(caught.value.cause, ApplicationError)
        assert caught.value.cause.type == errors.PLAYBOOK_COMPENSATED
        assert "web: 1 of 3 updated" in str(caught.value.cause)
        assert [p["spec"] for p in patches(api, NODE)] == [
            {"unschedulable": True},
            {"unschedulable": False},
        ]
        history = await handle.fetch_history()
        assert TOKEN not in history.to_json(), "the credential never enters workflow history"
