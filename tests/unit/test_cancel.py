"""`orchestrator cancel`'s decision per ledger state, and the exporter's backlog folds (pure).

Also free slots per agent, and Cancelled rebuilt from its message as Celery's JSON result
backend does. No Redis.
"""

from __future__ import annotations

import pytest

from orchestrator.errors import Cancelled
from orchestrator.models import AgentStatus, RegisteredAgent
from orchestrator.monitoring.backlog_view import capability_backlog, slots_free
from orchestrator.routing.cancel import plan_cancel, revoke_needed
from orchestrator.store.backlog import BacklogGroup


@pytest.mark.parametrize(
    ("fields", "state", "end", "revoke", "problem"),
    [
        ({}, None, False, False, "no task 't1' in the ledger"),
        ({"type": "echo"}, None, False, False, "no task 't1' in the ledger"),
        ({"state": "accepted"}, "accepted", True, False, None),
        ({"state": "queued", "bl": "echo|5|c"}, "queued", True, False, None),
        ({"state": "queued", "due": "1000.5"}, "deferred", True, False, None),
        ({"state": "parked"}, "parked", True, False, None),
        ({"state": "routed", "agent": "a"}, "routed", True, False, None),
        ({"state": "recovering", "agent": "a"}, "recovering", True, False, None),
        ({"state": "running", "agent": "a"}, "running", True, True, None),
        ({"state": "succeeded"}, "succeeded", False, False, "already ended (succeeded)"),
        ({"state": "failed"}, "failed", False, False, "already ended (failed)"),
        ({"state": "dead_lettered"}, "dead_lettered", False, False, "ended (dead_lettered)"),
        ({"state": "sideways"}, "sideways", False, False, "does not know (sideways)"),
    ],
)
def test_plan_cancel_per_state(fields, state, end, revoke, problem):
    plan = plan_cancel("t1", fields)
    assert (plan.state, plan.end, plan.revoke) == (state, end, revoke)
    assert plan.exit_code == (0 if end else 1)
    if problem is None:
        assert plan.problem is None
    else:
        assert plan.problem is not None and problem in plan.problem


ROUTED = {"state": "routed", "agent": "a", "deliveries": "0"}


@pytest.mark.parametrize(
    ("before", "after", "revoke"),
    [
        # Still routed when it ended: its copy is skipped by the ledger, nothing to stop.
        (ROUTED, {**ROUTED, "state": "failed"}, False),
        # A copy started running between the read and the end: it must be stopped.
        (ROUTED, {**ROUTED, "state": "failed", "deliveries": "1", "started_at": "5.0"}, True),
        # A retry that had run before: the same start fields, nothing new started.
        (
            {**ROUTED, "deliveries": "2", "started_at": "3.0"},
            {**ROUTED, "state": "failed", "deliveries": "2", "started_at": "3.0"},
            False,
        ),
        ({"state": "running", "deliveries": "1", "started_at": "3.0"}, {"state": "failed"}, True),
        ({"state": "queued"}, {"state": "failed"}, False),
    ],
)
def test_revoke_only_what_runs(before, after, revoke):
    assert revoke_needed(plan_cancel("t1", before), before, after) is revoke


def test_cancelled_rebuilds_from_its_message_as_celery_does():
    error = Cancelled("t-1", "deferred")
    assert "t-1" in str(error) and "deferred" in str(error) and "orchestrator cancel" in str(error)
    again = Cancelled(*error.args)  # what Celery's JSON backend does with exc.args
    assert (again.task_id, again.state, str(again)) == ("t-1", "deferred", str(error))
    assert Cancelled("t-2").state == "unknown"


def group(key, waiting, oldest, by_priority, by_client=None):
    return BacklogGroup(key, waiting, oldest, by_priority, by_client or {"c": waiting})


def test_a_task_needing_several_capabilities_counts_toward_each():
    tasks, oldest = capability_backlog(
        [
            group("echo", 3, 4.0, {9: 1, 5: 2}),
            group("echo,gpu", 2, 10.0, {5: 2}),
            group("gpu", 0, 0.0, {}),
        ]
    )
    assert tasks == {("echo", 9): 1, ("echo", 5): 4, ("gpu", 5): 2}
    assert oldest == {"echo": 10.0, "gpu": 10.0}


def agent(agent_id, concurrency, in_flight, status=AgentStatus.ACTIVE):
    return RegisteredAgent(
        agent_id=agent_id,
        capabilities={"echo": 1.0},
        queue=f"agent.{agent_id}",
        concurrency=concurrency,
        in_flight=in_flight,
        status=status,
    )


def test_free_slots_of_live_agents_never_below_zero():
    agents = [
        agent("idle", 2, 0),
        agent("busy", 1, 2),
        agent("over", 1, 5),  # more in flight than slots (the prefetch was lowered since)
        agent("asleep", 1, 0, AgentStatus.SLEEPING),
        agent("gone", 4, 0, AgentStatus.OFFLINE),
    ]
    assert slots_free(agents, prefetch=1) == {"idle": 3, "busy": 0, "over": 0, "asleep": 2}
    assert slots_free(agents, prefetch=0)["idle"] == 2
