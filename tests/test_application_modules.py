"""The application modules against real servers: Redis, Prometheus and an admin endpoint.

Each module runs in ``ActivityEnvironment`` (a real activity context, no Temporal server) and
talks to a real server on 127.0.0.1. Assertions read the server's state afterwards, never just
the module's return value: the change is there, its check sees it, its undo removes it, a
second run under the same idempotency key changes nothing, a failing precondition says what it
saw, and the preview said beforehand what the action then did.
"""

# ruff: noqa: F811  (fixtures imported from tests.support are parameters of the tests here)
from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.application.cache import CacheKeysInput, CacheModules, FlushCacheInput, match_all
from activities.application.flags import (
    ClearFlagInput,
    FlagIsInput,
    FlagModules,
    RestoreFlagInput,
    SetFlagInput,
)
from activities.application.maintenance import (
    MaintenanceInput,
    MaintenanceIsInput,
    MaintenanceModules,
)
from activities.application.prometheus import PrometheusModules, PromQLInput
from activities.application.redis_client import JOURNAL_PREFIX
from fireline import errors
from fireline.compile.compiler import PlaybookLibrary
from fireline.errors import CompileError
from fireline.modules import IRREVERSIBLE, CompensationRef, load_registry
from fireline.plan import Risk
from fireline.runtime.settings import Settings
from tests.support.admin import AdminApp, admin  # noqa: F401
from tests.support.prometheus import Prometheus, prometheus  # noqa: F401
from tests.support.redis import RedisServer, redis_db, redis_server, start_redis  # noqa: F401
from tests.support.workers import CATALOG

REGISTRY = load_registry(["core", "application"])
TOKEN = "admin-s3cret"


def activity_env(
    activity_id: str | None = None,
    heartbeat_details: tuple[Any, ...] = (),
    workflow_run_id: str = "run-1",
) -> ActivityEnvironment:
    """A fresh step identity per call unless a test repeats one on purpose."""
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id="wf-app",
        workflow_run_id=workflow_run_id,
        activity_id=activity_id or f"step-{uuid.uuid4().hex[:8]}",
        heartbeat_details=list(heartbeat_details),
    )
    return environment


async def run(fn: Any, arg: Any, **env: Any) -> Any:
    return await activity_env(**env).run(fn, arg)


