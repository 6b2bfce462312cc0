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

from bench import bench_all, bench_routing
from bench.common import goal_table, redis_per_task
from bench.routing_report import VARIANTS, goals, render, summarise

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "orchestrator.cli"]


#: Per variant: throughput in repeats 1 and 2 (tasks/s), idle p50 (ms), Redis CPU ms per task,
#: Redis reads per task, for the good run; BAD overrides the routed variants for the other one.
GOOD = {
    "plain": ((600, 600), 2.0, 0.30, 5.0),
    "plain+events": ((500, 500), 2.5, 0.40, 6.0),
    "2-hop+events": ((250, 250), 6.0, 0.70, 11.0),
    "orchestrated": ((450, 400), 4.0, 0.50, 9.0),
    "by-name": ((350, 350), 3.5, 0.56, 12.0),
}
BAD = {
    "orchestrated": ((300, 300), 4.0, 0.90, 9.0),
    "by-name": ((200, 200), 7.0, 1.00, 12.0),
}
COMMANDS = {
    "plain": {"rpush": {"calls": 2.0, "us": 4.0}, "brpop": {"calls": 1.0, "us": 3.0}},
    "orchestrated": {
        "evalsha": {"calls": 4.0, "us": 120.0},
        "hset": {"calls": 6.0, "us": 12.0},
        "publish": {"calls": 3.0, "us": 9.0},
        "rpush": {"calls": 2.0, "us": 4.0},
    },
}


def routing_runs(good: bool) -> list[dict[str, Any]]:
    """bench_routing's raw runs (two repeats), the shape run_all hands to summarise."""
    runs = []
    for variant in VARIANTS:
        throughputs, p50, redis_ms, reads = (GOOD | ({} if good else BAD))[variant]
        routed = variant in ("orchestrated", "by-name")
        for repeat, throughput in enumerate(throughputs, 1):
            cpu = {"producer": 1.0, f"{variant} main": 1.0, "redis-server": redis_ms}
            run: dict[str, Any] = {
                "repeat": repeat,
                "variant": variant,
                "throughput": throughput,
                "wall_s": 100 / throughput,
                "send_s": 0.05,
                "round_trip_ms": {"p50": p50, "p95": p50 * 2, "p99": (9.0 if good else 40.0)},
                "cpu_ms_per_task": {**cpu, "total": sum(cpu.values()) + (2.4 if routed else 0)},
                "redis_per_task": {
                    "reads": reads,
                    "commands": COMMANDS["orchestrated" if routed else "plain"],
                },
            }
            if routed:
                for field in ("idle_delegation", "burst_delegation"):
                    run[field] = [0.003, 0.004]
                for field in ("idle_send_to_start", "burst_send_to_start"):
                    run[field] = [0.004, 0.006]
            runs.append(run)
    return runs


