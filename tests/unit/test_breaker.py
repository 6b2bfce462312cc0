"""The breaker's state machine, as tables of (config, operations) -> outcome."""

from __future__ import annotations

import pytest

from orchestrator.models import CircuitBreakerConfig, CircuitBreakerState
from orchestrator.recovery.breaker import (
    Admission,
    BreakerState,
    BreakerTransition,
    admit,
    current_state,
    from_redis_hash,
    record_failure,
    record_success,
    to_redis_hash,
    would_admit,
)

CLOSED, OPEN, HALF = (
    CircuitBreakerState.CLOSED,
    CircuitBreakerState.OPEN,
    CircuitBreakerState.HALF_OPEN,
)

# Consecutive-failure opening only: the rate rule cannot fire before 1000 calls.
CONSEC = CircuitBreakerConfig(
    failure_threshold=3,
    recovery_timeout_s=60,
    half_open_max_calls=3,
    success_threshold=2,
    window_size=1000,
    minimum_calls=1000,
)
# Failure-rate opening only: the consecutive rule cannot fire.
RATE = CircuitBreakerConfig(
    failure_threshold=1000, failure_rate_threshold=0.5, window_size=4, minimum_calls=4
)


def run(
    cfg: CircuitBreakerConfig, ops: list[tuple[str, float]], state: BreakerState | None = None
) -> tuple[BreakerState, list[str], list[bool]]:
    """Apply `ok`/`fail`/`admit` at the given times; collect transitions and admissions."""
    state = state or BreakerState()
    transitions: list[str] = []
    admitted: list[bool] = []
    for op, now in ops:
        if op == "admit":
            ok, state, transition = admit(state, cfg, now)
            admitted.append(ok)
        elif op == "ok":
            state, transition = record_success(state, cfg, now)
        elif op == "fail":
            state, transition = record_failure(state, cfg, now)
        else:
            raise AssertionError(op)
        if transition is not None:
            transitions.append(transition.value)
    return state, transitions, admitted


def fails(n: int, now: float = 0.0) -> list[tuple[str, float]]:
    return [("fail", now)] * n


def oks(n: int, now: float = 0.0) -> list[tuple[str, float]]:
    return [("ok", now)] * n


OPENED_AT_0 = fails(3)  # opens CONSEC at t=0


