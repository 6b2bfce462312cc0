"""Leave-one-group-out evaluation of the anomaly detector (monitoring/anomaly_cv.py).

The split, the choice made without the held-out group, and a run over small synthetic series."""

import random

import pytest

from orchestrator.monitoring.anomaly_cv import (
    best_setting,
    cross_validate,
    group_of,
    leave_one_group_out,
)
from orchestrator.monitoring.anomaly_eval import Score


def sc(name, windows, hit, false_flags=0):
    return Score(name=name, points=100, windows=windows, hit=hit, false_flags=false_flags)


@pytest.mark.parametrize(
    "name,group",
    [("realTraffic/x.csv", "realTraffic"), ("a/b/c.csv", "a"), ("x.csv", "x.csv")],
)
def test_group_is_the_first_folder(name, group):
    assert group_of(name) == group


def test_best_setting_ignores_what_is_held_out_and_prefers_the_earlier_on_a_tie():
    # Setting 0 is better on series 0 and 1, setting 1 only on series 2.
    per_setting = [
        [sc("a", 2, 2), sc("b", 2, 2), sc("c", 2, 0)],
        [sc("a", 2, 1), sc("b", 2, 1), sc("c", 2, 2)],
    ]
    assert best_setting(per_setting, [True, True, False]) == 0
    assert best_setting(per_setting, [False, False, True]) == 1
    tied = [[sc("a", 2, 1)], [sc("a", 2, 1)]]
    assert best_setting(tied, [True]) == 0
    assert best_setting(per_setting, [False, False, False]) == 0  # no window: no score


def test_each_group_is_scored_with_the_setting_chosen_on_the_others():
    settings = [{"sensitivity": 2.0}, {"sensitivity": 1.0}]
    groups = ["g1", "g2", "g3"]
    # Setting 1 is the better one on g3 alone, and poor elsewhere.
    per_setting = [
        [sc("a", 4, 3), sc("b", 4, 3), sc("c", 4, 2)],
        [sc("a", 4, 1), sc("b", 4, 1), sc("c", 4, 3)],
    ]
    cv = leave_one_group_out(settings, per_setting, groups)
    assert [r.group for r in cv.groups] == groups
    assert [r.setting["sensitivity"] for r in cv.groups] == [2.0, 2.0, 2.0]
    assert [r.held_out.hit for r in cv.groups] == [3, 3, 2]
    assert cv.groups[2].held_out.score == 50.0  # 2 of 4: raw 0, 100 * 4 / 8
    assert cv.groups[2].chosen_on == 75.0  # setting 0 on g1 and g2: 6 of 8
    assert cv.mean == pytest.approx((75 + 75 + 50) / 3, abs=0.01)
    assert (cv.pooled.hit, cv.pooled.windows) == (8, 12)
    assert cv.in_sample.hit == 8 and cv.in_sample_setting == {"sensitivity": 2.0}


def test_a_group_without_windows_has_no_score_but_its_false_flags_count():
    settings = [{"sensitivity": 2.0}, {"sensitivity": 1.0}]
    groups = ["quiet", "g1", "g2"]
    per_setting = [
        [sc("q", 0, 0, 0), sc("a", 4, 2), sc("b", 4, 2)],
        [sc("q", 0, 0, 30), sc("a", 4, 3), sc("b", 4, 3)],
    ]
    cv = leave_one_group_out(settings, per_setting, groups)
    quiet = cv.groups[0]
    assert quiet.setting == {"sensitivity": 1.0} and quiet.held_out.score is None
    assert quiet.held_out.false_flags == 30
    # Holding out g1 or g2, the quiet group's 30 false flags make setting 1 the worse choice.
    assert [r.setting["sensitivity"] for r in cv.groups[1:]] == [2.0, 2.0]
    assert cv.mean == 50.0  # the mean is over groups with windows
    assert cv.pooled.false_flags == 30


def test_bad_input():
    with pytest.raises(ValueError, match="two groups"):
        leave_one_group_out([{"sensitivity": 2.0}], [[sc("a", 1, 1)]], ["g"])
    with pytest.raises(ValueError, match="one list of scores per setting"):
        leave_one_group_out([{"sensitivity": 2.0}], [], ["g", "h"])


def _series(name, seed, spike_at, n=900):
    rng = random.Random(seed)
    points = []
    for i in range(n):
        value = 100 + rng.gauss(0, 5) + (80 if spike_at <= i < spike_at + 3 else 0)
        points.append((str(1_700_006_400 + 60 * i), value))
    window = (points[spike_at - 5][0], points[spike_at + 20][0])
    return name, points, [window]


def test_cross_validate_runs_the_backtest_on_every_setting():
    series = [
        _series(f"g{g}/s{k}.csv", 10 * g + k, 500 + 20 * k) for g in range(2) for k in range(2)
    ]
    settings = [{"sensitivity": 2.0}, {"sensitivity": 1000.0, "smooth": 6}]
    seen = []
    cv = cross_validate(series, settings, processes=1, on_setting=seen.append)
    assert seen == [1, 2]
    assert [r.group for r in cv.groups] == ["g0", "g1"]
    assert all(r.setting == {"sensitivity": 2.0} for r in cv.groups)
    assert cv.pooled.hit == 4 and cv.mean == 100.0 and cv.in_sample.score == 100.0
