"""The HAProxy modules against a real HAProxy (Debian's package) in front of real backends.

Every assertion on state reads HAProxy back through its admin socket (``show servers state``),
never the module's own return value. Module-level cases run in ``ActivityEnvironment`` (a real
activity context, no server); pre/postconditions and compensations are resolved from the
module's declarations exactly as the workflow resolves them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.platform.haproxy import DrainInput, HaproxyModules, WeightsInput
from activities.platform.haproxy_api import (
    MAX_ANSWER_BYTES,
    HaproxyAdmin,
    HaproxyTarget,
    Refused,
    parse_servers_state,
    parse_stat,
)
from fireline import errors
from fireline.compile.compiler import PlaybookLibrary
from fireline.errors import CompileError
from fireline.messages import (
    QUERY_STATUS,
    RunPhase,
    RunState,
    StepStatus,
)
from fireline.modules import CompensationRef, ModuleSpec, bind_activities, load_registry
from fireline.plan import CheckResult, Preview
from fireline.playbook.expressions import resolve
from fireline.runtime.settings import Settings
from tests.support.haproxy import (
    Haproxy,
    SlowSession,
    free_port,
    running_haproxy,
    wait_for_sessions,
)
from tests.support.target import Reply, start_target
from tests.support.workers import approve, compile_playbooks, fireline_workers, start_run

REGISTRY = load_registry(["platform"])
HAPROXY_MODULES = sorted(
    s.name for s in REGISTRY.values() if s.name.startswith("platform.haproxy_") and s.mutates
)
INITIAL = {"s1": ("ready", 0, 10), "s2": ("ready", 0, 20), "s3": ("ready", 0, 30)}


def activity_env(
    workflow_id: str = "wf-1",
    activity_id: str = "step-a",
    *,
    heartbeat_s: float | None = None,
    details: tuple[Any, ...] = (),
) -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id=workflow_id,
        activity_id=activity_id,
        heartbeat_timeout=timedelta(seconds=heartbeat_s) if heartbeat_s else None,
        heartbeat_details=list(details),
    )
    return environment


@pytest.fixture
def haproxy() -> Iterator[Haproxy]:
    """A fresh HAProxy with three healthy backends per test (started in ~0.1 s)."""
    with running_haproxy() as started:
        yield started


@pytest.fixture
async def modules(haproxy: Haproxy) -> AsyncIterator[HaproxyModules]:
    module_set = HaproxyModules(haproxy.settings())
    yield module_set
    await module_set.aclose()


def bound(modules: HaproxyModules, spec: ModuleSpec, preview: bool = False) -> Callable[..., Any]:
    fn = spec.preview_fn if preview else spec.fn
    assert fn is not None
    return getattr(modules, fn.__name__)  # type: ignore[no-any-return]


async def act(
    modules: HaproxyModules, name: str, payload: dict[str, Any], env: ActivityEnvironment | None
) -> dict[str, Any]:
    spec = REGISTRY[name]
    result = await (env or activity_env()).run(
        bound(modules, spec), spec.input_model.model_validate(payload)
    )
    assert isinstance(result, BaseModel)
    return result.model_dump(mode="json")


def resolve_call(with_: dict[str, Any], context: dict[str, Any]) -> Any:
    """A declared call's input as the workflow resolves it (``$from`` names a whole object)."""
    if set(with_) == {"$from"}:
        return resolve(with_["$from"], context)
    return resolve(with_, context)


async def declared_checks(
    modules: HaproxyModules,
    name: str,
    stage: str,
    payload: dict[str, Any],
    output: dict[str, Any] | None = None,
) -> list[CheckResult]:
    """Run a module's declared pre- or postconditions as the workflow resolves them."""
    spec = REGISTRY[name]
    refs = spec.preconditions if stage == "pre" else spec.postconditions
    context: dict[str, Any] = {"input": spec.input_model.model_validate(payload).model_dump()}
    if output is not None:
        context["output"] = output
    results = []
    for ref in refs:
        check = REGISTRY[ref.check]
        params = check.input_model.model_validate(resolve_call(ref.with_, context))
        result = await activity_env(activity_id=f"{stage}-check").run(bound(modules, check), params)
        results.append(result)
    return results


