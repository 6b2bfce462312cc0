"""The Grafana dashboard in deploy/: a valid, provisioned dashboard over served metrics only.

Grafana cannot run here, so the JSON is held to what Grafana's file provisioning needs, the
provider to the path docker-compose.yml mounts it at, and every query to the metric names the
orchestrator serves (SERVED below; tests/dashboards.py extracts them, and an integration test
holds the same queries to a real exporter and worker). With promtool on PATH every query must
also parse, and the per-worker joins must compute what their panels say.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from docs.reference_gen import worker_metrics
from orchestrator.cli.exporter import FAMILIES
from tests import dashboards

REPO = dashboards.REPO
GRAFANA = REPO / "deploy" / "grafana"
PROVISIONING = GRAFANA / "provisioning"
DATASOURCES = PROVISIONING / "datasources" / "prometheus.yml"
PROVIDERS = PROVISIONING / "dashboards" / "hive.yml"


#: What the orchestrator serves, from the code that serves it (the exporter's families and a
#: worker's own metrics, as the generated metrics reference lists them): counters with
#: `_total`, histograms by family. Flower's flower_* names and Prometheus' own `up` are not
#: the orchestrator's and no panel may depend on them.
def _exposed(name: str, kind: str) -> str:
    return f"{name}_total" if kind == "counter" and not name.endswith("_total") else name


EXPORTER_NAMES = frozenset(_exposed(name, spec.kind) for name, spec in FAMILIES.items())
WORKER_NAMES = frozenset(_exposed(name, kind) for name, kind, *_ in worker_metrics())
SERVED = EXPORTER_NAMES | WORKER_NAMES

#: What each panel the dashboard promises must read (title -> names).
REQUIRED_PANELS: dict[str, set[str]] = {
    "Throughput": {"orchestrator_task_runs_total"},
    "Error rate": {"orchestrator_error_rate"},
    "Run latency": {"orchestrator_task_run_seconds"},
    "Delegation latency p95": {"orchestrator_task_delegation_seconds"},
    "Queue depth per agent": {"orchestrator_agent_queue_depth"},
    "Agents by status": {"orchestrator_agents"},
    "Open circuits": {"orchestrator_circuits_open"},
    "Firing alerts": {"orchestrator_alerts_firing"},
    "SLA error budget remaining": {"orchestrator_sla_error_budget_remaining"},
    "Desired vs active agents per capability": {
        "orchestrator_desired_agents",
        "orchestrator_capability_agents",
    },
    "Tasks in flight per worker": {"orchestrator_worker_tasks_in_flight"},
    "Task rate per worker": {"orchestrator_worker_tasks_executed_total"},
    "Backlog by priority": {"orchestrator_backlog_tasks"},
    "Backlog by capability": {"orchestrator_backlog_tasks"},
    "Oldest backlog wait": {"orchestrator_backlog_oldest_seconds"},
    "Free slots per agent": {"orchestrator_agent_slots_free"},
}
PANEL_TYPES = {"timeseries", "stat", "gauge"}
GRID_WIDTH = 24
# Grafana's query-time variables, replaced by a value for promtool (which does not know them).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dashboards.load_dashboard()


@pytest.fixture(scope="module")
def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboards.panels(dashboard))


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    return source


@pytest.fixture(scope="module")
def grafana_mounts() -> dict[str, str]:
    """Grafana's bind mounts, host path (relative to the repository) -> container path."""
    compose = load_yaml(REPO / "docker-compose.yml")
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[source.removeprefix("./").rstrip("/")] = target.rstrip("/")
    return mounts


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not on PATH (Debian package `prometheus`): PromQL not parsed")
    return path


def promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- the dashboard ---------------------------------------------------------------------


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "hive-orchestrator"
    assert dashboard["title"] == "Hive Orchestrator"
    # A provisioned dashboard is matched by uid; a fixed numeric id would clash across orgs.
    assert dashboard.get("id") is None
    assert dashboard["panels"]


def test_every_panel_is_complete(panels: list[dict[str, Any]]) -> None:
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"].strip()
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= GRID_WIDTH, f"{panel['title']} runs off the grid"
        targets = panel["targets"]
        assert targets, f"{panel['title']} queries nothing"
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat: {refs}"
        assert all(target["expr"].strip() for target in targets), panel["title"]


def test_panels_do_not_overlap(panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']} overlaps {other}"


def test_every_query_uses_the_provisioned_datasource(
    panels: list[dict[str, Any]], datasource: dict[str, Any]
) -> None:
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    assert expected == {"type": "prometheus", "uid": "prometheus"}
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]


