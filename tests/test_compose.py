"""docker-compose.yml and the Dockerfile, checked against the code they deploy.

There is no Docker engine (nor the compose plugin) on the machines these tests run on, so
``docker compose config`` cannot run here; instead the YAML is parsed and every cross-reference
that would otherwise only fail at deploy time is checked: settings names, domains, search
attributes, pinned images, ports, start-up order, Python version.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from fireline.messages import SEARCH_ATTRIBUTES
from fireline.runtime.settings import DOMAINS, Settings

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("worker-workflows", "worker-platform", "worker-database", "worker-application")
FIRELINE_SERVICES = (*WORKERS, "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def settings_env_names() -> set[str]:
    return {f"FIRELINE_{name.upper()}" for name in Settings.model_fields}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def worker_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def worker_domains(service: dict[str, Any]) -> list[str]:
    args = worker_args(service)
    return args[args.index("--domains") + 1].split(",")


class TestFirelineServices:
    def test_every_fireline_variable_is_a_setting(self, services: dict[str, Any]) -> None:
        """A FIRELINE_* name that Settings does not read would be silently ignored."""
        known = settings_env_names()
        used = {
            (name, key)
            for name, service in services.items()
            for key in environment(service)
            if key.startswith("FIRELINE_")
        }
        assert used, "no FIRELINE_* variables found"
        assert {pair for pair in used if pair[1] not in known} == set()

    def test_env_example_names_settings(self) -> None:
        """The secrets template only names variables that Settings reads."""
        lines = (ROOT / "deploy" / "fireline.env.example").read_text().splitlines()
        names = {
            line.lstrip("# ").split("=", 1)[0]
            for line in lines
            if re.match(r"^#?\s*FIRELINE_\w+=", line)
        }
        assert names
        assert names - settings_env_names() == set()

    def test_fireline_services_talk_to_the_compose_temporal(self, services: dict[str, Any]) -> None:
        """Workers and API use the temporal service, JSON logs and one shared prefix."""
        for name in FIRELINE_SERVICES:
            env = environment(services[name])
            assert env["FIRELINE_TEMPORAL_ADDRESS"] == "temporal:7233", name
            assert env["FIRELINE_LOG_FORMAT"] == "json", name
            assert env["FIRELINE_TASK_QUEUE_PREFIX"] == "fireline", name
            Settings.model_validate(
                {key.removeprefix("FIRELINE_").lower(): value for key, value in env.items()}
            )

    def test_worker_domains_are_valid(self, services: dict[str, Any]) -> None:
        """Each worker's --domains are real domains, as worker.py would accept them."""
        for name in WORKERS:
            assert services[name]["entrypoint"] == ["python", "worker.py"], name
            assert set(worker_domains(services[name])) <= set(DOMAINS), name

    def test_each_domain_has_a_worker(self, services: dict[str, Any]) -> None:
        """No domain's task queue is left without a poller."""
        served = [d for name in WORKERS for d in worker_domains(services[name])]
        assert sorted(served) == sorted(DOMAINS)

    def test_exactly_one_workflow_worker(self, services: dict[str, Any]) -> None:
        """Only worker-workflows runs workflows; the domain workers pass --no-workflows."""
        with_workflows = [n for n in WORKERS if "--no-workflows" not in worker_args(services[n])]
        assert with_workflows == ["worker-workflows"]

    def test_fireline_waits_for_temporal_and_attributes(self, services: dict[str, Any]) -> None:
        """Fireline starts after Temporal is healthy and the search attributes exist."""
        for name in FIRELINE_SERVICES:
            depends = services[name]["depends_on"]
            assert depends["temporal"]["condition"] == "service_healthy", name
            assert depends["temporal-setup"]["condition"] == "service_completed_successfully"

    def test_api_serves_on_8080(self, services: dict[str, Any]) -> None:
        """The API listens on all container interfaces and is published on 8080."""
        api = services["api"]
        assert api["command"] == ["api", "--host", "0.0.0.0", "--port", "8080"]
        assert api["ports"] == ["8080:8080"]


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) of a service's volumes."""
    out: dict[str, tuple[str, str]] = {}
    for volume in service.get("volumes") or []:
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def settings_of(service: dict[str, Any]) -> Settings:
    env = environment(service)
    return Settings.model_validate(
        {key.removeprefix("FIRELINE_").lower(): value for key, value in env.items()}
    )


