"""The autoscaling signal and decision (pure), as tables.

The backlog rule and its bounds, the need from backlog, utilisation and latency, hysteresis and
cool-down, and ORCH_SCALE_COMMAND's argv.
"""

from __future__ import annotations

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import AgentStatus, AutoScalingAction, RegisteredAgent, SLATarget
from orchestrator.monitoring.slo import BUILTIN_TARGETS
from orchestrator.monitoring.stats import WindowStats, parse_fields, run_fields, sum_fields
from orchestrator.scaling.decide import (
    POOL,
    ScaleDecision,
    ScaleExecution,
    ScaleFigures,
    ScalePolicy,
    agents_needed,
    command_argv,
    command_targets,
    decide,
    execution_due,
    latency_objective,
    scale_figures,
)
from orchestrator.scaling.signal import action_for


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
def test_the_backlog_rule_within_its_bounds(backlog, target, lo, hi, desired):
    policy = ScalePolicy(target_backlog=target, lo=lo, hi=hi, cooldown_s=60.0)
    assert agents_needed(ScaleFigures("x", current=0, backlog=backlog), policy)[0] == desired


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


def test_figures_count_queues_toward_every_capability_and_parked_tasks_toward_theirs():
    agents = [
        _agent("a", {"echo": 1.0, "sleep": 1.0}),
        _agent("b", {"echo": 0.5}),
        _agent("c", {"echo": 1.0}, AgentStatus.OFFLINE),  # registered, not counted as current
        _agent("z", {"echo": 1.0}, AgentStatus.SLEEPING),  # current (a replica), not awake
    ]
    depths = {"agent.a": 8, "agent.b": 4, "agent.c": 2}
    rows = scale_figures(agents, depths, {"rare": 2}, WindowStats(), [])
    by_cap = {r.capability: r for r in rows}
    assert [r.capability for r in rows] == ["echo", "rare", "sleep"]
    assert (by_cap["echo"].current, by_cap["echo"].active, by_cap["echo"].backlog) == (3, 2, 14)
    assert (by_cap["rare"].current, by_cap["rare"].backlog) == (0, 2)
    assert (by_cap["sleep"].current, by_cap["sleep"].backlog) == (1, 8)
    need = {r.capability: agents_needed(r, POLICY)[0] for r in rows}
    assert need == {"echo": 3, "rare": 1, "sleep": 2}


def test_an_idle_fleet_needs_the_floor():
    agents = [_agent(f"a{i}", {"echo": 1.0}) for i in range(4)]
    (row,) = scale_figures(agents, {}, {}, WindowStats(), [])
    assert (row.current, agents_needed(row, POLICY)[0]) == (4, 1)


def test_scale_bounds_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="ORCH_SCALE_MIN must be at most ORCH_SCALE_MAX"):
        load_settings(scale_min=5, scale_max=2)


# --- the decision (scaling/decide.py): need, hysteresis, cool-down, the command -------------

POLICY = ScalePolicy(target_backlog=5, lo=1, hi=10, cooldown_s=60.0)


def _fig(backlog: int = 0, current: int = 1, **kw) -> ScaleFigures:
    return ScaleFigures(capability="echo", current=current, backlog=backlog, **kw)


@pytest.mark.parametrize(
    ("fig", "need", "why"),
    [
        (_fig(0), 1, "floor 1 (backlog 0 needs 0)"),  # idle: the floor is ORCH_SCALE_MIN
        (_fig(13), 3, "backlog 13 needs 3"),
        (_fig(500), 10, "ceiling 10 (backlog 500 needs 100)"),
        # Every slot busy and tasks waiting beyond them: the HPA formula toward 80 % busy.
        (_fig(6, current=4, in_flight=4, slots=4), 5, "utilisation 100%"),
        # Busy but nothing waits beyond what runs: keep the agents the running tasks fill.
        (_fig(4, current=4, in_flight=4, slots=4), 4, "utilisation 100%"),
        (_fig(4, current=4, in_flight=4, slots=16), 1, "backlog 4"),  # 1 agent's slots suffice
        # Backlog explains first when both rules ask the same.
        (_fig(10, current=2, in_flight=1, slots=2), 2, "backlog 10"),
        # Tasks start later than the latency objective allows their whole run: one more agent.
        (_fig(3, current=2, delegation_p95_ms=9000, latency_objective_ms=5000), 3, "delegation"),
        (_fig(3, current=2, delegation_p95_ms=4000, latency_objective_ms=5000), 1, "backlog 3"),
        # Late, but nothing waits now: the window's history alone adds no agent.
        (_fig(0, current=2, delegation_p95_ms=9000, latency_objective_ms=5000), 1, "backlog 0"),
        (_fig(3, current=2, delegation_p95_ms=9000, latency_objective_ms=None), 1, "backlog 3"),
    ],
)
def test_agents_needed(fig, need, why):
    got, reason = agents_needed(fig, POLICY)
    assert got == need
    assert why in reason


