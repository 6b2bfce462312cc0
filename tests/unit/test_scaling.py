"""The autoscaling signal's backlog rule (pure): desired agents per capability, and its bounds."""

from __future__ import annotations

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import AgentStatus, AutoScalingAction, RegisteredAgent
from orchestrator.scaling.signal import action_for, desired_agents, scaling_signal


@pytest.mark.parametrize(
    ("backlog", "target", "lo", "hi", "desired"),
    [
        (0, 5, 1, 10, 1),  # idle: the floor
        (0, 5, 0, 10, 0),  # idle, scale to zero allowed
        (1, 5, 0, 10, 1),  # one waiting task needs one agent even with ORCH_SCALE_MIN=0
        (5, 5, 1, 10, 1),
        (6, 5, 1, 10, 2),
        (13, 5, 1, 10, 3),
        (1000, 5, 1, 10, 10),  # the ceiling
        (7, 5, 4, 10, 4),  # the floor wins over a smaller need
        (3, 1, 0, 2, 2),
    ],
)
def test_desired_agents(backlog, target, lo, hi, desired):
    assert desired_agents(backlog, target, lo, hi) == desired


@pytest.mark.parametrize(
    ("current", "desired", "action"),
    [
        (1, 3, AutoScalingAction.SCALE_UP),
        (3, 1, AutoScalingAction.SCALE_DOWN),
        (2, 2, AutoScalingAction.MAINTAIN),
        (0, 1, AutoScalingAction.SCALE_UP),
    ],
)
def test_action_for(current, desired, action):
    assert action_for(current, desired) is action


def _agent(agent_id: str, caps: dict[str, float], status=AgentStatus.ACTIVE) -> RegisteredAgent:
    return RegisteredAgent(
        agent_id=agent_id, capabilities=caps, queue=f"agent.{agent_id}", status=status
    )


def test_signal_counts_queues_toward_every_capability_and_parked_tasks_toward_theirs():
    agents = [
        _agent("a", {"echo": 1.0, "sleep": 1.0}),
        _agent("b", {"echo": 0.5}),
        _agent("c", {"echo": 1.0}, AgentStatus.OFFLINE),  # registered, not counted as current
    ]
    depths = {"agent.a": 8, "agent.b": 4, "agent.c": 2}
    rows = scaling_signal(agents, depths, {"rare": 2}, target_backlog=5, lo=1, hi=10)
    by_cap = {r.capability: r for r in rows}
    assert [r.capability for r in rows] == ["echo", "rare", "sleep"]
    assert (by_cap["echo"].current, by_cap["echo"].backlog, by_cap["echo"].desired) == (2, 14, 3)
    assert by_cap["echo"].action is AutoScalingAction.SCALE_UP
    assert (by_cap["rare"].current, by_cap["rare"].backlog, by_cap["rare"].desired) == (0, 2, 1)
    assert (by_cap["sleep"].current, by_cap["sleep"].backlog, by_cap["sleep"].desired) == (1, 8, 2)


def test_an_idle_fleet_shrinks_to_the_floor():
    agents = [_agent(f"a{i}", {"echo": 1.0}) for i in range(4)]
    (row,) = scaling_signal(agents, {}, {}, target_backlog=5, lo=1, hi=10)
    assert (row.current, row.desired, row.action) == (4, 1, AutoScalingAction.SCALE_DOWN)


def test_scale_bounds_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="ORCH_SCALE_MIN must be at most ORCH_SCALE_MAX"):
        load_settings(scale_min=5, scale_max=2)
