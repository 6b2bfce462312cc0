"""Online anomaly detection per metric series, pure.

The beat task keeps one `DetectorState` per series in Redis (as JSON) and calls `step` once per
tick; `backtest` replays a CSV through the very same `step`, so what it prints is what the
live loop would have paged.

The detector pages on *novelty*: a point is anomalous when it lies beyond everything the
series did in its recent history (2,000 points) by more than 0.45 x sensitivity noise scales.
Before that comparison a daily profile is taken out of the series when it explains the series
better than the plain level does, so a daily peak is not novel the second time round. Two
views of the series are judged, each point and the mean of the last 12; the second finds a
shift too small for any single point to stand out.

Why this shape, measured on the labelled tuning set (docs/operations/anomalies.md): a z-score
against a rolling baseline pages again and again on a noisy series, because a 2-sigma point
is an everyday event there (505 false flags for 64 windows), while a point beyond the series'
own recent range is rare by construction; a level shift pages once, and the new level is
inside the range from then on; and the scale is the median absolute deviation of the last
`window` points, so one outage does not blind the detector for hours.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from statistics import median
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A normal distribution's sigma is 1.4826 MAD or 1.2533 mean absolute deviation.
MAD_TO_SIGMA = 1.4826
MEANAD_TO_SIGMA = 1.2533
DAY_S = 86_400.0
# The score's unit, in noise scales: the default sensitivity 2.0 pages 0.9 scales beyond the
# range. Measured on the tuning set, the best margin lies between 0.8 and 0.95 scales
# (docs/operations/anomalies.md); in this unit the variable keeps its range and meaning and
# its default sits in that plateau.
SCORE_UNIT = 0.45
_TINY = 1e-9
# A new series may page from its 10th point, at 240 / seen times the margin (24 times at
# point 10, twice at 120). Measured: a one-minute tenfold spike in run time (20 % noise) pages
# in 20 of 20 runs from minute 10 on; the tuning set's 41 series page 30 times more in their
# first 240 points (all in NAB's probation, none in a window: the first daily peak of a new
# series is news to it), white noise once more in 30 runs of 3,000 points.
COLD_START = 10
COLD_POWER = 1.0


class DetectorParams(BaseModel):
    """Tuning of one detector. Defaults assume a point every one to five minutes.

    window: points the noise scale (a robust sigma: 1.4826 MAD) is measured over.
    warmup: points seen before the margin is the plain `sensitivity`: a full window, since a
        range of fewer points is narrow (with the plain margin from point 60, white noise paged
        21 times in 30 runs of 3,000 points, 12 of them before point 240; from 240, 9 times).
    cold_start: points seen before anything may be flagged at all. Between `cold_start` and
        `warmup` the margin is widened by (warmup / seen) ** cold_power, so a gross change
        (ten times the run time) pages within minutes of a new series' first point while the
        narrow early range does not page on noise.
    cold_power: how fast the early margin shrinks as evidence accumulates.
    history: points whose extremes a new point must beat to be novel, kept as the maximum
        and minimum of each `block` points (so the state stays small).
    smooth: the second view of the series, the mean of the last `smooth` points.
    rescale_every: points between two measurements of the scale and of the level; a median
        of `window` points per point would cost more than the rest of the step together.
    cooldown: points with nothing novel that end an episode.
    refractory: points after an onset before another onset may page: the aftermath of an
        incident (recovery, a second wobble) is the same incident to whoever was paged.
    season_bins: slots of the daily profile (48: half an hour each; 0 turns it off). It
        needs readable timestamps (ISO 8601 or epoch seconds); with others it stays off.
    season_days: days the profile averages over once it has seen them.
    season_gain: the profile is applied only while it cuts the typical residual to this
        share of the plain level's, so a series without a daily cycle is left alone.
    rel_floor, min_scale: lower bounds of the scale, as a share of the series' level and in
        absolute units. They keep a flat series (MAD 0) from dividing by zero and from
        paging on a 0.1 % wiggle.
    error_z, error_short, error_long: the second test, beside the range rule (a point pages
        when either fires; 0 turns it off, the default): the mean of the last `error_short`
        prediction errors (the previous point as the prediction, in noise scales) more than
        `error_z` standard deviations above the mean of single errors over about
        `error_long` points, as HTM's anomaly likelihood judges a short average of its
        errors against their long-run Gaussian. It finds what stays inside the recent range
        (a change of variance, denser spikes). Measured on the tuning set at error_z 1.75
        and error_short 48: in-sample 74.1 (49 of 64 windows, 29 false flags, against 72.7,
        48 and 27), but leave-one-category-out 78.7 against 78.9, so it stays off.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=240, ge=10, le=10_000)
    warmup: int = Field(default=240, ge=3)
    cold_start: int = Field(default=COLD_START, ge=3)
    cold_power: float = Field(default=COLD_POWER, ge=0)
    history: int = Field(default=2000, ge=1, le=100_000)
    block: int = Field(default=20, ge=1, le=1000)
    smooth: int = Field(default=12, ge=1, le=1000)
    rescale_every: int = Field(default=10, ge=1, le=1000)
    cooldown: int = Field(default=10, ge=1)
    refractory: int = Field(default=72, ge=0)
    season_bins: int = Field(default=48, ge=0, le=1440)
    season_days: float = Field(default=3.0, gt=0)
    season_gain: float = Field(default=0.8, gt=0, le=1)
    direction: Literal["both", "up", "down"] = "both"
    rel_floor: float = Field(default=0.01, ge=0)
    min_scale: float = Field(default=0.0, ge=0)
    error_z: float = Field(default=0.0, ge=0)
    error_short: int = Field(default=12, ge=1, le=1000)
    error_long: int = Field(default=2000, ge=10, le=100_000)


