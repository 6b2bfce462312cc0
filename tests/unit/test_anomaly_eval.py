"""The scoring rule of orchestrator/anomaly_eval.py (the simplified NAB score), pinned by tables."""

import time
from datetime import UTC, datetime

import pytest

from orchestrator.monitoring.anomaly_eval import (
    PUBLISHED,
    Score,
    check_timestamps,
    evaluate,
    normalised,
    parse_labels,
    score_series,
    total,
    ts_key,
)

# 100 points at t = 0..99: probation is the first 15 (t < 15).
TIMESTAMPS = list(range(100))


@pytest.mark.parametrize(
    "flags,windows,expected",
    [
        # (hit, missed, false flags, flags counted)
        pytest.param([], [], (0, 0, 0, 0), id="nothing"),
        pytest.param([3, 14], [], (0, 0, 0, 0), id="probation: flags ignored"),
        pytest.param([14], [(10, 20)], (0, 1, 0, 0), id="probation: a flag in a window ignored"),
        pytest.param([5], [(2, 8)], (0, 1, 0, 0), id="probation: a window there is missed"),
        pytest.param([15], [], (0, 0, 1, 1), id="first point after probation counts"),
        pytest.param([17], [(10, 20)], (1, 0, 0, 1), id="window across probation's end: hit"),
        pytest.param([40], [(40, 50)], (1, 0, 0, 1), id="flag on the start edge: hit"),
        pytest.param([50], [(40, 50)], (1, 0, 0, 1), id="flag on the end edge: hit"),
        pytest.param([39], [(40, 50)], (0, 1, 1, 1), id="just before a window: miss + false"),
        pytest.param([51], [(40, 50)], (0, 1, 1, 1), id="just after a window: miss + false"),
        pytest.param([41, 42, 45, 50], [(40, 50)], (1, 0, 0, 4), id="several flags: one hit"),
        pytest.param([45], [(20, 30), (60, 70)], (0, 2, 1, 1), id="between windows: false"),
        pytest.param([25], [(20, 30), (60, 70)], (1, 1, 0, 1), id="a window with no flag: miss"),
        pytest.param(
            [20, 65, 80, 90], [(20, 30), (60, 70)], (2, 0, 2, 4), id="both hit, two false"
        ),
        pytest.param([45], [(40, 40)], (0, 1, 1, 1), id="one-point window, flag elsewhere"),
        pytest.param([40], [(40, 40)], (1, 0, 0, 1), id="one-point window, flag on it"),
    ],
)
def test_score_series(flags, windows, expected):
    s = score_series("s", TIMESTAMPS, flags, windows)
    assert (s.hit, s.missed, s.false_flags, s.flags) == expected
    assert (s.name, s.points, s.windows) == ("s", 100, len(windows))


@pytest.mark.parametrize(
    "n,ignored",
    [(100, 15), (10, 1), (7, 1), (6, 0), (1, 0), (0, 0), (4032, 604)],
)
def test_probation_is_the_first_15_percent_of_points_rounded_down(n, ignored):
    """A flag at every point: all but the probation's are counted (as false flags)."""
    timestamps = list(range(n))
    s = score_series("s", timestamps, timestamps, [])
    assert (s.flags, s.false_flags) == (n - ignored, n - ignored)


def test_iso_timestamps_score_as_numbers_do():
    """NAB's timestamps, five minutes apart; windows written as NAB writes them."""
    ts = [f"2014-04-10 {h:02d}:{m:02d}:00" for h in range(10) for m in range(0, 60, 5)]
    windows = [("2014-04-10 05:00:00.000000", "2014-04-10 06:00:00.000000")]
    s = score_series("nab", ts, ["2014-04-10 05:00:00", "2014-04-10 08:00:00"], windows)
    assert (s.hit, s.false_flags) == (1, 1)


