"""The performance figures table from canned reports, and the `orchestrator bench` verb's edges."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench import bench_all
from bench.common import goal_table
from bench.routing_report import VARIANTS

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "orchestrator.cli"]


def routing(good: bool) -> dict[str, Any]:
    """The parts of bench_routing's summarised report the table reads."""
    ratio = 0.9 if good else 0.5
    return {
        "ratios": {
            "by-name/plain": {"median": ratio, "min": ratio - 0.05, "max": ratio + 0.05},
            "orchestrated/plain": {"median": ratio, "min": ratio - 0.05, "max": ratio + 0.05},
        },
        "by_name_round_trip": {"p50_ratio_to_plain": 1.4, "p99_ms": 9.0 if good else 40.0},
        "throughput_per_s": {
            v: {"median": t} for v, t in zip(VARIANTS, (600, 470, 240, 320, 210), strict=True)
        },
        "round_trip_idle_p50_ms": {
            v: {"median": t} for v, t in zip(VARIANTS, (2.0, 2.5, 6.0, 4.0, 7.0), strict=True)
        },
        "cpu_ms_per_task": {
            "plain": {"producer": 1.0, "plain main": 1.0, "plain pool": 0.7, "total": 3.0},
            "by-name": {"producer": 1.2, "agent main": 1.8, "total": 9.0},
            "orchestrated": {"producer": 1.5, "agent main": 1.6, "total": 5.4},
        },
        "in_process_ms": {"register_agent_ms": {"p50": 0.3, "p95": 0.4, "p99": 0.5}},
        "goals": {
            "client_ratio_ge_0.8": good,
            "register_p99_le_5ms": good,
            "by_name_ratio_ge_0.7": good,
            "by_name_p50_ratio_le_2.0": True,
            "by_name_p99_le_25ms": good,
        },
    }


def scale(good: bool) -> dict[str, Any]:
    """The parts of bench_scale's summarised report the table reads."""

    def s(x: float) -> dict[str, float]:
        return {"median": x, "min": x, "max": x}

    return {
        "config": {"agents": [10, 1000]},
        "figures": {
            "decision_over_ping_p99": {"10": s(2.0), "1000": s(2.5 if good else 4.0)},
            "large_over_small": {"p50": s(1.1), "p99": s(1.2 if good else 2.0)},
            "loops_total_pct": s(0.5 if good else 3.0),
            "decision_ms": {n: {"p50": s(x)} for n, x in (("10", 0.12), ("1000", 0.48))},
            "decision_fresh_ms": {"1000": {"p50": s(46.3)}},
            "ping_p99_ms": {"1000": s(0.14)},
            "loops": {"exporter scrape": {"share_pct": 0.55}, "sleep-wake": {"share_pct": 0.5}},
            "goals": {
                "decision_over_ping_le_3": {"10": True, "1000": good},
                "large_over_small_le_1.5": {"p50": True, "p99": good},
                "loops_le_2pct": good,
                "memory_bounded": good,
            },
        },
        "memory": {
            "bytes_per_task_retained": 1900,
            "ledger_ttl_s": 604800,
            "bytes_per_task_after_ttl": 450,
            "events_max_len": 100000,
        },
    }


def fleet(good: bool) -> dict[str, Any]:
    """The parts of bench_fleet's report the table reads (fleet_report.goals included)."""
    return {
        "memory": {
            "delta_main_mb": 9.0 if good else 20.0,
            "delta_total_mb": 12.0,
            "runs": [{"agent": {"pss_total_mb": 124.0}, "plain": {"pss_total_mb": 100.0}}],
        },
        "fleet": {
            "requested": 100,
            "registered": 100,
            "registered_s": 41.0,
            "tasks": 3000,
            "share_1_0": 0.66 if good else 0.5,
            "share_0_5": 0.34 if good else 0.5,
            "rel_error_1_0": 0.01 if good else 0.25,
            "rel_error_0_5": 0.02 if good else 0.5,
            "idle_agents": [],
        },
    }


def reports(good: bool) -> dict[str, Any]:
    return {"routing": routing(good), "scale": scale(good), "fleet": fleet(good)}


def rendered(rows: list[Any]) -> str:
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(goal_table("t", rows))
    return console.export_text()


def test_the_ten_figures_in_the_issues_order():
    rows = bench_all.table_rows(reports(True))
    assert [r[0] for r in rows] == [f[0] for f in bench_all.FIGURES]
    assert len(rows) == 10
    assert rows[0][0].startswith("by-name routed throughput")
    assert rows[9][0].startswith("state store memory per accepted-and-finished task")