async def refusal(fn: Any, arg: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run(fn, arg)
    return caught.value


def settings_for(
    redis: RedisServer | None = None,
    prom: Prometheus | None = None,
    admin_app: AdminApp | None = None,
    **http: Any,
) -> Settings:
    targets: dict[str, dict[str, dict[str, Any]]] = {}
    if redis is not None:
        targets["redis"] = {"cache": redis.target()}
    if prom is not None:
        targets["prometheus"] = {"main": prom.target()}
    if admin_app is not None:
        targets["http"] = {"api": {"base_url": admin_app.base_url, "bearer_token": TOKEN, **http}}
    return Settings(targets=targets)


@pytest.fixture
async def flags(redis_db: RedisServer) -> AsyncIterator[FlagModules]:
    modules = FlagModules(settings_for(redis_db))
    try:
        yield modules
    finally:
        await modules.aclose()


@pytest.fixture
async def cache(redis_db: RedisServer) -> AsyncIterator[CacheModules]:
    modules = CacheModules(settings_for(redis_db))
    try:
        yield modules
    finally:
        await modules.aclose()


@pytest.fixture
async def maintenance(admin: AdminApp) -> AsyncIterator[MaintenanceModules]:
    modules = MaintenanceModules(settings_for(admin_app=admin))
    try:
        yield modules
    finally:
        await modules.aclose()


@pytest.fixture
async def promql(prometheus: Prometheus) -> AsyncIterator[PrometheusModules]:
    modules = PrometheusModules(settings_for(prom=prometheus))
    try:
        yield modules
    finally:
        await modules.aclose()


class TestRegistry:
    def test_the_domain_lists_its_modules(self) -> None:
        """The application domain registers its modules, checks and previews."""
        names = {s.name for s in REGISTRY.values() if s.domain == "application"}
        assert names == {
            "application.set_flag",
            "application.clear_flag",
            "application.restore_flag",
            "application.flag_is",
            "application.flush_cache",
            "application.cache_keys",
            "application.maintenance_on",
            "application.maintenance_off",
            "application.maintenance_is",
            "application.promql",
        }
        for name in names:
            spec = REGISTRY[name]
            json.dumps(spec.describe())
            assert spec.kind == "check" or spec.preview is not None, name
            assert spec.kind == "module" or not spec.local, f"{name} needs target credentials"

    def test_contracts(self) -> None:
        """Flags restore what they found, maintenance undoes itself, the flush is irreversible."""
        set_flag = REGISTRY["application.set_flag"]
        assert (set_flag.mutates, set_flag.risk) == (True, Risk.medium)
        assert isinstance(set_flag.compensation, CompensationRef)
        assert set_flag.compensation.module == "application.restore_flag"
        assert set_flag.compensation.with_["value"] == "${{ output.previous }}"
        on, off = REGISTRY["application.maintenance_on"], REGISTRY["application.maintenance_off"]
        assert isinstance(on.compensation, CompensationRef)
        assert isinstance(off.compensation, CompensationRef)
        assert (on.compensation.module, off.compensation.module) == (off.name, on.name)
        flush = REGISTRY["application.flush_cache"]
        assert (flush.compensation, flush.risk) == (IRREVERSIBLE, Risk.high)

    def test_importing_the_domain_does_not_import_the_driver(self) -> None:
        """Compiling playbooks or running the API never loads redis-py."""
        import subprocess
        import sys

        code = (
            "import sys; from fireline.modules import load_registry; "
            "load_registry(['application']); print('redis' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip() == "False", out.stderr

    def test_a_flush_without_a_gate_does_not_compile(self, tmp_path: Any) -> None:
        """The compiler refuses the irreversible flush unless a human approves it."""
        (tmp_path / "f.yaml").write_text(
            "name: f\nsteps:\n  - id: flush\n    uses: application.flush_cache\n"
            "    with: {target: cache, pattern: 'api:*', max_keys: 10}\n"
        )
        library = PlaybookLibrary.load(tmp_path, catalog=CATALOG, registry=REGISTRY)
        with pytest.raises(CompileError) as caught:
            library.compile("f")
        assert "irreversible" in str(caught.value)
        assert "approval" in str(caught.value)


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis that demands a password, as a production one does."""
    server = start_redis(tmp_path_factory.mktemp("locked-redis"), password="redis-pa55")
    try:
        yield server
    finally:
        server.stop()


class TestCredentials:
    async def test_the_target_password_from_settings_is_used(
        self, locked_redis: RedisServer
    ) -> None:
        """The password comes from settings (a SecretStr), the step only names the target."""
        modules = FlagModules(settings_for(locked_redis))
        try:
            await run(modules.set_flag, SetFlagInput(target="cache", flag="auth", value="on"))
        finally:
            await modules.aclose()
        assert locked_redis.client().get("flag:auth") == "on"

    async def test_a_wrong_password_is_refused_without_echoing_it(
        self, locked_redis: RedisServer
    ) -> None:
        """Wrong credentials: TargetRefused (a retry cannot fix them), the secret not quoted."""
        target = {"host": "127.0.0.1", "port": locked_redis.port, "password": "not-the-pa55"}
        modules = FlagModules(Settings(targets={"redis": {"cache": target}}))
        try:
            error = await refusal(
                modules.set_flag, SetFlagInput(target="cache", flag="auth", value="on")
            )
        finally:
            await modules.aclose()
        assert (error.type, error.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "credentials" in error.message
        assert "not-the-pa55" not in str(error) + repr(error.details)

    async def test_a_bad_target_setting_names_the_field_not_the_value(self) -> None:
        """An invalid setting is reported by field name only: it may be a credential."""
        bad = {"host": "127.0.0.1", "port": "secret-port-value", "password": "pw"}
        modules = FlagModules(Settings(targets={"redis": {"cache": bad}}))
        try:
            error = await refusal(
                modules.set_flag, SetFlagInput(target="cache", flag="x", value="1")
            )
        finally:
            await modules.aclose()
        assert error.type == errors.INVALID_INPUT
        assert "targets.redis.cache are invalid (port)" in error.message
        assert "secret-port-value" not in error.message


class TestFlags:
    async def test_set_then_compensate_restores_absence(
        self, flags: FlagModules, redis_db: RedisServer
    ) -> None:
        """An absent flag is set, seen by its check, and absent again after the undo."""
        db = redis_db.client()
        preview = await run(
            flags.set_flag_preview, SetFlagInput(target="cache", flag="shed", value="on")
        )
        changed = await run(flags.set_flag, SetFlagInput(target="cache", flag="shed", value="on"))
        assert db.get("flag:shed") == "on"
        assert (changed.previous, changed.value, changed.changed) == (None, "on", True)
        [change] = preview.changes
        assert (change.before, change.after) == (changed.previous, db.get("flag:shed"))
        assert preview.blast_radius == {"flags": 1}
        assert "absent -> 'on'" in preview.summary
        seen = await run(flags.flag_is, FlagIsInput(target="cache", flag="shed", value="on"))
        assert seen.satisfied is True
        await run(
            flags.restore_flag,
            RestoreFlagInput(target="cache", flag="shed", value=changed.previous),
        )
        assert db.exists("flag:shed") == 0

    async def test_set_then_compensate_restores_the_prior_value(
        self, flags: FlagModules, redis_db: RedisServer
    ) -> None:
        """A flag that was 'off' is 'off' again after the undo, not deleted."""
        db = redis_db.client()
        db.set("flag:checkout.v2", "off")
        changed = await run(
            flags.set_flag, SetFlagInput(target="cache", flag="checkout.v2", value="on")
        )
        assert db.get("flag:checkout.v2") == "on"
        await run(
            flags.restore_flag,
            RestoreFlagInput(target="cache", flag="checkout.v2", value=changed.previous),
        )
        assert db.get("flag:checkout.v2") == "off"

    async def test_clear_then_compensate(self, flags: FlagModules, redis_db: RedisServer) -> None:
        """Clearing removes the key; its undo puts the value back."""
        db = redis_db.client()
        db.set("flag:beta", "50%")
        preview = await run(flags.clear_flag_preview, ClearFlagInput(target="cache", flag="beta"))
        cleared = await run(flags.clear_flag, ClearFlagInput(target="cache", flag="beta"))
        assert db.exists("flag:beta") == 0
        assert (preview.changes[0].before, preview.changes[0].after) == ("50%", None)
        assert cleared.previous == "50%"
        absent = await run(flags.flag_is, FlagIsInput(target="cache", flag="beta", value=None))
        assert absent.satisfied is True
        await run(
            flags.restore_flag,
            RestoreFlagInput(target="cache", flag="beta", value=cleared.previous),
        )
        assert db.get("flag:beta") == "50%"

    async def test_same_key_twice_changes_nothing_the_second_time(
        self, flags: FlagModules, redis_db: RedisServer
    ) -> None:
        """A retry of the step replays its record: the flag keeps what happened since, and the
        recorded prior value stays the one the first attempt found. A later run reusing the
        workflow id acts again."""
        db = redis_db.client()
        db.set("flag:shed", "off")
        request = SetFlagInput(target="cache", flag="shed", value="on")
        first = await run(flags.set_flag, request, activity_id="shed-load")
        db.set("flag:shed", "someone-else")
        second = await run(flags.set_flag, request, activity_id="shed-load")
        assert db.get("flag:shed") == "someone-else"
        assert (first.previous, first.replayed) == ("off", False)
        assert (second.previous, second.replayed, second.changed) == ("off", True, False)
        [record] = db.keys(f"{JOURNAL_PREFIX}wf-app/shed-load@*")
        assert db.ttl(record) > 0
        again = await run(
            flags.set_flag, request, activity_id="shed-load", workflow_run_id="a-later-run"
        )
        assert (again.previous, again.replayed, again.changed) == ("someone-else", False, True)
        assert db.get("flag:shed") == "on"

    async def test_precondition_that_does_not_hold_says_what_it_saw(
        self, flags: FlagModules, redis_db: RedisServer
    ) -> None:
        """expect_current 'off' against a flag that is 'on' is unsatisfied, naming both."""
        redis_db.client().set("flag:shed", "on")
        result = await run(flags.flag_is, FlagIsInput(target="cache", flag="shed", value="off"))
        assert result.satisfied is False
        assert result.observed == {"value": "on", "present": True}
        assert result.detail == "flag shed on redis target cache is 'on'; expected 'off'"
        spec = REGISTRY["application.set_flag"]
        assert [(c.check, c.when) for c in spec.preconditions] == [
            ("application.flag_is", "expect_current"),
            ("application.flag_is", "expect_absent"),
        ]

    async def test_a_key_of_another_type_is_refused_untouched(
        self, flags: FlagModules, redis_db: RedisServer
    ) -> None:
        """A hash where the flag should be: TargetRefused, and the hash is left as it was."""
        db = redis_db.client()
        db.hset("flag:odd", mapping={"a": "1"})
        error = await refusal(flags.set_flag, SetFlagInput(target="cache", flag="odd", value="x"))
        assert (error.type, error.non_retryable) == (errors.TARGET_REFUSED, True)
        assert "WRONGTYPE" in error.message
        assert db.hgetall("flag:odd") == {"a": "1"}

    async def test_unknown_target_lists_the_known_ones(self, flags: FlagModules) -> None:
        """A step naming a target that settings lack fails before any connection."""
        error = await refusal(flags.set_flag, SetFlagInput(target="nope", flag="x", value="1"))
        assert error.type == errors.INVALID_INPUT
        assert "no redis target named 'nope'" in error.message
        assert "cache" in error.message

    def test_hostile_names_and_values_are_refused_by_the_model(self) -> None:
        """Flag names are not globs or commands; values are bounded."""
        for bad in ({"flag": "a b"}, {"flag": "*"}, {"flag": ""}, {"value": "x" * 5000}):
            with pytest.raises(ValidationError):
                SetFlagInput.model_validate({"target": "cache", "flag": "ok", "value": "1", **bad})
        with pytest.raises(ValidationError):
            SetFlagInput(target="redis://evil:6379", flag="ok", value="1")


def fill(db: Any, count: int, prefix: str) -> None:
    with db.pipeline() as pipe:
        for n in range(count):
            pipe.set(f"{prefix}{n}", "v")
        pipe.execute()


class TestCache:
    async def test_flush_deletes_matching_keys_only(
        self, cache: CacheModules, redis_db: RedisServer
    ) -> None:
        """Matching keys go, in batches; others and Fireline's journal stay; preview counted
        exactly what was deleted; the postcondition sees none left."""
        db = redis_db.client()
        fill(db, 450, "api:v2:user:")
        fill(db, 30, "api:v3:user:")
        db.set(f"{JOURNAL_PREFIX}other-run/step", "{}")
        request = FlushCacheInput(target="cache", pattern="api:v2:*", max_keys=1000, batch_size=100)
        preview = await run(cache.flush_cache_preview, request)
        result = await run(cache.flush_cache, request)
        assert db.keys("api:v2:*") == []
        assert len(db.keys("api:v3:*")) == 30
        assert db.exists(f"{JOURNAL_PREFIX}other-run/step") == 1
        assert preview.blast_radius == {"keys": 450}
        assert result.deleted == 450
        assert preview.changes[0].before["count"] == result.deleted
        assert all(k.startswith("api:v2:") for k in preview.changes[0].before["sample"])
        assert result.complete is True
        assert result.batches >= 2
        after = await run(
            cache.cache_keys, CacheKeysInput(target="cache", pattern="api:v2:*", at_most=0)
        )
        assert after.satisfied is True
        assert after.observed["count"] == 0

    async def test_same_key_twice_deletes_nothing_new(
        self, cache: CacheModules, redis_db: RedisServer
    ) -> None:
        """A retried flush replays its record; keys written since stay."""
        db = redis_db.client()
        fill(db, 20, "sess:")
        request = FlushCacheInput(target="cache", pattern="sess:*", max_keys=100)
        first = await run(cache.flush_cache, request, activity_id="flush")
        fill(db, 5, "sess:new:")
        second = await run(cache.flush_cache, request, activity_id="flush")
        assert (first.deleted, second.deleted, second.replayed) == (20, 20, True)
        assert len(db.keys("sess:*")) == 5

    async def test_precondition_refuses_more_keys_than_the_blast_radius(
        self, cache: CacheModules, redis_db: RedisServer
    ) -> None:
        """The precondition counts with SCAN and stops early, saying 'more than N'."""
        fill(redis_db.client(), 60, "big:")
        result = await run(
            cache.cache_keys, CacheKeysInput(target="cache", pattern="big:*", at_most=50)
        )
        assert result.satisfied is False
        assert result.observed["counted_all"] is False
        assert result.detail == (
            "more than 50 keys matching 'big:*' on redis target cache; expected at most 50"
        )

    async def test_never_deletes_more_than_max_keys(
        self, cache: CacheModules, redis_db: RedisServer
    ) -> None:
        """Keys that appear after the precondition still cannot push the flush past its bound."""
        db = redis_db.client()
        fill(db, 60, "big:")
        result = await run(
            cache.flush_cache,
            FlushCacheInput(target="cache", pattern="big:*", max_keys=25, batch_size=10),
        )
        assert (result.deleted, result.complete) == (25, False)
        assert len(db.keys("big:*")) == 35

    async def test_match_everything_is_refused_unless_allowed(
        self, cache: CacheModules, redis_db: RedisServer
    ) -> None:
        """'*' and friends flush nothing unless the step says allow_match_all."""
        db = redis_db.client()
        fill(db, 3, "k")
        for pattern in ("*", "**", "?*", "[a-z]*"):
            assert match_all(pattern)
            error = await refusal(
                cache.flush_cache, FlushCacheInput(target="cache", pattern=pattern, max_keys=10)
            )
            assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)
            assert "matches every key" in error.message
        assert len(db.keys("k*")) == 3
        assert not match_all("api:*")
        assert not match_all("\\*")
        for blank in ("", "   "):
            with pytest.raises(ValidationError):
                FlushCacheInput(target="cache", pattern=blank, max_keys=10)
        with pytest.raises(ValidationError):
            FlushCacheInput(target="cache", pattern="a*", max_keys=10, batch_size=100_000)
        allowed = await run(
            cache.flush_cache,
            FlushCacheInput(target="cache", pattern="*", max_keys=10, allow_match_all=True),
        )
        assert allowed.deleted == 3
        assert db.dbsize() == 1  # only the flush's own journal record


class TestMaintenance:
    async def test_on_then_compensate(
        self,
        maintenance: MaintenanceModules,
        admin: AdminApp,
    ) -> None:
        """Off -> on with the token and the step's key; its check sees it; the undo turns it off."""
        request = MaintenanceInput(target="api", reason="degraded")
        preview = await run(maintenance.maintenance_on_preview, request)
        result = await run(maintenance.maintenance_on, request, activity_id="maint")
        assert admin.enabled is True
        assert (result.previous, result.enabled, result.changed) == (False, True, True)
        assert (preview.changes[0].before, preview.changes[0].after) == (False, admin.enabled)
        [put] = admin.puts()
        assert put.json == {"enabled": True, "reason": "degraded"}
        assert put.headers["idempotency-key"] == "wf-app/maint"
        assert put.headers["authorization"] == f"Bearer {TOKEN}"
        seen = await run(maintenance.maintenance_is, MaintenanceIsInput(target="api", enabled=True))
        assert seen.satisfied is True
        await run(maintenance.maintenance_off, MaintenanceInput(target="api", apply=result.changed))
        assert admin.enabled is False

    async def test_already_on_stays_on_after_the_undo(
        self,
        maintenance: MaintenanceModules,
        admin: AdminApp,
    ) -> None:
        """A window someone else opened is not closed by rolling back a step that found it."""
        admin.enabled = True
        result = await run(maintenance.maintenance_on, MaintenanceInput(target="api"))
        assert (result.previous, result.changed) == (True, False)
        await run(maintenance.maintenance_off, MaintenanceInput(target="api", apply=result.changed))
        assert admin.enabled is True
        assert admin.puts() == []

    async def test_same_key_twice_changes_nothing_the_second_time(
        self,
        maintenance: MaintenanceModules,
        admin: AdminApp,
    ) -> None:
        """The second run finds it on and sends nothing."""
        request = MaintenanceInput(target="api")
        await run(maintenance.maintenance_on, request, activity_id="maint")
        await run(maintenance.maintenance_on, request, activity_id="maint")
        assert admin.enabled is True
        assert len(admin.puts()) == 1

    async def test_a_retry_keeps_what_the_first_attempt_found(
        self,
        maintenance: MaintenanceModules,
        admin: AdminApp,
    ) -> None:
        """After a crash past the switch, the retry reads 'on' but its heartbeat says the
        first attempt found 'off': the undo will switch it off."""
        beats: list[Any] = []
        first = activity_env("maint")
        first.on_heartbeat = lambda *details: beats.append(details)
        await first.run(maintenance.maintenance_on, MaintenanceInput(target="api"))
        assert beats[-1] == ("application.maintenance_on", {"previous": False})
        retry = await run(
            maintenance.maintenance_on,
            MaintenanceInput(target="api"),
            activity_id="maint",
            heartbeat_details=beats[-1],
        )
        assert (retry.previous, retry.changed) == (False, True)
        assert len(admin.puts()) == 1

    async def test_precondition_that_does_not_hold_says_what_it_saw(
        self,
        maintenance: MaintenanceModules,
        admin: AdminApp,
    ) -> None:
        """Expecting 'off' while it is on: unsatisfied, saying so."""
        admin.enabled = True
        result = await run(
            maintenance.maintenance_is, MaintenanceIsInput(target="api", enabled=False)
        )
        assert result.satisfied is False
        assert result.detail == "maintenance mode of api is on; expected off"
        [pre] = REGISTRY["application.maintenance_on"].preconditions
        assert (pre.check, pre.when) == ("application.maintenance_is", "expect_current")

    async def test_the_target_token_goes_only_to_its_hosts(
        self,
        admin: AdminApp,
    ) -> None:
        """A target whose allowed_hosts do not include its own base URL sends nothing."""
        modules = MaintenanceModules(settings_for(admin_app=admin, allowed_hosts=["127.0.0.1:1"]))
        try:
            error = await refusal(modules.maintenance_on, MaintenanceInput(target="api"))
        finally:
            await modules.aclose()
        assert error.non_retryable is True
        assert f"not allowed for host {admin.host}" in error.message
        assert admin.hits == []

    async def test_a_garbled_endpoint_is_refused(
        self, target: Any, maintenance: MaintenanceModules
    ) -> None:
        """An endpoint that does not answer {"enabled": bool} is not guessed at."""
        from tests.support.target import Reply

        target.route("GET", "/maintenance", Reply(200, {"mode": "weird"}))
        modules = MaintenanceModules(
            Settings(targets={"http": {"api": {"base_url": target.base_url}}})
        )
        try:
            error = await refusal(modules.maintenance_on, MaintenanceInput(target="api"))
        finally:
            await modules.aclose()
        assert error.type == errors.TARGET_REFUSED
        assert "expected" in error.message
        assert target.hits("PUT") == []


ERR_RATE_5S = 'sum(rate(app_requests_total{code=~"5.."}[5s])) / sum(rate(app_requests_total[5s]))'


def _ratio(data: dict[str, Any]) -> float | None:
    return float(data["result"][0]["value"][1]) if data["result"] else None


class TestPromQL:
    async def test_error_rate_under_threshold_is_satisfied(
        self,
        promql: PrometheusModules,
        prometheus: Prometheus,
    ) -> None:
        """No 5xx: the error-rate query is 0 < 0.01, with the query in the result."""
        prometheus.app.set_rates(200, 0)
        prometheus.wait_for(ERR_RATE_5S, lambda d: _ratio(d) == 0.0)
        result = await run(
            promql.promql, PromQLInput(target="main", query=ERR_RATE_5S, op="<", threshold=0.01)
        )
        assert result.satisfied is True
        assert (result.observed["query"], result.observed["value"]) == (ERR_RATE_5S, 0.0)
        assert result.observed["result_type"] == "vector"
        assert result.expected == {"op": "<", "threshold": 0.01, "no_data": "unsatisfied"}

    async def test_error_rate_over_threshold_is_not(
        self,
        promql: PrometheusModules,
        prometheus: Prometheus,
    ) -> None:
        """The counters the test drives move the rate past 1%, and the check says by how much."""
        prometheus.app.set_rates(150, 50)
        seen = prometheus.wait_for(ERR_RATE_5S, lambda d: (_ratio(d) or 0) > 0.1)
        result = await run(
            promql.promql, PromQLInput(target="main", query=ERR_RATE_5S, threshold=0.01)
        )
        prometheus.app.set_rates(200, 0)
        assert result.satisfied is False
        # past the 1% threshold; the exact figure moves with the 5s window between queries
        assert result.observed["value"] > 0.01
        assert _ratio(seen) is not None
        assert result.detail.startswith(f"{ERR_RATE_5S} = ")
        assert result.detail.endswith("; expected < 0.01")

    async def test_no_data_is_an_observation(
        self,
        promql: PrometheusModules,
        prometheus: Prometheus,
    ) -> None:
        """An empty result is unsatisfied (or accepted when told so), never an exception."""
        query = 'app_requests_total{code="418"}'
        result = await run(promql.promql, PromQLInput(target="main", query=query, threshold=1))
        assert result.satisfied is False
        assert result.observed["value"] is None
        assert result.detail == f"{query} returned no data; expected < 1"
        accepted = await run(
            promql.promql,
            PromQLInput(target="main", query=query, threshold=1, no_data="satisfied"),
        )
        assert accepted.satisfied is True

    async def test_scalar_and_every_series_of_a_vector(
        self,
        promql: PrometheusModules,
        prometheus: Prometheus,
    ) -> None:
        """A scalar is one value; in a vector every series must hold, the worst is reported."""
        prometheus.app.add("500", 0)
        prometheus.wait_for("app_requests_total", lambda d: len(d["result"]) == 2)
        scalar = await run(
            promql.promql,
            PromQLInput(
                target="main", query="scalar(sum(app_requests_total))", op=">", threshold=0
            ),
        )
        assert (scalar.satisfied, scalar.observed["result_type"]) == (True, "scalar")
        vector = await run(
            promql.promql,
            PromQLInput(target="main", query="app_requests_total", op="<", threshold=1),
        )
        assert vector.satisfied is False
        assert vector.observed["series_count"] == 2
        assert vector.observed["series"][0]["metric"]["code"] == "200"  # the biggest first
        assert "series fail" in vector.detail

    async def test_bad_queries_are_invalid_input(
        self,
        promql: PrometheusModules,
        prometheus: Prometheus,
    ) -> None:
        """A syntax error or a range vector cannot become right by retrying."""
        for query, says in (
            ("sum(rate(", "bad_data"),
            ("app_requests_total[1m]", "instant vector or a scalar"),
        ):
            error = await refusal(
                promql.promql, PromQLInput(target="main", query=query, threshold=1)
            )
            assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)
            assert says in error.message

    async def test_unreachable_prometheus_is_retryable(self) -> None:
        """Nothing listening: TargetUnavailable, so the check's poll tries again."""
        modules = PrometheusModules(
            Settings(targets={"prometheus": {"main": {"url": "http://127.0.0.1:1"}}})
        )
        try:
            error = await refusal(
                modules.promql, PromQLInput(target="main", query="up", threshold=1)
            )
        finally:
            await modules.aclose()
        assert (error.type, error.non_retryable) == (errors.TARGET_UNAVAILABLE, False)

    async def test_a_huge_answer_is_refused_unread(self, target: Any) -> None:
        """An answer over the limit stops being read and is refused, asking to aggregate."""
        from tests.support.target import Reply

        target.route(
            "GET",
            "/api/v1/query",
            Reply(200, {"status": "success", "data": {}, "pad": "x" * 5_000_000}),
        )
        modules = PrometheusModules(
            Settings(targets={"prometheus": {"main": {"url": target.base_url}}})
        )
        try:
            error = await refusal(
                modules.promql, PromQLInput(target="main", query="up", threshold=1)
            )
        finally:
            await modules.aclose()
        assert (error.type, error.non_retryable) == (errors.INVALID_INPUT, True)
        assert "aggregate it" in error.message
