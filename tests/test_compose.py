"""docker-compose.yml and the Dockerfile, checked without Docker (it does not run where the tests
run): the compose file against the Compose Specification's schema (tests/compose/), and everything
it names in haven against the code: each service's command, each HAVEN_ variable, the ports the
processes listen on, the paths the health checks and Temporal's UI call."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from api.app import routes
from haven.cli import build_parser
from haven.settings import REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
HAVEN_SERVICES = {name: s for name, s in SERVICES.items() if s.get("build")}
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
SCHEMA = json.loads((Path(__file__).parent / "compose" / "compose-spec.json").read_text())


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(e.split("=", 1) for e in env) if isinstance(env, list) else {k: str(v) for k, v in env.items()}


def _dockerfile_env() -> dict[str, str]:
    match = re.search(r"^ENV (.+?)(?:\n(?!\s)|\Z)", DOCKERFILE, re.MULTILINE | re.DOTALL)
    return dict(pair.split("=", 1) for pair in shlex.split(match.group(1).replace("\\\n", " "))) if match else {}


def _urls(text: str) -> list[str]:
    return re.findall(r"https?://[^'\"\s]+", text)


def test_the_compose_file_follows_the_compose_specification():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_would_catch_a_mistake():
    broken = {**COMPOSE, "services": {**SERVICES, "api": {**SERVICES["api"], "depends_on": {"migrate": {"condition": "after"}}}}}
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(broken))


@pytest.mark.parametrize("name", sorted(HAVEN_SERVICES))
def test_every_haven_service_runs_a_command_haven_has(name):
    command = HAVEN_SERVICES[name]["command"]
    assert command[0] == "haven"
    build_parser().parse_args(command[1:])  # exits (fails the test) on a command haven does not have


def test_every_haven_variable_is_a_setting(monkeypatch):
    settings = {f"HAVEN_{field.upper()}" for field in Settings.model_fields}
    named = {var for s in HAVEN_SERVICES.values() for var in _environment(s)} | set(_dockerfile_env())
    unknown = sorted(var for var in named if var.startswith("HAVEN_") and var not in settings)
    assert not unknown, f"not settings of haven (haven/settings.py): {unknown}"
    # And the values parse, read from the environment as a container reads them (the ones the
    # host must supply, `${...}`, left out).
    for service in HAVEN_SERVICES.values():
        with monkeypatch.context() as env:
            for var in [v for v in os.environ if v.startswith("HAVEN_")]:
                env.delenv(var)
            for var, value in {**_dockerfile_env(), **_environment(service)}.items():
                if var.startswith("HAVEN_") and not value.startswith("${"):
                    env.setenv(var, value)
            Settings(_env_file=None)


def test_the_ports_are_the_ones_the_processes_listen_on():
    api_env = {**_dockerfile_env(), **_environment(SERVICES["api"])}
    assert api_env["HAVEN_API_HOST"] == "0.0.0.0"  # reachable from outside its container
    api_port = int(api_env.get("HAVEN_API_PORT", Settings.model_fields["api_port"].default))
    assert any(p.split(":")[-1] == str(api_port) for p in SERVICES["api"]["ports"])
    assert f"EXPOSE {api_port}" in DOCKERFILE

    worker_env = _environment(SERVICES["worker"])
    metrics_host, metrics_port = worker_env["HAVEN_WORKER_METRICS_ADDRESS"].rsplit(":", 1)
    assert metrics_host == "0.0.0.0" and SERVICES["worker"]["expose"] == [metrics_port]
    assert f":{metrics_port}/metrics" in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_the_worker_scales():
    worker = SERVICES["worker"]
    # A fixed name or a host port would stop a second worker from starting.
    assert "container_name" not in worker and "ports" not in worker


def test_migrations_and_temporal_setup_run_once_before_the_api_and_the_workers():
    assert SERVICES["migrate"]["command"] == ["haven", "migrate"] and SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["temporal-setup"]["command"] == ["haven", "temporal", "setup"] and SERVICES["temporal-setup"]["restart"] == "no"
    assert SERVICES["temporal-setup"]["depends_on"]["temporal"] == {"condition": "service_healthy"}
    for name in ("api", "worker"):
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert SERVICES[name]["depends_on"]["temporal-setup"] == {"condition": "service_completed_successfully"}


def test_health_checks_and_the_codec_endpoint_call_paths_the_api_serves():
    paths = {route.path for route in routes()}
    api_check = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert [url.split(":8000", 1)[1] for url in _urls(api_check)] == ["/readyz"]
    # In dev mode the UI calls its own address, with the secret the API has too.
    codec = SERVICES["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"].replace("${HAVEN_CODEC_UI_SECRET}", "{secret}")
    assert _environment(SERVICES["api"])["HAVEN_CODEC_UI_SECRET"].startswith("${HAVEN_CODEC_UI_SECRET:?")
    # The UI calls <endpoint>/encode and /decode.
    assert {f"{codec.split(':8000', 1)[1]}/encode", f"{codec.split(':8000', 1)[1]}/decode"} <= paths
    for name, service in SERVICES.items():
        assert "healthcheck" in service or name in ("migrate", "temporal-setup", "temporal-ui"), f"{name} has no health check"


def test_the_image_is_slim_and_runs_as_a_user_of_its_own():
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert bases and all(base.endswith("-slim") for base in bases)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    for source in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE, re.MULTILINE):
        assert (REPO_ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repo"
    # Every package pyproject.toml installs is copied into the build.
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, re.MULTILINE))
    packages = {p.split(".")[0] for p in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]}
    assert packages <= copied