def test_every_goal_met():
    rows = bench_all.table_rows(reports(True))
    assert [r[3] for r in rows] == [True] * 10
    assert rows[0][1] == "0.90 (0.85-0.95)"  # the median of the ratios, with its spread
    assert rows[0][2] == ">= 0.7"
    assert "not met" not in "\n".join(bench_all.goal_markdown(rows))


def test_every_goal_not_met_but_the_p50_ratio():
    rows = bench_all.table_rows(reports(False))
    assert [r[3] for r in rows] == [False] * 10  # figure 3 needs both p50 and p99
    text = rendered(rows)
    assert text.count(" no ") >= 10 and " yes " not in text


def test_each_goal_not_met_says_why_in_the_runs_own_numbers():
    why = bench_all.reasons(reports(False))
    figures = [f[0] for f in bench_all.FIGURES]
    # Every figure not met has a reason, except the two with no shortfall to explain
    # (registration and 100 agents) and memory per task (stated, not a speed goal).
    assert set(why) == {figures[i] for i in (0, 1, 2, 4, 5, 7, 8)}
    assert "plain+events / plain 0.78" in why[figures[0]]  # 470 / 600
    assert "client-routed 5.4 ms" in why[figures[1]]
    assert "3.00 x on its own" in why[figures[2]]  # 6.0 / 2.0
    assert "p50 0.48 ms at 1000 against 0.12 ms at 10" in why[figures[5]]
    assert "+24.0 MB" in why[figures[7]]
    assert why[figures[8]].startswith("the largest at 1000 agents: exporter scrape 0.55 %")
    assert bench_all.reasons(reports(True)) == {}


def test_a_stage_not_run_shows_not_measured():
    rows = bench_all.table_rows({"scale": scale(True)})
    by_stage = {f[0]: f[2] for f in bench_all.FIGURES}
    for figure, measured, goal, met in rows:
        if by_stage[figure] == "scale":
            assert met is True and measured != bench_all.NOT_MEASURED
        else:
            assert (measured, met) == (bench_all.NOT_MEASURED, None)
            assert goal  # the goal is still shown
    assert rendered(rows).count(bench_all.NOT_MEASURED) == 6


def test_the_json_report_round_trips(monkeypatch):
    monkeypatch.setattr(bench_all, "source_version", lambda: "abc1234")
    report = bench_all.build_report(reports(True), False, 600.0, ["--only", "x"], [0.1, 0, 0])
    loaded = json.loads(json.dumps(report))
    assert bench_all.table_rows(loaded["reports"]) == bench_all.table_rows(reports(True))
    assert [tuple(f.values())[:4] for f in loaded["figures"]] == bench_all.table_rows(reports(True))
    assert all(f["reason"] is None for f in loaded["figures"])  # every goal met
    assert loaded["config"]["command"] == "bench/bench_all.py --only x"
    assert "full run" in bench_all.title(loaded)


def test_a_quick_run_writes_results_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_all, "source_version", lambda: "abc1234")
    report = bench_all.build_report({"routing": routing(True)}, True, 60.0, ["--quick"], [0, 0, 0])
    quiet = Console(file=io.StringIO())
    args = Namespace(quick=True, json_file=None, results=None)
    bench_all.write_outputs(report, args, quiet)
    assert not list(tmp_path.iterdir())
    results = tmp_path / "RESULTS.md"
    json_file = tmp_path / "r.json"
    bench_all.write_outputs(
        report, Namespace(quick=True, json_file=json_file, results=results), quiet
    )
    text = results.read_text()
    assert bench_all.START in text and bench_all.END in text
    assert "a quick run" in text and "`bench/bench_all.py --quick`" in text
    assert text.count(bench_all.NOT_MEASURED) == 6
    assert json.loads(json_file.read_text())["config"]["quick"] is True


def test_only_names_known_stages():
    assert bench_all.parse_args(["--only", "fleet,routing"]).only == ["routing", "fleet"]
    with pytest.raises(SystemExit):
        bench_all.parse_args(["--only", "routing,bogus"])


def test_orchestrator_bench_help():
    done = subprocess.run(
        [*CLI, "bench", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    for word in ("--quick", "--only", "--json", "--json-file", "10 minutes", "redis-server"):
        assert word in done.stdout


def test_orchestrator_bench_without_the_checkout(tmp_path):
    """A copy of the package with no bench/ beside it, as a non-source install has."""
    shutil.copytree(
        REPO / "orchestrator",
        tmp_path / "orchestrator",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [*CLI, "bench", "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert str(tmp_path / "bench" / "bench_all.py") in done.stderr
    assert "source checkout" in done.stderr
