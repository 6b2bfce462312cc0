"""Synthetic run-time series for one task type, fed through the loop's regression decision.

Pure: a seed in, the minutes where regression.detected fired out.

Each minute has a random number of runs, each run's time is lognormal around the case's level
(100 ms times a factor), the runs go into the telemetry histogram a worker writes
(stats.bucket_index), and from there the minute's median is read exactly as the loop reads it
(regression.minute_median). The window is the loop's six hours; after each minute the decision
sees the window and whether the type is already flagged, as anomaly_loop.find_regressions does.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any, Literal

from orchestrator.monitoring.anomaly_eval import Score
from orchestrator.monitoring.regression import (
    Regression,
    RegressionParams,
    detect_regression,
    judge_regression,
    minute_median,
    split_window,
)
from orchestrator.monitoring.regression_cv import params_of, score_run
from orchestrator.monitoring.stats import Histogram, bucket_index
from orchestrator.store.telemetry import MINUTE_WINDOW_MAX_S

WINDOW_MINUTES = MINUTE_WINDOW_MAX_S // 60
BASE_MS = 100.0

Decision = Callable[[Sequence[float | None], bool], Regression | None]


def previous_rule(medians: Sequence[float | None], regressed: bool) -> Regression | None:
    """The loop's rule before regression.py: detect_regression's defaults (20 %, p < 0.01)
    at every minute, no hysteresis. Kept to measure what the change bought."""
    return detect_regression(*split_window(medians))


DECISIONS: dict[str, Decision] = {"current": judge_regression, "previous": previous_rule}


@dataclass(frozen=True)
class Case:
    """One synthetic series. `shape` says how the level moves from `change_at` on:
    step (to 1 + amount at once), drift (linearly to 1 + amount over `ramp_minutes`), cycle
    (a daily sine of amplitude `amount`, no change) or flat. `slower` cases should be found;
    in the others every regression.detected is a false alarm."""

    name: str
    shape: Literal["step", "drift", "cycle", "flat"]
    amount: float = 0.0
    ramp_minutes: int = 0
    runs: tuple[int, int] = (5, 20)  # runs per minute, uniform inclusive
    cv: float = 0.3  # coefficient of variation of one run's time
    outliers: float = 0.0  # share of minutes whose runs are all 2-5x slower (a stall)

    @property
    def slower(self) -> bool:
        return self.shape in ("step", "drift") and self.amount > 0

    @property
    def family(self) -> str:
        """What the leave-one-family-out evaluation holds out together: the noisy cases
        (one noise process, with and without a step), a faster run, then the shape."""
        if self.cv >= 0.5:
            return "noisy"
        if self.shape in ("step", "drift") and self.amount < 0:
            return "faster"
        return self.shape

    def level(self, minute: int, change_at: int) -> float:
        since = minute - change_at
        if self.shape == "cycle":
            return 1.0 + self.amount * math.sin(2 * math.pi * minute / 1440)
        if self.shape == "flat" or since < 0:
            return 1.0
        if self.shape == "step":
            return 1.0 + self.amount
        return 1.0 + self.amount * min(since / self.ramp_minutes, 1.0)


def noisy(name: str, shape: Literal["step", "flat"], amount: float = 0.0) -> Case:
    """Few runs a minute (3-10), a wide spread (CV 0.5) and 2 % of minutes stalled."""
    return Case(name, shape, amount, runs=(3, 10), cv=0.5, outliers=0.02)


CASES: tuple[Case, ...] = (
    Case("step +20 %", "step", 0.2),
    Case("step +50 %", "step", 0.5),
    Case("drift +50 % over 3 h", "drift", 0.5, ramp_minutes=180),
    Case("drift +50 % over 12 h", "drift", 0.5, ramp_minutes=720),
    Case("step -30 % (faster)", "step", -0.3),
    noisy("noisy, unchanged", "flat"),
    noisy("noisy, step +50 %", "step", 0.5),
    Case("daily cycle +-15 %, unchanged", "cycle", 0.15),
)


def synth_minute(rng: random.Random, case: Case, level: float) -> Histogram:
    """One minute's run-time histogram, as the workers would have counted it."""
    sigma = math.sqrt(math.log(1 + case.cv**2))
    stall = rng.uniform(2.0, 5.0) if rng.random() < case.outliers else 1.0
    hist: Histogram = {}
    for _ in range(rng.randint(*case.runs)):
        ms = BASE_MS * level * stall * math.exp(rng.gauss(-(sigma**2) / 2, sigma))
        i = bucket_index(ms)
        hist[i] = hist.get(i, 0) + 1
    return hist


