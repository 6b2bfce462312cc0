"""What a submitter is told, as pure decisions (routing.explain).

Why a task is parked, how a resubmitted spec differs from the one accepted under its id, and
a parked task's recorded reason."""

from __future__ import annotations

import pytest

from orchestrator.models import AgentStatus, CircuitBreakerState, OrchestrationTask, RegisteredAgent
from orchestrator.routing.explain import park_reason, parked_reason, spec_differences

NOW = 1_000.0
TIMEOUT = 30.0
ACTIVE, SLEEPING, QUARANTINED = AgentStatus.ACTIVE, AgentStatus.SLEEPING, AgentStatus.QUARANTINED
OPEN, HALF_OPEN = CircuitBreakerState.OPEN, CircuitBreakerState.HALF_OPEN


def agent(agent_id, caps, status=ACTIVE, beat=NOW, circuit=CircuitBreakerState.CLOSED):
    return RegisteredAgent(
        agent_id=agent_id,
        capabilities=dict.fromkeys(caps, 1.0),
        queue=f"agent.{agent_id}",
        status=status,
        last_heartbeat=beat,
        circuit=circuit,
    )


@pytest.mark.parametrize(
    ("required", "agents", "exclude", "reason"),
    [
        (["nosuch"], [], (), "no agent offers 'nosuch' (no agent is registered)"),
        (["nosuch"], [agent("a", ["echo"])], (), "no agent offers 'nosuch'"),
        (["a", "b", "c"], [agent("x", ["a"])], (), "no agent offers 'b', 'c'"),
        (
            ["a", "b"],
            [agent("x", ["a"]), agent("y", ["b"])],
            (),
            "no agent offers 'a' and 'b' together",
        ),
        (
            ["echo"],
            [
                agent("d", ["echo"], status=QUARANTINED),
                agent("a", ["echo"], beat=NOW - 60),
                agent("b", ["echo"], status=SLEEPING),
                agent("c", ["echo"], circuit=OPEN),
                agent("e", ["other"]),
            ],
            (),
            "no agent that offers 'echo' can take it now: a offline, b sleeping, "
            "c circuit open, d quarantined",
        ),
        (
            ["echo"],
            [agent("a", ["echo"], circuit=HALF_OPEN)],
            (),
            "no agent that offers 'echo' can take it now: a circuit half-open",
        ),
        (
            ["echo"],
            [agent("a", ["echo"]), agent("b", ["echo"], status=SLEEPING)],
            ("a",),
            "no agent that offers 'echo' can take it now: a excluded (the task is moving off "
            "it), b sleeping",
        ),
        ([], [agent("a", ["echo"], beat=NOW - 60)], (), "no agent can take it now: a offline"),
        (
            ["echo"],
            [agent(f"a{i}", ["echo"], status=SLEEPING) for i in range(7)],
            (),
            "no agent that offers 'echo' can take it now: a0 sleeping, a1 sleeping, "
            "a2 sleeping, a3 sleeping, a4 sleeping and 2 more",
        ),
    ],
)
def test_why_a_task_is_parked(required, agents, exclude, reason):
    assert park_reason(required, agents, NOW, TIMEOUT, exclude) == reason


SPEC = OrchestrationTask(type="echo", task_id="t", payload={"x": 1}, required_capabilities=["echo"])


@pytest.mark.parametrize(
    ("changes", "differs"),
    [
        ({}, ()),
        ({"task_id": "other"}, ()),  # the id is what made it a duplicate, not a difference
        ({"payload": {"x": 2}}, ("payload",)),
        ({"payload": {"x": 2}, "priority": 7}, ("payload", "priority")),
        ({"required_capabilities": ["echo", "gpu"]}, ("required_capabilities",)),
        ({"client_id": "other"}, ()),  # another submitter of the same work
        ({"timeout_s": 9.0, "max_retries": 0}, ("max_retries", "timeout_s")),
    ],
)
def test_how_a_resubmitted_spec_differs(changes, differs):
    assert spec_differences(SPEC, SPEC.model_copy(update=changes)) == differs


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        ([], None),
        ([{"state": "accepted"}, {"state": "queued"}], None),
        ([{"state": "accepted"}, {"state": "parked"}], None),  # parked before reasons were kept
        ([{"state": "parked", "reason": "r1"}], "r1"),
        ([{"state": "parked", "reason": "r1"}, {"state": "parked", "reason": "r2"}], "r2"),
    ],
)
def test_a_parked_tasks_recorded_reason(history, reason):
    assert parked_reason(history) == reason


def test_a_spec_is_compared_as_the_ledger_keeps_it():
    stored = OrchestrationTask.model_validate_json(
        SPEC.model_copy(update={"payload": {"pair": (1, 2)}}).model_dump_json()
    )
    assert spec_differences(stored, SPEC.model_copy(update={"payload": {"pair": (1, 2)}})) == ()