@pytest.mark.parametrize(
    "windows,hit,false_flags,expected",
    [
        pytest.param(10, 0, 0, 0.0, id="null detector"),
        pytest.param(10, 10, 0, 100.0, id="perfect"),
        pytest.param(10, 5, 0, 50.0, id="half the windows"),
        pytest.param(64, 55, 59, 80.87, id="docs: Numenta HTM"),
        pytest.param(1, 1, 100, -450.0, id="false flags can push it below 0"),
        pytest.param(0, 0, 0, None, id="no window: undefined"),
        pytest.param(0, 0, 7, None, id="no window, false flags: still undefined"),
    ],
)
def test_normalised_score(windows, hit, false_flags, expected):
    s = Score(windows=windows, hit=hit, false_flags=false_flags)
    assert s.score == expected
    assert s.missed == windows - hit
    assert s.raw == pytest.approx(hit - (windows - hit) - 0.11 * false_flags)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_figures_follow_the_rule(name):
    """Each published (hit, false flags) over the tuning set's 64 windows gives its score."""
    hit, false_flags, score = PUBLISHED[name]
    assert round(Score(windows=64, hit=hit, false_flags=false_flags).score, 1) == score


def test_normalised_matches_nab():
    assert normalised(-64, 64) == 0.0 and normalised(64, 64) == 100.0
    assert normalised(0, 0) is None


def test_total_sums_series_and_scores_the_sum():
    a = Score(name="a", points=10, windows=2, hit=2, false_flags=0, flags=3)
    b = Score(name="b", points=20, windows=0, hit=0, false_flags=5, flags=5)
    t = total([a, b])
    assert (t.name, t.points, t.windows, t.hit, t.false_flags, t.flags) == (
        "total",
        30,
        2,
        2,
        5,
        8,
    )
    assert b.score is None and t.score == pytest.approx(100 * (2 - 0.55 + 2) / 4, abs=0.01)
    assert total([]).score is None


def test_score_dict_has_the_computed_fields():
    d = Score(name="x", windows=2, hit=1, false_flags=1).model_dump()
    assert d == {
        "name": "x",
        "points": 0,
        "windows": 2,
        "hit": 1,
        "false_flags": 1,
        "flags": 0,
        "missed": 1,
        "raw": -0.11,
        "score": 47.25,
    }


@pytest.mark.parametrize(
    "ts,expected",
    [
        (5, 5.0),
        (2.5, 2.5),
        ("12.5", 12.5),
        (" 7 ", 7.0),
        ("2014-04-10 07:15:00.000000", datetime(2014, 4, 10, 7, 15, tzinfo=UTC).timestamp()),
        ("2014-04-10 07:15:00", datetime(2014, 4, 10, 7, 15, tzinfo=UTC).timestamp()),
        ("2014-04-10T07:15:00Z", datetime(2014, 4, 10, 7, 15, tzinfo=UTC).timestamp()),
        ("2014-04-10T09:15:00+02:00", datetime(2014, 4, 10, 7, 15, tzinfo=UTC).timestamp()),
        ("2014-04-10", datetime(2014, 4, 10, tzinfo=UTC).timestamp()),
    ],
)
def test_ts_key(ts, expected):
    assert ts_key(ts) == expected


@pytest.mark.parametrize("ts", ["t5", "", "yesterday", "2014-13-01 00:00:00", "nan", "inf"])
def test_ts_key_rejects(ts):
    with pytest.raises(ValueError, match="timestamp"):
        ts_key(ts)


