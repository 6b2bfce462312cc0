"""The ejection floor as tables.

Live agents, who is quarantined or circuit-open, the fraction -> which ejections stand and
which are refused (the agent stays eligible).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.models import (
    AgentStatus,
    CircuitBreakerConfig,
    CircuitBreakerState,
    RecoveryTier,
)
from orchestrator.models import RegisteredAgent as Agent
from orchestrator.recovery.breaker import BreakerState
from orchestrator.recovery.floor import (
    EjectionRefused,
    circuit_out,
    ejection_order,
    ejection_refusals,
    healthy_floor,
    readmitted,
    refused_ejections,
)
from orchestrator.recovery.plan import ErrorKind, plan_recovery

NOW, TIMEOUT = 1000.0, 15.0
CFG = CircuitBreakerConfig(recovery_timeout_s=30.0)
ACTIVE, QUARANTINED = AgentStatus.ACTIVE, AgentStatus.QUARANTINED
SLEEPING, OFFLINE = AgentStatus.SLEEPING, AgentStatus.OFFLINE
OPEN = CircuitBreakerState.OPEN


def agent(
    agent_id: str,
    caps: str = "x",
    status: AgentStatus = ACTIVE,
    circuit: CircuitBreakerState = CircuitBreakerState.CLOSED,
    beat: float = NOW,
) -> Agent:
    return Agent(
        agent_id=agent_id,
        capabilities=dict.fromkeys(caps.split(","), 1.0),
        status=status,
        circuit=circuit,
        queue=f"agent.{agent_id}",
        last_heartbeat=beat,
    )


def opened(at: float) -> BreakerState:
    return BreakerState(state=OPEN, opened_at=at)


@pytest.mark.parametrize(
    ("total", "fraction", "floor"),
    [
        (0, 0.5, 0),  # nothing to keep
        (1, 0.5, 1),  # the last agent is never ejected
        (2, 0.5, 1),
        (3, 0.5, 2),  # 1 of 3 is under 50 %
        (4, 0.5, 2),
        (10, 0.5, 5),
        (1, 0.01, 1),  # at least one, however small the fraction
        (10, 0.01, 1),
        (10, 0.25, 3),
        (3, 1.0, 3),  # nobody may be ejected
        (1, 0.0, 0),  # 0 turns the floor off
        (10, 0.0, 0),
    ],
)
def test_healthy_floor(total, fraction, floor):
    assert healthy_floor(total, fraction) == floor


@pytest.mark.parametrize(
    ("pools", "ejecting", "fraction", "refused"),
    [
        # The measured case: one agent offers the capability; ejecting it is refused.
        ({"flaky": ["a"]}, ["a"], 0.5, {"a": ("flaky", 0, 1, 1)}),
        # A second healthy agent: the failing one may go (1 of 2 left is 50 %).
        ({"flaky": ["a", "b"]}, ["a"], 0.5, {}),
        # Both failing: the first stands, the second is refused.
        ({"flaky": ["a", "b"]}, ["a", "b"], 0.5, {"b": ("flaky", 0, 2, 1)}),
        # Three agents at 50 %: two must stay, so only one of three ejections stands.
        (
            {"x": ["a", "b", "c"]},
            ["c", "a", "b"],
            0.5,
            {"a": ("x", 1, 3, 2), "b": ("x", 1, 3, 2)},
        ),
        # Ten agents at 50 %: five ejections stand, the sixth is refused.
        (
            {"x": [f"a{i}" for i in range(10)]},
            [f"a{i}" for i in range(6)],
            0.5,
            {"a5": ("x", 4, 10, 5)},
        ),
        # The floor off: everyone may go, the last one too.
        ({"x": ["a", "b"]}, ["a", "b"], 0.0, {}),
        # A fraction of 1: nobody may go.
        ({"x": ["a", "b"]}, ["a"], 1.0, {"a": ("x", 1, 2, 2)}),
        # An agent in two pools needs both floors: "x" has room, "y" does not.
        ({"x": ["a", "b"], "y": ["a"]}, ["a"], 0.5, {"a": ("y", 0, 1, 1)}),
        # A refused agent uses up nothing: the next one still fits.
        ({"x": ["a", "b"], "y": ["a"]}, ["a", "b"], 0.5, {"a": ("y", 0, 1, 1)}),
        # An agent in no pool (not live) is nobody's last one.
        ({"x": ["a"]}, ["gone"], 0.5, {}),
        # Named twice (quarantined and circuit-open): counted once.
        ({"x": ["a", "b"]}, ["a", "a"], 0.5, {}),
        # Nothing to eject.
        ({"x": ["a"]}, [], 0.5, {}),
    ],
)
def test_refused_ejections(pools, ejecting, fraction, refused):
    expected = {
        agent_id: EjectionRefused(agent_id, *fields) for agent_id, fields in refused.items()
    }
    assert refused_ejections(pools, ejecting, fraction) == expected


def test_circuit_out_is_what_routing_refuses():
    agents = [
        agent("closed"),
        agent("open", circuit=OPEN),
        agent("due", circuit=CircuitBreakerState.HALF_OPEN),  # past its timeout: a trial
        agent("full", circuit=CircuitBreakerState.HALF_OPEN),  # every trial slot taken
        agent("held", status=QUARANTINED, circuit=OPEN),  # counted as a quarantine
    ]
    breakers = {
        "open": opened(NOW - 5),
        "due": opened(NOW - 60),
        "full": BreakerState(
            state=CircuitBreakerState.HALF_OPEN, half_opened_at=NOW - 1, half_open_calls=3
        ),
        "held": opened(NOW - 5),
    }
    assert circuit_out(agents, breakers, CFG, NOW) == {"open": NOW - 5, "full": NOW - 1}


def test_ejection_order_puts_quarantines_first_then_the_longest_open():
    pool = [agent("a", circuit=OPEN), agent("b", circuit=OPEN), agent("q", status=QUARANTINED)]
    assert ejection_order(pool, {"a": 20.0, "b": 10.0}) == ["q", "b", "a"]


@pytest.mark.parametrize(
    ("fleet", "breakers", "fraction", "back"),
    [
        # The only agent, circuit open: routing takes it back (panic).
        ([agent("a", circuit=OPEN)], {"a": opened(NOW - 1)}, 0.5, ["a"]),
        # The only agent, quarantined (a race of two healers): taken back as well.
        ([agent("a", status=QUARANTINED)], {}, 0.5, ["a"]),
        # A healthy second agent: the open one stays out.
        ([agent("a", circuit=OPEN), agent("b")], {"a": opened(NOW - 1)}, 0.5, []),
        # Both open: the one opened last comes back.
        (
            [agent("a", circuit=OPEN), agent("b", circuit=OPEN)],
            {"a": opened(NOW - 1), "b": opened(NOW - 9)},
            0.5,
            ["a"],
        ),
        # The healthy one is asleep: it is not live, so the open one is the last.
        (
            [agent("a", circuit=OPEN), agent("b", status=SLEEPING)],
            {"a": opened(NOW - 1)},
            0.5,
            ["a"],
        ),
        # The healthy one's heartbeat is stale: same.
        (
            [agent("a", circuit=OPEN), agent("b", beat=NOW - 60)],
            {"a": opened(NOW - 1)},
            0.5,
            ["a"],
        ),
        # Another capability's agents do not count.
        ([agent("a", circuit=OPEN), agent("b", "y")], {"a": opened(NOW - 1)}, 0.5, ["a"]),
        # A quarantined agent whose heartbeat stopped is gone, not ejected.
        ([agent("a", status=QUARANTINED, beat=NOW - 60)], {}, 0.5, []),
        # The floor off.
        ([agent("a", circuit=OPEN)], {"a": opened(NOW - 1)}, 0.0, []),
        # Nothing ejected.
        ([agent("a"), agent("b")], {}, 0.5, []),
    ],
)
def test_readmitted(fleet, breakers, fraction, back):
    got = readmitted(
        fleet, ["x"], breakers=breakers, cfg=CFG, now=NOW, timeout_s=TIMEOUT, fraction=fraction
    )
    assert sorted(got) == back
    for taken in got.values():  # as routing must see it: no trial slot to ask for
        assert taken.status is ACTIVE and taken.circuit is CircuitBreakerState.CLOSED


@pytest.mark.parametrize(
    ("fleet", "who", "quarantine", "refused"),
    [
        # The measured case: the only `flaky` agent.
        ([agent("a", "flaky")], "a", True, [("flaky", 0, 1, 1)]),
        ([agent("a", "flaky", circuit=OPEN)], "a", False, [("flaky", 0, 1, 1)]),
        # A second healthy agent: both ejections stand.
        ([agent("a", "flaky"), agent("b", "flaky")], "a", True, []),
        ([agent("a", "flaky", circuit=OPEN), agent("b", "flaky")], "a", False, []),
        # The other one is quarantined already: the last one stays.
        ([agent("a"), agent("b", status=QUARANTINED)], "a", True, [("x", 0, 2, 1)]),
        ([agent("a", circuit=OPEN), agent("b", status=QUARANTINED)], "a", False, [("x", 0, 2, 1)]),
        # The other one's circuit is open: a quarantine outranks it (routing takes the open
        # one back instead), but an open circuit does not outrank an older one.
        ([agent("a"), agent("b", circuit=OPEN)], "a", True, []),
        (
            [agent("a", circuit=OPEN), agent("b", circuit=OPEN)],
            "b",
            False,
            [("x", 0, 2, 1)],
        ),
        # One refusal per capability left short.
        ([agent("a", "x,y,z"), agent("b", "y")], "a", True, [("x", 0, 1, 1), ("z", 0, 1, 1)]),
        # An agent the fleet does not know.
        ([agent("a")], "nobody", True, []),
    ],
)
def test_ejection_refusals(fleet, who, quarantine, refused):
    breakers = {"a": opened(NOW - 9), "b": opened(NOW - 1)}
    got = ejection_refusals(
        who,
        fleet,
        breakers=breakers,
        cfg=CFG,
        now=NOW,
        timeout_s=TIMEOUT,
        fraction=0.5,
        quarantine=quarantine,
    )
    assert got == [EjectionRefused(who, *fields) for fields in refused]


def test_ejection_refusals_with_the_floor_off():
    assert (
        ejection_refusals(
            "a",
            [agent("a")],
            breakers={},
            cfg=CFG,
            now=NOW,
            timeout_s=TIMEOUT,
            fraction=0.0,
            quarantine=True,
        )
        == []
    )


# --- recovery planning under the floor ---------------------------------------------------

PLAN_FLEET = [agent("a"), agent("b"), agent("c"), agent("d", "y")]


@pytest.mark.parametrize(
    ("overrides", "tier", "target", "reason"),
    [
        # The floor allows the quarantine: the task goes to an agent that has not failed it.
        ({}, RecoveryTier.QUARANTINE, "b", "agent a failed 5"),
        # ... and with every capable agent having failed it, the plan has no target: the
        # healer quarantines the agent and dead-letters the task instead of parking it.
        (
            {"failed_agents_for_task": {"a", "b", "c"}},
            RecoveryTier.QUARANTINE,
            None,
            "every capable agent failed this task",
        ),
        # The floor refuses the quarantine: the agent is still eligible, the next rules decide.
        ({"quarantine_allowed": False}, RecoveryTier.REROUTE, "b", "crash"),
        (
            {"quarantine_allowed": False, "agents": [agent("a"), agent("d", "y")]},
            RecoveryTier.RETRY,
            "a",
            "no other capable agent",
        ),
        (
            {"quarantine_allowed": False, "error_kind": ErrorKind.TRANSIENT},
            RecoveryTier.RETRY,
            "a",
            "transient",
        ),
        # Retries exhausted on the only agent: dead-lettered with the reason.
        (
            {"quarantine_allowed": False, "attempts": 2, "agents": [agent("a")]},
            RecoveryTier.ESCALATE,
            None,
            "retries exhausted",
        ),
    ],
)
def test_plan_under_the_floor(overrides, tier, target, reason):
    facts: dict[str, Any] = {
        "task_id": "t1",
        "error_kind": ErrorKind.CRASH,
        "attempts": 1,
        "max_retries": 1,
        "failed_agent": "a",
        "failed_agents_for_task": {"a"},
        "agents": PLAN_FLEET,
        "required_capabilities": ["x"],
        "agent_recent_failures": 5,
        "quarantine_threshold": 5,
        "now": NOW,
        "rng": random.Random(3),
        **overrides,
    }
    plan = plan_recovery(**facts)
    assert (plan.tier, plan.target_agent) == (tier, target)
    assert reason in plan.reason
