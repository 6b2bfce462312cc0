"""Recovery planning as tables of facts -> (tier, target), plus the backoff bounds."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.models import AgentStatus, RecoveryTier, RegisteredAgent
from orchestrator.recovery.plan import (
    ErrorKind,
    backoff_delay,
    capable,
    pick_reroute_target,
    plan_recovery,
)

RETRY, REROUTE, QUARANTINE, ESCALATE = (
    RecoveryTier.RETRY,
    RecoveryTier.REROUTE,
    RecoveryTier.QUARANTINE,
    RecoveryTier.ESCALATE,
)
OFFLINE, SLEEPING, QUARANTINED = AgentStatus.OFFLINE, AgentStatus.SLEEPING, AgentStatus.QUARANTINED


def agent(
    agent_id: str,
    caps: dict[str, float] | None = None,
    status: AgentStatus = AgentStatus.ACTIVE,
    score: float = 1.0,
) -> RegisteredAgent:
    return RegisteredAgent(
        agent_id=agent_id,
        capabilities={"x": 1.0} if caps is None else caps,
        status=status,
        queue=f"agent.{agent_id}",
        performance_score=score,
    )


# "a" fails the task; "b" outweighs "c"; "d" lacks the capability.
A, B, C, D = agent("a"), agent("b", {"x": 0.9}), agent("c", {"x": 0.5}), agent("d", {"y": 1})
FLEET = [A, B, C, D]


def plan(**overrides: Any):
    kwargs: dict[str, Any] = {
        "task_id": "t1",
        "error_kind": ErrorKind.TRANSIENT,
        "attempts": 1,
        "max_retries": 3,
        "failed_agent": "a",
        "failed_agents_for_task": {"a"},
        "agents": FLEET,
        "required_capabilities": ["x"],
        "agent_recent_failures": 0,
        "quarantine_threshold": 5,
        "now": 1000.0,
        "rng": random.Random(7),
    }
    kwargs.update(overrides)
    return plan_recovery(**kwargs)


@pytest.mark.parametrize(
    "overrides,tier,target,reason",
    [
        # permanent and poison escalate at once, whatever else is true
        ({"error_kind": ErrorKind.PERMANENT}, ESCALATE, None, "permanent"),
        ({"error_kind": "permanent", "agent_recent_failures": 9}, ESCALATE, None, "permanent"),
        ({"error_kind": ErrorKind.POISON}, ESCALATE, None, "poison"),
        # retries exhausted: attempts >= max_retries + 1
        ({"attempts": 4}, ESCALATE, None, "retries exhausted"),
        ({"attempts": 1, "max_retries": 0}, ESCALATE, None, "retries exhausted"),
        ({"error_kind": ErrorKind.CRASH, "attempts": 9}, ESCALATE, None, "retries exhausted"),
        ({"attempts": 3}, RETRY, "a", "transient"),
        # a failing agent is quarantined; the task goes to the best agent that has not failed it
        ({"agent_recent_failures": 5}, QUARANTINE, "b", "agent a failed 5"),
        ({"error_kind": ErrorKind.CRASH, "agent_recent_failures": 6}, QUARANTINE, "b", "agent a"),
        (
            {"agent_recent_failures": 5, "failed_agents_for_task": {"a", "b"}},
            QUARANTINE,
            "c",
            "agent a",
        ),
        ({"agent_recent_failures": 5, "agents": [A, D]}, QUARANTINE, None, "agent a"),
        ({"agent_recent_failures": 4}, RETRY, "a", "transient"),
        ({"agent_recent_failures": 5, "failed_agent": None}, REROUTE, "b", "no failing agent"),
        # transient / timeout: same agent after backoff, unless it is no longer eligible
        ({}, RETRY, "a", "transient"),
        ({"error_kind": ErrorKind.TIMEOUT}, RETRY, "a", "timeout"),
        ({"agents": [agent("a", status=OFFLINE), B, C]}, REROUTE, "b", "not eligible"),
        ({"agents": [agent("a", status=SLEEPING), B, C]}, REROUTE, "b", "not eligible"),
        ({"agents": [agent("a", {"y": 1}), B, C]}, REROUTE, "b", "not eligible"),
        ({"agents": [B, C]}, REROUTE, "b", "not eligible"),  # gone from the registry
        (
            {"error_kind": ErrorKind.TIMEOUT, "agents": [agent("a", status=OFFLINE), D]},
            ESCALATE,
            None,
            "no other capable agent",
        ),
        # crash / lost: the highest-weight capable agent that has not failed this task
        ({"error_kind": ErrorKind.CRASH}, REROUTE, "b", "crash"),
        ({"error_kind": ErrorKind.LOST}, REROUTE, "b", "lost"),
        ({"error_kind": "crash", "failed_agents_for_task": {"a", "b"}}, REROUTE, "c", "crash"),
        (
            {"error_kind": ErrorKind.CRASH, "agents": [A, agent("b", status=QUARANTINED), C]},
            REROUTE,
            "c",
            "crash",
        ),
        # ... failing that, the same agent if it is still eligible, else escalate
        (
            {"error_kind": ErrorKind.CRASH, "failed_agents_for_task": {"a", "b", "c"}},
            RETRY,
            "a",
            "no other capable agent",
        ),
        ({"error_kind": ErrorKind.CRASH, "agents": [A, D]}, RETRY, "a", "no other"),
        (
            {"error_kind": ErrorKind.LOST, "agents": [agent("a", status=OFFLINE), D]},
            ESCALATE,
            None,
            "no other capable agent",
        ),
        ({"error_kind": ErrorKind.LOST, "agents": []}, ESCALATE, None, "no other capable agent"),
    ],
)
def test_tiers(overrides, tier, target, reason):
    result = plan(**overrides)
    assert result.tier is tier
    assert result.target_agent == target
    assert reason in result.reason
    assert result.task_id == "t1"
    assert result.created_at == 1000.0
    assert result.deadline == 1000.0 + 300.0
    assert result.attempt == overrides.get("attempts", 1)
    assert result.failed_agent == overrides.get("failed_agent", "a")
    if tier is not RETRY:
        assert result.delay_s == 0.0


@pytest.mark.parametrize(
    "agents,required,exclude,expected",
    [
        ([B, C], ["x"], set(), "b"),
        ([C, B], ["x"], set(), "b"),  # order of the list does not matter
        ([agent("b", score=0.4), C], ["x"], set(), "c"),  # 0.9 x 0.4 < 0.5 x 1.0
        # weight is the lowest required proficiency x performance score
        (
            [agent("p", {"x": 1.0, "y": 0.2}), agent("q", {"x": 0.5, "y": 0.5})],
            ["x", "y"],
            set(),
            "q",
        ),
        ([agent("p", {"x": 1.0}), agent("q", {"x": 0.5, "y": 0.5})], ["x", "y"], set(), "q"),
        ([agent("z"), agent("m"), agent("n")], ["x"], set(), "m"),  # ties: lowest id
        ([agent("z"), agent("m")], [], {"m"}, "z"),  # no requirement: any active agent
        ([B, C], ["x"], {"b", "c"}, None),
        ([D], ["x"], set(), None),
    ],
)
def test_pick_reroute_target(agents, required, exclude, expected):
    got = pick_reroute_target(agents, required, exclude)
    assert (got.agent_id if got else None) == expected


@pytest.mark.parametrize("seed", range(40))
def test_reroute_never_picks_a_failed_agent(seed):
    rng = random.Random(seed)
    ids = [f"g{i}" for i in range(6)]
    agents = [
        agent(
            i,
            {c: rng.choice([0.2, 0.5, 1.0]) for c in rng.sample(["x", "y"], rng.randint(1, 2))},
            rng.choice(list(AgentStatus)),
            rng.choice([0.1, 0.5, 1.0]),
        )
        for i in ids
    ]
    failed_agent = rng.choice(ids)
    failed = {failed_agent, *rng.sample(ids, rng.randint(0, 5))}
    result = plan(
        error_kind=rng.choice(list(ErrorKind)),
        attempts=rng.randint(0, 4),
        failed_agent=failed_agent,
        failed_agents_for_task=failed,
        agents=agents,
        required_capabilities=rng.sample(["x", "y"], rng.randint(1, 2)),
        agent_recent_failures=rng.randint(0, 6),
        rng=rng,
    )
    if result.tier in (REROUTE, QUARANTINE):
        assert result.target_agent not in failed
        assert result.target_agent != failed_agent
    if result.tier is RETRY:
        assert result.target_agent == failed_agent


@pytest.mark.parametrize("attempts", [0, 1, 2, 3])
@pytest.mark.parametrize("recent_failures", [0, 10])
@pytest.mark.parametrize("agents", [FLEET, [A], []])
def test_permanent_is_never_retried(attempts, recent_failures, agents):
    result = plan(
        error_kind=ErrorKind.PERMANENT,
        attempts=attempts,
        agent_recent_failures=recent_failures,
        agents=agents,
    )
    assert result.tier is ESCALATE
    assert result.target_agent is None


@pytest.mark.parametrize(
    "attempt,base,cap,ceiling",
    [
        (0, 1.0, 60.0, 1.0),
        (1, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 8.0),
        (5, 1.0, 60.0, 32.0),
        (6, 1.0, 60.0, 60.0),  # 64 capped
        (3, 0.5, 60.0, 4.0),
        (10_000, 1.0, 60.0, 60.0),  # no overflow
        (-1, 1.0, 60.0, 1.0),
    ],
)
def test_backoff_within_bounds(attempt, base, cap, ceiling):
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base, cap, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.9  # full jitter reaches the top of the range


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_backoff_is_deterministic_with_a_seeded_rng(seed):
    first = [backoff_delay(a, 1.0, 60.0, random.Random(seed)) for a in range(8)]
    again = [backoff_delay(a, 1.0, 60.0, random.Random(seed)) for a in range(8)]
    assert first == again
    retried = plan(attempts=2, rng=random.Random(seed))
    assert retried.tier is RETRY
    assert retried.delay_s == backoff_delay(2, 1.0, 60.0, random.Random(seed))


@pytest.mark.parametrize(
    "base,cap,attempts",
    [(1.0, 60.0, 1), (2.0, 3.0, 3), (0.1, 0.1, 2)],
)
def test_retry_delay_uses_plan_bounds(base, cap, attempts):
    result = plan(attempts=attempts, base_delay_s=base, max_delay_s=cap)
    assert 0.0 <= result.delay_s <= min(cap, base * 2**attempts)


@pytest.mark.parametrize("timeout", [1.0, 300.0, 3600.0])
def test_deadline_is_now_plus_escalation_timeout(timeout):
    assert plan(now=50.0, escalation_timeout_s=timeout).deadline == 50.0 + timeout


@pytest.mark.parametrize(
    "a,required,expected",
    [
        (agent("a"), ["x"], True),
        (agent("a"), [], True),
        (agent("a", {"x": 1, "y": 0.1}), ["x", "y"], True),
        (agent("a"), ["x", "y"], False),
        (agent("a", status=OFFLINE), ["x"], False),
        (agent("a", status=SLEEPING), ["x"], False),
        (agent("a", status=QUARANTINED), ["x"], False),
    ],
)
def test_capable(a, required, expected):
    assert capable(a, required) is expected


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_error_kind_accepts_its_string_value(kind):
    assert plan(error_kind=kind.value) == plan(error_kind=kind)
