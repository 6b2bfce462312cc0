"""The beat schedule, burn-rate alert rules, backups' files, the SLA page: pure or file-only."""

from __future__ import annotations

import gzip
import json
import math
import sys

import pytest

from beat_schedule import build_beat_schedule
from orchestrator.backup.archive import (
    BackupError,
    backup_name,
    list_backups,
    sha256_file,
    to_prune,
    verify_backup,
)
from orchestrator.cli.exporter import EXPORT_BOUNDS_MS
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import AlertState, SLATarget
from orchestrator.monitoring.alerting import builtin_rules, evaluate_rules
from orchestrator.monitoring.anomaly_loop import minute_points
from orchestrator.monitoring.report import line_chart, render_sla_html
from orchestrator.monitoring.schedule import AUTOSCALE_TTL_S, LOOPS, lock_ttl_s, redbeat_config
from orchestrator.monitoring.slo import THIRTY_DAYS, SLAReport, burn_alert_rules
from orchestrator.monitoring.stats import LATENCY_BOUNDS_MS, parse_fields, run_fields, sum_fields
from orchestrator.runtime.celeryconf import create_app

SPEC_ENTRIES = {
    "alert-evaluation": ("orchestrator.monitor.alerts", 30.0),
    "sla-monitoring": ("orchestrator.monitor.sla", 60.0),
    "security-monitoring": ("orchestrator.monitor.security", 30.0),
    "backup-management": ("orchestrator.monitor.backup", 6 * 3600.0),
    "anomaly-detection": ("orchestrator.monitor.anomaly", 60.0),
    "performance-optimization": ("orchestrator.optimize", 120.0),
}


def test_schedule_has_the_spec_entries_with_default_intervals():
    schedule = build_beat_schedule(load_settings())
    for entry, (task, every) in SPEC_ENTRIES.items():
        assert schedule[entry]["task"] == task
        assert schedule[entry]["schedule"] == every
        options = schedule[entry]["options"]
        assert options["expires"] == every  # a tick not started by the next one is dropped
        assert options["time_limit"] == lock_ttl_s(every)
        assert options["soft_time_limit"] < options["time_limit"]
    assert schedule["route-parked"]["task"] == "orchestrator.route_parked"


def test_the_scaling_loops_run_every_scale_interval_and_autoscale_may_run_a_command():
    schedule = build_beat_schedule(load_settings(scale_interval_s=2))
    for entry, task in (
        ("autoscaling", "orchestrator.autoscale"),
        ("sleep-wake", "orchestrator.sleep_wake"),
    ):
        assert (schedule[entry]["task"], schedule[entry]["schedule"]) == (task, 2.0)
        assert schedule[entry]["options"]["expires"] == 2.0
    assert schedule["sleep-wake"]["options"]["time_limit"] == lock_ttl_s(2.0)
    # ORCH_SCALE_COMMAND (docker compose up --scale) gets more than two short intervals
    assert schedule["autoscaling"]["options"]["time_limit"] == AUTOSCALE_TTL_S


def test_intervals_come_from_settings():
    settings = load_settings(
        alert_evaluation_interval=1.5,
        sla_monitoring_interval=2,
        security_monitoring_interval=3,
        backup_interval_hours=0.5,
        anomaly_detection_interval=4,
        performance_optimization_interval=5,
    )
    schedule = build_beat_schedule(settings)
    got = {name: schedule[name]["schedule"] for name in SPEC_ENTRIES}
    assert got == {
        "alert-evaluation": 1.5,
        "sla-monitoring": 2.0,
        "security-monitoring": 3.0,
        "backup-management": 1800.0,
        "anomaly-detection": 4.0,
        "performance-optimization": 5.0,
    }


@pytest.mark.parametrize(
    "flags,missing",
    [
        ({}, set()),
        ({"event_processing_enabled": False}, {"security-monitoring", "anomaly-detection"}),
        ({"intelligent_routing_enabled": False}, {"performance-optimization"}),
        ({"auto_recovery_enabled": False, "circuit_breaker_enabled": False}, set()),
    ],
)
def test_feature_flags_leave_their_loops_out(flags, missing):
    schedule = build_beat_schedule(load_settings(**flags))
    assert set(SPEC_ENTRIES) - set(schedule) == missing
    by_entry = {loop.entry: loop for loop in LOOPS}
    settings = load_settings(**flags)
    assert {e for e in SPEC_ENTRIES if not by_entry[e].enabled(settings)} == missing