def test_ts_key_reads_naive_text_as_utc_whatever_the_local_zone(monkeypatch):
    """In New York's local time 02:45 on 2014-03-09 does not exist and would land after
    03:00, reordering the series; read as UTC it is 15 minutes before."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert ts_key("2014-03-09 03:00:00") - ts_key("2014-03-09 02:45:00") == 900
        assert ts_key("2014-11-02 02:00:00") - ts_key("2014-11-02 01:00:00") == 3600
    finally:
        monkeypatch.undo()
        time.tzset()


def test_parse_labels():
    data = {"a.csv": [], "dir/b.csv": [["2014-01-01 00:00:00", "2014-01-02 00:00:00"], [1, 2]]}
    assert parse_labels(data) == {
        "a.csv": [],
        "dir/b.csv": [("2014-01-01 00:00:00", "2014-01-02 00:00:00"), ("1", "2")],
    }


@pytest.mark.parametrize(
    "data,message",
    [
        ([], "labels must be a JSON object"),
        ("a.csv", "labels must be a JSON object"),
        ({"a.csv": "2014-01-01"}, r"labels\['a.csv'\]: expected a list"),
        ({"a.csv": [[1]]}, r"labels\['a.csv'\]\[0\]: expected \[start, end\]"),
        ({"a.csv": [[1, 2], [1, 2, 3]]}, r"labels\['a.csv'\]\[1\]: expected \[start, end\]"),
        ({"a.csv": ["12"]}, r"labels\['a.csv'\]\[0\]: expected \[start, end\]"),
        ({"a.csv": [["soon", 2]]}, r"labels\['a.csv'\]\[0\]: timestamp 'soon'"),
        ({"a.csv": [[5, 2]]}, r"labels\['a.csv'\]\[0\]: window \[5, 2\] ends before it starts"),
    ],
)
def test_parse_labels_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        parse_labels(data)


def test_score_series_rejects_a_reversed_window():
    with pytest.raises(ValueError, match="s: window"):
        score_series("s", TIMESTAMPS, [], [(50, 40)])


@pytest.mark.parametrize(
    "points,message",
    [
        ([("1", 0.0), ("t2", 0.0)], "point 2: timestamp 't2'"),
        ([("1", 0.0), ("3", 0.0), ("2", 0.0)], "point 3: timestamp '2' is earlier"),
    ],
)
def test_check_timestamps(points, message):
    with pytest.raises(ValueError, match=message):
        check_timestamps(points)
    check_timestamps([("1", 0.0), ("1", 1.0), ("2", 0.0)])  # equal timestamps are in order


def flags_at(*ts):
    """A detector that pages at fixed timestamps, whatever the series."""
    return lambda points, sensitivity: [t for t, _ in points if t in ts]


def test_evaluate_scores_each_series_in_order_and_reports_each():
    points = [(str(i), 1.0) for i in range(100)]
    seen = []
    scores = evaluate(
        [("a", points, [("40", "50")]), ("b", points, [])],
        2.0,
        detector=flags_at("45", "60"),
        on_series=seen.append,
    )
    assert [(s.name, s.hit, s.missed, s.false_flags) for s in scores] == [
        ("a", 1, 0, 1),
        ("b", 0, 0, 2),
    ]
    assert seen == scores


def test_evaluate_passes_the_sensitivity_to_the_detector():
    asked = []

    def detector(points, sensitivity):
        asked.append(sensitivity)
        return []

    evaluate([("a", [("1", 1.0)], [])], 3.5, detector=detector)
    assert asked == [3.5]


@pytest.mark.parametrize(
    "series,message",
    [
        ([("x.csv", [("1", 1.0), ("t", 2.0)], [])], r"^x.csv: point 2: timestamp 't'"),
        ([("x.csv", [("1", 1.0)], [("9", "3")])], r"^x.csv: window \['9', '3'\] ends before"),
    ],
)
def test_evaluate_names_the_bad_series(series, message):
    with pytest.raises(ValueError, match=message):
        evaluate(series, 2.0, detector=flags_at())


def test_evaluate_runs_the_live_backtest_by_default():
    """A flat line: the live detector has nothing to page at (no false flag); its score is
    undefined (no window)."""
    points = [(str(i), 100.0) for i in range(500)]
    [s] = evaluate([("flat", points, [])], 2.0)
    assert (s.points, s.flags, s.false_flags, s.score) == (500, 0, 0, None)