async def compensate(
    modules: HaproxyModules, name: str, payload: dict[str, Any], output: dict[str, Any]
) -> dict[str, Any]:
    """Run the module's compensation with the input the workflow derives from the step."""
    ref = REGISTRY[name].compensation
    assert isinstance(ref, CompensationRef)
    context = {
        "input": REGISTRY[name].input_model.model_validate(payload).model_dump(),
        "output": output,
    }
    assert isinstance(ref.with_, dict)
    return await act(
        modules, ref.module, resolve(ref.with_, context), activity_env(activity_id="undo")
    )


async def snapshot(haproxy: Haproxy) -> dict[str, tuple[str, int, int]]:
    return await asyncio.to_thread(haproxy.snapshot)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll a condition that reads HAProxy, off the event loop the module runs on."""
    async with asyncio.timeout(timeout_s):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.02)


async def raises(awaitable: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await awaitable
    return caught.value


@dataclasses.dataclass
class Case:
    module: str
    payload: dict[str, Any]
    after: dict[str, tuple[str, int, int]]
    setup: tuple[str, ...] = ()


EDGE = {"target": "edge", "backend": "web"}
CASES = [
    Case(
        "platform.haproxy_drain",
        {**EDGE, "servers": ["s1"], "keep_healthy": 2, "wait_s": 5, "poll_interval_s": 0.1},
        {**INITIAL, "s1": ("drain", 8, 10)},
    ),
    Case(
        "platform.haproxy_disable",
        {**EDGE, "servers": ["s1", "s2"], "keep_healthy": 1},
        {**INITIAL, "s1": ("maint", 1, 10), "s2": ("maint", 1, 20)},
    ),
    Case(
        "platform.haproxy_enable",
        {**EDGE, "servers": ["s2", "s3"]},
        INITIAL,
        setup=("set server web/s2 state maint", "set server web/s3 state drain"),
    ),
    Case(
        "platform.haproxy_set_weights",
        {**EDGE, "weights": {"s1": 0, "s3": 60}, "keep_healthy": 3},
        {**INITIAL, "s1": ("ready", 0, 0), "s3": ("ready", 0, 60)},
    ),
    Case(
        "platform.haproxy_restore",
        {
            **EDGE,
            "servers": [
                {"server": "s1", "admin_state": "ready", "weight": 10},
                {"server": "s2", "admin_state": "drain", "weight": 20},
            ],
        },
        {**INITIAL, "s2": ("drain", 8, 20)},
        setup=("set server web/s1 state maint", "set weight web/s1 3"),
    ),
]


class TestRegistry:
    def test_every_change_has_a_preview_a_restore_and_a_postcondition(self) -> None:
        """Each mutating HAProxy module previews, is undone by restore, and is verified."""
        assert sorted(c.module for c in CASES) == HAPROXY_MODULES
        for name in HAPROXY_MODULES:
            spec = REGISTRY[name]
            assert spec.preview == f"{name}.preview"
            assert isinstance(spec.compensation, CompensationRef)
            assert spec.compensation.module == "platform.haproxy_restore"
            assert spec.compensation.with_ == {
                "target": "${{ input.target }}",
                "backend": "${{ input.backend }}",
                "servers": "${{ output.previous }}",
            }
            assert spec.postconditions
            assert spec.idempotent

    def test_every_platform_module_describes_itself_as_json(self) -> None:
        """describe() (what ``fireline modules`` shows) is JSON with an input schema."""
        for spec in REGISTRY.values():
            described = json.loads(json.dumps(spec.describe()))
            assert described["description"], spec.name
            assert described["input_schema"]["properties"], spec.name
            assert (described["preview"] is not None) == spec.mutates, spec.name

    def test_a_playbook_must_say_how_much_capacity_to_keep(self, tmp_path: Path) -> None:
        """keep_healthy has no default: a drain that does not state it does not compile."""
        with pytest.raises(CompileError, match="requires input 'keep_healthy'"):
            compile_playbooks(
                tmp_path,
                {
                    "d.yaml": """
                    name: careless
                    steps:
                      - id: drain
                        uses: platform.haproxy_drain
                        with: {target: edge, backend: web, servers: [s1]}
                    """
                },
                "careless",
            )

    def test_checks_run_where_the_socket_is(self) -> None:
        """HAProxy checks need the target settings, so they run on the platform queue."""
        for name in ("platform.haproxy_healthy", "platform.haproxy_servers_match"):
            spec = REGISTRY[name]
            assert (spec.kind, spec.domain, spec.local) == ("check", "platform", False)

    def test_hostile_names_never_reach_the_socket(self) -> None:
        """A name carrying a command separator is refused by the input model."""
        for bad in ("s1;shutdown sessions server web/s2", "s1\nset server web/s2 state maint", ""):
            with pytest.raises(ValidationError):
                DrainInput(target="edge", backend="web", servers=[bad], keep_healthy=1)
            with pytest.raises(ValidationError):
                DrainInput(target="edge", backend=bad, servers=["s1"], keep_healthy=1)
        with pytest.raises(ValidationError):
            DrainInput(
                target="edge", backend="web", servers=[f"s{n}" for n in range(257)], keep_healthy=1
            )
        with pytest.raises(ValidationError):
            WeightsInput(target="edge", backend="web", weights={"s1": 257}, keep_healthy=1)


class TestParsing:
    """The runtime API's answers are read by column name, and anything else is refused."""

    HEADER = (
        "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
        "srv_iweight srv_time_since_last_change"
    )

    def test_rows_by_column_name_with_blank_lines_and_extra_columns(self) -> None:
        text = (
            f"1\n{self.HEADER} srv_future_column\n\n"
            "3 web 1 s1 127.0.0.1 2 8 10 10 5 x\n"
            "3 web 2 s2 127.0.0.1 0 1 0 20 5 y\n\n"
        )
        [s1, s2] = parse_servers_state(text)
        assert (s1.server, s1.admin_state, s1.operational, s1.weight) == (
            "s1",
            "drain",
            "running",
            10,
        )
        assert (s2.admin_state, s2.operational, s2.weight, s2.initial_weight) == (
            "maint",
            "stopped",
            0,
            20,
        )
        assert not s2.healthy

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("", "answered nothing"),
            ("2\n# be_name srv_name\n", "unsupported format"),
            ("1\n3 web 1 s1\n", "no column header"),
            (
                "1\n# be_name srv_name srv_op_state\n",
                "columns missing: srv_admin_state, srv_uweight",
            ),
            (f"1\n{HEADER}\n3 web 1 s1 127.0.0.1 2\n", "short row"),
            (f"1\n{HEADER}\n3 web 1 s1 127.0.0.1 two 0 1 1 0\n", "not a number"),
            ("Permission denied.\n", "unsupported format"),
        ],
    )
    def test_anything_else_is_refused(self, text: str, problem: str) -> None:
        with pytest.raises(Refused, match=problem):
            parse_servers_state(text)

    def test_stat_csv(self) -> None:
        rows = parse_stat(
            "# pxname,svname,scur,status,weight\nweb,s1,3,UP,10\nweb,BACKEND,3,UP,10\n"
        )
        assert rows[("web", "s1")]["scur"] == "3"
        with pytest.raises(Refused, match="not CSV"):
            parse_stat("Unknown command.\n")
        with pytest.raises(Refused, match="column missing"):
            parse_stat("# pxname,svname\nweb,s1\n")

    def test_a_target_names_exactly_one_socket(self) -> None:
        for bad in ({}, {"socket": "/run/a.sock", "address": "127.0.0.1:9"}, {"address": "nohost"}):
            with pytest.raises(ValidationError):
                HaproxyTarget.model_validate(bad)

    async def test_misconfigured_target_is_invalid_input(self) -> None:
        settings = Settings(targets={"haproxy": {"edge": {"socket": "/a", "address": "h:1"}}})
        err = await raises(act(HaproxyModules(settings), "platform.haproxy_servers", EDGE, None))
        assert err.type == errors.INVALID_INPUT
        assert "haproxy target 'edge' is misconfigured" in err.message