def test_the_app_builds_its_schedule_from_its_own_settings_not_the_environment(monkeypatch):
    # The environment's settings are invalid (ORCH_SCALE_MIN above ORCH_SCALE_MAX) and name
    # another interval: neither building the app nor importing the schedule module reads them.
    monkeypatch.setenv("ORCH_SCALE_MIN", "50")
    monkeypatch.setenv("ORCH_SCALE_INTERVAL_S", "7")
    monkeypatch.delitem(sys.modules, "beat_schedule", raising=False)
    settings = load_settings(scale_min=1, scale_interval_s=2)
    schedule = create_app(settings).conf.beat_schedule
    assert (schedule["autoscaling"]["task"], schedule["autoscaling"]["schedule"]) == (
        "orchestrator.autoscale",
        2.0,
    )
    assert schedule == build_beat_schedule(settings)


def test_the_module_level_schedule_is_the_environments_built_when_read(monkeypatch):
    import beat_schedule

    monkeypatch.setenv("ORCH_SCALE_INTERVAL_S", "7")
    assert beat_schedule.beat_schedule == build_beat_schedule(load_settings())
    assert beat_schedule.beat_schedule["autoscaling"]["schedule"] == 7.0


@pytest.mark.parametrize(
    "interval,ttl", [(1.0, 10.0), (30.0, 60.0), (60.0, 120.0), (6 * 3600.0, 3600.0)]
)
def test_lock_ttl(interval, ttl):
    assert lock_ttl_s(interval) == ttl


def test_redbeat_config():
    conf = redbeat_config(load_settings(redis_url="redis://h:1/2", beat_lock_timeout_s=15))
    assert conf["beat_scheduler"] == "orchestrator.runtime.beat:Scheduler"
    assert conf["redbeat_redis_url"] == "redis://h:1/2"
    assert conf["redbeat_lock_timeout"] == 15
    assert conf["redbeat_redis_options"] == {}
    assert conf["beat_max_loop_interval"] == 5.0


def test_beat_lock_must_outlast_three_ticks():
    with pytest.raises(ConfigError, match="ORCH_BEAT_LOCK_TIMEOUT_S must be at least 3 x"):
        load_settings(beat_max_interval_s=5, beat_lock_timeout_s=10)


# --- burn-rate alerts (SRE workbook numbers) ---------------------------------------------

TARGET = SLATarget(name="api", sli="success_rate", objective=0.999)
H1, M5, H6, M30, D3 = 3600.0, 300.0, 21_600.0, 1800.0, 259_200.0


@pytest.mark.parametrize(
    "burns,firing",
    [
        ({H1: 14.5, M5: 15.0, H6: 1, M30: 1, D3: 0.5}, {"SLOBurnRate:api:1h:5m"}),
        ({H1: 14.5, M5: 2.0, H6: 1, M30: 1, D3: 0.5}, set()),  # the burn already stopped
        ({H1: 14.4, M5: 14.4, H6: 1, M30: 1, D3: 0.5}, set()),  # strictly above
        ({H1: 7, M5: 7, H6: 6.5, M30: 6.1, D3: 0.5}, {"SLOBurnRate:api:6h:30m"}),
        ({H1: 2, M5: 2, H6: 1.2, M30: 1, D3: 1.1}, {"SLOBurnRate:api:3d:6h"}),
        (
            {H1: 20, M5: 20, H6: 20, M30: 20, D3: 20},
            {"SLOBurnRate:api:1h:5m", "SLOBurnRate:api:6h:30m", "SLOBurnRate:api:3d:6h"},
        ),
    ],
)
def test_burn_alert_rules_follow_the_workbook(burns, firing):
    rules, values = burn_alert_rules(TARGET, burns)
    current, _ = evaluate_rules(rules, {}, values, now=0.0)
    assert {n for n, a in current.items() if a.state is AlertState.FIRING} == firing


def test_burn_rules_labels_severity_and_scaling():
    rules, _ = burn_alert_rules(TARGET, {})
    page, _, ticket = rules
    assert (page.threshold, page.severity.value, page.labels["action"]) == (
        14.4,
        "critical",
        "page",
    )
    assert (ticket.threshold, ticket.severity.value, ticket.labels["action"]) == (
        1.0,
        "warning",
        "ticket",
    )
    assert page.labels["slo"] == "api" and page.labels["long_window"] == "1h"
    weekly = SLATarget(name="w", sli="error_rate", objective=0.01, window_s=7 * 86400)
    scaled, _ = burn_alert_rules(weekly, {})
    assert scaled[0].threshold == pytest.approx(14.4 * 7 * 86400 / THIRTY_DAYS)


def test_a_window_without_data_cannot_fire():
    rules, values = burn_alert_rules(TARGET, {H1: 50.0})
    assert values == {}
    current, _ = evaluate_rules(rules, {}, values, now=0.0)
    assert current == {}


def test_builtin_rules_cover_the_monitoring_metrics():
    names = {r.metric for r in builtin_rules()}
    assert {"anomalies_active", "regressions_active", "security_threats", "backup_age_s"} <= names