@dataclass(frozen=True)
class Run:
    """One seed's outcome: the minutes (since the start, counted at the tick after the
    minute completed) where regression.detected fired, and those where an episode ended."""

    onsets: tuple[int, ...]
    ends: tuple[int, ...]


def synth_medians(case: Case, seed: int, minutes: int, change_at: int) -> list[float | None]:
    """The per-minute medians the loop would read, one seed's worth."""
    rng = random.Random(seed)
    return [
        minute_median(synth_minute(rng, case, case.level(minute, change_at)))
        for minute in range(minutes)
    ]


def simulate(
    case: Case, seed: int, minutes: int, change_at: int, decide: Decision = judge_regression
) -> Run:
    return replay(synth_medians(case, seed, minutes, change_at), decide)


def replay(medians: Sequence[float | None], decide: Decision = judge_regression) -> Run:
    """Feed the medians minute by minute through `decide`, as the loop does."""
    window: deque[float | None] = deque(maxlen=WINDOW_MINUTES)
    regressed = False
    onsets: list[int] = []
    ends: list[int] = []
    for minute, value in enumerate(medians):
        window.append(value)
        now = decide(list(window), regressed) is not None
        if now and not regressed:
            onsets.append(minute + 1)
        elif regressed and not now:
            ends.append(minute + 1)
        regressed = now
    return Run(tuple(onsets), tuple(ends))


@dataclass(frozen=True)
class Summary:
    case: str
    slower: bool
    seeds: int
    detected: int  # seeds with an event after the change (slower cases)
    median_delay: float | None  # minutes from the change to the first event after it
    p90_delay: float | None
    false_alarms_per_day: float  # before the change; whole run where nothing got slower
    false_alarm_days: float  # simulated days the false-alarm rate is measured over
    repeat_events: int  # events after the first one that followed the change (slower cases)
    median_flagged: float | None  # minutes the first episode after the change lasted


def _rank_quantile(values: Sequence[int], q: float) -> float | None:
    """Nearest-rank quantile (the value at rank ceil(q n)): a delay some seed really had."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(math.ceil(q * len(ordered)) - 1, 0)])


def summarise(case: Case, runs: Sequence[Run], minutes: int, change_at: int) -> Summary:
    if case.slower:
        false = sum(1 for r in runs for t in r.onsets if t <= change_at)
        span = change_at
        after = [[t - change_at for t in r.onsets if t > change_at] for r in runs]
        delays = [a[0] for a in after if a]
        repeats = sum(len(a) - 1 for a in after if a)
        flagged = [_flagged(r, change_at, minutes) for r in runs]
        lengths = [f for f in flagged if f is not None]
    else:
        false = sum(len(r.onsets) for r in runs)
        span = minutes
        delays, repeats, lengths = [], 0, []
    days = len(runs) * span / 1440
    return Summary(
        case=case.name,
        slower=case.slower,
        seeds=len(runs),
        detected=len(delays),
        median_delay=float(median(delays)) if delays else None,
        p90_delay=_rank_quantile(delays, 0.9),
        false_alarms_per_day=false / days if days else 0.0,
        false_alarm_days=days,
        repeat_events=repeats,
        median_flagged=float(median(lengths)) if lengths else None,
    )


def _flagged(run: Run, change_at: int, minutes: int) -> int | None:
    """How long the first episode after the change lasted (to the end of the run if it
    never ended), or None without one."""
    onset = next((t for t in run.onsets if t > change_at), None)
    if onset is None:
        return None
    end = next((t for t in run.ends if t > onset), minutes)
    return end - onset


def scored_settings(
    case: Case,
    seed: int,
    minutes: int,
    change_at: int,
    settings: Sequence[Mapping[str, Any]],
) -> list[Score]:
    """One seed of one case under every setting (regression_cv's grid): the medians are
    synthesised once and replayed through judge_regression with each setting's params, each
    run scored as a labelled series (regression_cv.score_run)."""
    medians = synth_medians(case, seed, minutes, change_at)
    name = f"{case.name} #{seed}"
    out = []
    for setting in settings:
        params = params_of(setting)

        def decide(
            window: Sequence[float | None], regressed: bool, p: RegressionParams = params
        ) -> Regression | None:
            return judge_regression(window, regressed, p)

        run = replay(medians, decide)
        changed = change_at if case.slower else None
        out.append(score_run(name, run.onsets, minutes, changed, case.ramp_minutes))
    return out
