"""Deployment files: docker-compose.yml, the Dockerfile and the CI workflow.

No Docker engine is needed: the files are parsed and checked against what CONTRACT.md
promises (the seven services, their commands, health checks, persistence, scaling).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

SERVICES = ("db", "redis", "migrate", "api", "worker", "beat", "flower")
APP_SERVICES = ("api", "worker", "beat", "flower")
COMMANDS = {
    "migrate": "python -m app.cli migrate",
    "api": "uvicorn app.main:app",
    "worker": "celery -A workers worker",
    "beat": "celery -A workers beat",
    "flower": "celery -A workers flower",
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _healthcheck_test(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def test_all_seven_services_exist(services: dict[str, Any]) -> None:
    assert set(SERVICES) <= set(services)


@pytest.mark.parametrize("name", SERVICES)
def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    service = services[name]
    if name == "migrate":
        # A one-shot: it must not be restarted after it exits 0, and needs no probe.
        assert str(service.get("restart")) == "no"
        return
    check = service.get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable", False)


def test_healthchecks_probe_the_right_thing(services: dict[str, Any]) -> None:
    assert "pg_isready" in _healthcheck_test(services["db"])
    assert "redis-cli" in _healthcheck_test(services["redis"]) and "ping" in _healthcheck_test(services["redis"])
    assert "/health" in _healthcheck_test(services["api"])
    assert "curl" not in _healthcheck_test(services["api"])  # python:3.11-slim has no curl
    worker_check = _healthcheck_test(services["worker"])
    assert "inspect ping" in worker_check and "$$HOSTNAME" in worker_check
    assert "5555" in _healthcheck_test(services["flower"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_migrations_and_healthy_dependencies(services: dict[str, Any], name: str) -> None:
    depends = services[name].get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on must use the long form with conditions"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["db"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


def test_migrate_waits_for_a_healthy_database(services: dict[str, Any]) -> None:
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("name", "expected"), sorted(COMMANDS.items()))
def test_commands_match_the_contract(services: dict[str, Any], name: str, expected: str) -> None:
    assert _command(services[name]).startswith(expected), _command(services[name])


def test_api_trusts_forwarded_for_only_from_forwarded_allow_ips(services: dict[str, Any]) -> None:
    api = services["api"]
    command = _command(api).split()
    # uvicorn's own proxy-header handling trusts any loopback client: the app applies the setting
    assert "--no-proxy-headers" in command and "--proxy-headers" not in command
    assert api["environment"]["FORWARDED_ALLOW_IPS"] == "${FORWARDED_ALLOW_IPS:-}"  # default: none trusted
    assert api["environment"]["DATABASE_URL"] == services["worker"]["environment"]["DATABASE_URL"]


def test_worker_consumes_every_queue(services: dict[str, Any]) -> None:
    command = _command(services["worker"]).split()
    assert "-Q" not in command and "--queues" not in command


@pytest.mark.parametrize("name", ("migrate", *APP_SERVICES))
def test_app_services_get_database_and_redis_urls(services: dict[str, Any], name: str) -> None:
    env = services[name]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and "@db:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")


def test_env_file_is_optional(services: dict[str, Any]) -> None:
    for name in ("migrate", *APP_SERVICES):
        entries = services[name]["env_file"]
        assert any(isinstance(e, dict) and e.get("path") == ".env" and e.get("required") is False for e in entries)


def test_redis_never_evicts_and_persists(services: dict[str, Any]) -> None:
    command = _command(services["redis"])
    assert re.search(r"--maxmemory-policy\s+noeviction", command)
    assert re.search(r"--appendonly\s+yes", command)
    assert services["redis"]["image"].startswith("redis:7")


def test_database_uses_a_named_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    db = services["db"]
    assert db["image"].startswith("postgres:15")
    named = set(compose.get("volumes") or {})
    mounts = [v.split(":")[0] if isinstance(v, str) else v.get("source") for v in db["volumes"]]
    assert any(m in named for m in mounts), f"db volumes {db['volumes']} use none of {sorted(named)}"
    assert any(
        (v if isinstance(v, str) else v.get("target", "")).endswith("/var/lib/postgresql/data") for v in db["volumes"]
    )


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a fixed host port would stop --scale worker=N"
    assert worker.get("deploy", {}).get("replicas", 1) >= 1


def test_beat_is_single(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert beat.get("deploy", {}).get("replicas") == 1
    assert "--scale" not in _command(beat)


def test_flower_has_basic_auth_and_port(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert any(str(p).endswith("5555") for p in flower["ports"])
    assert "--port=5555" in _command(flower)


def test_api_publishes_port_8000(services: dict[str, Any]) -> None:
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])
    assert "--host 0.0.0.0" in _command(services["api"])


# --- Dockerfile -----------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_base_and_default_command() -> None:
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    cmd = [rest for keyword, rest in steps if keyword == "CMD"][-1]
    assert "uvicorn" in cmd and "app.main:app" in cmd and "0.0.0.0" in cmd and "8000" in cmd
    assert "--no-proxy-headers" in cmd  # X-Forwarded-For only from FORWARDED_ALLOW_IPS, by the app


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in _dockerfile() if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_installs_requirements_before_copying_the_code() -> None:
    steps = _dockerfile()
    copy_reqs = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and "requirements.txt" in rest)
    install = next(i for i, (k, rest) in enumerate(steps) if k == "RUN" and "pip install" in rest)
    copy_code = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and rest.split()[0] == ".")
    assert copy_reqs < install < copy_code
    assert "requirements.txt" in steps[install][1]
    user = max(i for i, (k, _) in enumerate(steps) if k == "USER")
    assert user > install, "dependencies are installed as root, then the user is dropped"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".env", "test-artifacts"} <= ignored
    assert any("__pycache__" in line for line in ignored)


# --- CI workflow ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return _load(ROOT / ".github" / "workflows" / "ci.yml")


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _runs(workflow: dict[str, Any]) -> list[str]:
    return [str(step.get("run", "")) for step in _steps(workflow)]


def test_ci_triggers_on_push_and_pull_request(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "push" in triggers and "pull_request" in triggers


def test_ci_has_postgres_and_redis_service_containers(workflow: dict[str, Any]) -> None:
    containers = [svc for job in workflow["jobs"].values() for svc in job.get("services", {}).values()]
    images = {svc["image"].split(":")[0]: svc for svc in containers}
    assert "postgres" in images and "redis" in images
    assert any("5432" in str(p) for p in images["postgres"]["ports"])
    assert any("6379" in str(p) for p in images["redis"]["ports"])


def test_ci_lints_and_runs_the_full_suite(workflow: dict[str, Any]) -> None:
    runs = _runs(workflow)
    lint = next(i for i, r in enumerate(runs) if "make lint" in r)
    test = next(i for i, r in enumerate(runs) if "make test" in r)
    assert any("make install" in r for r in runs[:lint])
    assert lint < test


def test_ci_uses_python_311_and_keeps_test_artifacts(workflow: dict[str, Any]) -> None:
    steps = _steps(workflow)
    setup = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload.get("if") == "always()"
    assert "test-artifacts" in upload["with"]["path"]
