"""The routing benchmark's report: its variants, and the summary and tables made of its runs."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import spread, summary_ms

GOAL_RATIO = 0.8  # client-routed throughput / plain: the goal
GOAL_BYNAME_RATIO = 0.7  # by-name throughput / plain
GOAL_BYNAME_P50_RATIO = 2.0  # by-name idle round trip p50 / plain p50
GOAL_BYNAME_P99_MS = 25.0  # by-name idle round trip p99
GOAL_REGISTRATION_P99_MS = 5.0
PLAIN, PLAIN_EV, HOP2, ORCH = "plain", "plain+events", "2-hop+events", "orchestrated"
BYNAME = "by-name"
VARIANTS = (PLAIN, PLAIN_EV, HOP2, ORCH, BYNAME)
ROUTED = (ORCH, BYNAME)  # the variants through the orchestrator (ledger figures)
LABELS = {
    PLAIN: "plain, 1 worker",
    PLAIN_EV: "plain + task events, 1 worker",
    HOP2: "2-hop relay + events, 2 workers",
    ORCH: "orchestrated (client-routed), 2 workers",
    BYNAME: "by name (orchestrator.submit), 2 workers",
}
#: (numerator, denominator, what the ratio isolates)
RATIOS = (
    (ORCH, PLAIN, "the goal"),
    (BYNAME, PLAIN, "the goal"),
    (BYNAME, ORCH, "routing in a control worker instead of the client"),
    (ORCH, HOP2, "the orchestrator's own work"),
    (HOP2, PLAIN, "the extra hop and task events"),
    (PLAIN_EV, PLAIN, "task events alone"),
)


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
        p50 = {v: report["round_trip_idle_p50_ms"][v]["median"] for v in (PLAIN, BYNAME)}
        report["by_name_round_trip"] = {
            "p50_ratio_to_plain": round(p50[BYNAME] / p50[PLAIN], 2),
            "p99_ms": round(statistics.median(r["round_trip_ms"]["p99"] for r in group[BYNAME]), 2),
        }
    report["in_process_ms"] = in_process
    report["goals"] = {
        f"client_ratio_ge_{GOAL_RATIO}": ratio(ORCH, PLAIN)["median"] >= GOAL_RATIO,
        "register_p99_le_5ms": in_process["register_agent_ms"]["p99"] <= GOAL_REGISTRATION_P99_MS,
    }
    if BYNAME in group:
        trip = report["by_name_round_trip"]
        report["goals"] |= {
            f"by_name_ratio_ge_{GOAL_BYNAME_RATIO}": ratio(BYNAME, PLAIN)["median"]
            >= GOAL_BYNAME_RATIO,
            f"by_name_p50_ratio_le_{GOAL_BYNAME_P50_RATIO}": trip["p50_ratio_to_plain"]
            <= GOAL_BYNAME_P50_RATIO,
            f"by_name_p99_le_{GOAL_BYNAME_P99_MS:g}ms": trip["p99_ms"] <= GOAL_BYNAME_P99_MS,
        }
    report["runs"] = [
        {
            "repeat": r["repeat"],
            "variant": r["variant"],
            "throughput_per_s": round(r["throughput"], 1),
            "wall_s": round(r["wall_s"], 3),
            "send_s": round(r["send_s"], 3),
            "round_trip_idle_ms": r["round_trip_ms"],
            "cpu_ms_per_task": r["cpu_ms_per_task"],
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
        if name == f"{ORCH}/{PLAIN}":
            goal = f">= {GOAL_RATIO} {mark(goals[f'client_ratio_ge_{GOAL_RATIO}'])}"
        elif name == f"{BYNAME}/{PLAIN}":
            goal = f">= {GOAL_BYNAME_RATIO} {mark(goals[f'by_name_ratio_ge_{GOAL_BYNAME_RATIO}'])}"
        label = f"CPU per task, {name[5:]}" if name.startswith("cpu: ") else f"ratio {name}"
        table.add_row(label, f"{r['median']:.2f}", span(r, ".2f"), goal)
    table.add_section()
    for v in variants:
        s = report["round_trip_idle_p50_ms"][v]
        table.add_row(f"idle round trip p50 (ms), {v}", f"{s['median']:.2f}", span(s, ".2f"), "")
    if "by_name_round_trip" in report:
        trip = report["by_name_round_trip"]
        table.add_row(
            "by-name idle round trip p50 / plain p50",
            f"{trip['p50_ratio_to_plain']:.2f}",
            "",
            f"<= {GOAL_BYNAME_P50_RATIO:g} "
            f"{mark(goals[f'by_name_p50_ratio_le_{GOAL_BYNAME_P50_RATIO}'])}",
        )
        table.add_row(
            "by-name idle round trip p99 (ms)",
            f"{trip['p99_ms']:.2f}",
            "",
            f"<= {GOAL_BYNAME_P99_MS:g} {mark(goals[f'by_name_p99_le_{GOAL_BYNAME_P99_MS:g}ms'])}",
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
    reg = ip["register_agent_ms"]
    table.add_row(
        "register_agent, 5 capabilities (ms)",
        f"p50 {reg['p50']:.3f}",
        f"p95 {reg['p95']:.3f} / p99 {reg['p99']:.3f}",
        f"p99 <= {GOAL_REGISTRATION_P99_MS:g} {mark(report['goals']['register_p99_le_5ms'])}",
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
    console.print(
        f"load average {cfg['loadavg_start']} at start, {cfg['loadavg_end']} at end; "
        "run-to-run noise is about 20 %: compare the ratios, not absolute figures."
    )