# --- anomaly series of one minute ---------------------------------------------------------


def test_minute_points():
    fields = sum_fields(
        [run_fields("echo", "ok", 10.0, None)] * 6
        + [run_fields("echo", "fail", 10.0, None)] * 6
        + [run_fields("rare", "ok", 100.0, None)] * 3
    )
    points = minute_points(parse_fields(fields), {"echo", "rare", "idle"}, {"*": 4.0, "echo": 3.0})
    assert points["throughput"] == pytest.approx(15 / 60)
    assert points["error_rate"] == pytest.approx(6 / 15)
    assert points["error_rate:echo"] == 0.5 and points["error_rate:rare"] == 0.0
    assert points["throughput:idle"] == 0.0 and math.isnan(points["error_rate:idle"])
    assert math.isnan(points["latency_p95_ms:idle"])
    assert points["queue_depth"] == 4.0 and points["queue_depth:echo"] == 3.0
    assert "queue_depth" not in minute_points(parse_fields(fields), set(), None)


# --- backup files --------------------------------------------------------------------------


def write_backup(folder, keys=2, trailer=None, fmt="hive-orchestrator-backup"):
    path = folder / backup_name(1_800_000_000.5)
    with gzip.open(path, "wt") as out:
        out.write(json.dumps({"format": fmt, "version": 1, "created_at": 1_800_000_000.5}) + "\n")
        for i in range(keys):
            out.write(json.dumps({"key": f"orch:k{i}", "pttl": 0, "dump": "AAEC"}) + "\n")
        out.write(json.dumps(trailer or {"end": True, "keys": keys}) + "\n")
    (folder / (path.name + ".sha256")).write_text(f"{sha256_file(path)}  {path.name}\n")
    return path


def test_verify_accepts_a_good_backup(tmp_path):
    path = write_backup(tmp_path)
    info = verify_backup(path)
    assert info.keys == 2 and info.created_at == 1_800_000_000.5
    listed = list_backups(tmp_path)
    assert [b.path for b in listed] == [str(path)] and listed[0].sha256 == info.sha256
    assert listed[0].created_at == pytest.approx(1_800_000_000.5)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("flip", "sha256 mismatch"),
        ("no-sidecar", "checksum file"),
        ("truncated", "truncated"),
        ("foreign", "not a hive-orchestrator-backup file"),
        ("missing", "no such backup file"),
    ],
)
def test_verify_names_the_damage(tmp_path, damage, message):
    path = write_backup(
        tmp_path,
        trailer={"end": True, "keys": 5} if damage == "truncated" else None,
        fmt="other" if damage == "foreign" else "hive-orchestrator-backup",
    )
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "no-sidecar":
        (tmp_path / (path.name + ".sha256")).unlink()
    elif damage == "missing":
        path = tmp_path / "nope.jsonl.gz"
    with pytest.raises(BackupError, match=message):
        verify_backup(path)


def test_retention_prunes_the_oldest():
    names = [backup_name(t) for t in (300.0, 100.0, 200.0, 400.0)] + ["notes.txt"]
    assert to_prune(names, 2) == [backup_name(100.0), backup_name(200.0)]
    assert to_prune(names, 10) == []


# --- the SLA page ----------------------------------------------------------------------------


def test_sla_page_is_self_contained_with_a_chart_per_sli_and_budget():
    reports = [
        SLAReport(
            name="task-success",
            sli="success_rate",
            objective=0.99,
            value=0.97,
            compliant=False,
            error_budget_remaining=-2.0,
            burn_rates={"5m": 3.0},
        ),
        SLAReport(
            name="lat<x>",
            sli="latency_p95_ms",
            objective=1000,
            value=None,
            compliant=True,
            error_budget_remaining=1.0,
            burn_rates={},
        ),
    ]
    history = [
        {"ts": 100.0 + i, "targets": {"task-success": {"value": 0.99 - i / 100, "budget": 1 - i}}}
        for i in range(3)
    ]
    page = render_sla_html(reports, history, now=200.0)
    assert page.count("<svg") == 4 and page.count("<polyline") == 2
    assert "no data yet" in page and "lat&lt;x&gt;" in page and "<x>" not in page
    assert "http" not in page and "<script" not in page
    assert "breached" in page


def test_line_chart_single_point_and_flat_series():
    assert "<circle" in line_chart([(1.0, 5.0)], "one")
    assert "<polyline" in line_chart([(1.0, 5.0), (2.0, 5.0)], "flat", reference=5.0)


def test_exported_buckets_are_exact_fine_bounds():
    assert set(EXPORT_BOUNDS_MS) <= set(LATENCY_BOUNDS_MS)
    assert EXPORT_BOUNDS_MS[:4] == (1.0, 2.5, 5.0, 10.0) and EXPORT_BOUNDS_MS[-1] == 1e6
