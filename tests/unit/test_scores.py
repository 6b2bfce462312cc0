"""Performance scores per agent and capability (pure): bounds, reference, decay, parsing."""

from __future__ import annotations

import pytest

from orchestrator.routing.scores import (
    RECOVERY_PER_PERIOD,
    SCORE_FLOOR,
    CapabilityStats,
    Score,
    next_score,
    optimize_scores,
    parse_stats,
    references,
)


@pytest.mark.parametrize(
    ("previous", "stats", "reference", "expected"),
    [
        (None, None, None, Score(1.0, 0)),  # a new agent starts at 1.0
        (None, CapabilityStats(10, 1.0, 20.0), 20.0, Score(1.0, 10)),  # the reference itself
        (None, CapabilityStats(10, 1.0, 300.0), 20.0, Score(70 / 350, 10)),  # slower
        (None, CapabilityStats(10, 0.5, 20.0), 20.0, Score(0.5, 10)),  # half its runs fail
        (None, CapabilityStats(10, 0.1, 5000.0), 20.0, Score(SCORE_FLOOR, 10)),  # the floor
        # no completion since the last period: a quarter of the way back to 1.0
        (Score(0.2, 10), CapabilityStats(10, 1.0, 300.0), 20.0, Score(0.4, 10)),
        (Score(0.2, 10), None, None, Score(0.4, 10)),
        (Score(1.0, 10), None, None, Score(1.0, 10)),
        # fresh data replaces the decayed value
        (Score(0.2, 10), CapabilityStats(12, 1.0, 20.0), 20.0, Score(1.0, 12)),
    ],
)
def test_next_score(previous, stats, reference, expected):
    got = next_score(previous, stats, reference)
    assert got.seen == expected.seen
    assert got.value == pytest.approx(expected.value)


def test_decay_reaches_one_from_the_floor_within_a_few_periods():
    score, periods = Score(SCORE_FLOOR, 5), 0
    while score.value < 0.9:
        score, periods = next_score(score, None, None), periods + 1
    assert periods == 8 and RECOVERY_PER_PERIOD == 0.25


@pytest.mark.parametrize(
    ("latencies", "expected"),
    [([10.0], 10.0), ([10.0, 300.0], 10.0), ([10.0, 20.0, 300.0], 20.0), ([5, 6, 7, 8], 6)],
)
def test_reference_is_the_lower_median(latencies, expected):
    stats = {(f"a{i}", "x"): CapabilityStats(1, 1.0, lat) for i, lat in enumerate(latencies)}
    assert references(stats) == {"x": expected}


def test_optimize_scores_every_registered_pair_and_only_those():
    stats = {
        ("fast", "x"): CapabilityStats(50, 1.0, 20.0),
        ("slow", "x"): CapabilityStats(50, 1.0, 300.0),
        ("gone", "x"): CapabilityStats(50, 1.0, 1.0),  # deregistered: not a reference
    }
    pairs = [("fast", "x"), ("slow", "x"), ("new", "x"), ("fast", "y")]
    got = optimize_scores(pairs, stats, {})
    assert set(got) == set(pairs)
    assert got[("fast", "x")].value == 1.0 and got[("new", "x")].value == 1.0
    assert got[("fast", "y")].value == 1.0
    assert got[("slow", "x")].value == pytest.approx(70 / 350)


def test_parse_stats_reads_the_per_type_fields_only():
    fields = {
        "a|ok": "5",
        "a|sr": "0.9",
        "a|lat": "12.5",
        "a|echo|n": "4",
        "a|echo|sr": "0.75",
        "a|echo|lat": "12.5",
        "b@host:1|echo|n": "2",  # agent ids may hold @ and :
        "b@host:1|echo|sr": "1",
        "b@host:1|echo|lat": "3",
        "c|echo|n": "1",  # incomplete: skipped
    }
    assert parse_stats(fields) == {
        ("a", "echo"): CapabilityStats(4, 0.75, 12.5),
        ("b@host:1", "echo"): CapabilityStats(2, 1.0, 3.0),
    }
