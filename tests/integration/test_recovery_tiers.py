"""Each recovery tier reachable at default settings; flags honoured at run time."""

from __future__ import annotations

import json

import pytest

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.models import CircuitBreakerState, OrchestrationTask, RegisteredAgent
from orchestrator.routing.router import Router
from orchestrator.store import Acceptance, StateStore
from tests.support import wait_for

pytestmark = pytest.mark.integration


def _register(store: StateStore, agent_id: str, now: float) -> None:
    store.register_agent(
        RegisteredAgent(agent_id=agent_id, capabilities={"echo": 1.0}, queue=f"agent.{agent_id}"),
        now,
        "test",
    )
    store.heartbeat(agent_id, now)


@pytest.mark.parametrize(("enabled", "eligible"), [(True, ["b"]), (False, ["a", "b"])])
def test_a_stored_open_circuit_excludes_nobody_with_the_breaker_disabled(
    redis_url, enabled, eligible
):
    store = StateStore.from_url(redis_url)
    try:
        now = 1000.0
        for agent_id in ("a", "b"):
            _register(store, agent_id, now)
        on = load_settings(redis_url=redis_url)
        for _ in range(on.circuit_failure_threshold):
            store.record_outcome(
                "a", ok=False, latency_ms=1.0, circuit_cfg=on.circuit_config(), now=now
            )
        assert store.circuit("a").state is CircuitBreakerState.OPEN

        settings = load_settings(redis_url=redis_url, circuit_breaker_enabled=enabled)
        router = Router(store, settings, publish=lambda *a, **k: None)
        fleet = router.fleet(now + 1, fresh=True)
        task = OrchestrationTask(type="echo", task_id="t")
        assert [a.agent_id for a in router.eligible(task, fleet, now + 1)] == eligible
        if not enabled:  # and the agents list shows no breaker at work
            assert all(a.circuit is CircuitBreakerState.CLOSED for a in fleet.agents)
    finally:
        store.r.close()


def test_a_failing_agent_is_quarantined_its_queued_tasks_move_and_it_comes_back(
    start_control, start_agent, redis_client, redis_url
):
    """Default thresholds (the breaker opens at 5 failures, quarantine at 10) under a steady
    stream of work: the circuit opens (and `circuit.opened` moves the agent's queue), each
    half-open trial that fails adds one, and the tenth failure within the window quarantines
    the agent. Its breaker rests 1 s and the quarantine lasts 6 s here."""
    env = {"ORCH_CIRCUIT_RECOVERY_TIMEOUT_S": "1", "ORCH_QUARANTINE_S": "6"}
    start_control(**env)
    start_agent("bad", "sometimes_fail_on", **env)
    start_agent("good", "sometimes_fail_on", **env)
    settings = load_settings(redis_url=redis_url, circuit_recovery_timeout_s=1, quarantine_s=6)

    def quarantined() -> list[str]:
        events = redis_client.xrange("orchestrator:events")
        return [
            json.loads(f["data"])["agent_id"] for _, f in events if f["type"] == "agent.quarantined"
        ]

    with OrchestratorClient(settings=settings) as client:
        results = []

        def stream() -> bool:
            payload = {"bad_agent": "bad", "seconds": 0.1}
            batch = [
                client.submit("sometimes_fail_on", {"key": f"q{len(results) + i}", **payload})
                for i in range(10)
            ]
            results.extend(batch)
            assert all(r.get(timeout=120)["agent"] == "good" for r in batch)
            return bool(quarantined())

        wait_for(stream, timeout=180, message="the failing agent was never quarantined")
        assert quarantined() == ["bad"]
        moved = [
            r
            for r in (client.store.task_record(res.id) for res in results)
            if r.attempts == 1 and any(h.get("moved_from") == "bad" for h in r.history)
        ]
        assert moved, "no task queued on the failing agent was moved before it ran there"

        # Back after ORCH_QUARANTINE_S, and given work again once it is healthy.
        wait_for(
            lambda: redis_client.hget("orch:agent_status", "bad") == "active",
            timeout=30,
            message="the quarantined agent never came back",
        )
        redis_client.set("test:healed:bad", "1")

        def bad_runs_again() -> bool:
            result = client.submit("sometimes_fail_on", {"key": "after", "bad_agent": "bad"})
            return result.get(timeout=60)["agent"] == "bad"

        wait_for(bad_runs_again, timeout=60, message="the agent got no work after its quarantine")


def test_in_flight_counts_each_unfinished_task_once_wherever_it_moved(redis_url):
    """An agent's in-flight figure (least-loaded and P2C routing, the autoscaler's
    utilisation) is what was routed to it and has not ended: a task moved to another agent,
    or routed again to the same one (the retry tier), counts once, where it is now."""
    store = StateStore.from_url(redis_url)
    try:
        now = 1000.0
        for agent_id in ("a", "b"):
            _register(store, agent_id, now)
        settings = load_settings(redis_url=redis_url)
        router = Router(store, settings, publish=lambda *a, **k: None)

        def in_flight() -> dict[str, int]:
            return {a.agent_id: a.in_flight for a in store.load_agents()}

        tasks = [OrchestrationTask(type="echo", task_id=f"t{i}") for i in range(2)]
        for task in tasks:
            store.accept(Acceptance(task, f"s-{task.task_id}", now))
        first = router.route(tasks[0], now, exclude={"b"})
        router.route(tasks[1], now, exclude={"a"})
        assert first.agent_id == "a" and in_flight() == {"a": 1, "b": 1}
        router.reroute("t0", now, exclude={"a"})  # moved (a quarantine, a lost agent)
        assert in_flight() == {"a": 0, "b": 2}
        router.reroute("t1", now, exclude={"a"})  # again to the same agent (a retry)
        assert in_flight() == {"a": 0, "b": 2}
    finally:
        store.r.close()
