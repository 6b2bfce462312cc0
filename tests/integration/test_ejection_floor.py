"""Ejection never empties a capability (real workers).

Quarantine and open circuits leave at least ORCH_MIN_HEALTHY_FRACTION of a capability's live
agents (and at least one) eligible, as Envoy's outlier detection stops at its panic threshold;
a task every capable agent fails is dead-lettered with its reason instead of waiting for an
agent that will fail it again.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.models import TaskState
from tests.support import wait_for

pytestmark = pytest.mark.integration

# Low thresholds keep it quick: the breaker opens at the 2nd consecutive failure, the
# quarantine tier is reached at the 3rd failure within the window.
FAST = {
    "ORCH_CIRCUIT_FAILURE_THRESHOLD": "2",
    "ORCH_CIRCUIT_RECOVERY_TIMEOUT_S": "30",
    "ORCH_QUARANTINE_FAILURES": "3",
    "ORCH_QUARANTINE_S": "120",
}


def _events(redis_client, type_: str) -> list[dict]:
    return [
        json.loads(f["data"])
        for _, f in redis_client.xrange("orchestrator:events")
        if f["type"] == type_
    ]


def _settle(client: OrchestratorClient, result, timeout: float):
    """The task's final record once it ended (the result raises for a failure)."""
    with contextlib.suppress(CeleryTimeout):
        result.get(timeout=timeout, propagate=False)
    return client.store.task_record(result.id)


def test_the_only_agent_of_a_capability_stays_eligible_and_bad_tasks_are_dead_lettered(
    start_control, start_agent, redis_client, redis_url
):
    """One agent offers `always_fail`, whose every task fails there. Its circuit opens at the
    2nd failure and the quarantine tier is reached at the 3rd, yet both ejections are refused:
    it is the capability's last agent. So each task runs, fails and is dead-lettered with
    its reason within seconds (none parks behind an ejected agent)."""
    env = {**FAST, "ORCH_RETRY_BASE_DELAY_S": "0.1"}
    start_control(**env)
    start_agent("solo", "always_fail", **env)
    settings = load_settings(redis_url=redis_url, circuit_failure_threshold=2)

    with OrchestratorClient(settings=settings) as client:
        # One after another, so that later tasks are routed with the circuit open (and, from
        # the 7th, planned for quarantine: max_retries=1 lets the plan reach that tier).
        for i in range(10):
            started = time.monotonic()
            result = client.submit("always_fail", {"key": f"k{i}"}, max_retries=0 if i < 6 else 1)
            record = _settle(client, result, timeout=20)
            assert record.state in (TaskState.DEAD_LETTERED, TaskState.FAILED), (
                f"task {i} is {record.state.value} after {time.monotonic() - started:.0f}s"
            )
            assert record.error and f"bad payload k{i}" in record.error
            assert not [h for h in record.history if h.get("state") == "parked"], record.history
            assert record.attempts == (1 if i < 6 else 2)
        assert client.store.circuit("solo").state.value == "open"

    assert redis_client.hget("orch:agent_status", "solo") == "active"
    assert not _events(redis_client, "agent.quarantined")

    def refusals() -> set[str]:
        return {e["cause"] for e in _events(redis_client, "agent.ejection_refused")}

    wait_for(
        lambda: refusals() == {"open circuit", "quarantine"},
        timeout=20,
        message=f"refusals seen: {refusals()}",
    )
    refused = _events(redis_client, "agent.ejection_refused")
    assert {(e["agent_id"], e["capability"], e["healthy"], e["total"]) for e in refused} == {
        ("solo", "always_fail", 0, 1)
    }
    # Once per opening of the breaker (it opened once: failures while open are not counted).
    assert [e["cause"] for e in refused].count("open circuit") == 1
    assert all("ORCH_MIN_HEALTHY_FRACTION" in e["reason"] for e in refused)


def test_with_a_healthy_second_agent_the_failing_one_is_ejected_and_the_other_takes_the_work(
    start_control, start_agent, redis_client, redis_url
):
    """Two agents offer `sometimes_fail_on`; "bad" fails every task. Ejecting it leaves 1 of
    2 (the floor at 0.5): its circuit opens and it is quarantined as before, and "good" runs
    everything after that."""
    env = {**FAST, "ORCH_CIRCUIT_RECOVERY_TIMEOUT_S": "1"}
    start_control(**env)
    start_agent("bad", "sometimes_fail_on", **env)
    start_agent("good", "sometimes_fail_on", **env)
    settings = load_settings(
        redis_url=redis_url, circuit_failure_threshold=2, circuit_recovery_timeout_s=1
    )

    with OrchestratorClient(settings=settings) as client:
        sent = 0

        def stream() -> bool:
            nonlocal sent
            batch = [
                client.submit("sometimes_fail_on", {"key": f"w{sent + i}", "bad_agent": "bad"})
                for i in range(6)
            ]
            sent += len(batch)
            assert [r.get(timeout=60)["agent"] for r in batch] == ["good"] * len(batch)
            return bool(_events(redis_client, "agent.quarantined"))

        wait_for(stream, timeout=90, message="the failing agent was never quarantined")
        assert [e["agent_id"] for e in _events(redis_client, "agent.quarantined")] == ["bad"]

        after = [
            client.submit("sometimes_fail_on", {"key": f"after{i}", "bad_agent": "bad"})
            for i in range(20)
        ]
        assert [r.get(timeout=60)["agent"] for r in after] == ["good"] * 20
        assert all(client.store.task_record(r.id).attempts == 1 for r in after)

    assert not _events(redis_client, "agent.ejection_refused")