class TestEveryChange:
    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.module)
    async def test_act_verify_repeat_and_undo(
        self, case: Case, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """Preview, action, postcondition, a repeat by key and the compensation, each
        judged by reading HAProxy back."""
        for line in case.setup:
            assert haproxy.command(line).strip() == ""
        before = await snapshot(haproxy)

        preview = await activity_env(activity_id="preview").run(
            bound(modules, REGISTRY[case.module], preview=True),
            REGISTRY[case.module].input_model.model_validate(case.payload),
        )
        assert isinstance(preview, Preview)
        assert await snapshot(haproxy) == before, "a preview changes nothing"

        env = activity_env()
        output = await act(modules, case.module, case.payload, env)
        after = await snapshot(haproxy)
        assert after == case.after

        # The preview said exactly what the action then did.
        predicted = {(c.target, c.attribute, c.before, c.after) for c in preview.changes}
        happened = set()
        for server, (state, _, weight) in after.items():
            old_state, _, old_weight = before[server]
            where = f"edge:web/{server}"
            if state != old_state:
                happened.add((where, "admin_state", old_state, state))
            if weight != old_weight:
                happened.add((where, "weight", old_weight, weight))
        assert predicted == happened
        assert preview.mutates == bool(happened)
        assert preview.blast_radius["servers"] == len({w for w, *_ in happened})

        post = await declared_checks(modules, case.module, "post", case.payload, output)
        assert [r.satisfied for r in post] == [True] * len(post), [r.detail for r in post]

        again = await act(modules, case.module, case.payload, activity_env())
        assert await snapshot(haproxy) == after, "the same key changes nothing the second time"
        assert again["changed"] == []
        assert again["previous"] == output["previous"]

        await compensate(modules, case.module, case.payload, output)
        assert await snapshot(haproxy) == before


class TestDrain:
    async def test_waits_for_a_real_session_to_end(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """The drain returns only after the slow request through HAProxy has finished."""
        session = SlowSession(haproxy, "s1")
        await asyncio.to_thread(wait_for_sessions, haproxy, "s1", 1)
        beats: list[Any] = []
        env = activity_env(heartbeat_s=0.3)
        env.on_heartbeat = lambda *details: beats.append(details)
        payload = {
            **EDGE,
            "servers": ["s1"],
            "keep_healthy": 1,
            "wait_s": 20,
            "poll_interval_s": 0.05,
        }
        task = asyncio.create_task(act(modules, "platform.haproxy_drain", payload, env))

        await wait_until(lambda: haproxy.snapshot()["s1"][0] == "drain")
        await asyncio.sleep(0.5)
        assert not task.done(), "the drain must wait while a session is open"
        assert (await snapshot(haproxy))["s1"] == ("drain", 8, 10)

        reply = await asyncio.to_thread(session.finish)
        assert reply.startswith(b"HTTP/1.1 200")
        output = await asyncio.wait_for(task, 10)
        assert (output["drained"], output["remaining_sessions"]) == (True, 0)
        assert [(p["server"], p["admin_state"], p["weight"]) for p in output["previous"]] == [
            ("s1", "ready", 10)
        ]
        found = [beat[0]["found"] for beat in beats if "found" in beat[0]]
        assert len(found) >= 2, "a long drain heartbeats what it found"
        assert {f[0]["admin_state"] for f in found} == {"ready"}

    async def test_deadline_reports_the_sessions_left(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """At wait_s the drain stops waiting and says how many sessions are still open."""
        session = SlowSession(haproxy, "s2")
        await asyncio.to_thread(wait_for_sessions, haproxy, "s2", 1)
        payload = {
            **EDGE,
            "servers": ["s2"],
            "keep_healthy": 1,
            "wait_s": 0.3,
            "poll_interval_s": 0.05,
        }
        output = await act(modules, "platform.haproxy_drain", payload, None)
        assert (output["drained"], output["remaining_sessions"]) == (False, 1)
        assert (await snapshot(haproxy))["s2"] == ("drain", 8, 20)
        await asyncio.to_thread(session.finish)

    async def test_a_retry_on_another_worker_restores_what_the_first_attempt_found(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """The finding travels in heartbeat details: a fresh worker retrying the step still
        records 'ready', not the 'drain' its first attempt left behind."""
        beats: list[Any] = []
        env = activity_env()
        env.on_heartbeat = lambda *details: beats.append(details)
        payload = {
            **EDGE,
            "servers": ["s1"],
            "keep_healthy": 1,
            "wait_s": 1,
            "poll_interval_s": 0.05,
        }
        await act(modules, "platform.haproxy_drain", payload, env)
        fresh = HaproxyModules(haproxy.settings())
        retry = activity_env(details=beats[-1])
        output = await act(fresh, "platform.haproxy_drain", payload, retry)
        assert output["previous"][0]["admin_state"] == "ready"
        assert output["changed"] == []
        await compensate(fresh, "platform.haproxy_drain", payload, output)
        assert await snapshot(haproxy) == INITIAL

    async def test_precondition_refuses_to_drain_the_last_healthy_servers(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """keep_healthy counts the others; the refusal says what it saw."""
        assert haproxy.command("set server web/s3 state maint").strip() == ""
        payload = {**EDGE, "servers": ["s1"], "keep_healthy": 2}
        [result] = await declared_checks(modules, "platform.haproxy_drain", "pre", payload)
        assert not result.satisfied
        assert result.observed["healthy"] == 1
        assert "web has 1 healthy server(s) besides s1 (s2; not healthy: s3" in result.detail
        assert result.detail.endswith("expected at least 2")
        [ok] = await declared_checks(
            modules, "platform.haproxy_drain", "pre", {**payload, "keep_healthy": 1}
        )
        assert ok.satisfied, ok.detail

    async def test_preview_warns_when_the_step_will_refuse(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """The approver sees the open sessions and that too few servers would be left."""
        session = SlowSession(haproxy, "s1")
        await asyncio.to_thread(wait_for_sessions, haproxy, "s1", 1)
        spec = REGISTRY["platform.haproxy_drain"]
        preview = await activity_env().run(
            bound(modules, spec, preview=True),
            DrainInput(target="edge", backend="web", servers=["s1"], keep_healthy=3),
        )
        assert preview.blast_radius == {"servers": 1, "sessions": 1}
        assert "the step requires 3 and will refuse" in preview.warnings[0]
        assert "s1: ready, weight 10" in preview.rollback
        await asyncio.to_thread(session.finish)


class TestRefusals:
    async def test_unknown_server_is_final_and_named(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """An unknown server fails without retries, naming it and the servers there are."""
        err = await raises(
            act(
                modules,
                "platform.haproxy_disable",
                {**EDGE, "servers": ["s1", "s9"], "keep_healthy": 1},
                None,
            )
        )
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "has no server s9; it has: s1, s2, s3" in err.message
        assert await snapshot(haproxy) == INITIAL, "nothing changed, not even s1"

    async def test_unknown_backend_is_final_and_named(self, modules: HaproxyModules) -> None:
        err = await raises(
            act(modules, "platform.haproxy_servers", {"target": "edge", "backend": "api"}, None)
        )
        assert (err.type, err.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "no backend 'api'" in err.message

    async def test_unknown_target_names_the_configured_ones(self, modules: HaproxyModules) -> None:
        err = await raises(
            act(modules, "platform.haproxy_servers", {"target": "core", "backend": "web"}, None)
        )
        assert err.type == errors.INVALID_INPUT
        assert "no haproxy target named 'core'" in err.message
        assert "configured: edge" in err.message

    async def test_a_dead_socket_is_worth_retrying(self, haproxy: Haproxy) -> None:
        settings = Settings(targets={"haproxy": {"edge": {"socket": haproxy.socket + ".gone"}}})
        err = await raises(act(HaproxyModules(settings), "platform.haproxy_servers", EDGE, None))
        assert (err.type, err.non_retryable) == (errors.TARGET_UNAVAILABLE, False)

    async def test_tcp_admin_socket(self, haproxy: Haproxy) -> None:
        """A target may name the TCP admin socket instead of the unix one."""
        settings = Settings(
            targets={"haproxy": {"edge": {"address": f"127.0.0.1:{haproxy.admin_port}"}}}
        )
        output = await act(HaproxyModules(settings), "platform.haproxy_servers", EDGE, None)
        assert [(s["server"], s["weight"]) for s in output["servers"]] == [
            ("s1", 10),
            ("s2", 20),
            ("s3", 30),
        ]
        assert output["healthy"] == 3

    async def test_an_endless_answer_is_cut_off(self) -> None:
        """A socket that answers without end (not HAProxy) is refused past the size limit."""

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            chunk = b"x" * 65536
            try:
                for _ in range(MAX_ANSWER_BYTES // len(chunk) + 2):
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            admin = HaproxyAdmin(HaproxyTarget(address=f"127.0.0.1:{port}"))
            with pytest.raises(Refused, match="exceeds"):
                await admin.command("show stat")
            with pytest.raises(Refused, match="one command per call"):
                await admin.command("show stat;shutdown frontend fe")
        finally:
            server.close()
            await server.wait_closed()


class TestChecks:
    async def test_servers_match_says_what_differs(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        assert haproxy.command("set weight web/s2 7").strip() == ""
        spec = REGISTRY["platform.haproxy_servers_match"]
        result = await activity_env().run(
            bound(modules, spec),
            spec.input_model.model_validate(
                {**EDGE, "servers": ["s1"], "admin_state": "drain", "weights": {"s2": 20}}
            ),
        )
        assert not result.satisfied
        assert result.detail == "web: s1 is ready, not drain; s2 has weight 7, not 20"
        assert result.observed == {
            "s1": {"admin_state": "ready", "weight": 10},
            "s2": {"admin_state": "ready", "weight": 7},
        }

    async def test_healthy_sees_a_backend_going_down(
        self, haproxy: Haproxy, modules: HaproxyModules
    ) -> None:
        """A backend whose HTTP server stops is seen DOWN by HAProxy's check, and so here."""
        haproxy.backends["s3"].close()
        await asyncio.to_thread(haproxy.wait_for, "s3", "stopped")
        spec = REGISTRY["platform.haproxy_healthy"]
        result = await activity_env().run(
            bound(modules, spec), spec.input_model.model_validate({**EDGE, "min_healthy": 3})
        )
        assert not result.satisfied
        assert result.observed["healthy"] == 2
        assert "s3 stopped/ready/w30" in result.detail


# -- the playbooks, end to end through real Temporal against the real HAProxy ---------------

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
DOMAINS = ("core", "platform")


@pytest.fixture(scope="module")
def library() -> PlaybookLibrary:
    return PlaybookLibrary.load(PLAYBOOKS, registry=load_registry(DOMAINS))


async def run_status(handle: WorkflowHandle[Any, Any]) -> RunState:
    state = await handle.query(QUERY_STATUS, result_type=RunState)
    assert isinstance(state, RunState)
    return state


async def until_awaiting(handle: WorkflowHandle[Any, Any], step: str) -> RunState:
    """Poll the status query until ``step`` waits at its gate (or the run ended)."""
    async with asyncio.timeout(60):
        while True:
            state = await run_status(handle)
            by_id = {s.id: s for s in state.steps}
            if by_id[step].status is StepStatus.awaiting_approval or state.phase.terminal:
                return state
            await asyncio.sleep(0.1)


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


def network_inputs(haproxy: Haproxy, service_path: str = "/") -> dict[str, Any]:
    return {
        "backend": "web",
        "failing_pool": ["s1"],
        "healthy_weights": {"s2": 50, "s3": 50},
        "min_healthy": 2,
        "drain_seconds": 20,
        "service_url": haproxy.url(service_path),
    }


class TestNetworkFailurePlaybook:
    async def test_drains_shifts_verifies_and_restores(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """The failing pool drains (waiting for a real open session), traffic shifts, the
        healthy pool is verified, and after approval everything is back as found."""
        session = SlowSession(haproxy, "s1")
        await asyncio.to_thread(wait_for_sessions, haproxy, "s1", 1)
        plan = library.compile("network-failure")
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=haproxy.settings()
        ):
            handle = await start_run(client, task_queue_prefix, plan, network_inputs(haproxy))
            await wait_until(lambda: haproxy.snapshot()["s1"][0] == "drain")
            state = await run_status(handle)
            assert {s.id: s.status for s in state.steps}["drain"] is StepStatus.running
            await asyncio.to_thread(session.finish)

            state = await until_awaiting(handle, "pool_back")
            assert not state.phase.terminal, state.reason
            assert await snapshot(haproxy) == {
                "s1": ("drain", 8, 10),
                "s2": ("ready", 0, 50),
                "s3": ("ready", 0, 50),
            }
            gate = {s.id: s for s in state.steps}["pool_back"]
            assert gate.preview is not None, gate.preview_error
            assert [(c.target, c.attribute, c.before, c.after) for c in gate.preview.changes] == [
                ("edge:web/s1", "admin_state", "drain", "ready")
            ], "the approver sees exactly what putting the pool back changes"
            served = {n: list(b.served) for n, b in haproxy.backends.items()}
            assert served["s1"] == ["/s1/slow"], "no probe reached the drained server"
            assert len(served["s2"]) + len(served["s3"]) == 5

            await approve(handle, "pool_back", "alice", "link fixed")
            result = await handle.result()

        assert result.phase is RunPhase.succeeded
        assert result.outputs == {
            "drained": ["s1"],
            "sessions_left_at_drain": 0,
            "healthy_during": 2,
        }
        assert await snapshot(haproxy) == INITIAL

    async def test_a_late_failure_puts_every_server_back(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """The service still fails after the shift: the shift and the drain are undone, in
        reverse, and HAProxy is exactly as it was before the run."""
        plan = library.compile("network-failure")
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=haproxy.settings()
        ):
            handle = await start_run(
                client, task_queue_prefix, plan, network_inputs(haproxy, "/broken")
            )
            failure = await failure_of(handle)
            state = await run_status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "step 'serves' check" in str(failure)
        assert [(c.step, c.module, c.status, c.verified) for c in state.compensations] == [
            ("shift", "platform.haproxy_restore", "succeeded", True),
            ("drain", "platform.haproxy_restore", "succeeded", True),
        ]
        assert await snapshot(haproxy) == INITIAL

    async def test_a_precondition_that_does_not_hold_changes_nothing(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """With s3 already down for maintenance, draining s1 would leave one healthy server:
        the run refuses before touching HAProxy and says what it saw."""
        assert haproxy.command("set server web/s3 state maint").strip() == ""
        before = await snapshot(haproxy)
        plan = library.compile("network-failure")
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=haproxy.settings()
        ):
            handle = await start_run(client, task_queue_prefix, plan, network_inputs(haproxy))
            failure = await failure_of(handle)
        assert "step 'drain' precondition" in str(failure)
        assert "web has 1 healthy server(s) besides s1 (s2; not healthy: s3" in str(failure)
        assert await snapshot(haproxy) == before


def drift_inputs(haproxy: Haproxy, service_path: str = "/") -> dict[str, Any]:
    return {
        "backend": "web",
        "known_good": [
            {"server": name, "admin_state": "ready", "weight": weight}
            for name, (_, _, weight) in INITIAL.items()
        ],
        "min_healthy": 3,
        "service_url": haproxy.url(service_path),
    }


DRIFTED = ("set server web/s2 state maint", "set weight web/s3 1")


class TestConfigurationDriftPlaybook:
    async def test_detects_reverts_after_approval_and_verifies(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """Two drifted settings are found, reverted once approved, and the backend verified."""
        for line in DRIFTED:
            assert haproxy.command(line).strip() == ""
        plan = library.compile("configuration-drift")
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=haproxy.settings()
        ):
            handle = await start_run(client, task_queue_prefix, plan, drift_inputs(haproxy))
            state = await until_awaiting(handle, "revert")
            gate = {s.id: s for s in state.steps}["revert"]
            assert gate.status is StepStatus.awaiting_approval
            assert (await snapshot(haproxy))["s2"][0] == "maint", "nothing reverted before yes"
            assert gate.preview is not None, gate.preview_error
            assert {(c.target, c.attribute, c.before, c.after) for c in gate.preview.changes} == {
                ("edge:web/s2", "admin_state", "maint", "ready"),
                ("edge:web/s3", "weight", 1, 30),
            }
            assert gate.preview.blast_radius["servers"] == 2
            await approve(handle, "revert", "bob")
            result = await handle.result()

        assert result.phase is RunPhase.succeeded
        assert result.outputs["drifted"] == 2
        assert {(d["server"], d["attribute"]) for d in result.outputs["differences"]} == {
            ("s2", "admin_state"),
            ("s3", "weight"),
        }
        assert sorted(result.outputs["reverted"]) == ["s2", "s3"]
        await wait_until(lambda: haproxy.states()["s2"].operational == "running")
        assert await snapshot(haproxy) == INITIAL

    async def test_a_failed_verification_leaves_the_backend_as_found(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """The service still fails after the revert: the revert is undone and the drifted
        state is back for a human to look at."""
        for line in DRIFTED:
            assert haproxy.command(line).strip() == ""
        drifted = await snapshot(haproxy)
        plan = library.compile("configuration-drift")
        inputs = {**drift_inputs(haproxy, "/broken"), "min_healthy": 1}
        async with fireline_workers(
            client, task_queue_prefix, domains=DOMAINS, settings=haproxy.settings()
        ):
            handle = await start_run(client, task_queue_prefix, plan, inputs)
            await until_awaiting(handle, "revert")
            await approve(handle, "revert", "bob")
            failure = await failure_of(handle)
            state = await run_status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "step 'serves' check" in str(failure)
        assert [(c.step, c.status) for c in state.compensations] == [("revert", "succeeded")]
        assert await snapshot(haproxy) == drifted


class TestDrainNodePlaybook:
    async def test_drains_the_node_tells_the_channel_and_verifies(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """drain-node on the real HAProxy: the server is drained (and stays so), the rest
        verified, the channel told through the webhook."""
        hook = start_target()
        hook.route("POST", "/hook", Reply(200))
        plan = library.compile("drain-node")
        settings = haproxy.settings(notify_webhook_url=hook.url("/hook"))
        try:
            async with fireline_workers(
                client, task_queue_prefix, domains=DOMAINS, settings=settings
            ):
                handle = await start_run(
                    client,
                    task_queue_prefix,
                    plan,
                    {"backend": "web", "node": "s2", "base_url": haproxy.url(""), "min_healthy": 2},
                )
                result = await handle.result()
            [message] = hook.hits("POST", "/hook")
        finally:
            hook.close()
        assert result.phase is RunPhase.succeeded
        assert result.outputs == {"drained": True, "sessions_left": 0, "verified": True}
        assert "draining s2 of web" in message.json["text"]
        assert await snapshot(haproxy) == {**INITIAL, "s2": ("drain", 8, 20)}

    async def test_a_failed_verification_puts_the_node_back(
        self,
        client: Client,
        task_queue_prefix: str,
        haproxy: Haproxy,
        library: PlaybookLibrary,
    ) -> None:
        """The service does not answer after the drain (nothing listens at base_url): the
        drain is undone."""
        hook = start_target()
        hook.route("POST", "/hook", Reply(200))
        settings = haproxy.settings(notify_webhook_url=hook.url("/hook"))
        inputs = {
            "backend": "web",
            "node": "s2",
            "base_url": f"http://127.0.0.1:{free_port()}",
            "min_healthy": 2,
        }
        try:
            async with fireline_workers(
                client, task_queue_prefix, domains=DOMAINS, settings=settings
            ):
                handle = await start_run(
                    client, task_queue_prefix, library.compile("drain-node"), inputs
                )
                failure = await failure_of(handle)
        finally:
            hook.close()
        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "step 'verify' check" in str(failure)
        assert await snapshot(haproxy) == INITIAL


class TestWorkerLoss:
    async def test_a_drain_retried_on_a_new_worker_still_restores_what_was_found(
        self, client: Client, task_queue_prefix: str, haproxy: Haproxy, tmp_path: Path
    ) -> None:
        """The platform worker stops mid-drain; a fresh one (empty journal) retries the step,
        reads what the first attempt found from Temporal's heartbeat details, and the late
        failure's rollback puts s1 back to ready. Without the details the retry would record
        'drain' as found and the rollback would leave s1 drained."""
        plan = compile_playbooks(
            tmp_path,
            {
                "d.yaml": f"""
                name: drain-then-fail
                steps:
                  - id: drain
                    uses: platform.haproxy_drain
                    with: {{target: edge, backend: web, servers: [s1], keep_healthy: 1, wait_s: 30, poll_interval_s: 0.05}}
                    heartbeat: 1s
                    retry: {{max_attempts: 3, initial_interval: 100ms}}
                  - id: late
                    uses: core.http_probe
                    with: {{url: "{haproxy.url("/broken")}"}}
                """
            },
            "drain-then-fail",
        )
        registry = load_registry(DOMAINS)
        settings = haproxy.settings()

        def platform_worker() -> Worker:
            acts, _ = bind_activities(
                registry.for_worker(("platform",), local_checks=False), settings
            )
            return Worker(client, task_queue=f"{task_queue_prefix}-platform", activities=acts)

        session = SlowSession(haproxy, "s1")
        await asyncio.to_thread(wait_for_sessions, haproxy, "s1", 1)
        async with fireline_workers(
            client, task_queue_prefix, domains=("core",), registry=registry
        ):
            async with platform_worker():
                handle = await start_run(client, task_queue_prefix, plan)
                await wait_until(lambda: haproxy.snapshot()["s1"][0] == "drain")
                async with asyncio.timeout(20):
                    while not await _heartbeat_recorded(handle):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            # The first worker is gone; its drain attempt never finished.
            assert (await snapshot(haproxy))["s1"] == ("drain", 8, 10)
            async with platform_worker():
                await asyncio.to_thread(session.finish)
                failure = await failure_of(handle)
                state = await run_status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        drain = {s.id: s for s in state.steps}["drain"]
        assert drain.outputs["previous"][0]["admin_state"] == "ready"
        attempts = [
            e.activity_task_started_event_attributes.attempt
            for e in (await handle.fetch_history()).events
            if e.HasField("activity_task_started_event_attributes")
        ]
        assert max(attempts) >= 2, "the drain really ran a second attempt"
        assert await snapshot(haproxy) == INITIAL


async def _heartbeat_recorded(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the server holds the drain's heartbeat with what it found."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if (
            pending.heartbeat_details.payloads
            and b"found" in pending.heartbeat_details.payloads[0].data
        ):
            return True
    return False
