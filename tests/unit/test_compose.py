"""Static checks of the deployment files: docker-compose.yml, Dockerfile and deploy/.

There is no container engine in CI, so the compose file is validated against the Compose
Specification schema and held to the commands the test-suite runs as local processes.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests import dashboards

REPO = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"

# The exact command of each app role, as the test-suite starts it as a local process.
# docker-compose.yml must run the same ones, so that it is a faithful picture of what is tested.
COMPOSE_COMMANDS: dict[str, list[str]] = {
    "control": ["celery", "-A", "orchestrator.app", "worker", "-n", "control@%h", "-l", "info"],
    "worker": ["celery", "-A", "orchestrator.app", "worker", "-l", "info"],
    "beat": ["celery", "-A", "orchestrator.app", "beat", "-l", "info"],
    "flower": ["celery", "-A", "orchestrator.app", "flower", "--port=5555", "--address=0.0.0.0"],
    "exporter": ["orchestrator", "exporter"],
}

# The services the compose file must define, with their commands.
SERVICES = {
    "redis",
    "control",
    "worker",
    "beat",
    "flower",
    "exporter",
    "prometheus",
    "alertmanager",
    "grafana",
}
APP_SERVICES = set(COMPOSE_COMMANDS)
WORKER_CAPABILITIES = "echo=1.0,sleep=1.0,fail=1.0"
# Where every worker process serves its own metrics (deploy/prometheus.yml scrapes it by DNS).
METRICS_PORT = "9809"
ROOT_USERS = {"root", "0"}

# ${VAR}, ${VAR:-default}, ${VAR-default}: Compose interpolation.
INTERPOLATION = re.compile(r"^\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}$")


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((REPO / relative).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml("docker-compose.yml")
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command or [])


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def defaults_in(value: str) -> str:
    """`value` with every `${VAR:-default}` in it as Compose substitutes it, VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m.group(1), value)


def resolved(value: str) -> str:
    """The value Compose substitutes when the variable is unset (its default)."""
    match = INTERPOLATION.match(value)
    if match is None:
        return value
    return match.group("default") or ""


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_user() -> str:
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile must switch to a non-root USER"
    return users[-1]