class DetectorState(BaseModel):
    """Everything a detector remembers between ticks; JSON-serialisable, immutable. A state
    written by a newer detector fails validation here (extra fields), and the loop starts
    afresh; one written by an older detector loads, its missing fields at their defaults
    (errs and err_*: the error test starts counting from there).

    raw, ys, means: the last `window` values as received, with the daily profile taken out,
    and the means of `smooth` of the latter. level, sigma: the median of `raw` and the scales
    of `ys` and `means`, as last measured. highs/lows: per finished block, the largest and
    smallest y and mean; `block_*` is the block being filled. errs: the last `error_short`
    prediction errors; err_mean, err_var, err_n: the long-run mean and variance of single
    errors (exponentially weighted over `error_long` points) and how many were seen.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    params: DetectorParams = Field(default_factory=DetectorParams)
    seen: int = 0
    ys: tuple[float, ...] = ()
    means: tuple[float, ...] = ()
    level: float = 0.0
    sigma: tuple[float, float] = (_TINY, _TINY)
    highs_y: tuple[float, ...] = ()
    highs_m: tuple[float, ...] = ()
    lows_y: tuple[float, ...] = ()
    lows_m: tuple[float, ...] = ()
    span: tuple[float, float, float, float] | None = None  # the four extremes of the above
    block: tuple[float, float, float, float] | None = None  # max y, max mean, min y, min mean
    block_n: int = 0
    profile: tuple[float, ...] = ()
    visits: tuple[int, ...] = ()
    err_season: float = 0.0
    err_plain: float = 0.0
    first_ts: float | None = None
    last_ts: float | None = None
    spacing: float | None = None
    in_episode: bool = False
    calm: int = 0
    since_onset: int | None = None
    episodes: int = 0
    errs: tuple[float, ...] = ()
    err_mean: float = 0.0
    err_var: float = 0.0
    err_n: int = 0


class Detection(BaseModel):
    """The onset of one anomalous episode: what the edge publishes as anomaly.detected.

    baseline is the extreme of the history the point went beyond (of the view that paged: a
    single point or the recent mean), scale the noise scale, score how many scales beyond.
    """

    model_config = ConfigDict(frozen=True)

    ts: str | float
    value: float
    baseline: float
    scale: float
    score: float
    direction: Literal["up", "down"]


def new_state(**params: Any) -> DetectorState:
    return DetectorState(params=DetectorParams(**params))


def ts_key(ts: str | float) -> float:
    """A timestamp as a sortable number: ISO 8601 text (NAB writes "2014-04-10 07:15:00.000000")
    or a plain number. Raises ValueError naming it otherwise. Text without an offset is read
    as UTC, not local time: a daylight-saving change must not reorder a series."""
    if isinstance(ts, int | float):
        number: float | None = float(ts)
    else:
        text = ts.strip()
        number = None
        if ":" not in text:  # a clock time is not a number: skip the failing float()
            with contextlib.suppress(ValueError):
                number = float(text)
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"timestamp {ts!r} is not a finite number")
        return number
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp {ts!r} is neither ISO 8601 nor a number") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _seconds(ts: str | float) -> float | None:
    try:
        return ts_key(ts)
    except ValueError:
        return None


def robust_scale(values: Sequence[float], params: DetectorParams) -> float:
    """Sigma estimate from the MAD, falling back to the mean absolute deviation when more
    than half the points are identical (MAD 0), and never below the floors."""
    if not values:
        return max(params.min_scale, _TINY)
    center = median(values)
    deviations = [abs(v - center) for v in values]
    scale = MAD_TO_SIGMA * median(deviations)
    if scale == 0.0:
        scale = MEANAD_TO_SIGMA * sum(deviations) / len(deviations)
    return max(scale, params.rel_floor * abs(center), params.min_scale, _TINY)


def _follow(
    level: float, y: float, scale: float, spacing: float | None, seen: int, p: DetectorParams
) -> float:
    """The level the daily profile is measured from: the mean of the adjusted series until it
    has seen a day, then an average over about a day (a window's worth of points without
    timestamps), each point clipped to four scales of the level so an outage barely moves
    it."""
    alpha = max(min(spacing / DAY_S, 1.0) if spacing else 1.0 / p.window, 1.0 / (seen + 1))
    limit = 4.0 * scale
    return level + alpha * min(max(y - level, -limit), limit)


def _season(
    state: DetectorState, value: float, level: float, t: float | None
) -> tuple[float, dict[str, Any]]:
    """(adjustment, state updates): the daily profile's value for t's slot when the profile
    earns its place, and the profile after learning from this point. The profile's error and
    the plain level's are compared from the second day on (a slot's first visit teaches it
    nothing about the next), and the profile is applied from the third."""
    p = state.params
    if not p.season_bins or t is None:
        return 0.0, {}
    spacing = state.spacing
    if state.last_ts is not None and t > state.last_ts:
        gap = t - state.last_ts
        spacing = gap if spacing is None else spacing + 0.05 * (gap - spacing)
    first = t if state.first_ts is None else state.first_ts
    updates: dict[str, Any] = {"first_ts": first, "last_ts": t, "spacing": spacing}
    if spacing is None:
        return 0.0, updates
    bins = p.season_bins
    profile = state.profile or (0.0,) * bins
    visits = state.visits or (0,) * bins
    slot = int(t % DAY_S / DAY_S * bins) % bins
    residual = value - level
    known, count = profile[slot], visits[slot]
    adjustment = 0.0
    if t - first >= DAY_S:  # every slot has a day behind it: its error means something
        per_day = max(DAY_S / spacing, 1.0)
        beta = 1.0 / per_day
        err_season = state.err_season + beta * (abs(residual - known) - state.err_season)
        err_plain = state.err_plain + beta * (abs(residual) - state.err_plain)
        updates |= {"err_season": err_season, "err_plain": err_plain}
        days = (t - first) / DAY_S
        if days >= 2 and state.err_season < p.season_gain * state.err_plain:
            adjustment = known
    per_visit_day = max(DAY_S / bins / spacing, 1.0)
    alpha = max(1.0 / (count + 1), 1.0 / (p.season_days * per_visit_day))
    updates["profile"] = (*profile[:slot], known + alpha * (residual - known), *profile[slot + 1 :])
    updates["visits"] = (*visits[:slot], count + 1, *visits[slot + 1 :])
    return adjustment, updates


def _novelty(
    state: DetectorState, sigma: tuple[float, float], y: float, mean: float
) -> tuple[float, Literal["up", "down"], float, float]:
    """(score, direction, extreme, scale) of the view and direction that stand out most: how
    far y (or the recent mean) lies beyond the history's largest (or smallest), in units of
    SCORE_UNIT scales."""
    p = state.params
    u_y, u_m = SCORE_UNIT * sigma[0], SCORE_UNIT * sigma[1]
    block = state.block
    span = state.span
    if span is None:
        hi_y = hi_m = -math.inf
        lo_y = lo_m = math.inf
    else:
        hi_y, hi_m, lo_y, lo_m = span
    if block is not None:
        hi_y, hi_m = max(hi_y, block[0]), max(hi_m, block[1])
        lo_y, lo_m = min(lo_y, block[2]), min(lo_m, block[3])
    best: tuple[float, Literal["up", "down"], float, float] = (-math.inf, "up", 0.0, 0.0)
    if p.direction != "down":
        best = max(best, ((y - hi_y) / u_y, "up", hi_y, sigma[0]))
        best = max(best, ((mean - hi_m) / u_m, "up", hi_m, sigma[1]))
    if p.direction != "up":
        best = max(best, ((lo_y - y) / u_y, "down", lo_y, sigma[0]))
        best = max(best, ((lo_m - mean) / u_m, "down", lo_m, sigma[1]))
    return best


def cold_margin(seen: int, p: DetectorParams) -> float:
    """The factor on the margin for a point judged against `seen` points: 1 from `warmup`
    on, (warmup / seen) ** cold_power before (infinite before `cold_start`)."""
    if seen >= p.warmup:
        return 1.0
    if seen < p.cold_start or seen <= 0:
        return math.inf
    return float((p.warmup / seen) ** p.cold_power)


def _remember(state: DetectorState, y: float, mean: float) -> dict[str, Any]:
    """The history after this point: into the block being filled, which joins the history
    (and pushes its oldest block out) once it holds `block` points."""
    p = state.params
    block = state.block
    if block is None:
        block = (y, mean, y, mean)
    else:
        block = (max(block[0], y), max(block[1], mean), min(block[2], y), min(block[3], mean))
    n = state.block_n + 1
    if n < p.block:
        return {"block": block, "block_n": n}
    keep = -max(p.history // p.block, 1)
    highs_y = (*state.highs_y, block[0])[keep:]
    highs_m = (*state.highs_m, block[1])[keep:]
    lows_y = (*state.lows_y, block[2])[keep:]
    lows_m = (*state.lows_m, block[3])[keep:]
    return {
        "block": None,
        "block_n": 0,
        "highs_y": highs_y,
        "highs_m": highs_m,
        "lows_y": lows_y,
        "lows_m": lows_m,
        "span": (max(highs_y), max(highs_m), min(lows_y), min(lows_m)),
    }


# A prediction error counts at most this many scales: one outage must not swamp the
# distribution of errors the next hours are judged against.
ERROR_CAP = 10.0


def _surprise(state: DetectorState, y: float, scale: float) -> tuple[float | None, dict[str, Any]]:
    """(z, state updates) of the second test: how far the mean of the last
    `error_short` prediction errors lies above the distribution of single errors over about
    `error_long` points, in its standard deviations (None until `warmup` errors are known).
    The prediction is the previous point; the error is in noise scales, capped at ERROR_CAP.
    A point that stays inside the recent range but comes with a change of variance, a denser
    run of spikes or a jump inside the range moves the short mean, not the range."""
    p = state.params
    previous = state.ys[-1] if state.ys else y
    error = min(abs(y - previous) / scale, ERROR_CAP)
    errs = (*state.errs, error)[-p.error_short :]
    z = None
    if state.err_n >= p.warmup:
        short = sum(errs) / len(errs)
        z = (short - state.err_mean) / max(math.sqrt(state.err_var), _TINY)
    n = state.err_n + 1
    alpha = max(1.0 / n, 1.0 / p.error_long)
    delta = error - state.err_mean
    mean = state.err_mean + alpha * delta
    var = (1.0 - alpha) * (state.err_var + alpha * delta * delta)
    return z, {"errs": errs, "err_mean": mean, "err_var": var, "err_n": n}


def step(
    state: DetectorState, value: float, ts: str | float, sensitivity: float
) -> tuple[DetectorState, Detection | None]:
    """Feed one point; return the new state and a Detection at an episode's onset only.

    `sensitivity` (ORCH_ANOMALY_DETECTION_SENSITIVITY, default 2.0) is how far a point, or the
    mean of the last `smooth`, must lie beyond the history's extremes, in units of 0.45
    noise scales (SCORE_UNIT): higher pages less and surer. The point is judged against the
    state of the points before it, then joins it. A non-finite value is a gap: the state is
    returned unchanged.
    """
    if sensitivity <= 0:
        raise ValueError(f"sensitivity must be > 0 (got {sensitivity})")
    if not math.isfinite(value):
        return state, None
    p = state.params
    updates: dict[str, Any] = {}
    level = state.level if state.seen else value
    sigma = state.sigma
    if state.seen % p.rescale_every == 0:
        sigma = (robust_scale(state.ys, p), robust_scale(state.means, p))
        updates["sigma"] = sigma
    adjustment, season = _season(state, value, level, _seconds(ts))
    updates |= season
    y = value - adjustment
    updates["level"] = _follow(level, y, sigma[0], season.get("spacing"), state.seen + 1, p)
    recent = state.ys[len(state.ys) - p.smooth + 1 :] if p.smooth > 1 else ()
    mean = (sum(recent) + y) / (len(recent) + 1)

    novel = False
    detection = None
    since = None if state.since_onset is None else state.since_onset + 1
    in_episode, calm, episodes = state.in_episode, state.calm, state.episodes
    if state.seen >= min(p.cold_start, p.warmup):
        score, direction, extreme, scale = _novelty(state, sigma, y, mean)
        novel = score > sensitivity * cold_margin(state.seen, p)
    if p.error_z > 0:
        z, surprise = _surprise(state, y, sigma[0])
        updates |= surprise
        if not novel and z is not None and z > p.error_z:
            novel = True
            previous = state.ys[-1] if state.ys else y
            score, extreme, scale = z, previous, sigma[0]
            direction = "up" if y >= previous else "down"
    if novel:
        calm = 0
        if not in_episode and (since is None or since >= p.refractory):
            since, episodes = 0, episodes + 1
            detection = Detection(
                ts=ts,
                value=value,
                baseline=extreme,
                scale=scale,
                score=score,
                direction=direction,
            )
        in_episode = True
    elif in_episode:
        calm += 1
        if calm >= p.cooldown:
            in_episode, calm = False, 0

    w = p.window
    updates |= _remember(state, y, mean)
    updates |= {
        "seen": state.seen + 1,
        "ys": (*state.ys, y)[-w:],
        "means": (*state.means, mean)[-w:],
        "in_episode": in_episode,
        "calm": calm,
        "since_onset": since,
        "episodes": episodes,
    }
    return state.model_copy(update=updates), detection


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
