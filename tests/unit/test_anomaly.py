import math
import random

import pytest
from pydantic import ValidationError

from orchestrator.anomaly import (
    DetectorParams,
    DetectorState,
    backtest,
    new_state,
    read_series_csv,
    step,
)


def noise(n, seed, mu=100.0, sigma=5.0):
    rng = random.Random(seed)
    return [mu + rng.gauss(0, sigma) for _ in range(n)]


def with_bursts(xs, starts, length, delta):
    xs = list(xs)
    for s in starts:
        for k in range(length):
            xs[s + k] += delta
    return xs


def indexed(xs):
    return [(str(i), v) for i, v in enumerate(xs)]


# Known synthetic series -> the indices where one page per episode must land. With the
# defaults (min_run=4) an episode starting at i is reported at i + 3.
@pytest.mark.parametrize(
    "series,sensitivity,params,expected",
    [
        pytest.param(noise(1000, 1), 2.0, {}, [], id="white noise stays quiet"),
        pytest.param(noise(1000, 2), 3.0, {"baseline": "ewma"}, [], id="white noise, ewma"),
        pytest.param(
            with_bursts(noise(400, 3), [100, 200, 300], 5, 60),
            2.0,
            {},
            ["103", "203", "303"],
            id="three spikes, one page each",
        ),
        pytest.param(
            with_bursts(noise(400, 3), [100, 200, 300], 5, -60),
            2.0,
            {"baseline": "ewma"},
            ["103", "203", "303"],
            id="three dips, ewma",
        ),
        pytest.param(
            with_bursts(noise(400, 3), [100], 5, 60), 2.0, {"direction": "down"}, [], id="up only"
        ),
        pytest.param(
            noise(300, 7) + noise(300, 8, mu=130), 2.0, {}, ["303"], id="level shift: one episode"
        ),
        pytest.param(
            noise(300, 7) + noise(300, 8, mu=130),
            2.0,
            {"baseline": "ewma"},
            ["303"],
            id="level shift, ewma",
        ),
        pytest.param(
            with_bursts(noise(300, 4), [150], 1, 1000),
            4.0,
            {"min_run": 2},
            [],
            id="single noisy point does not page",
        ),
        pytest.param(
            with_bursts(noise(300, 4), [150], 1, 1000),
            4.0,
            {"min_run": 1},
            ["150"],
            id="single point pages with min_run=1",
        ),
        pytest.param(
            with_bursts(noise(300, 5), [100, 110], 4, 60),
            2.0,
            {"cooldown": 10},
            ["103"],
            id="burst inside cooldown is the same episode",
        ),
        pytest.param(
            with_bursts(noise(300, 5), [100, 120], 4, 60),
            2.0,
            {"cooldown": 10},
            ["103", "123"],
            id="burst after cooldown is a new episode",
        ),
        pytest.param(
            with_bursts(noise(100, 6), [5], 5, 60), 2.0, {"warmup": 30}, [], id="warm-up is silent"
        ),
        pytest.param([5.0] * 200, 2.0, {}, [], id="zero variance"),
        pytest.param([5.0] * 100 + [5.01] * 20, 2.0, {}, [], id="zero variance, 0.2% wiggle"),
        pytest.param([5.0] * 100 + [10.0] * 20 + [5.0] * 80, 2.0, {}, ["103"], id="flat, step"),
        pytest.param([0.0] * 100 + [1.0] * 10, 2.0, {}, ["103"], id="all zero, then one"),
        pytest.param(
            [5.0] * 100 + [10.0] * 20, 2.0, {"baseline": "ewma"}, ["103"], id="flat, step, ewma"
        ),
    ],
)
def test_backtest_episodes(series, sensitivity, params, expected):
    assert backtest(indexed(series), sensitivity, **params) == expected


@pytest.mark.parametrize("sensitivity,pages", [(1.0, True), (20.0, False)])
def test_sensitivity_is_a_robust_z_threshold(sensitivity, pages):
    series = with_bursts(noise(200, 9), [100], 5, 25)  # a 5-sigma burst
    assert bool(backtest(indexed(series), sensitivity)) is pages


def test_detection_describes_the_onset():
    state = new_state(min_run=2, warmup=5, window=10)
    detections = []
    for i, v in enumerate([10.0, 11, 9, 10, 11, 9, 10, 50, 52, 51]):
        state, d = step(state, v, float(i), 2.0)
        detections.append(d)
    assert [i for i, d in enumerate(detections) if d] == [8]
    d = detections[8]
    assert (d.ts, d.value, d.direction) == (8.0, 52, "up")
    assert d.baseline == 10.0 and d.score > 2.0 and d.scale > 0
    assert state.in_episode and state.episodes == 1 and state.run == 3


def test_state_survives_json_between_ticks():
    series = with_bursts(noise(300, 11), [100, 200], 6, 50)
    live, fired = new_state(), []
    for ts, v in indexed(series):
        stored = live.model_dump_json()  # what the edge writes to Redis
        live, d = step(DetectorState.model_validate_json(stored), v, ts, 2.0)
        if d:
            fired.append(d.ts)
    assert fired == backtest(indexed(series), 2.0) == ["103", "203"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_a_gap(value):
    state = new_state()
    for i, v in enumerate(noise(40, 1)):
        state, _ = step(state, v, i, 2.0)
    assert step(state, value, 99, 2.0) == (state, None)


@pytest.mark.parametrize(
    "params", [{"window": 2}, {"warmup": 1}, {"min_run": 0}, {"baseline": "mean"}, {"nope": 1}]
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
