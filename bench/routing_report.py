"""The routing benchmark's report: its variants, and the summary and tables made of its runs."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import spread, summary_ms

PLAIN, PLAIN_EV, HOP2, ORCH = "plain", "plain+events", "2-hop+events", "orchestrated"
BYNAME = "by-name"
VARIANTS = (PLAIN, PLAIN_EV, HOP2, ORCH, BYNAME)
#: The goals' baseline: plain Celery with task events on, as a Flower user runs it.
BASELINE = PLAIN_EV
REQUIRED = (PLAIN, BASELINE, ORCH)  # every run has them: the goals and the CPU ratio need them
ROUTED = (ORCH, BYNAME)  # the variants through the orchestrator (ledger figures)
GOAL_RATIO = 0.8  # client-routed throughput / plain+events
GOAL_BYNAME_RATIO = 0.65  # by-name throughput / plain+events
GOAL_BYNAME_P50_RATIO = 1.5  # by-name idle round trip p50 / plain+events p50
GOAL_BYNAME_P99_MS = 15.0  # by-name idle round trip p99
GOAL_REDIS_CPU_RATIO = 1.5  # Redis CPU per routed task / plain+events'
GOAL_REGISTRATION_P99_MS = 5.0
LABELS = {
    PLAIN: "plain, 1 worker",
    PLAIN_EV: "plain + task events, 1 worker",
    HOP2: "2-hop relay + events, 2 workers",
    ORCH: "orchestrated (client-routed), 2 workers",
    BYNAME: "by name (orchestrator.submit), 2 workers",
}
#: (numerator, denominator, what the ratio isolates)
RATIOS = (
    (ORCH, BASELINE, "the goal"),
    (BYNAME, BASELINE, "the goal"),
    (ORCH, PLAIN, "against plain Celery without task events"),
    (BYNAME, PLAIN, "against plain Celery without task events"),
    (BYNAME, ORCH, "routing in a control worker instead of the client"),
    (ORCH, HOP2, "the orchestrator's own work"),
    (HOP2, BASELINE, "the extra hop alone"),
    (HOP2, PLAIN, "the extra hop and task events"),
    (PLAIN_EV, PLAIN, "task events alone"),
)


def redis_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Redis's side of each variant: CPU ms per task (median and spread of the runs), the
    tasks/s one Redis core carries at that cost, each routed variant's per-repeat ratio to the
    baseline's, and reads and commands per task (medians of the runs)."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    group = {v: [r for r in runs if r["variant"] == v] for v in variants}
    cpu = {(r["repeat"], r["variant"]): r["cpu_ms_per_task"]["redis-server"] for r in runs}
    repeats = sorted({r["repeat"] for r in runs})
    cpu_ms = {v: spread([r["cpu_ms_per_task"]["redis-server"] for r in group[v]], 3) for v in group}

    def commands(v: str) -> dict[str, dict[str, float]]:
        names = dict.fromkeys(c for r in group[v] for c in r["redis_per_task"]["commands"])
        out = {
            c: {
                field: round(
                    statistics.median(
                        r["redis_per_task"]["commands"].get(c, {}).get(field, 0.0) for r in group[v]
                    ),
                    3,
                )
                for field in ("calls", "us")
            }
            for c in names
        }
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"]))

    return {
        "cpu_ms_per_task": cpu_ms,
        "tasks_per_core": {
            v: round(1000 / s["median"]) if s["median"] > 0 else None for v, s in cpu_ms.items()
        },
        "ratio_to_baseline": {
            v: spread([cpu[(p, v)] / cpu[(p, BASELINE)] for p in repeats], 2)
            for v in ROUTED
            if v in group and BASELINE in group
        },
        "reads_per_task": {
            v: round(statistics.median(r["redis_per_task"]["reads"] for r in group[v]), 2)
            for v in group
        },
        "commands_per_task": {v: commands(v) for v in group},
    }


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    runs = report.pop("runs")
    in_process = report.pop("in_process")
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    group = {v: [r for r in runs if r["variant"] == v] for v in variants}
    by_repeat = {(r["repeat"], r["variant"]): r["throughput"] for r in runs}
    repeats = sorted({r["repeat"] for r in runs})

    def ratio(num: str, den: str) -> dict[str, float]:
        """Median (and spread) of the per-repeat ratios: drift between repeats cancels."""
        return spread([by_repeat[(p, num)] / by_repeat[(p, den)] for p in repeats], 3)

    ratios = {
        f"{num}/{den}": {**ratio(num, den), "isolates": why}
        for num, den, why in RATIOS
        if num in group and den in group
    }
    cpu_by_repeat = {(r["repeat"], r["variant"]): r["cpu_ms_per_task"]["total"] for r in runs}
    ratios["cpu: plain/orchestrated"] = {
        **spread([cpu_by_repeat[(p, PLAIN)] / cpu_by_repeat[(p, ORCH)] for p in repeats], 3),
        "isolates": "CPU per task; steadier than throughput",
    }
    report["throughput_per_s"] = {v: spread([r["throughput"] for r in group[v]]) for v in variants}
    report["ratios"] = ratios
    report["round_trip_idle_p50_ms"] = {
        v: spread([r["round_trip_ms"]["p50"] for r in group[v]], 2) for v in variants
    }

    def pooled(field: str, variant: str = ORCH) -> list[float]:
        return [x for r in group[variant] for x in r[field]]

    report["orchestrated_latency_ms"] = {
        "delegation_idle": summary_ms(pooled("idle_delegation"), (50, 95)),
        "send_to_start_idle": summary_ms(pooled("idle_send_to_start"), (50, 95)),
        "delegation_under_load": summary_ms(pooled("burst_delegation"), (50, 95)),
        "send_to_start_under_load": summary_ms(pooled("burst_send_to_start"), (50, 95)),
    }
    report["cpu_ms_per_task"] = {
        v: {
            role: round(statistics.median(r["cpu_ms_per_task"][role] for r in group[v]), 3)
            for role in group[v][0]["cpu_ms_per_task"]
        }
        for v in variants
    }
    if BYNAME in group:
        report["by_name_latency_ms"] = {
            "delegation_idle": summary_ms(pooled("idle_delegation", BYNAME), (50, 95, 99)),
            "delegation_under_load": summary_ms(pooled("burst_delegation", BYNAME), (50, 95)),
        }
        p50 = {v: report["round_trip_idle_p50_ms"][v]["median"] for v in (PLAIN, BASELINE, BYNAME)}
        report["by_name_round_trip"] = {
            "p50_ratio": round(p50[BYNAME] / p50[BASELINE], 2),
            "p50_ratio_to_plain": round(p50[BYNAME] / p50[PLAIN], 2),
            "p99_ms": round(statistics.median(r["round_trip_ms"]["p99"] for r in group[BYNAME]), 2),
        }
    report["redis"] = redis_summary(runs)
    report["in_process_ms"] = in_process
    report["goals"] = goals(report)
    report["runs"] = [
        {
            "repeat": r["repeat"],
            "variant": r["variant"],
            "throughput_per_s": round(r["throughput"], 1),
            "wall_s": round(r["wall_s"], 3),
            "send_s": round(r["send_s"], 3),
            "round_trip_idle_ms": r["round_trip_ms"],
            "cpu_ms_per_task": r["cpu_ms_per_task"],
            "redis_per_task": r["redis_per_task"],
            **(
                {
                    "delegation_idle_ms": summary_ms(r["idle_delegation"], (50, 95)),
                    "delegation_under_load_ms": summary_ms(r["burst_delegation"], (50, 95)),
                }
                if r["variant"] in ROUTED
                else {}
            ),
        }
        for r in runs
    ]
    return report


def goals(report: dict[str, Any]) -> dict[str, bool]:
    """Each goal met or not, from the summarised figures, so this table and bench_all's agree.
    The by-name goals only when the by-name variant ran."""
    ratios, redis = report["ratios"], report["redis"]
    out = {
        "client_ratio": ratios[f"{ORCH}/{BASELINE}"]["median"] >= GOAL_RATIO,
        "redis_cpu_ratio": all(
            r["median"] <= GOAL_REDIS_CPU_RATIO for r in redis["ratio_to_baseline"].values()
        ),
        "register_p99": report["in_process_ms"]["register_agent_ms"]["p99"]
        <= GOAL_REGISTRATION_P99_MS,
    }
    if "by_name_round_trip" in report:
        trip = report["by_name_round_trip"]
        out |= {
            "by_name_ratio": ratios[f"{BYNAME}/{BASELINE}"]["median"] >= GOAL_BYNAME_RATIO,
            "by_name_p50_ratio": trip["p50_ratio"] <= GOAL_BYNAME_P50_RATIO,
            "by_name_p99": trip["p99_ms"] <= GOAL_BYNAME_P99_MS,
        }
    return out


def render(report: dict[str, Any], console: Console) -> None:
    cfg = report["config"]
    tp = report["throughput_per_s"]
    lat = report["orchestrated_latency_ms"]
    ip = report["in_process_ms"]
    variants = list(tp)

    def mark(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]no[/red]"

    def span(s: dict[str, float], fmt: str) -> str:
        return f"{s['min']:{fmt}}-{s['max']:{fmt}}"

    table = Table(
        title=(
            f"routing benchmark: {cfg['tasks']} tasks x {cfg['repeats']} repeats, "
            f"{cfg['cpus']} CPUs, celery {cfg['celery']}, redis {cfg['redis_server']}, "
            f"-c {cfg['concurrency']} per worker"
        )
    )
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("spread (min-max)", justify="right")
    table.add_column("goal or what it isolates", justify="right")
    for v in variants:
        table.add_row(
            f"throughput, {LABELS[v]} (tasks/s)",
            f"{tp[v]['median']:.0f}",
            span(tp[v], ".0f"),
            "",
        )
    goals = report["goals"]
    for name, r in report["ratios"].items():
        goal = r["isolates"]
        if name == f"{ORCH}/{BASELINE}":
            goal = f">= {GOAL_RATIO:g} {mark(goals['client_ratio'])}"
        elif name == f"{BYNAME}/{BASELINE}":
            goal = f">= {GOAL_BYNAME_RATIO:g} {mark(goals['by_name_ratio'])}"
        label = f"CPU per task, {name[5:]}" if name.startswith("cpu: ") else f"ratio {name}"
        table.add_row(label, f"{r['median']:.2f}", span(r, ".2f"), goal)
    table.add_section()
    for v in variants:
        s = report["round_trip_idle_p50_ms"][v]
        table.add_row(f"idle round trip p50 (ms), {v}", f"{s['median']:.2f}", span(s, ".2f"), "")
    if "by_name_round_trip" in report:
        trip = report["by_name_round_trip"]
        table.add_row(
            f"by-name idle round trip p50 / {BASELINE} p50",
            f"{trip['p50_ratio']:.2f}",
            "",
            f"<= {GOAL_BYNAME_P50_RATIO:g} {mark(goals['by_name_p50_ratio'])}",
        )
        table.add_row(
            f"by-name idle round trip p50 / {PLAIN} p50",
            f"{trip['p50_ratio_to_plain']:.2f}",
            "",
            "against plain Celery without task events",
        )
        table.add_row(
            "by-name idle round trip p99 (ms)",
            f"{trip['p99_ms']:.2f}",
            "",
            f"<= {GOAL_BYNAME_P99_MS:g} {mark(goals['by_name_p99'])}",
        )
    for key, label in (
        ("delegation_idle", "delegation, idle"),
        ("send_to_start_idle", "client send -> started_at, idle"),
        ("delegation_under_load", "delegation, during the burst"),
        ("send_to_start_under_load", "client send -> started_at, burst"),
    ):
        s = lat[key]
        table.add_row(f"{label} (ms)", f"p50 {s['p50']:.2f}", f"p95 {s['p95']:.2f}", "")
    table.add_section()
    redis = report["redis"]
    for v in variants:
        s = redis["cpu_ms_per_task"][v]
        goal = f"one core: {redis['tasks_per_core'][v] or '-'} tasks/s"
        if v in redis["ratio_to_baseline"]:
            r = redis["ratio_to_baseline"][v]
            ok = r["median"] <= GOAL_REDIS_CPU_RATIO
            goal += (
                f"; / {BASELINE}'s {r['median']:.2f} ({span(r, '.2f')}) "
                f"<= {GOAL_REDIS_CPU_RATIO:g} {mark(ok)}"
            )
        table.add_row(f"Redis CPU per task (ms), {v}", f"{s['median']:.3f}", span(s, ".3f"), goal)
    table.add_section()
    reg = ip["register_agent_ms"]
    table.add_row(
        "register_agent, 5 capabilities (ms)",
        f"p50 {reg['p50']:.3f}",
        f"p95 {reg['p95']:.3f} / p99 {reg['p99']:.3f}",
        f"p99 <= {GOAL_REGISTRATION_P99_MS:g} {mark(goals['register_p99'])}",
    )
    for key, label in (
        ("choose_ms", "Router.choose, 10 agents (ms)"),
        ("load_fleet_and_choose_ms", "load fleet + choose, 10 agents (ms)"),
    ):
        s = ip[key]
        table.add_row(label, f"p50 {s['p50']:.3f}", f"p95 {s['p95']:.3f} / p99 {s['p99']:.3f}", "")
    console.print(table)

    cpu = report["cpu_ms_per_task"]
    roles = [*dict.fromkeys(role for v in reversed(variants) for role in cpu[v] if role != "total")]
    by_role = Table(title="CPU ms per task during the timed burst, by process (median of repeats)")
    by_role.add_column("process")
    for v in variants:
        by_role.add_column(v, justify="right")
    for role in [*roles, "total"]:
        by_role.add_row(role, *(f"{cpu[v][role]:.2f}" if role in cpu[v] else "-" for v in variants))
    console.print(by_role)
    console.print(redis_table(report["redis"], variants))
    console.print(
        f"load average {cfg['loadavg_start']} at start, {cfg['loadavg_end']} at end; "
        "run-to-run noise is about 20 %: compare the ratios, not absolute figures."
    )


def top_commands(commands: dict[str, dict[str, float]], k: int = 4) -> str:
    """The k commands taking Redis the most time per task: `name calls x us`."""
    return ", ".join(
        f"{name} {v['calls']:.1f} x {v['us']:.0f} us" for name, v in list(commands.items())[:k]
    )


def redis_table(redis: dict[str, Any], variants: list[str]) -> Table:
    """Per task, what redis-server did: reads (about one per client round trip), commands (a
    Lua script's own included) and the commands taking it the most time."""
    table = Table(title="Redis per task during the timed burst (median of repeats)")
    table.add_column("variant")
    for col in ("CPU ms", "reads", "commands"):
        table.add_column(col, justify="right")
    table.add_column("the most time (calls x us)")
    for v in variants:
        commands = redis["commands_per_task"][v]
        table.add_row(
            v,
            f"{redis['cpu_ms_per_task'][v]['median']:.3f}",
            f"{redis['reads_per_task'][v]:.1f}",
            f"{sum(c['calls'] for c in commands.values()):.1f}",
            top_commands(commands),
        )
    return table
