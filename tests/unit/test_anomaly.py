"""The anomaly detector on small synthetic series, and the CSV reader."""

import math
import random

import pytest
from pydantic import ValidationError

from orchestrator.monitoring.anomaly import (
    SCORE_UNIT,
    DetectorParams,
    DetectorState,
    backtest,
    cold_margin,
    new_state,
    read_series_csv,
    step,
)

START = 1_700_006_400  # a midnight, UTC: the daily profile's slots line up with whole days
MINUTE = 60.0


def noise(n, seed, mu=100.0, sigma=5.0):
    rng = random.Random(seed)
    return [mu + rng.gauss(0, sigma) for _ in range(n)]


def with_bursts(xs, starts, length, delta):
    xs = list(xs)
    for s in starts:
        for k in range(length):
            xs[s + k] += delta
    return xs


def daily(days, seed, spacing=300.0, amplitude=40.0, sigma=2.0):
    """A daily cycle (sine, one point every `spacing` seconds) with a little noise."""
    rng = random.Random(seed)
    n = int(days * 86_400 / spacing)
    return [
        100 + amplitude * math.sin(2 * math.pi * i * spacing / 86_400) + rng.gauss(0, sigma)
        for i in range(n)
    ]


def stamped(xs, spacing=MINUTE):
    return [(str(START + i * spacing), v) for i, v in enumerate(xs)]


def pages(xs, sensitivity=2.0, spacing=MINUTE, **params):
    """Indices of the points at which the backtest pages."""
    index = {str(START + i * spacing): i for i in range(len(xs))}
    return [index[ts] for ts in backtest(stamped(xs, spacing), sensitivity, **params)]


# Known synthetic series -> the indices where one page per episode must land: at the first
# point that lies beyond the series' range (default sensitivity: one noise scale beyond).
@pytest.mark.parametrize(
    "series,params,expected",
    [
        pytest.param(noise(3000, 1), {}, [], id="white noise stays quiet"),
        pytest.param(noise(3000, 2, sigma=50), {}, [], id="loud white noise stays quiet"),
        pytest.param(with_bursts(noise(600, 3), [300], 5, 60), {}, [300], id="a spike pages"),
        pytest.param(with_bursts(noise(600, 3), [300], 5, -60), {}, [300], id="a dip pages"),
        pytest.param(
            with_bursts(noise(600, 3), [300], 5, -60), {"direction": "up"}, [], id="up only"
        ),
        pytest.param(
            with_bursts(noise(800, 3), [300, 500], 5, 60),
            {},
            [300],
            id="the same spike again is not news",
        ),
        pytest.param(
            with_bursts(with_bursts(noise(800, 3), [300], 5, 60), [500], 5, 120),
            {},
            [300, 500],
            id="a larger spike is",
        ),
        pytest.param(
            with_bursts(with_bursts(noise(800, 3), [300], 5, 60), [330], 5, 120),
            {},
            [300],
            id="inside the refractory period it is the same incident",
        ),
        pytest.param(noise(400, 7) + noise(400, 8, mu=130), {}, [400], id="level shift: one page"),
        pytest.param(
            noise(400, 7) + noise(400, 8, mu=130) + noise(400, 9),
            {},
            [400],
            id="and none on the way back",
        ),
        pytest.param(
            noise(400, 7) + noise(400, 8, mu=108),
            {},
            [401],
            id="a shift of 1.6 sigma is found by the recent mean",
        ),
        pytest.param(
            with_bursts(noise(300, 6), [100], 5, 60), {}, [100], id="a gross change pages early"
        ),
        pytest.param(
            with_bursts(noise(300, 6), [100], 5, 60),
            {"cold_start": 240},
            [],
            id="a cold start as long as the warm-up is silent",
        ),
        pytest.param(
            with_bursts(noise(300, 6), [5], 5, 500), {}, [], id="nothing before the cold start"
        ),
        pytest.param(
            with_bursts(noise(600, 3), [30], 1, 35), {}, [], id="a 7-sigma spike early: wide margin"
        ),
        pytest.param(
            with_bursts(noise(600, 3), [400], 1, 35), {}, [400], id="the same spike later pages"
        ),
        pytest.param([5.0] * 300, {}, [], id="flat line"),
        pytest.param([5.0] * 300 + [5.01] * 20, {}, [], id="flat line, 0.2 % wiggle"),
        pytest.param([5.0] * 300 + [10.0] * 20 + [5.0] * 80, {}, [300], id="flat, step"),
        pytest.param([0.0] * 300 + [1.0] * 10, {}, [300], id="all zero, then one"),
    ],
)
def test_backtest_episodes(series, params, expected):
    assert pages(series, **params) == expected


def test_a_daily_cycle_is_not_an_anomaly_but_a_bump_at_its_trough_is():
    spacing = 300.0  # NAB's five minutes; 288 points a day
    quiet = daily(10, 1, spacing)
    assert pages(quiet, spacing=spacing) == []
    # Day 9, 18:00 is the trough (60): a bump to 100 there is well inside the daily range.
    # (Day 9: the history of 2,000 points must no longer hold the first day, before the
    # profile had been learnt.)
    trough = 9 * 288 + 216
    bumped = with_bursts(quiet, [trough], 12, 40)
    assert max(bumped[trough : trough + 12]) < max(quiet)
    assert pages(bumped, spacing=spacing) == [trough]
    # Without the profile the same bump is lost in the day's range.
    assert pages(bumped, spacing=spacing, season_bins=0) == []


def test_a_gap_is_skipped_not_a_point():
    series = with_bursts(noise(600, 3), [300], 5, 60)
    gapped = series[:150] + [math.nan] * 30 + series[150:]
    assert pages(gapped) == [330]


