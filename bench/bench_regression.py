"""Regression detection on synthetic run-time series: detection delay and false alarms.

    .venv/bin/python bench/bench_regression.py [--seeds 50] [--hours 20] [--change-at 7]
                                               [--compare] [--json]
    make bench-anomaly

For every case of bench/regression_sim.py (a +20 % and a +50 % step in one task type's run
time, slow drifts, a faster run, a noisy but unchanged series, a daily cycle) and every seed,
synthesises `--hours` of per-minute run-time histograms with the change at `--change-at`
hours, and feeds them minute by minute through the loop's decision
(regression.judge_regression, on the medians regression.minute_median reads, as
anomaly_loop.find_regressions does). Per case: how many seeds saw regression.detected after
the change, the median and p90 (nearest rank) minutes from the change to that event, the
false alarms per day (events before the change; the whole run when nothing got slower) and
the repeat events (further events after the first one that followed the change) and the
median minutes that first episode stayed flagged (in the REGRESSIONS hash, regressions_active).
The default 20 hours leave the slowest drift (12 h from hour 7) room to play out.

`--compare` also runs the rule the loop had before (detect_regression's 20 % / p < 0.01 at
every minute, no hysteresis). Prints a markdown table per rule (the anomalies page's), or one JSON
object with --json; progress goes to stderr. Two processes (the machine has two cores).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.regression_sim import (  # noqa: E402
    CASES,
    DECISIONS,
    Run,
    Summary,
    simulate,
    summarise,
)


def _one(job: tuple[int, int, int, int, str]) -> tuple[int, Run]:
    case_index, seed, minutes, change_at, decision = job
    case = CASES[case_index]
    return case_index, simulate(case, seed, minutes, change_at, DECISIONS[decision])


def measure(
    seeds: int, minutes: int, change_at: int, decision: str, processes: int = 2
) -> list[Summary]:
    jobs = [(i, s, minutes, change_at, decision) for i in range(len(CASES)) for s in range(seeds)]
    runs: dict[int, list[Run]] = {i: [] for i in range(len(CASES))}
    done = 0
    with multiprocessing.Pool(processes) as pool:
        for case_index, run in pool.imap_unordered(_one, jobs, chunksize=4):
            runs[case_index].append(run)
            done += 1
            if done % seeds == 0 or done == len(jobs):
                print(f"  {decision}: {done}/{len(jobs)} series", file=sys.stderr, flush=True)
    return [summarise(CASES[i], runs[i], minutes, change_at) for i in range(len(CASES))]


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} min"


def markdown(summaries: list[Summary]) -> str:
    lines = [
        "| case | detected | median delay | p90 delay | false alarms/day | repeat events "
        "| flagged for |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        detected = f"{s.detected}/{s.seeds}" if s.slower else "- (must not alarm)"
        repeats = str(s.repeat_events) if s.slower else "-"
        false = f"{s.false_alarms_per_day:.2f} ({s.false_alarm_days:.0f} d)"
        lines.append(
            f"| {s.case} | {detected} | {_minutes(s.median_delay)} | "
            f"{_minutes(s.p90_delay)} | {false} | {repeats} | {_minutes(s.median_flagged)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=50, help="series per case (50)")
    parser.add_argument("--hours", type=float, default=20.0, help="length of a series (20)")
    parser.add_argument("--change-at", type=float, default=7.0, help="hour of the change (7)")
    parser.add_argument("--compare", action="store_true", help="also run the previous rule")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    minutes, change_at = round(args.hours * 60), round(args.change_at * 60)
    if not 0 < change_at < minutes or args.seeds < 1:
        parser.error("need --seeds >= 1 and 0 < --change-at < --hours")
    decisions = ["current", "previous"] if args.compare else ["current"]
    command = "bench/bench_regression.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    results: dict[str, list[Summary]] = {}
    for decision in decisions:
        print(f"{decision} rule, {len(CASES)} cases x {args.seeds} seeds", file=sys.stderr)
        results[decision] = measure(args.seeds, minutes, change_at, decision)
    elapsed = time.perf_counter() - started
    if args.json:
        out: dict[str, Any] = {
            "command": command.strip(),
            "seeds": args.seeds,
            "minutes": minutes,
            "change_at_minute": change_at,
            "cases": [asdict(c) for c in CASES],
            "results": {d: [asdict(s) for s in r] for d, r in results.items()},
            "elapsed_s": round(elapsed, 1),
        }
        print(json.dumps(out, indent=2))
        return 0
    for decision, summaries in results.items():
        title = "regression.judge_regression" if decision == "current" else "previous rule"
        print(
            f"\n{title}: {args.seeds} seeds, {args.hours:g} h each, change at "
            f"{args.change_at:g} h\n"
        )
        print(markdown(summaries))
    print(f"\n{command.strip()}  ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
