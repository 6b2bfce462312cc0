"""The anomaly detector's second test, beside the range rule.

The recent prediction errors against their own long-run distribution (a page when either
test fires)."""

import json
import random

import pytest

from orchestrator.monitoring.anomaly import DetectorState, backtest, new_state, step

CHANGE = 2400


def in_range_variance(seed: int) -> list[tuple[str, float]]:
    """White noise (sigma 1) with an outlier of +-6 every 150 points, so the recent range is
    +-6; from CHANGE on the spread quadruples but every point stays inside +-5.5."""
    rng = random.Random(seed)
    points = []
    for i in range(3000):
        x = rng.gauss(100, 1)
        if i % 150 == 0:
            x = 100 + rng.choice((-1, 1)) * 6
        if i >= CHANGE:
            x = 100 + max(min(rng.gauss(0, 4), 5.5), -5.5)
        points.append((str(60 * i), x))
    return points


def onsets(points, **params):
    return [int(ts) // 60 for ts in backtest(points, 2.0, season_bins=0, **params)]


ERROR = {"error_z": 1.75, "error_short": 48}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_change_of_variance_inside_the_range_is_missed_by_the_range_rule_alone(seed):
    points = in_range_variance(seed)
    assert all(v < 106 and v > 94 for _, v in points[CHANGE:])
    assert not [t for t in onsets(points, error_z=0) if t >= CHANGE]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_error_test_catches_it_within_an_hour(seed):
    found = [t for t in onsets(in_range_variance(seed), **ERROR) if t >= CHANGE]
    assert found and found[0] < CHANGE + 60


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_error_test_adds_no_page_to_unchanged_noise(seed):
    rng = random.Random(seed)
    points = [(str(60 * i), rng.gauss(100, 1)) for i in range(3000)]
    assert onsets(points, **ERROR) == onsets(points, error_z=0)


def test_the_error_tests_state_stays_bounded():
    state = new_state(season_bins=0, **ERROR)
    for i in range(200):
        state, _ = step(state, 100.0 + (50.0 if i % 2 else 0.0), float(60 * i), 2.0)
        assert state.err_n == i + 1
    assert len(state.errs) == 48


# A state the detector stored before the error test existed (30 points, small params).
OLD_STATE = (
    '{"params":{"window":10,"warmup":10,"cold_start":10,"cold_power":1.0,"history":40,"block"'
    ':5,"smooth":3,"rescale_every":10,"cooldown":10,"refractory":72,"season_bins":0,"season_d'
    'ays":3.0,"season_gain":0.8,"direction":"both","rel_floor":0.01,"min_scale":0.0},"seen":3'
    '0,"ys":[10.912945250727628,10.836655638536056,9.991148690709597,9.15377959582483,9.09442'
    "1637993376,9.867648249902228,10.762558450479602,10.956375928404503,10.27090578830787,9.3"
    '36366115787033],"means":[10.1039450712063,10.63315936630888,10.580249859991094,9.9938613'
    "08356827,9.413116641509268,9.371949827906812,9.908209446125069,10.52886087626211,10.6632"
    '8005573066,10.187882610833135],"level":10.013847219944283,"sigma":[0.8237879362534621,0.'
    '58450596528073],"highs_y":[10.909297426825681,10.989358246623382,10.99060735569487,10.65'
    '0287840157116,10.912945250727628,10.956375928404503],"highs_m":[10.630629473231147,10.68'
    "6154443527975,10.291400491507025,10.687020744226208,10.63315936630888,10.66328005573066]"
    ',"lows_y":[9.243197504692072,9.041075725336862,9.000009793449296,9.038602508120443,9.094'
    '421637993376,9.336366115787033],"lows_m":[10.0,9.334952577276669,9.306471921519831,9.333'
    '237314894566,9.413116641509268,9.371949827906812],"span":[10.99060735569487,10.687020744'
    '226208,9.000009793449296,9.306471921519831],"block":null,"block_n":0,"profile":[],"visit'
    's":[],"err_season":0.0,"err_plain":0.0,"first_ts":null,"last_ts":null,"spacing":null,"in'
    '_episode":false,"calm":0,"since_onset":null,"episodes":0}'
)


def test_a_state_stored_before_the_error_test_loads_and_steps():
    state = DetectorState.model_validate_json(OLD_STATE)
    assert state.seen == 30 and state.err_n == 0 and state.errs == ()
    raw = json.loads(OLD_STATE)
    assert "errs" not in raw and "error_z" not in raw["params"]
    state, _ = step(state, 10.0, 60.0 * 30, 2.0)
    assert state.seen == 31
    assert DetectorState.model_validate_json(state.model_dump_json()) == state