class TestIdentity:
    def test_development_mode_is_off_everywhere(self, services: dict[str, Any]) -> None:
        """No compose service accepts requests without a credential; the API says so."""
        for name, service in services.items():
            if name.startswith(("worker-", "api", "identity-", "fireline-")):
                assert settings_of(service).dev_mode is False, name
        assert environment(services["api"])["FIRELINE_DEV_MODE"] == "false"

    def test_api_reads_tokens_and_key_from_the_shared_volume_read_only(
        self, compose: dict[str, Any], services: dict[str, Any]
    ) -> None:
        """Every API replica reads the same tokens file and decision key, and cannot write
        them; the volume is declared, and the key is made before the API starts."""
        api = services["api"]
        settings = settings_of(api)
        assert settings.tokens_file is not None
        assert settings.decision_key_file is not None
        folder = str(settings.decision_key_file.parent)
        assert str(settings.tokens_file.parent) == folder
        source, mode = mounts(api)[folder]
        assert mode == "ro"
        assert source in compose["volumes"]
        assert api["depends_on"]["identity-setup"]["condition"] == (
            "service_completed_successfully"
        )
        assert api["depends_on"]["temporal"]["condition"] == "service_healthy"

    def test_setup_and_admin_write_the_same_files(self, services: dict[str, Any]) -> None:
        """identity-setup makes the key where the API reads it; fireline-admin issues tokens
        into the file the API reads; both mount the API's volume read-write."""
        api = settings_of(services["api"])
        assert api.decision_key_file is not None
        folder = str(api.decision_key_file.parent)
        source = mounts(services["api"])[folder][0]
        for name in ("identity-setup", "fireline-admin"):
            other = settings_of(services[name])
            assert (other.tokens_file, other.decision_key_file) == (
                api.tokens_file,
                api.decision_key_file,
            ), name
            assert mounts(services[name])[folder] == (source, "rw"), name
        script = "\n".join(services["identity-setup"]["command"])
        assert "fireline key init" in script
        assert "chown -R 10001:10001" in script
        assert services["identity-setup"]["restart"] == "no"
        assert services["fireline-admin"]["profiles"] == ["tools"]

    def test_workers_never_see_the_private_key(self, services: dict[str, Any]) -> None:
        """Runs verify decisions with the public key given at start; workers need no key."""
        api = settings_of(services["api"])
        assert api.decision_key_file is not None
        source = mounts(services["api"])[str(api.decision_key_file.parent)][0]
        for name in WORKERS:
            sources = {s for s, _ in mounts(services[name]).values()}
            assert source not in sources, name

    def test_env_example_documents_identity_not_the_old_shared_token(self) -> None:
        text = (ROOT / "deploy" / "fireline.env.example").read_text()
        assert "FIRELINE_API_TOKEN" not in text
        for name in (
            "FIRELINE_TOKENS_FILE",
            "FIRELINE_DECISION_KEY_FILE",
            "FIRELINE_DECISION_TRUSTED_KEYS",
            "FIRELINE_OIDC_ISSUER",
            "FIRELINE_OIDC_AUDIENCE",
            "FIRELINE_OIDC_JWKS_URL",
            "FIRELINE_OIDC_PERSON_CLAIM",
        ):
            assert re.search(rf"^# {name}=", text, re.MULTILINE), name


class TestTemporalServices:
    def test_images_are_pinned(self, services: dict[str, Any]) -> None:
        """Every image names a version: no implicit or explicit :latest."""
        for name, service in services.items():
            image = service["image"]
            repo, _, tag = image.rpartition(":")
            assert repo, f"{name}: {image}"
            assert tag not in ("", "latest"), f"{name}: {image}"
            assert "/" not in tag, f"{name}: {image}"

    def test_temporal_waits_for_healthy_postgres(self, services: dict[str, Any]) -> None:
        """auto-setup creates its schema only once PostgreSQL accepts connections."""
        temporal = services["temporal"]
        assert temporal["depends_on"]["postgresql"]["condition"] == "service_healthy"
        assert temporal["environment"]["DB"] == "postgres12"
        assert temporal["environment"]["POSTGRES_SEEDS"] == "postgresql"
        assert "healthcheck" in services["postgresql"]
        assert "healthcheck" in temporal

    def test_ports(self, services: dict[str, Any]) -> None:
        """gRPC on 7233 and the UI on 8233, as on the embedded dev server."""
        assert services["temporal"]["ports"] == ["7233:7233"]
        assert services["temporal-ui"]["ports"] == ["8233:8080"]
        assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"

    def test_dynamic_config_is_mounted(self, services: dict[str, Any]) -> None:
        """The file DYNAMIC_CONFIG_FILE_PATH names exists in the mounted folder."""
        temporal = services["temporal"]
        wanted = Path(temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]).name
        mounts = [v.split(":")[0] for v in temporal["volumes"]]
        assert any((ROOT / m / wanted).is_file() for m in mounts)
        yaml.safe_load((ROOT / "deploy/temporal/dynamicconfig" / wanted).read_text())

    def test_search_attributes_match_the_code(self, services: dict[str, Any]) -> None:
        """The setup job creates exactly fireline.messages.SEARCH_ATTRIBUTES."""
        script = "\n".join(services["temporal-setup"]["command"])
        created = dict(re.findall(r"search-attribute create --name (\w+) --type (\w+)", script))
        assert created == SEARCH_ATTRIBUTES

    def test_setup_job_runs_once_after_temporal(self, services: dict[str, Any]) -> None:
        """The one-shot does not restart and waits for a healthy server."""
        setup = services["temporal-setup"]
        assert setup["restart"] == "no"
        assert setup["depends_on"]["temporal"]["condition"] == "service_healthy"


class TestDockerfile:
    def test_python_satisfies_requires_python(self) -> None:
        """The base image's Python is one pyproject.toml accepts."""
        dockerfile = (ROOT / "Dockerfile").read_text()
        match = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.MULTILINE)
        assert match, "Dockerfile does not start FROM python:X.Y"
        version = (int(match[1]), int(match[2]))
        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "requires-python"
        ]
        minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
        assert minimum, f"unexpected requires-python {requires!r}"
        assert version >= (int(minimum[1]), int(minimum[2]))

    def test_runs_as_non_root_with_fireline_entrypoint(self) -> None:
        """The image drops root and its entry point is the fireline CLI."""
        lines = (ROOT / "Dockerfile").read_text().splitlines()
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users
        assert users[-1] not in ("root", "0")
        assert 'ENTRYPOINT ["fireline"]' in lines

    def test_copies_what_the_services_run(self) -> None:
        """worker.py and every package the workers import are in the image."""
        dockerfile = (ROOT / "Dockerfile").read_text()
        for path in ("fireline", "workflows", "activities", "playbooks", "worker.py"):
            assert re.search(rf"^COPY {re.escape(path)}\b", dockerfile, re.MULTILINE), path