@pytest.mark.parametrize(
    "cfg,ops,state,transitions,admitted",
    [
        # closed -> open after failure_threshold consecutive failures
        (CONSEC, fails(2), CLOSED, [], []),
        (CONSEC, fails(3), OPEN, ["opened"], []),
        (CircuitBreakerConfig(failure_threshold=1), fails(1), OPEN, ["opened"], []),
        # a success in between resets the consecutive count
        (CONSEC, fails(2) + oks(1) + fails(2), CLOSED, [], []),
        (CONSEC, fails(2) + oks(1) + fails(3), OPEN, ["opened"], []),
        # failure-rate opening: needs minimum_calls outcomes in the window
        (RATE, [("ok", 0), ("fail", 0), ("ok", 0)], CLOSED, [], []),
        (RATE, [("ok", 0), ("fail", 0), ("ok", 0), ("fail", 0)], OPEN, ["opened"], []),
        (RATE, oks(3) + fails(1), CLOSED, [], []),  # 25 % < 50 %
        # the window is bounded: SSSS FF leaves SSFF (50 %), though 2/6 overall is not
        (RATE, oks(4) + fails(2), OPEN, ["opened"], []),
        (RATE, fails(2) + oks(4) + fails(1), CLOSED, [], []),  # window SSSF
        # only a failure can trip the rate rule
        (RATE, fails(1) + oks(1) + fails(1) + oks(1), CLOSED, [], []),
        # a rate like 0.3 must compare exactly (3/10 >= 0.3), as Lua's division would
        (
            CircuitBreakerConfig(
                failure_threshold=1000,
                failure_rate_threshold=0.3,
                window_size=10,
                minimum_calls=10,
            ),
            oks(7) + fails(3),
            OPEN,
            ["opened"],
            [],
        ),
        # a window shorter than minimum_calls never opens on rate
        (
            CircuitBreakerConfig(failure_threshold=1000, window_size=3, minimum_calls=5),
            fails(10),
            CLOSED,
            [],
            [],
        ),
        # closed always admits
        (CONSEC, [("admit", 0)] * 5, CLOSED, [], [True] * 5),
        # open refuses until recovery_timeout_s has passed, then half-opens on that call
        (CONSEC, [*OPENED_AT_0, ("admit", 1), ("admit", 59.9)], OPEN, ["opened"], [False] * 2),
        (CONSEC, [*OPENED_AT_0, ("admit", 60)], HALF, ["opened", "half_opened"], [True]),
        # half-open admits exactly half_open_max_calls trials
        (
            CONSEC,
            [*OPENED_AT_0, ("admit", 60), ("admit", 61), ("admit", 62), ("admit", 63)],
            HALF,
            ["opened", "half_opened"],
            [True, True, True, False],
        ),
        (
            CONSEC.model_copy(update={"half_open_max_calls": 1}),
            [*OPENED_AT_0, ("admit", 60), ("admit", 61)],
            HALF,
            ["opened", "half_opened"],
            [True, False],
        ),
        # any failure in half-open reopens, restarting the timeout from that moment
        (
            CONSEC,
            [*OPENED_AT_0, ("admit", 60), ("fail", 61), ("admit", 120), ("admit", 121)],
            HALF,
            ["opened", "half_opened", "opened", "half_opened"],
            [True, False, True],
        ),
        (
            CONSEC,
            [*OPENED_AT_0, ("admit", 60), ("ok", 61), ("fail", 62)],
            OPEN,
            ["opened", "half_opened", "opened"],
            [True],
        ),
        # success_threshold successes close it
        (
            CONSEC,
            [*OPENED_AT_0, ("admit", 60), ("ok", 61)],
            HALF,
            ["opened", "half_opened"],
            [True],
        ),
        (
            CONSEC,
            [*OPENED_AT_0, ("admit", 60), ("admit", 60), ("ok", 61), ("ok", 62)],
            CLOSED,
            ["opened", "half_opened", "closed"],
            [True, True],
        ),
        # success_threshold above half_open_max_calls: all trials succeeding must close
        (
            CONSEC.model_copy(update={"half_open_max_calls": 2, "success_threshold": 5}),
            [*OPENED_AT_0, ("admit", 60), ("admit", 60), ("ok", 61), ("ok", 61)],
            CLOSED,
            ["opened", "half_opened", "closed"],
            [True, True],
        ),
        # transitions reported exactly once: late results while open change nothing
        (CONSEC, fails(10), OPEN, ["opened"], []),
        (CONSEC, [*OPENED_AT_0, ("ok", 1), ("fail", 2), ("ok", 3)], OPEN, ["opened"], []),
        # ... and results in a closed breaker after closing do not re-announce
        (
            CONSEC,
            [*OPENED_AT_0, ("admit", 60), ("ok", 61), ("ok", 62), ("ok", 63), ("ok", 64)],
            CLOSED,
            ["opened", "half_opened", "closed"],
            [True],
        ),
        # a round whose trials never report (agent died) restarts after recovery_timeout_s
        (
            CONSEC.model_copy(update={"half_open_max_calls": 1}),
            [*OPENED_AT_0, ("admit", 60), ("admit", 119), ("admit", 120), ("admit", 121)],
            HALF,
            ["opened", "half_opened"],
            [True, False, True, False],
        ),
    ],
)
def test_transitions(cfg, ops, state, transitions, admitted):
    final, seen, got = run(cfg, ops)
    assert final.state is state
    assert seen == transitions
    assert got == admitted


@pytest.mark.parametrize(
    "ops",
    [
        [*OPENED_AT_0, ("admit", 60), ("ok", 61), ("ok", 62)],
        [
            *OPENED_AT_0,
            *[("admit", 60), ("admit", 60), ("fail", 61)],  # reopens at 61
            *[("admit", 121), ("ok", 122), ("admit", 122), ("ok", 123)],
        ],
    ],
)
def test_closing_resets_every_counter(ops):
    final, transitions, _ = run(CONSEC, ops)
    assert transitions[-1] == "closed"
    assert final == BreakerState()


