"""Pure routing decisions: the weighted round-robin step, eligibility and weights."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from orchestrator.models import AgentStatus, CircuitBreakerState, RegisteredAgent
from orchestrator.routing.weights import (
    agent_weight,
    effective_status,
    follow_affinity,
    integer_weights,
    is_eligible,
    performance_score,
    pick_least_loaded,
    pick_power_of_two,
    to_broker_priority,
    wrr_sequence,
    wrr_step,
)

NOW = 1_000.0


def agent(
    agent_id="a",
    caps=None,
    status=AgentStatus.ACTIVE,
    beat=NOW,
    circuit=CircuitBreakerState.CLOSED,
    score=1.0,
    in_flight=0,
    latency=None,
):
    return RegisteredAgent(
        agent_id=agent_id,
        capabilities=caps or {"echo": 1.0},
        status=status,
        queue=f"agent.{agent_id}",
        last_heartbeat=beat,
        circuit=circuit,
        performance_score=score,
        in_flight=in_flight,
        latency_ms=latency,
    )


@pytest.mark.parametrize(
    ("weights", "n", "expected"),
    [
        ({"a": 5, "b": 1, "c": 1}, 7, "aabacaa"),
        ({"a": 5, "b": 1, "c": 1}, 14, "aabacaa" * 2),
        ({"a": 1, "b": 1, "c": 1}, 6, "abcabc"),
        ({"a": 2, "b": 1}, 6, "abaaba"),
        ({"a": 1}, 3, "aaa"),
        ({"a": 1000, "b": 500, "c": 500}, 8, "abcaabca"),
    ],
)
def test_wrr_sequence(weights, n, expected):
    assert "".join(wrr_sequence(weights, n)) == expected


def test_wrr_state_returns_to_zero_after_one_cycle():
    state: dict[str, int] = {}
    for _ in range(7):
        _, state = wrr_step(state, {"a": 5, "b": 1, "c": 1})
    assert state == {"a": 0, "b": 0, "c": 0}


def test_wrr_drops_peers_that_left():
    _, state = wrr_step({"gone": 7, "a": 1}, {"a": 1, "b": 1})
    assert "gone" not in state


@pytest.mark.parametrize("weights", [{}, {"a": 0}, {"a": -1}])
def test_wrr_rejects_bad_weights(weights):
    with pytest.raises(ValueError):
        wrr_step({}, weights)


@pytest.mark.parametrize("seed", range(5))
def test_wrr_shares_match_weights_for_random_weights(seed):
    rng = random.Random(seed)
    weights = {f"p{i}": rng.randint(1, 9) for i in range(rng.randint(2, 6))}
    total = sum(weights.values())
    counts = Counter(wrr_sequence(weights, total * 3))
    assert counts == {p: w * 3 for p, w in weights.items()}


@pytest.mark.parametrize(
    ("kwargs", "required", "eligible"),
    [
        ({}, ["echo"], True),
        ({"caps": {"echo": 0.1, "sleep": 1.0}}, ["echo", "sleep"], True),
        ({}, ["echo", "sleep"], False),
        ({"status": AgentStatus.SLEEPING}, ["echo"], False),
        ({"status": AgentStatus.QUARANTINED}, ["echo"], False),
        ({"status": AgentStatus.OFFLINE}, ["echo"], False),
        ({"beat": NOW - 14.9}, ["echo"], True),
        ({"beat": NOW - 15.1}, ["echo"], False),
        ({"circuit": CircuitBreakerState.OPEN}, ["echo"], False),
        ({"circuit": CircuitBreakerState.HALF_OPEN}, ["echo"], True),
    ],
)
def test_eligibility(kwargs, required, eligible):
    assert is_eligible(agent(**kwargs), required, NOW, timeout_s=15.0) is eligible


def test_circuit_that_refuses_a_trial_makes_agent_ineligible():
    assert not is_eligible(agent(), ["echo"], NOW, 15.0, circuit_admits=False)


def test_stale_heartbeat_reads_offline():
    assert effective_status(agent(beat=NOW - 100), NOW, 15.0) is AgentStatus.OFFLINE
    # a sleeping agent's worker still beats: silence means it is gone, as for an active one
    assert effective_status(agent(status=AgentStatus.SLEEPING, beat=0), NOW, 15.0) is (
        AgentStatus.OFFLINE
    )
    assert effective_status(agent(status=AgentStatus.SLEEPING, beat=NOW - 1), NOW, 15.0) is (
        AgentStatus.SLEEPING
    )
    assert effective_status(agent(status=AgentStatus.QUARANTINED, beat=0), NOW, 15.0) is (
        AgentStatus.QUARANTINED
    )


@pytest.mark.parametrize(
    ("kwargs", "required", "intelligent", "weight"),
    [
        ({"caps": {"echo": 0.5}}, ["echo"], True, 0.5),
        ({"caps": {"echo": 0.5, "x": 0.2}}, ["echo", "x"], True, 0.2),
        ({"caps": {"echo": 0.5}, "score": 0.5}, ["echo"], True, 0.25),
        ({"caps": {"echo": 1.0}, "circuit": CircuitBreakerState.HALF_OPEN}, ["echo"], True, 0.25),
        ({"caps": {"echo": 0.1}, "score": 0.1}, ["echo"], False, 1.0),
    ],
)
def test_weights(kwargs, required, intelligent, weight):
    assert agent_weight(agent(**kwargs), required, intelligent) == pytest.approx(weight)


def test_integer_weights_never_zero():
    agents = [agent("a", {"echo": 1.0}), agent("b", {"echo": 0.0001})]
    assert integer_weights(agents, ["echo"], True) == {"a": 1000, "b": 1}


@pytest.mark.parametrize(
    ("ok", "fail", "latency", "reference", "recent", "expected"),
    [
        (0, 0, None, None, None, 1.0),  # a new agent
        (100, 0, 1.0, 2.0, None, 1.0),  # sub-floor latency differences do not count
        (0, 4, None, None, None, 0.5),  # smoothed: four failures halve a new agent's score
        (10, 0, 450.0, 50.0, None, 0.2),  # five times slower than the fleet: a fifth
        (10, 10, None, None, 0.3, 0.3),  # the recent rate wins over lifetime counts
        (0, 1000, None, None, 0.0, 0.05),  # never below the floor: it may still recover
    ],
)
def test_performance_score(ok, fail, latency, reference, recent, expected):
    assert performance_score(ok, fail, latency, reference, recent) == pytest.approx(expected)


def test_least_loaded_divides_in_flight_by_weight():
    a, b = agent("a", in_flight=4), agent("b", in_flight=1)
    assert pick_least_loaded([a, b], {"a": 1000, "b": 1000}).agent_id == "b"
    assert pick_least_loaded([a, b], {"a": 1000, "b": 100}).agent_id == "a"


@pytest.mark.parametrize(
    ("fleet", "picked"),
    [
        ({"fast": {"latency": 5.0}, "slow": {"latency": 500.0}}, {"fast"}),
        ({"idle": {}, "busy": {"in_flight": 10}}, {"idle"}),
        ({"a": {}, "b": {}, "busy": {"in_flight": 3}}, {"a", "b"}),  # the worst never wins
        ({"a": {}, "b": {}, "c": {}}, {"a", "b", "c"}),  # ties are shared, not all to "a"
        ({"ok": {"latency": 10.0}, "unsure": {"latency": 10.0, "score": 0.5}}, {"ok"}),
        ({"only": {"in_flight": 99}}, {"only"}),
    ],
)
def test_power_of_two_picks_the_cheaper_of_two(fleet, picked):
    agents = [agent(agent_id, **kwargs) for agent_id, kwargs in fleet.items()]
    rng = random.Random(1)
    assert {pick_power_of_two(agents, rng).agent_id for _ in range(200)} == picked


@pytest.mark.parametrize(
    ("stuck", "eligible", "fallback", "expected"),
    [
        (None, {"a", "b"}, "b", "b"),  # a new key takes the router's pick
        ("a", {"a", "b"}, "b", "a"),  # held while its agent stays eligible
        ("a", {"a"}, "a", "a"),
        ("gone", {"a", "b"}, "b", "b"),  # moved when it is not
        ("a", {"b"}, "b", "b"),
        ("a", set(), "b", "b"),
    ],
)
def test_affinity_holds_while_eligible_and_moves_when_not(stuck, eligible, fallback, expected):
    assert follow_affinity(stuck, eligible, fallback) == expected


@pytest.mark.parametrize(("priority", "broker"), [(9, 0), (5, 4), (0, 9)])
def test_priority_mapping_puts_nine_first(priority, broker):
    assert to_broker_priority(priority) == broker


# --- when a router's view of the fleet expires by the clock ---------------------------------


def _view_agent(agent_id: str, beat: float, status: AgentStatus = AgentStatus.ACTIVE):
    return RegisteredAgent(
        agent_id=agent_id,
        capabilities={"echo": 1.0},
        queue=f"agent.{agent_id}",
        status=status,
        last_heartbeat=beat,
    )


def test_a_view_expires_when_its_first_live_heartbeat_goes_stale():
    from orchestrator.routing.router import view_expiry
    from orchestrator.store import Fleet

    fleet = Fleet(
        [
            _view_agent("a", 98.0),  # stale at 98 + 15 = 113
            _view_agent("b", 99.0),
            _view_agent("gone", 80.0),  # already stale at the read: excluded, not due
            _view_agent("asleep", 90.0, AgentStatus.SLEEPING),  # not routed to anyway
        ]
    )
    assert view_expiry(fleet, 100.0, 15.0, None) == 105.0  # the 5 s maximum age first
    assert view_expiry(fleet, 100.0, 15.0, None, max_age_s=60) == 113.0
    assert view_expiry(Fleet([]), 100.0, 15.0, None) == 105.0


def test_a_view_expires_when_an_open_breaker_is_due_for_its_trial():
    from orchestrator.models import CircuitBreakerConfig
    from orchestrator.recovery.breaker import BreakerState
    from orchestrator.routing.router import view_expiry
    from orchestrator.store import Fleet

    cfg = CircuitBreakerConfig(recovery_timeout_s=30)
    fleet = Fleet(
        [_view_agent("a", 99.0)],
        {
            "a": BreakerState(state=CircuitBreakerState.OPEN, opened_at=80.0),  # due at 110
            "b": BreakerState(state=CircuitBreakerState.HALF_OPEN, half_opened_at=90.0),  # 120
            "c": BreakerState(state=CircuitBreakerState.OPEN, opened_at=10.0),  # already due
        },
    )
    assert view_expiry(fleet, 100.0, 600.0, cfg, max_age_s=60) == 110.0
    assert view_expiry(fleet, 100.0, 600.0, None, max_age_s=60) == 160.0  # breakers off
