"""Run-time regressions, pure: is one task type now slower than in the hours before?

The loop (anomaly_loop.find_regressions) hands over one task type's per-minute median run
times for the last six hours, oldest first, and whether the type is already flagged; the
answer is the same for bench/bench_regression.py, which feeds synthetic minutes through it.

A type *becomes* regressed when the last RECENT_MINUTES minutes' median is at least MIN_SHIFT
(20 %) above the rest of the window's AND a one-sided Mann-Whitney test rejects "no shift" at
ALPHA. ALPHA is 1e-4, not the textbook 0.01, because the test is repeated every minute over
windows that overlap by 14 of 15 minutes: at 0.01 a noisy but unchanged series (CV 0.5, 3-10
runs a minute, 2 % of minutes stalled) paged 1.75 times a day, at 1e-4 once in 42 simulated
days, while a +50 % step is still found in a median 9 minutes, against 8 at 0.01 (8 is the
least: the recent median moves once half the recent minutes are slow). Figures from
`bench/bench_regression.py --compare`.

A flagged type *stays* regressed while the recent median is still at least CLEAR_SHIFT (5 %)
above the rest of the window's, whatever the p-value. Without that hysteresis a step that sits
near the threshold (+20 %) flips in and out every few minutes, and every step flips once more
while the six-hour window absorbs it (its median climbs to the new level over about three
hours), each flip a new regression.detected. The episode ends when the run time recovers or
when the slower level has become the baseline: a step stays flagged for three to four hours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import median

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.monitoring.stats import quantile

RECENT_MINUTES = 15
MIN_RUNS_PER_MINUTE = 3
MIN_SHIFT = 0.2
ALPHA = 1e-4
CLEAR_SHIFT = 0.05


class RegressionParams(BaseModel):
    """The rule's tuning (the module constants are its defaults): recent_minutes judged
    against the rest of the window, the shift and p-value that enter a regression, and the
    shift that keeps one flagged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recent_minutes: int = Field(default=RECENT_MINUTES, ge=1)
    min_shift: float = Field(default=MIN_SHIFT, ge=0)
    alpha: float = Field(default=ALPHA, gt=0, le=1)
    clear_shift: float = Field(default=CLEAR_SHIFT, ge=0)


DEFAULT_PARAMS = RegressionParams()


class Regression(BaseModel):
    model_config = ConfigDict(frozen=True)

    baseline_median: float
    recent_median: float
    shift: float  # relative change of the median, positive = worse
    u: float
    z: float
    p_value: float
    n_baseline: int
    n_recent: int


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """U of `x` against `y`, its z (tie- and continuity-corrected normal approximation) and
    the one-sided p-value that `x` tends to be larger. Reliable from about 8 points a side.

    Rank-based, so a handful of outliers in either sample cannot fake or hide a shift, and it
    assumes no distribution: latencies are anything but normal.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples must be non-empty")
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    n = n1 + n2
    rank_sum_x = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j < n and pooled[j][0] == pooled[i][0]:
            j += 1
        rank = (i + 1 + j) / 2  # average of the 1-based ranks i+1..j
        rank_sum_x += rank * sum(1 for k in range(i, j) if pooled[k][1] == 0)
        t = j - i
        ties += t**3 - t
        i = j
    u = rank_sum_x - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u, 0.0, 0.5
    d = u - mean
    z = (d - math.copysign(0.5, d) if d else 0.0) / math.sqrt(var)
    return u, z, 0.5 * math.erfc(z / math.sqrt(2))


def detect_regression(
    baseline: Sequence[float],
    recent: Sequence[float],
    min_shift: float = 0.2,
    alpha: float = 0.01,
    *,
    min_samples: int = 10,
    higher_is_worse: bool = True,
) -> Regression | None:
    """A regression is a shift that matters AND is real: the median moved the bad way by at
    least `min_shift` (relative) and Mann-Whitney rejects "no shift" at `alpha` (one-sided,
    since only one direction is a regression). Either test alone pages on noise or on
    harmless but significant 2 % changes. Returns None below `min_samples` a side or when
    the baseline median is 0 (a relative shift is undefined).
    """
    base = [v for v in baseline if math.isfinite(v)]
    new = [v for v in recent if math.isfinite(v)]
    if len(base) < min_samples or len(new) < min_samples:
        return None
    b_med, r_med = median(base), median(new)
    if b_med == 0:
        return None
    shift = (r_med - b_med) / abs(b_med)
    if not higher_is_worse:
        shift = -shift
    if shift < min_shift:
        return None
    worse, better = (new, base) if higher_is_worse else (base, new)
    u, z, p = mann_whitney_u(worse, better)
    if p >= alpha:
        return None
    return Regression(
        baseline_median=b_med,
        recent_median=r_med,
        shift=shift,
        u=u,
        z=z,
        p_value=p,
        n_baseline=len(base),
        n_recent=len(new),
    )


def minute_median(latency: Mapping[int, int]) -> float | None:
    """One minute's median run time from its histogram, or None below MIN_RUNS_PER_MINUTE
    runs: the median of one or two runs is noise, and a gap is better than noise."""
    if sum(latency.values()) < MIN_RUNS_PER_MINUTE:
        return None
    return quantile(latency, 0.5)


def split_window(
    medians: Sequence[float | None], recent_minutes: int = RECENT_MINUTES
) -> tuple[list[float], list[float]]:
    """(baseline, recent): the window's last `recent_minutes` minutes against the minutes
    before them, gaps dropped."""
    cut = max(len(medians) - recent_minutes, 0)
    baseline = [m for m in medians[:cut] if m is not None]
    recent = [m for m in medians[cut:] if m is not None]
    return baseline, recent


def judge_regression(
    medians: Sequence[float | None],
    regressed: bool,
    params: RegressionParams = DEFAULT_PARAMS,
) -> Regression | None:
    """The regression the window shows, or None: entering needs a large and significant
    shift, staying only a shift of CLEAR_SHIFT (see the module docstring)."""
    baseline, recent = split_window(medians, params.recent_minutes)
    if regressed:
        return detect_regression(baseline, recent, params.clear_shift, alpha=1.0)
    return detect_regression(baseline, recent, params.min_shift, params.alpha)