@pytest.mark.parametrize(
    "ops,opened_at,half_opened_at,calls,successes",
    [
        (OPENED_AT_0, 0.0, None, 0, 0),
        ([*OPENED_AT_0, ("admit", 75)], 0.0, 75.0, 1, 0),
        ([*OPENED_AT_0, ("admit", 75), ("admit", 76), ("ok", 77)], 0.0, 75.0, 2, 1),
        ([*OPENED_AT_0, ("admit", 75), ("fail", 80)], 80.0, None, 0, 0),
    ],
)
def test_counters(ops, opened_at, half_opened_at, calls, successes):
    final, _, _ = run(CONSEC, ops)
    assert final.opened_at == opened_at
    assert final.half_opened_at == half_opened_at
    assert final.half_open_calls == calls
    assert final.half_open_successes == successes


@pytest.mark.parametrize(
    "state,now,expected",
    [
        (BreakerState(), 0, CLOSED),
        (BreakerState(state=OPEN, opened_at=100), 100, OPEN),
        (BreakerState(state=OPEN, opened_at=100), 159.99, OPEN),
        (BreakerState(state=OPEN, opened_at=100), 160, HALF),  # past its timeout
        (BreakerState(state=HALF, opened_at=0, half_opened_at=60, half_open_calls=3), 61, HALF),
    ],
)
def test_current_state(state, now, expected):
    assert current_state(state, CONSEC, now) is expected


@pytest.mark.parametrize(
    "state",
    [
        BreakerState(state=OPEN, opened_at=100),
        BreakerState(state=HALF, opened_at=0, half_opened_at=60, half_open_calls=3),
    ],
)
def test_with_breakers_off_every_breaker_reads_closed(state):
    assert current_state(state, None, 120) is CLOSED


@pytest.mark.parametrize(
    "state,now,expected",
    [
        (BreakerState(), 0, True),
        (BreakerState(state=OPEN, opened_at=100), 120, False),
        (BreakerState(state=OPEN, opened_at=100), 160, True),
        (BreakerState(state=HALF, half_opened_at=60, half_open_calls=2), 61, True),
        (BreakerState(state=HALF, half_opened_at=60, half_open_calls=3), 61, False),
    ],
)
def test_would_admit_takes_no_slot(state, now, expected):
    assert would_admit(state, CONSEC, now) is expected
    assert would_admit(state, CONSEC, now) is expected  # asking again changes nothing


def test_admit_is_a_plain_pair_first():
    result = admit(BreakerState(), CONSEC, 0)
    assert isinstance(result, Admission)
    ok, state = result[:2]
    assert (ok, state) == (True, BreakerState())


@pytest.mark.parametrize(
    "transition,event",
    [
        (BreakerTransition.OPENED, "circuit.opened"),
        (BreakerTransition.CLOSED, "circuit.closed"),
        (BreakerTransition.HALF_OPENED, "circuit.half_opened"),
    ],
)
def test_event_type(transition, event):
    assert transition.event_type == event


@pytest.mark.parametrize(
    "state",
    [
        BreakerState(),
        BreakerState(consecutive_failures=2, outcomes="SSFSF"),
        BreakerState(state=OPEN, opened_at=1_700_000_000.123456),
        BreakerState(
            state=HALF,
            opened_at=0.1,
            half_opened_at=60.1,
            half_open_calls=2,
            half_open_successes=1,
        ),
    ],
)
def test_redis_hash_round_trip(state):
    mapping = to_redis_hash(state)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
    assert from_redis_hash(mapping) == state
    as_bytes = {k.encode(): v.encode() for k, v in mapping.items()}
    assert from_redis_hash(as_bytes) == state
    assert BreakerState.model_validate_json(state.model_dump_json()) == state


@pytest.mark.parametrize(
    "mapping,expected",
    [
        ({}, BreakerState()),  # an agent never seen reads as closed
        ({"state": "open", "opened_at": "5"}, BreakerState(state=OPEN, opened_at=5.0)),
        ({"opened_at": "", "consecutive_failures": "2"}, BreakerState(consecutive_failures=2)),
    ],
)
def test_from_partial_hash(mapping, expected):
    assert from_redis_hash(mapping) == expected


@pytest.mark.parametrize("outcomes", ["x", "SF1", "sf"])
def test_outcomes_reject_other_characters(outcomes):
    with pytest.raises(ValueError, match="only"):
        BreakerState(outcomes=outcomes)