@pytest.mark.parametrize("title", sorted(REQUIRED_PANELS))
def test_the_promised_panels_exist(panels: list[dict[str, Any]], title: str) -> None:
    matching = [panel for panel in panels if panel["title"] == title]
    assert len(matching) == 1, f"want one panel titled {title!r}"
    read = set().union(*(dashboards.metric_names(t["expr"]) for t in matching[0]["targets"]))
    assert REQUIRED_PANELS[title] <= read


def test_latency_panels_are_quantiles_over_buckets(panels: list[dict[str, Any]]) -> None:
    by_title = {panel["title"]: panel for panel in panels}
    run = [t["expr"] for t in by_title["Run latency"]["targets"]]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile},")
            and "orchestrator_task_run_seconds_bucket" in e
            for e in run
        ), f"no p{quantile} of the run time"
    delegation = [t["expr"] for t in by_title["Delegation latency p95"]["targets"]]
    assert all(
        e.startswith("histogram_quantile(0.95,")
        and "orchestrator_task_delegation_seconds_bucket" in e
        for e in delegation
    )


def test_queries_read_only_what_the_orchestrator_serves() -> None:
    exprs = dashboards.dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = dashboards.metric_names(expr)
        assert names, f"reads no orchestrator_* metric: {expr}"
        assert names <= SERVED, f"not served: {sorted(names - SERVED)} in {expr}"
        words = dashboards.words(expr)
        assert "up" not in words, f"Prometheus' own `up` is not the orchestrator's: {expr}"
        assert not any(w.startswith("flower_") for w in words), f"Flower's metric: {expr}"


