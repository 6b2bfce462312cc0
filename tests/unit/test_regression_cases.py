"""The regression rule on synthetic run times: entering, staying, and the simulator."""

import pytest

from bench.regression_sim import (
    CASES,
    WINDOW_MINUTES,
    Case,
    Run,
    noisy,
    simulate,
    summarise,
)
from orchestrator.monitoring.regression import (
    CLEAR_SHIFT,
    MIN_SHIFT,
    RECENT_MINUTES,
    judge_regression,
    minute_median,
    split_window,
)
from orchestrator.monitoring.stats import bucket_index
from orchestrator.store.telemetry import MINUTE_WINDOW_MAX_S

CHANGE = WINDOW_MINUTES  # the change comes once the window holds a full six hours


def alternating(n, low, high):
    """n per-minute medians alternating low/high: a baseline with some spread."""
    return [low if i % 2 else high for i in range(n)]


def window(base, recent, recent_minutes=RECENT_MINUTES):
    """A six-hour window of medians: base level, then `recent` for the last minutes."""
    old = alternating(WINDOW_MINUTES - recent_minutes, base * 0.95, base * 1.05)
    return old + alternating(recent_minutes, recent * 0.97, recent * 1.03)


def test_the_simulator_uses_the_loops_window():
    assert WINDOW_MINUTES * 60 == MINUTE_WINDOW_MAX_S


@pytest.mark.parametrize(
    "hist,expected",
    [
        pytest.param({}, None, id="no runs"),
        pytest.param({bucket_index(100.0): 2}, None, id="two runs are too few"),
        pytest.param({bucket_index(100.0): 3}, pytest.approx(90.0), id="three runs"),
    ],
)
def test_minute_median(hist, expected):
    # 3 runs in the 80-100 ms bucket: rank 1.5 of 3, interpolated to 80 + 20 * 0.5
    assert minute_median(hist) == expected


def test_split_window_drops_gaps_and_keeps_the_last_minutes_as_recent():
    medians = [1.0, None, 2.0, 3.0, None, 4.0]
    assert split_window(medians, recent_minutes=3) == ([1.0, 2.0], [3.0, 4.0])
    assert split_window([5.0], recent_minutes=3) == ([], [5.0])


@pytest.mark.parametrize(
    "recent,regressed,found",
    [
        pytest.param(150.0, False, True, id="+50 % enters"),
        pytest.param(125.0, False, True, id="+25 % enters"),
        pytest.param(110.0, False, False, id="+10 % does not enter"),
        pytest.param(110.0, True, True, id="+10 % keeps a flagged type flagged"),
        pytest.param(100.0 * (1 + CLEAR_SHIFT / 2), True, False, id="+2.5 % clears"),
        pytest.param(70.0, True, False, id="faster clears"),
        pytest.param(70.0, False, False, id="faster never enters"),
    ],
)
def test_judge_enters_large_and_stays_until_small(recent, regressed, found):
    result = judge_regression(window(100.0, recent), regressed)
    assert (result is not None) is found
    if result is not None and not regressed:
        assert result.shift >= MIN_SHIFT and result.p_value < 1e-4


def test_judge_needs_ten_minutes_a_side():
    medians = [None] * (WINDOW_MINUTES - 9) + [200.0] * 9
    assert judge_regression(medians, False) is None
    assert judge_regression(medians, True) is None  # no evidence any more: the episode ends


def detected_after(run: Run) -> list[int]:
    return [t - CHANGE for t in run.onsets if t > CHANGE]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_50_percent_step_is_found_within_12_minutes_once(seed):
    run = simulate(Case("+50", "step", 0.5), seed, CHANGE + 20, CHANGE)
    assert run.onsets and run.onsets[0] > CHANGE, "no false alarm before the step"
    assert len(run.onsets) == 1
    assert 8 <= detected_after(run)[0] <= 12  # 8: the recent median moves at 8 of 15 minutes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_20_percent_step_is_found_within_an_hour(seed):
    run = simulate(Case("+20", "step", 0.2), seed, CHANGE + 60, CHANGE)
    assert len(run.onsets) == 1 and 8 <= detected_after(run)[0] <= 60


def test_a_step_is_one_event_while_the_window_absorbs_it():
    # 6.5 hours after the step the whole baseline is at the new level: the episode ended once
    run = simulate(Case("+50", "step", 0.5), 0, CHANGE + 390, CHANGE)
    assert len(run.onsets) == 1 and len(run.ends) == 1
    assert 120 <= run.ends[0] - run.onsets[0] <= 360


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_noisy_unchanged_series_never_alarms_in_a_day(seed):
    assert simulate(noisy("noisy", "flat"), seed, 1440, CHANGE).onsets == ()


@pytest.mark.parametrize("seed", [0, 1])
def test_running_faster_never_alarms(seed):
    assert simulate(Case("-30", "step", -0.3), seed, CHANGE + 360, CHANGE).onsets == ()


def test_a_drift_over_three_hours_is_found_around_plus_20_percent():
    run = simulate(Case("drift", "drift", 0.5, ramp_minutes=180), 0, CHANGE + 180, CHANGE)
    assert len(run.onsets) == 1
    # the level passes +20 % at 72 minutes; the baseline has barely moved by then
    assert 60 <= detected_after(run)[0] <= 120


def test_summary_counts_delays_false_alarms_and_repeats():
    case = Case("+50", "step", 0.5)
    runs = [Run((100, 420 + 9, 420 + 300), (430, 420 + 310)), Run((), ()), Run((420 + 11,), ())]
    s = summarise(case, runs, 720, 420)
    assert (s.detected, s.median_delay, s.p90_delay) == (2, 10.0, 11.0)
    assert s.false_alarms_per_day == pytest.approx(1 / (3 * 420 / 1440))
    assert s.repeat_events == 1
    assert s.median_flagged == pytest.approx((1 + 289) / 2)  # 430-429, and 720-431 (never ended)
    flat = summarise(noisy("n", "flat"), [Run((5, 600), (9,))], 720, 420)
    assert flat.false_alarms_per_day == pytest.approx(4.0) and flat.detected == 0


def test_every_bench_case_is_named_once():
    assert len({c.name for c in CASES}) == len(CASES)
