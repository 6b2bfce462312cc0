"""Online anomaly detection per metric series, and the performance-regression test, pure.

The beat task keeps one `DetectorState` per series in Redis (as JSON) and calls `step` once per
tick; `backtest` replays a CSV through the very same `step`, so what it prints is what the
live loop would have paged.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from statistics import median
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A normal distribution's sigma is 1.4826 MAD or 1.2533 mean absolute deviation.
MAD_TO_SIGMA = 1.4826
MEANAD_TO_SIGMA = 1.2533
_TINY = 1e-12


class DetectorParams(BaseModel):
    """Tuning of one detector. Defaults assume one point per minute (the beat interval).

    window: points the baseline remembers (two hours); a level shift becomes the new
        normal once it fills half the window, which ends its episode.
    warmup: points seen before anything may be flagged; a MAD of a few points is noise.
    min_run: consecutive anomalous points before an episode starts. At the default
        sensitivity (z > 2) one point in twenty is flagged by chance; four in a row gave 3
        false episodes per 100,000 points of white noise (1 a month at one point a minute).
    cooldown: points without a paging run (min_run in a row) that end an episode, so a
        wobbling recovery or a lone blip does not page again.
    baseline: "median" (rolling median: robust to the spikes it hunts, but lags a trend by
        half a window) or "ewma" (an exponentially weighted level, seeded from the warm-up
        median: follows drift within about 1/alpha points, and is fed each value clipped to
        the threshold so a spike barely moves it). Both take the scale from the window's MAD,
        which neither collapses on a quiet stretch nor balloons during an episode.
    rel_floor, min_scale: lower bounds of the scale, as a share of the baseline level and
        in absolute units. They keep a flat series (MAD 0) from dividing by zero and from
        paging on a 0.1 % wiggle.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=120, ge=5, le=10_000)
    warmup: int = Field(default=30, ge=3)
    min_run: int = Field(default=4, ge=1)
    cooldown: int = Field(default=10, ge=1)
    baseline: Literal["median", "ewma"] = "median"
    alpha: float = Field(default=0.1, gt=0, le=1)
    direction: Literal["both", "up", "down"] = "both"
    rel_floor: float = Field(default=0.01, ge=0)
    min_scale: float = Field(default=0.0, ge=0)


class DetectorState(BaseModel):
    """Everything a detector remembers between ticks; JSON-serialisable, immutable."""

    model_config = ConfigDict(frozen=True)

    params: DetectorParams = Field(default_factory=DetectorParams)
    window: tuple[float, ...] = ()
    seen: int = 0
    ewma: float | None = None
    run: int = 0
    in_episode: bool = False
    normal_streak: int = 0
    episodes: int = 0


class Detection(BaseModel):
    """The onset of one anomalous episode: what the edge publishes as anomaly.detected."""

    model_config = ConfigDict(frozen=True)

    ts: str | float
    value: float
    baseline: float
    scale: float
    score: float
    direction: Literal["up", "down"]


def new_state(**params: Any) -> DetectorState:
    return DetectorState(params=DetectorParams(**params))


def robust_scale(values: Sequence[float], center: float, params: DetectorParams) -> float:
    """Sigma estimate from the MAD, falling back to the mean absolute deviation when more
    than half the points are identical (MAD 0), and never below the floors."""
    deviations = [abs(v - center) for v in values]
    scale = MAD_TO_SIGMA * median(deviations) if deviations else 0.0
    if scale == 0.0 and deviations:
        scale = MEANAD_TO_SIGMA * sum(deviations) / len(deviations)
    return _floored(scale, center, params)


def _floored(scale: float, center: float, params: DetectorParams) -> float:
    return max(scale, params.rel_floor * abs(center), params.min_scale, _TINY)


def _baseline(state: DetectorState) -> tuple[float, float]:
    p = state.params
    center = median(state.window)
    scale = robust_scale(state.window, center, p)
    if p.baseline == "ewma" and state.ewma is not None:
        return state.ewma, _floored(scale, state.ewma, p)
    return center, scale