def test_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression."""
    binary = promtool()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": promql(expr)}
        for i, expr in enumerate(dashboards.dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [binary, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_per_worker_panels_join_the_agent_id(tmp_path: Path) -> None:
    """The in-flight and task-rate queries, evaluated by promtool over two worker processes,
    give one series per agent, labelled with its agent id and role."""
    binary = promtool()
    exprs = {e for e in dashboards.dashboard_exprs() if "orchestrator_worker_info" in e}
    in_flight = next(e for e in exprs if "tasks_in_flight" in e)
    executed = next(e for e in exprs if "tasks_executed_total" in e)
    # (job, instance, agent id, role): an agent replica and the control worker.
    workers = [
        ("workers", "10.0.0.7:9809", "agent-a", "agent"),
        ("control", "10.0.0.5:9809", "control@c1", "control"),
    ]
    series = []
    for job, instance, agent, role in workers:
        where = f'job="{job}", instance="{instance}"'
        series += [
            {
                "series": f'orchestrator_worker_info{{{where}, agent="{agent}", role="{role}"}}',
                "values": "1x20",
            },
            # Per minute, 2 x 30 runs on the agent (1/s) and 2 x 15 on control (0.5/s).
            {
                "series": f'orchestrator_worker_tasks_executed_total{{{where}, type="echo"}}',
                "values": "0+30x20" if role == "agent" else "0+15x20",
            },
            {
                "series": f'orchestrator_worker_tasks_executed_total{{{where}, type="sleep"}}',
                "values": "0+30x20" if role == "agent" else "0+15x20",
            },
            {
                "series": f"orchestrator_worker_tasks_in_flight{{{where}}}",
                "values": "3x20" if role == "agent" else "1x20",
            },
        ]

    def expect(values: dict[str, float]) -> list[dict[str, Any]]:
        return [
            {"labels": f'{{agent="{agent}", role="{role}"}}', "value": values[role]}
            for _, _, agent, role in workers
        ]

    test = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": promql(in_flight),
                        "eval_time": "15m",
                        "exp_samples": expect({"agent": 3, "control": 1}),
                    },
                    {
                        "expr": promql(executed),
                        "eval_time": "15m",
                        "exp_samples": expect({"agent": 1, "control": 0.5}),
                    },
                ],
            }
        ],
    }
    path = tmp_path / "dashboard.test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- provisioning ----------------------------------------------------------------------


def test_the_provider_loads_the_path_compose_mounts_the_dashboard_at(
    grafana_mounts: dict[str, str],
) -> None:
    config = load_yaml(PROVIDERS)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"].rstrip("/")
    dashboard = dashboards.dashboard_path().relative_to(REPO).as_posix()
    in_container = [
        f"{target}/{dashboard.removeprefix(source).lstrip('/')}".rstrip("/")
        for source, target in grafana_mounts.items()
        if dashboard == source or dashboard.startswith(f"{source}/")
    ]
    assert in_container, f"docker-compose.yml does not mount {dashboard} into grafana"
    (mounted,) = in_container
    assert mounted == path or mounted.startswith(f"{path}/"), (mounted, path)


def test_compose_mounts_both_provisioning_folders(grafana_mounts: dict[str, str]) -> None:
    for kind in ("datasources", "dashboards"):
        source = f"deploy/grafana/provisioning/{kind}"
        assert grafana_mounts.get(source) == f"/etc/grafana/provisioning/{kind}", kind
        assert (REPO / source).is_dir()


# --- the name helpers (tests/dashboards.py) --------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names", "families"),
    [
        ("orchestrator_up", {"orchestrator_up"}, {"orchestrator_up"}),
        (
            "sum by (outcome) (rate(orchestrator_task_runs_total[5m]))",
            {"orchestrator_task_runs_total"},
            {"orchestrator_task_runs_total"},
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(orchestrator_task_run_seconds_bucket[5m])))",
            {"orchestrator_task_run_seconds"},
            {"orchestrator_task_run_seconds"},
        ),
        (
            "rate(orchestrator_task_run_seconds_sum[5m])"
            " / rate(orchestrator_task_run_seconds_count[5m])",
            {"orchestrator_task_run_seconds"},
            {"orchestrator_task_run_seconds"},
        ),
        # Not a histogram: the suffix is part of the name.
        ("orchestrator_thing_count", {"orchestrator_thing_count"}, {"orchestrator_thing"}),
        # Label values, label names and other exporters' names are not orchestrator metrics.
        (
            'up{job="orchestrator"} == 0 and on() flower_events_total{task="orchestrator_x"}',
            set(),
            set(),
        ),
        (
            "x{a='orchestrator_y', b=`orchestrator_z`} * on (instance) orchestrator_worker_info",
            {"orchestrator_worker_info"},
            {"orchestrator_worker_info"},
        ),
        ("not_orchestrator_up + job:orchestrator_up:sum", set(), set()),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str], families: set[str]) -> None:
    assert dashboards.metric_names(expr) == names
    assert dashboards.family_names(expr) == families


def test_words_are_outside_string_literals() -> None:
    assert "up" in dashboards.words('up{job="orchestrator"} == 0')
    assert "up" not in dashboards.words('orchestrator_up{job="up"} == 0')
    assert "flower_x" not in dashboards.words("orchestrator_up{a=`flower_x`}")


def test_metric_names_takes_the_histograms_it_is_given() -> None:
    expr = "orchestrator_thing_count + orchestrator_thing_bucket"
    assert dashboards.metric_names(expr, histograms={"orchestrator_thing"}) == {
        "orchestrator_thing"
    }


def test_served_names_reads_an_exposition_in_the_same_vocabulary() -> None:
    registry = CollectorRegistry()
    Counter("orchestrator_tasks", "events", ["event"], registry=registry).labels("ok").inc()
    Counter("orchestrator_idle", "never counted", ["event"], registry=registry)
    Gauge("orchestrator_alert", "no alert yet", ["alertname"], registry=registry)
    Gauge("orchestrator_up", "up", registry=registry).set(1)
    Histogram("orchestrator_task_run_seconds", "run", ["type"], registry=registry).labels(
        "echo"
    ).observe(0.2)
    text = generate_latest(registry).decode()
    served = dashboards.served_names(text)
    assert {
        "orchestrator_tasks_total",
        "orchestrator_idle_total",
        "orchestrator_alert",
        "orchestrator_up",
        "orchestrator_task_run_seconds",
    } <= served
    assert dashboards.histogram_families(text) == {"orchestrator_task_run_seconds"}
    quantile = "histogram_quantile(0.5, rate(orchestrator_task_run_seconds_bucket[5m]))"
    assert dashboards.metric_names(quantile, dashboards.histogram_families(text)) <= served


def test_the_health_panel_shows_each_state_in_its_own_colour(
    panels: list[dict[str, Any]],
) -> None:
    """healthy, degraded and critical each read as a word on a colour of their own (one
    colour whatever the state says nothing at a glance)."""
    (health,) = [p for p in panels if p["title"] == "Health"]
    (target,) = health["targets"]
    for state in ("degraded", "critical"):
        assert f'orchestrator_health{{state="{state}"}}' in target["expr"]
    mapped: dict[str, tuple[str, str]] = {}
    for mapping in health["fieldConfig"]["defaults"]["mappings"]:
        for value, shown in mapping["options"].items():
            mapped[value] = (shown["text"], shown["color"])
    assert {v[0] for v in mapped.values()} == {"healthy", "degraded", "critical"}
    assert len({v[1] for v in mapped.values()}) == 3, mapped
    assert health["options"]["colorMode"] == "background"