def test_a_waiting_task_needs_an_agent_even_when_scaling_to_zero():
    zero = ScalePolicy(target_backlog=5, lo=0, hi=10, cooldown_s=60.0)
    assert agents_needed(_fig(0, current=0), zero)[0] == 0
    assert agents_needed(_fig(1, current=0), zero) == (1, "backlog 1 needs 1")
    assert agents_needed(_fig(0, current=2, in_flight=1, slots=2), zero) == (
        1,
        "utilisation 50% needs 1",
    )


def _run(steps, policy=POLICY, current: int = 1, previous=None) -> list[int]:
    """Feed (now, backlog) steps through `decide`, each seeing the last decision."""
    out = []
    for now, backlog in steps:
        previous = decide(_fig(backlog, current=current), previous, policy, now)
        out.append(previous.desired)
    return out


@pytest.mark.parametrize(
    ("steps", "desired"),
    [
        # The first decision follows the need; more is followed at once.
        ([(0, 5), (5, 20), (10, 40)], [1, 4, 8]),
        # Less is held for the whole cool-down (60 s of lower need), then followed.
        ([(0, 20), (5, 0), (30, 0), (64, 0), (65, 0), (70, 0)], [4, 4, 4, 4, 1, 1]),
        # A need that comes back up restarts the wait: a flapping backlog never flaps the count.
        ([(0, 20), (5, 0), (40, 20), (45, 0), (80, 0), (104, 0), (105, 0)], [4, 4, 4, 4, 4, 4, 1]),
        ([(t, 20 if t % 10 == 0 else 0) for t in range(0, 300, 5)], [4] * 60),
        # Down only to the highest need seen while waiting (the dead band), then wait again.
        ([(0, 20), (5, 10), (10, 0), (65, 0), (70, 0), (124, 0), (125, 0)], [4, 4, 4, 2, 2, 2, 1]),
        # A rise that is still below the count held does not restart the wait, but raises the peak.
        ([(0, 40), (5, 0), (20, 15), (65, 0)], [8, 8, 8, 3]),
        # After a scale-up, a lower need waits a whole cool-down again.
        ([(0, 5), (5, 20), (10, 5), (69, 5), (70, 5)], [1, 4, 4, 4, 1]),
    ],
)
def test_hysteresis_and_cool_down(steps, desired):
    assert _run(steps) == desired


def test_without_a_cool_down_the_count_follows_the_need():
    policy = ScalePolicy(target_backlog=5, lo=1, hi=10, cooldown_s=0.0)
    assert _run([(0, 20), (5, 0), (10, 12), (15, 6)], policy) == [4, 1, 3, 2]


def test_a_changed_bound_applies_at_once():
    wide = decide(_fig(40), None, POLICY, 0.0)
    assert wide.desired == 8
    narrow = ScalePolicy(target_backlog=5, lo=1, hi=5, cooldown_s=60.0)
    now = decide(_fig(40), wide, narrow, 5.0)
    assert (now.desired, now.changed_at) == (5, 5.0)
    higher_floor = ScalePolicy(target_backlog=5, lo=3, hi=10, cooldown_s=60.0)
    assert decide(_fig(0), decide(_fig(0), None, POLICY, 0.0), higher_floor, 5.0).desired == 3


@pytest.mark.parametrize(
    ("current", "action"),
    [
        (1, AutoScalingAction.SCALE_UP),
        (4, AutoScalingAction.MAINTAIN),
        (6, AutoScalingAction.SCALE_DOWN),
    ],
)
def test_the_action_compares_the_decided_count_with_the_active_agents(current, action):
    before = decide(_fig(20), None, POLICY, 0.0)
    decision = decide(_fig(20, current=current), before, POLICY, 5.0)
    assert (decision.desired, decision.action) == (4, action)


def test_the_first_decision_holds_the_agents_there_are_and_waits_a_cool_down_to_shrink():
    assert _run([(0, 0), (30, 0), (59, 0), (60, 0)], current=4) == [4, 4, 4, 1]
    assert _run([(0, 0)], current=40) == [10]  # within the bounds at once
    first = decide(_fig(0, current=4), None, POLICY, 0.0)
    assert (first.action, first.need, first.low_since) == (AutoScalingAction.MAINTAIN, 1, 0.0)


def test_a_held_decision_says_why_and_keeps_its_state():
    first = decide(_fig(20), None, POLICY, 0.0)
    held = decide(_fig(0), first, POLICY, 30.0)
    assert (held.desired, held.need, held.low_since, held.low_max) == (4, 1, 30.0, 1)
    assert held.changed_at == 0.0
    later = decide(_fig(0), held, POLICY, 50.0)
    assert later.reason == "holding 4 for the cool-down (20 of 60 s): floor 1 (backlog 0 needs 0)"
    assert ScaleDecision.model_validate_json(held.model_dump_json()) == held  # as stored