@pytest.mark.parametrize("seed", range(3))
def test_higher_sensitivity_never_pages_more(seed):
    series = with_bursts(noise(2000, seed, sigma=8), [300, 700, 1100, 1500], 8, 25)
    counts = [len(pages(series, s)) for s in (0.5, 1.0, 2.0, 4.0, 8.0, 1000.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0 and counts[-1] == 0


def test_detection_describes_the_onset():
    state = new_state(warmup=20, window=20, smooth=1, rescale_every=1, season_bins=0)
    detections = []
    values = [10.0 + (i % 3) for i in range(30)] + [50.0, 52, 51]
    for i, v in enumerate(values):
        state, d = step(state, v, float(i), 2.0)
        detections.append(d)
    assert [i for i, d in enumerate(detections) if d] == [30]
    d = detections[30]
    assert (d.ts, d.value, d.direction, d.baseline) == (30.0, 50.0, "up", 12.0)
    assert d.score == pytest.approx((50 - 12) / (SCORE_UNIT * d.scale)) and d.score > 2.0
    assert state.in_episode and state.episodes == 1 and state.since_onset == 2


def test_state_survives_json_between_ticks():
    series = with_bursts(with_bursts(noise(800, 11), [300], 6, 50), [500], 6, 100)
    points = stamped(series)
    live, fired = new_state(), []
    for ts, v in points:
        stored = live.model_dump_json()  # what the edge writes to Redis
        live, d = step(DetectorState.model_validate_json(stored), v, ts, 2.0)
        if d:
            fired.append(d.ts)
    assert fired == backtest(points, 2.0) == [points[300][0], points[500][0]]


def test_a_state_an_older_detector_wrote_does_not_validate():
    old = {"params": {"window": 120, "min_run": 4}, "window": [1.0, 2.0], "run": 0}
    with pytest.raises(ValidationError):
        DetectorState.model_validate(old)


@pytest.mark.parametrize(
    "seen,expected",
    [
        (0, math.inf),
        (9, math.inf),
        (10, 24.0),
        (60, 4.0),
        (120, 2.0),
        (239, 240 / 239),
        (240, 1.0),
        (5000, 1.0),
    ],
)
def test_cold_margin_shrinks_as_evidence_accumulates(seen, expected):
    assert cold_margin(seen, DetectorParams()) == pytest.approx(expected)


def test_a_tenfold_spike_on_a_new_series_pages_within_minutes():
    rng = random.Random(4)
    latency = [100 * math.exp(rng.gauss(0, 0.2)) for _ in range(40)]
    latency[12] *= 10
    assert pages(latency) == [12]


def test_a_state_stored_before_the_cold_start_existed_still_validates():
    """The live loop keeps states as JSON in Redis: one written before the cold-start fields
    existed lacks them; it validates with their defaults and carries on where it was."""
    state = new_state()
    for ts, v in stamped(noise(300, 2)):
        state, _ = step(state, v, ts, 2.0)
    stored = state.model_dump(mode="json")
    for field in ("cold_start", "cold_power"):
        del stored["params"][field]
    restored = DetectorState.model_validate(stored)
    assert restored == state and restored.seen == 300


def test_state_stays_small_after_a_long_series():
    state = new_state()
    for ts, v in stamped(daily(10, 3, MINUTE)):
        state, _ = step(state, v, ts, 2.0)
    p = state.params
    assert len(state.ys) == len(state.means) == p.window
    assert len(state.highs_y) == len(state.lows_m) == p.history // p.block
    assert len(state.model_dump_json()) < 64 * 1024


def test_unreadable_timestamps_turn_the_profile_off():
    state = new_state()
    for i, v in enumerate(noise(100, 1)):
        state, _ = step(state, v, f"tick-{i}", 2.0)
    assert state.profile == () and state.seen == 100


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_a_gap(value):
    state = new_state()
    for ts, v in stamped(noise(80, 1)):
        state, _ = step(state, v, ts, 2.0)
    assert step(state, value, 99, 2.0) == (state, None)


@pytest.mark.parametrize(
    "params",
    [{"window": 2}, {"warmup": 1}, {"block": 0}, {"season_bins": -1}, {"min_run": 4}, {"x": 1}],
)
def test_bad_params(params):
    with pytest.raises(ValidationError):
        DetectorParams(**params)


def test_sensitivity_must_be_positive():
    with pytest.raises(ValueError, match="sensitivity"):
        step(new_state(), 1.0, 0, 0)


@pytest.mark.parametrize(
    "text,points",
    [
        (
            "timestamp,value\n2024-01-01T00:00:00Z,1.5\nt2,2\n",
            [("2024-01-01T00:00:00Z", 1.5), ("t2", 2.0)],
        ),
        ("value,host,timestamp\n3,a,t1\n\n4e2,b,t2\n", [("t1", 3.0), ("t2", 400.0)]),
        ("\ufeffTimestamp , Value\n t1 , -1 \n", [("t1", -1.0)]),
        ("timestamp,value\n", []),
    ],
)
def test_read_series_csv(text, points):
    assert read_series_csv(text) == points


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "line 1: the header must name the columns timestamp,value"),
        ("1,2\n3,4\n", "line 1: the header must name"),
        ("timestamp,value\nt1,1\nt2,abc\n", "line 3: value 'abc' is not a number"),
        ("timestamp,value\nt1,1\n\nt2\n", "line 4: expected 2 columns, got 1"),
        ("timestamp,value\n,1\n", "line 2: empty timestamp"),
        ("timestamp,value\nt1,nan\n", "line 2: value 'nan' is not a finite number"),
    ],
)
def test_read_series_csv_errors(text, message):
    with pytest.raises(ValueError, match=message):
        read_series_csv(text)