def routing(good: bool) -> dict[str, Any]:
    """bench_routing's summarised report, made by its own summarise from synthetic runs."""
    register = {"p50": 0.3, "p95": 0.4, "p99": 0.5 if good else 9.0, "n": 100}
    return summarise(
        {
            "config": {
                **dict(tasks=100, repeats=2, probe=20, concurrency=2, cpus=2),
                **dict(celery="5", redis_server="7", loadavg_start=[0.1], loadavg_end=[0.2]),
            },
            "runs": routing_runs(good),
            "in_process": {
                "register_agent_ms": register,
                "choose_ms": register,
                "load_fleet_and_choose_ms": register,
            },
        }
    )


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
            "decision_ms": {
                n: {"p50": s(x), "p99": s(2 * x)} for n, x in (("10", 0.12), ("1000", 0.48))
            },
            "decision_fresh_ms": {"1000": {"p50": s(46.3)}},
            "ping_p99_ms": {"1000": s(0.14)},
            "loops": {"exporter scrape": {"share_pct": 0.55}, "sleep-wake": {"share_pct": 0.5}},
            "goals": {
                "decision_over_ping_le_3": {"10": True, "1000": good},
                "large_over_small": {"p50": True, "p99": good},
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
            "plain": {"main_mb": 60.0, "children_mb": [50.0, 50.0], "pss_total_mb": 100.0},
            "agent": {
                "main_mb": 69.0 if good else 74.0,
                "children_mb": [51.0, 52.0] if good else [63.0, 63.0],
                "pss_total_mb": 124.0,
            },
            "delta_main_mb": 9.0 if good else 14.0,
            "delta_total_mb": 12.0 if good else 40.0,
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


def test_the_ten_figures_in_their_order():
    rows = bench_all.table_rows(reports(True))
    assert [r[0] for r in rows] == [f.name for f in bench_all.FIGURES]
    assert len(rows) == len({f.key for f in bench_all.FIGURES}) == 10
    assert rows[0][0].startswith("client-routed throughput / plain Celery with task events")
    assert rows[3][0].startswith("Redis CPU per routed task")
    assert rows[5][0] == "routing decision at 1,000 eligible agents / at 10"
    assert rows[9][0].startswith("state store memory per accepted-and-finished task")


def test_every_goal_met():
    rows = bench_all.table_rows(reports(True))
    assert [r[3] for r in rows] == [True] * 10
    # The median of the per-repeat ratios to plain+events (450/500, 400/500), with its spread.
    assert rows[0][1:3] == ("0.85 (0.80-0.90)", ">= 0.8")
    assert rows[1][1:3] == ("0.70 (0.70-0.70)", ">= 0.65")
    assert rows[2][1:3] == ("p50 ratio 1.40; p99 9.00 ms", "<= 1.5; p99 <= 15 ms")
    assert rows[3][1] == (
        "client-routed 1.25 (1.25-1.25), by-name 1.40 (1.40-1.40); "
        "one core: 2000 / 1786 tasks/s (plain+events 2500)"
    )
    assert rows[3][2].startswith("<= 1.5")
    assert rows[5][2] == "<= 1.3"
    assert rows[7][1:3] == ("+12.0 MB (main process +9.0 MB)", "<= 15 MB")
    assert "not met" not in "\n".join(bench_all.goal_markdown(rows))


def test_every_goal_not_met():
    rows = bench_all.table_rows(reports(False))
    assert [r[3] for r in rows] == [False] * 10
    text = rendered(rows)
    assert text.count(" no ") >= 10 and " yes " not in text


@pytest.mark.parametrize(
    ("ratio", "p50", "p99", "met"),
    [
        (1.5, 1.5, 15.0, True),  # every bound is inclusive
        (1.51, 1.0, 5.0, False),
        (1.0, 1.51, 5.0, False),
        (1.0, 1.0, 15.01, False),
    ],
)
def test_the_routing_goals_bounds(ratio, p50, p99, met):
    report = routing(True)
    report["redis"]["ratio_to_baseline"]["by-name"]["median"] = ratio
    report["by_name_round_trip"] |= {"p50_ratio": p50, "p99_ms": p99}
    met_goals = goals(report)
    assert all(met_goals[k] for k in ("redis_cpu_ratio", "by_name_p50_ratio", "by_name_p99")) is met


def test_the_routing_summary_compares_with_plain_events_and_plain():
    r = routing(True)
    assert r["ratios"]["orchestrated/plain+events"] == {
        "median": 0.85,
        "min": 0.8,
        "max": 0.9,
        "isolates": "the goal",
    }
    assert r["ratios"]["orchestrated/plain"]["median"] == 0.708  # 0.75 and 0.667
    assert r["ratios"]["2-hop+events/plain+events"]["median"] == 0.5
    assert r["by_name_round_trip"] == {"p50_ratio": 1.4, "p50_ratio_to_plain": 1.75, "p99_ms": 9.0}
    redis = r["redis"]
    assert redis["cpu_ms_per_task"]["plain+events"] == {"median": 0.4, "min": 0.4, "max": 0.4}
    assert redis["tasks_per_core"] == {
        "plain": 3333,
        "plain+events": 2500,
        "2-hop+events": 1429,
        "orchestrated": 2000,
        "by-name": 1786,
    }
    assert set(redis["ratio_to_baseline"]) == {"orchestrated", "by-name"}
    assert redis["reads_per_task"]["by-name"] == 12.0
    assert next(iter(redis["commands_per_task"]["orchestrated"])) == "evalsha"  # the most time
    assert r["goals"] == {
        **dict.fromkeys(("client_ratio", "redis_cpu_ratio", "register_p99"), True),
        **dict.fromkeys(("by_name_ratio", "by_name_p50_ratio", "by_name_p99"), True),
    }


def test_the_line_against_plain_without_events():
    line = bench_all.against_plain(reports(True))
    assert line is not None
    assert "client-routed throughput 0.71 (0.67-0.75)" in line
    assert "by-name 0.58 (0.58-0.58)" in line and "by-name idle p50 1.75" in line
    assert "plain+events / plain 0.83 (0.83-0.83)" in line
    assert bench_all.against_plain({"scale": scale(True)}) is None


def test_each_goal_not_met_says_why_in_the_runs_own_numbers():
    why = bench_all.reasons(reports(False))
    name = {f.key: f.name for f in bench_all.FIGURES}
    # Every figure not met has a reason, except the two with no shortfall to explain
    # (registration and 100 agents) and memory per task (stated, not a speed goal).
    assert set(why) == {name[k] for k in name if k not in ("registration", "fleet", "memory")}
    assert (
        "client-routed 5.3 ms (producer 1.00, orchestrated main 1.00, redis-server 0.90)"
        in why[name["client_ratio"]]
    )
    assert "CPU per task on 2 cores: plain+events 2.4 ms" in why[name["client_ratio"]]
    assert "2-hop+events / plain+events 0.50" in why[name["by_name_ratio"]]  # 250 / 500
    assert "2.40 x on its own" in why[name["by_name_latency"]]  # 6.0 / 2.5
    assert "by name 7.00 ms, p99 40.00 ms" in why[name["by_name_latency"]]
    redis = why[name["redis_cpu"]]
    assert "plain+events 0.400 ms, 6.0 reads, 3.0 commands (rpush 2.0 x 4 us" in redis
    assert "orchestrated 0.900 ms, 9.0 reads, 15.0 commands (evalsha 4.0 x 120 us" in redis
    assert "by-name 1.000 ms, 12.0 reads" in redis
    assert "p50 0.48 ms at 1000 against 0.12 ms at 10" in why[name["decision_growth"]]
    assert "p99 0.96 against 0.24 ms" in why[name["decision_growth"]]
    rss = why[name["rss"]]
    assert "main process +14.0 MB and its 2 pool children +26.0 MB" in rss
    assert "+40.0 MB, 2.9 x the main process's" in rss and "+24.0 MB" in rss
    assert why[name["loops"]].startswith("the largest at 1000 agents: exporter scrape 0.55 %")
    assert bench_all.reasons(reports(True)) == {}


def test_a_stage_not_run_shows_not_measured():
    rows = bench_all.table_rows({"scale": scale(True)})
    for fig, (_, measured, goal, met) in zip(bench_all.FIGURES, rows, strict=True):
        if fig.stage == "scale":
            assert met is True and measured != bench_all.NOT_MEASURED
        else:
            assert (measured, met) == (bench_all.NOT_MEASURED, None)
            assert goal  # the goal is still shown
    assert rendered(rows).count(bench_all.NOT_MEASURED) == 7


def test_the_routing_benchmarks_own_tables_show_the_new_goals():
    console = Console(record=True, width=250, file=io.StringIO())
    report = routing(False)
    render(report, console)
    text = console.export_text()
    assert "ratio orchestrated/plain+events" in text and ">= 0.8 no" in text
    assert "ratio by-name/plain+events" in text and ">= 0.65 no" in text
    assert "by-name idle round trip p50 / plain+events p50" in text and "<= 1.5 no" in text
    assert "Redis CPU per task (ms), orchestrated" in text
    assert "one core: 1111 tasks/s; / plain+events's 2.25 (2.25-2.25) <= 1.5 no" in text
    assert "evalsha 4.0 x 120 us" in text  # the Redis table


def test_plain_events_is_a_required_variant():
    assert bench_routing.parse_args([]).variants == list(VARIANTS)
    with pytest.raises(SystemExit):
        bench_routing.parse_args(["--variants", "plain,orchestrated"])


def test_redis_per_task_from_its_counters():
    before = {"cpu_s": 1.0, "reads": 100, "commands": {"get": (10, 50), "evalsha": (4, 400)}}
    after = {
        "cpu_s": 1.5,
        "reads": 300,
        "commands": {"get": (10, 50), "evalsha": (404, 40400), "publish": (200, 800)},
    }
    assert redis_per_task(before, after, 100) == {
        "reads": 2.0,
        "commands": {"evalsha": {"calls": 4.0, "us": 400.0}, "publish": {"calls": 2.0, "us": 8.0}},
    }


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
    assert text.count(bench_all.NOT_MEASURED) == 5
    assert "Against plain Celery without task events" in text
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