# --- schema ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(
            f"Compose Specification schema not found at {COMPOSE_SCHEMA} "
            "(it lives in shared/ beside the repository, as in CI clones)"
        )
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    # The schema declares draft-07 under an https $schema URL that jsonschema does not map
    # (it would warn and fall back to the latest draft), so the draft is named here.
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_matches_the_compose_specification(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    errors = sorted(compose_validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_compose_file(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    """Guards the test above against a schema that accepts anything."""
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["no_such_key"] = True
    assert not compose_validator.is_valid(broken)


def test_compose_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


# --- services --------------------------------------------------------------------------


def test_the_nine_services_of_the_spec_exist(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


@pytest.mark.parametrize("role", sorted(COMPOSE_COMMANDS))
def test_app_services_run_the_commands_the_tests_run(services: dict[str, Any], role: str) -> None:
    assert command_of(services[role]) == COMPOSE_COMMANDS[role]


@pytest.mark.parametrize("role", sorted(APP_SERVICES))
def test_app_services_share_one_image_and_wait_for_redis(
    services: dict[str, Any], role: str
) -> None:
    service = services[role]
    assert service["build"] == "."
    assert service["image"] == services["control"]["image"]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    env = environment_of(service)
    # Redis requires a password and every role gives it (the security loop flags Redis
    # beyond loopback without one).
    password = defaults_in(command_of(services["redis"])[-1])
    assert password and "${REDIS_PASSWORD" in env["ORCH_REDIS_URL"]
    assert defaults_in(env["ORCH_REDIS_URL"]) == f"redis://:{password}@redis:6379/0"
    assert env["ORCH_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    assert env["ORCH_FLOWER_URL"] == "http://flower:5555"


def test_worker_is_scalable(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker  # the agent id defaults to the (distinct) hostname
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=N`"
    env = environment_of(worker)
    assert "ORCH_AGENT_ID" not in env
    assert env["ORCH_AGENT_CAPABILITIES"] == WORKER_CAPABILITIES
    assert env["ORCH_HANDLERS"] == "examples.handlers"


@pytest.mark.parametrize("role", ["control", "worker"])
def test_workers_serve_metrics_inside_the_network_only(services: dict[str, Any], role: str) -> None:
    """Prometheus reaches each replica by the service's DNS name; a published host port would
    collide between replicas and is not needed."""
    service = services[role]
    assert environment_of(service)["ORCH_METRICS_PORT"] == METRICS_PORT
    published = [str(port) for port in service.get("ports", [])]
    assert not any(METRICS_PORT in port for port in published), published


@pytest.mark.parametrize("role", sorted(APP_SERVICES - {"control", "worker"}))
def test_only_workers_serve_worker_metrics(services: dict[str, Any], role: str) -> None:
    assert "ORCH_METRICS_PORT" not in environment_of(services[role])


@pytest.mark.parametrize("role", sorted(APP_SERVICES - {"worker"}))
def test_only_the_worker_declares_capabilities(services: dict[str, Any], role: str) -> None:
    assert "ORCH_AGENT_CAPABILITIES" not in environment_of(services[role])


def test_flower_requires_authentication(services: dict[str, Any]) -> None:
    flower = services["flower"]
    env = environment_of(flower)
    assert "FLOWER_BASIC_AUTH" in env
    credentials = resolved(env["FLOWER_BASIC_AUTH"])
    user, _, password = credentials.partition(":")
    assert user and password, f"FLOWER_BASIC_AUTH must default to user:password: {credentials!r}"
    assert env.get("FLOWER_UNAUTHENTICATED_API", "false").lower() not in {"true", "1", "yes"}
    assert not any("unauthenticated" in arg for arg in command_of(flower))
    assert "5555:5555" in flower["ports"]


def test_exporter_is_published(services: dict[str, Any]) -> None:
    assert "9808:9808" in services["exporter"]["ports"]


def test_redis_never_evicts_and_persists(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = command_of(redis)
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    password = options.pop("--requirepass")
    assert options == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
    }
    assert password == "${REDIS_PASSWORD:-change-me}"
    assert redis["healthcheck"]["test"] == [
        "CMD",
        "redis-cli",
        "--no-auth-warning",
        "-a",
        password,
        "ping",
    ]
    volume = redis["volumes"][0].split(":")[0]
    assert not volume.startswith((".", "/")), "redis data belongs in a named volume"


def test_named_volumes_are_declared_and_bind_mounts_exist(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


# --- image -----------------------------------------------------------------------------


def test_dockerfile_builds_a_small_non_root_image() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim"
    assert ("WORKDIR", "/app") in instructions
    assert ("CMD", '["orchestrator", "--help"]') in instructions
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)
    assert "[dev]" not in runs
    user = dockerfile_user()
    assert user.split(":")[0] not in ROOT_USERS


def test_dockerfile_copies_everything_the_package_is_built_from() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = pyproject["tool"]["setuptools"]
    included = setuptools["packages"]["find"]["include"]
    needed = {f"{package.split('.')[0]}/" for package in included}
    needed |= {f"{module}.py" for module in setuptools.get("py-modules", [])}
    needed |= {"pyproject.toml", pyproject["project"]["readme"]}
    copied: set[str] = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            copied.update(rest.split()[:-1])
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"


@pytest.mark.parametrize("role", sorted(APP_SERVICES))
def test_app_services_run_as_the_image_user(services: dict[str, Any], role: str) -> None:
    user = services[role].get("user")
    if user is not None:
        assert str(user).split(":")[0] not in ROOT_USERS
        assert str(user) == dockerfile_user()


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    entries = {line.strip().rstrip("/") for line in lines if line.strip()}
    for entry in (".venv", ".git", ".pytest_cache", "backups", ".env"):
        assert entry in entries, f".dockerignore must exclude {entry}"


# --- monitoring stack ------------------------------------------------------------------


def test_prometheus_scrapes_the_exporter_and_flower(services: dict[str, Any]) -> None:
    assert any(v.startswith("./deploy/prometheus.yml:") for v in services["prometheus"]["volumes"])
    config = load_yaml("deploy/prometheus.yml")
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    assert targets.get("exporter:9808") == "/metrics"
    assert targets.get("flower:5555") == "/metrics"
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]


def test_alertmanager_routes_to_a_declared_receiver(services: dict[str, Any]) -> None:
    assert any(
        v.startswith("./deploy/alertmanager.yml:") for v in services["alertmanager"]["volumes"]
    )
    config = load_yaml("deploy/alertmanager.yml")
    route = config["route"]
    assert route["group_by"] == ["alertname", "severity"]
    assert route["receiver"] in {receiver["name"] for receiver in config["receivers"]}


def test_grafana_is_provisioned_with_prometheus(services: dict[str, Any]) -> None:
    provisioning = "deploy/grafana/provisioning/datasources"
    assert any(v.startswith(f"./{provisioning}:") for v in services["grafana"]["volumes"])
    config = load_yaml(f"{provisioning}/prometheus.yml")
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


# --- autoscaling -----------------------------------------------------------------------


def test_keda_scales_the_worker_deployment_on_the_desired_agents() -> None:
    """deploy/keda/scaledobject.yaml: replicas = orchestrator_desired_agents for one
    capability (AverageValue with threshold 1), read through Prometheus."""
    manifest = load_yaml("deploy/keda/scaledobject.yaml")
    assert manifest["apiVersion"] == "keda.sh/v1alpha1"
    assert manifest["kind"] == "ScaledObject"
    spec = manifest["spec"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert spec["scaleTargetRef"]["name"] == "hive-worker"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert metadata["threshold"] == "1"  # KEDA wants a string
    assert metadata["serverAddress"].startswith("http")
    assert dashboards.scaledobject_queries() == [metadata["query"]]
    assert dashboards.metric_names(metadata["query"]) == {"orchestrator_desired_agents"}
    assert re.fullmatch(
        r'max\(orchestrator_desired_agents\{capability="\w+"\}\)', metadata["query"]
    )