def _execution(desired: int, exit_code: int = 0, ts: float = 0.0) -> ScaleExecution:
    return ScaleExecution(
        capability="echo", desired=desired, argv=["x"], exit_code=exit_code, ts=ts
    )


@pytest.mark.parametrize(
    ("last", "desired", "now", "due"),
    [
        (None, 3, 0.0, True),  # never run: set the pool's size once
        (_execution(3), 3, 100.0, False),  # unchanged
        (_execution(3), 4, 1.0, True),  # changed
        (_execution(3, exit_code=1), 3, 59.0, False),  # failed: not at every evaluation
        (_execution(3, exit_code=1), 3, 60.0, True),  # failed: again after the cool-down
        (_execution(3, exit_code=1), 2, 1.0, True),  # failed, but the count changed
    ],
)
def test_execution_due(last, desired, now, due):
    assert execution_due(last, desired, now, retry_after_s=60.0) is due


@pytest.mark.parametrize(
    ("template", "n", "capability", "argv"),
    [
        (
            "docker compose up -d --scale worker={n}",
            3,
            "echo",
            ["docker", "compose", "up", "-d", "--scale", "worker=3"],
        ),
        ("scale.sh '{capability} pool' {n}", 2, "echo", ["scale.sh", "echo pool", "2"]),
        (
            "kubectl scale deploy/hive-{capability} --replicas={n}",
            0,
            "rare",
            ["kubectl", "scale", "deploy/hive-rare", "--replicas=0"],
        ),
        ("echo {n}; rm -rf /", 1, "echo", ["echo", "1;", "rm", "-rf", "/"]),  # no shell
    ],
)
def test_command_argv(template, n, capability, argv):
    assert command_argv(template, n, capability) == argv


@pytest.mark.parametrize("template", ["", "   ", "scale 'unclosed {n}"])
def test_a_command_that_cannot_be_split_is_refused(template):
    with pytest.raises(ValueError):
        command_argv(template, 1, "echo")


def _decided(cap: str, desired: int) -> ScaleDecision:
    return decide(ScaleFigures(capability=cap, current=1, backlog=desired * 5), None, POLICY, 0.0)


def test_a_pool_command_runs_once_with_the_largest_count_and_a_per_capability_one_per_row():
    rows = [_decided("b", 3), _decided("a", 3), _decided("c", 1)]
    assert command_targets("scale {n}", rows) == [(POOL, "a", 3)]
    assert command_targets("scale {capability} {n}", rows) == [
        ("b", "b", 3),
        ("a", "a", 3),
        ("c", "c", 1),
    ]
    assert command_targets("scale {n}", []) == []


@pytest.mark.parametrize(
    ("capability", "objective"),
    [("echo", 800.0), ("sleep", 2000.0), ("other", 2000.0)],
)
def test_latency_objective_is_the_tightest_latency_target_that_applies(capability, objective):
    targets = [
        SLATarget(name="all", sli="latency_p95_ms", objective=2000),
        SLATarget(name="echo", sli="latency_p99_ms", objective=800, task_type="echo"),
        SLATarget(name="sleep", sli="latency_p95_ms", objective=9000, task_type="sleep"),
        SLATarget(name="ok", sli="success_rate", objective=0.99),
    ]
    assert latency_objective(capability, targets) == objective


def test_figures_count_live_agents_the_awake_ones_load_and_the_type_delegation():
    agents = [
        _agent("a", {"echo": 1.0, "sleep": 1.0}).model_copy(
            update={"in_flight": 2, "concurrency": 2}
        ),
        _agent("b", {"echo": 1.0}).model_copy(update={"in_flight": 1, "concurrency": 4}),
        _agent("c", {"echo": 1.0}, AgentStatus.SLEEPING).model_copy(update={"in_flight": 9}),
    ]
    window = parse_fields(
        sum_fields(run_fields("echo", "ok", 5.0, d) for d in [100.0] * 10 + [7000.0] * 10)
    )
    rows = scale_figures(agents, {"agent.a": 3, "agent.c": 1}, {"rare": 2}, window, BUILTIN_TARGETS)
    by_cap = {r.capability: r for r in rows}
    echo = by_cap["echo"]
    # the sleeping agent is a replica (current) but neither awake nor part of the load
    assert (echo.current, echo.active, echo.backlog, echo.in_flight, echo.slots) == (3, 2, 4, 3, 6)
    assert echo.utilisation == 0.5
    assert echo.delegation_p95_ms is not None and 6000 < echo.delegation_p95_ms <= 8000
    assert echo.latency_objective_ms == 5000
    assert by_cap["sleep"].delegation_p95_ms is None  # no runs of that type in the window
    assert (by_cap["rare"].current, by_cap["rare"].utilisation) == (0, None)


def test_a_scale_command_that_cannot_be_split_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="ORCH_SCALE_COMMAND: cannot be split"):
        load_settings(scale_command="docker compose up --scale 'worker={n}")
    assert load_settings(scale_command="scale.sh {n}").scale_command == "scale.sh {n}"