def _exceeds(score: float, sensitivity: float, direction: str) -> bool:
    if direction == "up":
        return score > sensitivity
    if direction == "down":
        return score < -sensitivity
    return abs(score) > sensitivity


def step(
    state: DetectorState, value: float, ts: str | float, sensitivity: float
) -> tuple[DetectorState, Detection | None]:
    """Feed one point; return the new state and a Detection at an episode's onset only.

    `sensitivity` is the robust z-score a point must exceed (ORCH_ANOMALY_DETECTION_SENSITIVITY,
    default 2.0, the seed's meaning): lower flags more. The point is judged against the
    baseline of the points before it, then joins the window, so a lasting shift is absorbed.
    A non-finite value is a gap: the state is returned unchanged.
    """
    if sensitivity <= 0:
        raise ValueError(f"sensitivity must be > 0 (got {sensitivity})")
    if not math.isfinite(value):
        return state, None
    p = state.params
    center = scale = score = 0.0
    anomalous = False
    if state.seen >= p.warmup and state.window:
        center, scale = _baseline(state)
        score = (value - center) / scale
        anomalous = _exceeds(score, sensitivity, p.direction)
    window = (*state.window, value)[-p.window :]

    ewma = state.ewma
    if p.baseline == "ewma":
        if ewma is None:
            ewma = median(window) if state.seen + 1 >= p.warmup else None
        else:
            clipped = min(max(value, center - sensitivity * scale), center + sensitivity * scale)
            ewma = (1 - p.alpha) * ewma + p.alpha * clipped

    run = state.run + 1 if anomalous else 0
    in_episode, streak, episodes = state.in_episode, state.normal_streak, state.episodes
    detection = None
    if run >= p.min_run:
        # Only a run that would page keeps an episode alive: at a z of 2, one normal point in
        # twenty is flagged on its own, and such blips must not stretch the cooldown forever.
        streak = 0
        if not in_episode:
            in_episode, episodes = True, episodes + 1
            detection = Detection(
                ts=ts,
                value=value,
                baseline=center,
                scale=scale,
                score=score,
                direction="up" if score > 0 else "down",
            )
    elif in_episode:
        streak += 1
        if streak >= p.cooldown:
            in_episode, streak = False, 0
    new = state.model_copy(
        update={
            "window": window,
            "seen": state.seen + 1,
            "ewma": ewma,
            "run": run,
            "in_episode": in_episode,
            "normal_streak": streak,
            "episodes": episodes,
        }
    )
    return new, detection


def backtest(points: Sequence[tuple[str, float]], sensitivity: float, **params: Any) -> list[str]:
    """Timestamps at which the live loop would have emitted anomaly.detected, in input order
    (one per episode); `params` are DetectorParams fields."""
    state = new_state(**params)
    fired = []
    for ts, value in points:
        state, detection = step(state, value, ts, sensitivity)
        if detection is not None:
            fired.append(ts)
    return fired


def read_series_csv(text: str) -> list[tuple[str, float]]:
    """Parse `timestamp,value` CSV (header required, any column order, extra columns ignored).

    Timestamps are kept as written, since the backtest echoes them back. A bad row raises
    ValueError naming its line, so a 100k-line file is fixable.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = next(reader, None)
    names = [h.strip().lower() for h in header or []]
    if "timestamp" not in names or "value" not in names:
        raise ValueError(f"line 1: the header must name the columns timestamp,value (got {header})")
    ti, vi = names.index("timestamp"), names.index("value")
    points = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) <= max(ti, vi):
            raise ValueError(f"line {line}: expected {len(names)} columns, got {len(row)}")
        ts, raw = row[ti].strip(), row[vi].strip()
        if not ts:
            raise ValueError(f"line {line}: empty timestamp")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"line {line}: value {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"line {line}: value {raw!r} is not a finite number")
        points.append((ts, value))
    return points


# --- performance regression --------------------------------------------------------------


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
