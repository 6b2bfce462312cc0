"""What the benchmarks share: nearest-rank statistics, CPU seconds, the commit, goal tables."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which pct % of the samples lie)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float], pcts: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    out: dict[str, Any] = {f"p{p}": round(percentile(ms, p), 3) for p in pcts}
    out["n"] = len(ms)
    return out


def spread(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of one process so far, from /proc (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def redis_counters(r: Any) -> dict[str, Any]:
    """What redis-server has done so far: CPU seconds, reads from clients (about one per round
    trip: a pipeline's commands arrive in one read), and calls and microseconds per command
    (those a Lua script runs counted too; the INFO calls made here left out)."""
    pipe = r.pipeline(transaction=False)
    pipe.info("cpu")
    pipe.info("stats")
    pipe.info("commandstats")
    cpu, stats, commands = pipe.execute()
    return {
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "reads": int(stats["total_reads_processed"]),
        "commands": {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in commands.items()
            if name != "cmdstat_info"
        },
    }


def redis_per_task(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    """redis_counters' differences per task: reads, and each command's calls and microseconds
    (commands not called left out), the most time first."""
    commands: dict[str, dict[str, float]] = {}
    for name, (calls, usec) in after["commands"].items():
        calls0, usec0 = before["commands"].get(name, (0, 0))
        if calls > calls0:
            commands[name] = {
                "calls": round((calls - calls0) / n, 3),
                "us": round((usec - usec0) / n, 2),
            }
    return {
        "reads": round((after["reads"] - before["reads"]) / n, 3),
        "commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["us"])),
    }


def source_version() -> str | None:
    """The commit measured, with "+dirty" when the work tree has changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the generated section of `path` between the `start` and `end` markers (which
    `section` carries), or add it; whatever else the file holds is kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


#: One row of a goals table: figure, measured, goal, met (None: a figure with no goal).
GoalRow = tuple[str, str, str, "bool | None"]


def goal_table(title: str, rows: Sequence[GoalRow]) -> Any:
    """The rows as a rich table (figure, measured, goal, met?) for the console."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("figure", "measured", "goal", "met?"):
        table.add_column(col)
    for figure, measured, goal, met in rows:
        mark = "" if met is None else ("[green]yes[/green]" if met else "[red]no[/red]")
        table.add_row(figure, measured, goal, mark)
    return table


def goal_markdown(rows: Sequence[GoalRow]) -> list[str]:
    """The rows as the lines of a markdown table, for RESULTS.md."""
    lines = ["| figure | measured | goal | met |", "|---|---|---|---|"]
    for figure, measured, goal, met in rows:
        verdict = "" if met is None else ("met" if met else "not met")
        lines.append(f"| {figure} | {measured} | {goal} | {verdict} |")
    return lines
