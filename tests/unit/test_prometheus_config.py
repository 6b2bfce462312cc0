"""Prometheus and Alertmanager configuration in deploy/, checked by their own tools.

`promtool` (Debian package `prometheus`) checks the config as the prometheus container sees
it, checks the rules and runs their unit tests (deploy/prometheus-rules.test.yml); `amtool`
(package `prometheus-alertmanager`) checks the Alertmanager config. Each skips, saying why,
where its binary is missing. The rest is plain YAML: the scrape jobs reach every worker
replica, and the rules read only what the orchestrator serves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests import dashboards
from tests.unit.test_grafana_dashboard import SERVED

REPO = dashboards.REPO
DEPLOY = REPO / "deploy"
CONFIG = DEPLOY / "prometheus.yml"
RULES = dashboards.rules_path()
RULE_TESTS = DEPLOY / "prometheus-rules.test.yml"
ALERTMANAGER = DEPLOY / "alertmanager.yml"

#: The alerts on what the orchestrator cannot report about itself
#: (docs/operations/monitoring.md, Dashboards and alert flow), by name.
ALERTS = {
    "OrchestratorExporterDown",
    "OrchestratorRedisUnreachable",
    "OrchestratorWorkerMetricsDown",
    "OrchestratorControlMissing",
    "OrchestratorNoActiveAgent",
    "OrchestratorScaleUpStalled",
    "OrchestratorErrorBudgetLow",
}
SEVERITIES = {"critical", "error", "warning", "info"}
#: Scrape jobs of worker processes, found by DNS: job -> compose service.
WORKER_JOBS = {"workers": "worker", "control": "control"}
#: `up{job="x"}` or `up{job=~"x|y"}`: the jobs an alert on scrape failures watches.
UP_SELECTOR = re.compile(r'(?<![A-Za-z0-9_:])up\{job=~?"([^"]*)"\}')


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not on PATH (Debian package `{package}`): not checked")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def compose_services() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")["services"]


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    (group,) = load_yaml(RULES)["groups"]
    assert group["name"] == "hive-orchestrator"
    return group["rules"]


@pytest.fixture(scope="module")
def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(CONFIG)["scrape_configs"]}


# --- the tools -------------------------------------------------------------------------


def test_promtool_accepts_the_config() -> None:
    result = run(binary("promtool", "prometheus"), "check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_config_as_the_container_mounts_it(
    compose_services: dict[str, Any], tmp_path: Path
) -> None:
    """The files laid out under tmp_path as compose binds them into the prometheus container,
    and checked at the path its --config.file names: the rule files must resolve there."""
    promtool = binary("promtool", "prometheus")
    prometheus = compose_services["prometheus"]
    for volume in prometheus["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            copy = tmp_path / PurePosixPath(target).relative_to("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / source, copy)
    (flag,) = (arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = tmp_path / PurePosixPath(flag.split("=", 1)[1]).relative_to("/")
    result = run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"/{RULES.name}" in result.stdout  # the rules were found and checked


def test_promtool_accepts_the_rules() -> None:
    result = run(binary("promtool", "prometheus"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_what_they_are_for() -> None:
    """deploy/prometheus-rules.test.yml: each alert fires after its `for:` and not before."""
    result = run(binary("promtool", "prometheus"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = run(binary("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rules -------------------------------------------------------------------------


def test_the_rules_are_the_promised_alerts(rules: list[dict[str, Any]]) -> None:
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired = {
        case["alertname"]
        for test in load_yaml(RULE_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == ALERTS


@pytest.mark.parametrize(
    ("alert", "expr"),
    [
        ("OrchestratorExporterDown", 'up{job="orchestrator"} == 0'),
        ("OrchestratorRedisUnreachable", "orchestrator_up == 0"),
        ("OrchestratorNoActiveAgent", 'sum(orchestrator_agents{status="active"}) == 0'),
        ("OrchestratorErrorBudgetLow", "orchestrator_sla_error_budget_remaining) < 0.1"),
    ],
)
def test_an_alert_watches_what_it_says(rules: list[dict[str, Any]], alert: str, expr: str) -> None:
    (rule,) = (rule for rule in rules if rule["alert"] == alert)
    assert expr in rule["expr"]


def test_the_rules_read_only_what_is_served(
    rules: list[dict[str, Any]], scrape_jobs: dict[str, dict[str, Any]]
) -> None:
    assert dashboards.rule_exprs() == [rule["expr"] for rule in rules]
    for expr in dashboards.rule_exprs():
        names = dashboards.metric_names(expr)
        assert names <= SERVED, f"not served: {sorted(names - SERVED)} in {expr}"
    # Prometheus' own `up` is read only with a job matcher, of jobs this config scrapes.
    for rule in rules:
        selectors = UP_SELECTOR.findall(rule["expr"])
        assert bool(selectors) == ("up" in dashboards.words(rule["expr"])), rule["alert"]
        for jobs in selectors:
            assert set(jobs.split("|")) <= set(scrape_jobs), rule["alert"]


# --- scraping --------------------------------------------------------------------------


def test_rules_load_beside_the_config_and_alerts_go_to_alertmanager() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == [RULES.name]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_prometheus_mounts_the_rules_beside_its_config(compose_services: dict[str, Any]) -> None:
    volumes = compose_services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert f"./deploy/{RULES.name}:/etc/prometheus/{RULES.name}:ro" in volumes


def test_the_jobs_are_all_there(scrape_jobs: dict[str, dict[str, Any]]) -> None:
    assert set(scrape_jobs) == {"orchestrator", "flower", "workers", "control", "prometheus"}
    assert scrape_jobs["orchestrator"]["static_configs"] == [{"targets": ["exporter:9808"]}]
    assert scrape_jobs["flower"]["static_configs"] == [{"targets": ["flower:5555"]}]
    assert scrape_jobs["flower"]["metrics_path"] == "/metrics"


@pytest.mark.parametrize(("job", "service"), sorted(WORKER_JOBS.items()))
def test_every_worker_replica_is_found_by_dns(
    scrape_jobs: dict[str, dict[str, Any]],
    compose_services: dict[str, Any],
    job: str,
    service: str,
) -> None:
    """`--scale worker=N` adds replicas no static target list could name: DNS A records of the
    service name list them all, on the port compose gives ORCH_METRICS_PORT."""
    config = scrape_jobs[job]
    assert "static_configs" not in config
    (sd,) = config["dns_sd_configs"]
    assert sd["names"] == [service]
    assert sd["type"] == "A"
    assert str(sd["port"]) == compose_services[service]["environment"]["ORCH_METRICS_PORT"]
