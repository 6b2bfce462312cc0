"""Breakers, recovery tiers, lost agents, the redelivery cap, dead letters, timeouts."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from orchestrator.config import load_settings
from orchestrator.models import CircuitBreakerConfig, CircuitBreakerState, RegisteredAgent
from orchestrator.recovery.breaker import (
    BreakerState,
    record_failure,
    record_success,
    to_redis_hash,
)
from orchestrator.recovery.outbound import CircuitBreakerError, circuit_breaker
from orchestrator.routing.router import Router
from orchestrator.store import Acceptance, StateStore, now_s
from tests.integration.conftest import ledger
from tests.support import cli_json, wait_for

pytestmark = pytest.mark.integration

#: The module's shared cluster (tests/integration/conftest.py), for the tests that neither
#: stop a worker nor need settings of their own.
SHARED_AGENTS = {"a": ("suicide,echo,sleep", 2)}


@pytest.fixture
def beat(celery_procs, orch_env, tmp_path):
    """Celery beat, for the recovery monitor (every ORCH_RECOVERY_MONITOR_INTERVAL_S)."""

    def start(**env: str):
        return celery_procs(
            ["beat", "-l", "info"],
            {**orch_env, "ORCH_RECOVERY_MONITOR_INTERVAL_S": "1", **env},
            name="beat",
        )

    return start


def test_every_display_reads_a_breaker_as_the_router_does(redis_url, orch_env):
    """A breaker past its recovery timeout with no traffic since reads half-open everywhere
    (the next routing decision would send it a trial), not only in the router: `agents`,
    the metrics snapshot (`status`), hence circuits_open, CircuitsOpen and health."""
    timeout_s = 30.0
    env = {**orch_env, "ORCH_CIRCUIT_RECOVERY_TIMEOUT_S": str(timeout_s)}
    settings = load_settings(redis_url=redis_url, circuit_recovery_timeout_s=timeout_s)
    cfg = settings.circuit_config()
    store = StateStore.from_url(redis_url)
    now = now_s()
    try:
        # `due` opened longer than the recovery timeout ago, `fresh` just now.
        for agent_id, opened_at in (("due", now - timeout_s - 5), ("fresh", now)):
            agent = RegisteredAgent(
                agent_id=agent_id, capabilities={"echo": 1.0}, queue=f"agent.{agent_id}"
            )
            store.register_agent(agent, now, source="test")
            for _ in range(cfg.failure_threshold):
                store.record_outcome(
                    agent_id, ok=False, latency_ms=1.0, circuit_cfg=cfg, now=opened_at
                )
            assert store.circuit(agent_id).state is CircuitBreakerState.OPEN
        routed = {
            a.agent_id: a.circuit.value
            for a in Router(store, settings, lambda *a, **k: None).fleet(now_s()).agents
        }
    finally:
        store.r.close()
    assert routed == {"due": "half_open", "fresh": "open"}
    listed = {a["agent_id"]: a["circuit"] for a in cli_json(env, "agents")}
    assert listed == routed
    assert cli_json(env, "status")["circuits_open"] == 1


@pytest.mark.parametrize("seed", range(3))
def test_lua_breaker_matches_the_pure_state_machine(seed, redis_url):
    """The atomic Lua recording of outcomes is breaker.record_success/record_failure."""
    store = StateStore.from_url(redis_url)
    rng = random.Random(seed)
    cfg = CircuitBreakerConfig(
        failure_threshold=rng.randint(2, 5),
        half_open_max_calls=2,
        success_threshold=2,
        window_size=8,
        minimum_calls=6,
        failure_rate_threshold=0.5,
    )
    expected = BreakerState()
    try:
        for step in range(300):
            now = float(step)
            if expected.state.value != "closed" and rng.random() < 0.3:
                # Routers move an open breaker to half-open; emulate with the stored value.
                expected = expected.model_copy(update={"state": CircuitBreakerState.HALF_OPEN})
                store.r.delete("orch:circuit:a")
                store.r.hset("orch:circuit:a", mapping=to_redis_hash(expected))
            ok = rng.random() < 0.5
            step_fn = record_success if ok else record_failure
            expected, transition = step_fn(expected, cfg, now)
            got = store.record_outcome("a", ok=ok, latency_ms=1.0, circuit_cfg=cfg, now=now)
            assert got == (transition.value if transition else ""), step
            assert store.circuit("a") == expected, step
    finally:
        store.r.close()


def test_failing_agent_is_avoided_its_tasks_succeed_elsewhere_and_circuit_recovers(
    start_control, start_agent, redis_url, redis_client
):
    env = {
        "ORCH_CIRCUIT_FAILURE_THRESHOLD": "2",
        "ORCH_CIRCUIT_RECOVERY_TIMEOUT_S": "2",
        "ORCH_CIRCUIT_HALF_OPEN_MAX_CALLS": "1",
    }
    # The client routes too, so it reads the breaker with the same settings as the cluster.
    from orchestrator.client import OrchestratorClient
    from orchestrator.config import load_settings

    client = OrchestratorClient(
        settings=load_settings(
            redis_url=redis_url,
            circuit_failure_threshold=2,
            circuit_recovery_timeout_s=2,
            circuit_half_open_max_calls=1,
        )
    )
    start_control(**env)
    start_agent("bad", "sometimes_fail_on", **env)
    start_agent("good", "sometimes_fail_on=0.5", **env)
    results = [
        client.submit("sometimes_fail_on", {"key": f"k{i}", "bad_agent": "bad"}, task_id=f"k{i}")
        for i in range(20)
    ]
    assert all(r.get(timeout=60)["agent"] == "good" for r in results)
    events = client.store.read_events()
    assert any(e.type == "circuit.opened" and e.data["agent_id"] == "bad" for e in events)
    rerouted = [e for e in events if e.type == "recovery.started" and e.data["tier"] == "reroute"]
    assert rerouted and all(e.data["target"] == "good" for e in rerouted)

    redis_client.set("test:healed:bad", 1)

    # After the recovery timeout a trial goes to `bad`; it succeeds and the circuit closes.
    def closed() -> bool:
        client.submit("sometimes_fail_on", {"key": "probe", "bad_agent": "bad"}).get(timeout=30)
        return any(
            e.type == "circuit.closed" and e.data["agent_id"] == "bad"
            for e in client.store.read_events()
        )

    wait_for(closed, timeout=40, interval=0.5, message="the circuit of `bad` never closed")
    client.close()


def test_poison_message_is_dead_lettered_after_the_redelivery_cap_and_replayable(shared):
    client, redis_client, orch_env = shared.client, shared.redis, shared.env
    agent = shared.proc("a")
    # What other tests on this cluster dead-lettered before, newest first as listed.
    earlier = redis_client.zrevrange("orch:dlq", 0, -1)
    poison = client.submit("suicide", {"key": "p"}, task_id="poison-1")
    fine = [client.submit("echo", {"i": i}) for i in range(10)]
    assert [r.get(timeout=60) for r in fine] == [{"i": i} for i in range(10)]
    with pytest.raises(Exception, match="dead-lettered"):
        poison.get(timeout=60)
    record = client.task("poison-1")
    assert record.state.value == "dead_lettered" and "delivered 3 times" in record.error
    assert int(redis_client.get("test:start:p")) == 3
    assert agent.alive

    cli = [sys.executable, "-m", "orchestrator.cli"]
    listed = json.loads(
        subprocess.run(
            [*cli, "dlq", "list", "--json"],
            env=orch_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [d["task_id"] for d in listed] == ["poison-1", *earlier]
    # Replay: the same id runs again with a fresh attempt count (it dies again, here).
    done = subprocess.run(
        [*cli, "dlq", "replay", "poison-1"], env=orch_env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    wait_for(
        lambda: (
            ledger(redis_client, "poison-1")["state"] == "dead_lettered"
            and int(redis_client.get("test:start:p")) == 6
        ),
        timeout=60,
    )
    history = [h.get("replayed") for h in client.task("poison-1").history]
    assert True in history
    purged = subprocess.run(
        [*cli, "dlq", "purge", "--all", "--yes"],
        env=orch_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"removed {1 + len(earlier)} dead letter(s)" in purged.stdout
    assert redis_client.zcard("orch:dlq") == 0


def test_handler_overrunning_its_timeout_is_stopped_and_retried_then_escalated(shared):
    client = shared.client
    slow = client.submit("sleep", {"seconds": 30}, timeout_s=1, max_retries=1)
    with pytest.raises(Exception, match="retries exhausted"):
        slow.get(timeout=60)
    record = client.task(slow.id)
    assert record.state.value == "dead_lettered" and record.attempts == 2
    kinds = [h.get("kind") for h in record.history if h["state"] == "recovering"]
    assert kinds == ["timeout", "timeout"]


def test_lost_agent_goes_offline_and_its_tasks_run_elsewhere_once(
    start_control, start_agent, beat, client, redis_client
):
    start_control()
    beat()
    doomed = start_agent("doomed", "chaos")
    ids = [f"c{i}" for i in range(6)]
    results = [client.submit("chaos", {"key": k, "seconds": 0.5}, task_id=k) for k in ids]

    def running_on_doomed() -> str | None:
        return next((k for k in ids if ledger(redis_client, k).get("state") == "running"), None)

    interrupted = wait_for(running_on_doomed, timeout=30, message="nothing ran on doomed")
    doomed.kill()
    start_agent("survivor", "chaos")
    assert [r.get(timeout=60) for r in results] == [{"key": k} for k in ids]
    assert redis_client.hget("orch:agent_status", "doomed") == "offline"
    assert any(e.type == "agent.lost" for e in client.store.read_events())
    # The task the kill interrupted ran again, on the survivor; none completed twice.
    assert ledger(redis_client, interrupted)["agent"] == "survivor"
    assert all(redis_client.get(f"test:done:{k}") == "1" for k in ids)


def test_a_message_lost_to_a_redis_restart_is_sent_again_and_runs_once(
    start_control, start_agent, beat, redis_url, redis_client
):
    """The ledger says `routed` but the message is gone (kombu popped it and its unacked
    record died with Redis): the recovery monitor routes the task again and it runs once."""
    from orchestrator.client import OrchestratorClient
    from orchestrator.config import load_settings
    from orchestrator.models import RegisteredAgent

    timings = {"ORCH_VISIBILITY_TIMEOUT_S": "10", "ORCH_RETRY_MAX_DELAY_S": "5"}
    settings = load_settings(redis_url=redis_url, visibility_timeout_s=10, retry_max_delay_s=5)
    with OrchestratorClient(settings=settings) as client:
        # The agent is registered, but no worker consumes its queue yet.
        now = float(redis_client.time()[0])
        agent = RegisteredAgent(agent_id="a", capabilities={"count": 1.0}, queue="agent.a")
        client.store.register_agent(agent, now=now, source="test")
        result = client.submit("count", {"key": "lost"}, task_id="lost-msg")
        assert redis_client.llen("agent.a\x06\x164") == 1
        redis_client.delete("agent.a\x06\x164")  # the message is gone
        start_agent("a", "count", **timings)
        start_control(**timings)
        beat(**timings)
        assert result.get(timeout=40) == {"runs": 1}
    # The ledger's success follows Celery's stored result.
    wait_for(lambda: ledger(redis_client, "lost-msg")["state"] == "succeeded", timeout=10)
    assert ledger(redis_client, "lost-msg")["dispatch"] == "2"
    history = [json.loads(h) for h in redis_client.lrange("orch:history:lost-msg", 0, -1)]
    assert any(h.get("reason") == "message lost" for h in history)
    assert redis_client.get("test:runs:lost") == "1"


def test_outbound_circuit_breaker_is_shared_between_processes(redis_url):
    from orchestrator.config import load_settings

    settings = load_settings(redis_url=redis_url)
    first = circuit_breaker("payments-api", fail_max=2, reset_timeout_s=60, settings=settings)

    def boom() -> None:
        raise ConnectionError("payments API down")

    for _ in range(2):
        with pytest.raises((ConnectionError, CircuitBreakerError)):
            first.call(boom)
    # Another process (here: a fresh interpreter) sees the same open breaker.
    script = (
        "from orchestrator.config import load_settings\n"
        "from orchestrator.recovery.outbound import circuit_breaker\n"
        f"b = circuit_breaker('payments-api', settings=load_settings(redis_url={redis_url!r}))\n"
        "print(b.current_state)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "open"


def test_manual_recover_agent_moves_its_queued_work_elsewhere(
    start_control, start_agent, client, redis_client, orch_env
):
    start_control()
    start_agent("stuck", "hold,echo", concurrency=1)
    # Busy until released: `queued` waits behind it however long the steps below take.
    blocker = client.submit("hold", {"key": "blocker"}, task_id="blocker")
    wait_for(lambda: ledger(redis_client, "blocker").get("state") == "running", timeout=30)
    queued = client.submit("echo", {"waiting": True}, task_id="queued")
    wait_for(lambda: ledger(redis_client, "queued").get("state") == "routed", timeout=30)
    start_agent("fresh", "echo")
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "recover", "--agent", "stuck"],
        env=orch_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert queued.get(timeout=30) == {"waiting": True}
    assert ledger(redis_client, "queued")["agent"] == "fresh"
    # It was given up for lost by hand. Still alive, it says so at its next heartbeat and
    # registers again (active), so the status itself is only offline for about a second.
    lost = client.store.read_events(types=["agent.lost"])
    assert [(e.data["agent_id"], e.data["reason"], e.data["previous"]) for e in lost] == [
        ("stuck", "manual", "active")
    ]
    redis_client.set("test:release:blocker", 1)
    assert blocker.get(timeout=30) == {"held": "blocker"}  # finished where it ran
    bad = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "recover", "--task", "no-such-task"],
        env=orch_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "no task 'no-such-task'" in bad.stderr


def test_open_recovery_plan_escalates_after_the_escalation_timeout(redis_url):
    """The recovery monitor dead-letters a task whose plan stays open past its deadline."""
    from orchestrator.config import load_settings
    from orchestrator.models import OrchestrationTask, RecoveryPlan, RecoveryTier, TaskState
    from orchestrator.recovery.healer import Healer
    from orchestrator.routing.router import Router

    settings = load_settings(redis_url=redis_url)
    store = StateStore.from_url(redis_url)
    failures: dict[str, str] = {}
    try:
        router = Router(store, settings, publish=lambda *a, **k: None)
        healer = Healer(store, router, lambda task_id, exc: failures.update({task_id: str(exc)}))
        task = OrchestrationTask(type="echo", task_id="slow-plan")
        store.accept(Acceptance(task, "slow-plan", now=100.0))
        store.mark_routed(task, agent_id="a", now=101.0)
        store.save_plan(
            RecoveryPlan(
                task_id="slow-plan",
                tier=RecoveryTier.RETRY,
                reason="retry later",
                created_at=102.0,
                deadline=402.0,
            )
        )
        assert healer.monitor(now=401.0)["escalated"] == 0
        assert healer.monitor(now=403.0)["escalated"] == 1
        record = store.task_record("slow-plan")
        assert record.state is TaskState.DEAD_LETTERED
        assert "recovery unfinished after 300s" in (record.error or "")
        assert "dead-lettered" in failures["slow-plan"]
        assert store.dead_letters() and store.dead_letters()[0][0] == "slow-plan"
    finally:
        store.r.close()


def test_a_failed_publish_leaves_the_submission_in_the_client_outbox(redis_url):
    """The client records and routes in-process; if publishing then fails (broker down), the
    outbox keeps the submission for the recovery monitor to send again by name."""
    from orchestrator.config import load_settings
    from orchestrator.models import OrchestrationTask, RegisteredAgent
    from orchestrator.routing.router import Router

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    settings = load_settings(redis_url=redis_url)
    store = StateStore.from_url(redis_url)
    try:
        router = Router(store, settings, publish=broker_down)
        router.keep_outbox = True
        agent = RegisteredAgent(agent_id="a", capabilities={"echo": 1.0}, queue="agent.a")
        store.register_agent(agent, now=1000.0, source="test")
        task = OrchestrationTask(type="echo", task_id="t-1")
        store.outbox_put(
            "t-1",
            submit_id="submit-1",
            kwargs={"type": "echo", "task_id": "t-1"},
            queue="q",
            now=1000.0,
        )
        with pytest.raises(ConnectionError):
            router.submit_valid(task, "submit-1", now=1000.5)
        assert store.task_fields("t-1")["state"] == "routed"
        due = store.outbox_due(older_than=1100.0, now=1100.0)
        assert due == [
            (
                "t-1",
                {
                    "kwargs": {"type": "echo", "task_id": "t-1"},
                    "queue": "q",
                    "submit_id": "submit-1",
                },
            )
        ]
        # Once a publish succeeds, the entry is gone.
        router.publish = lambda *a, **k: None
        router.reroute("t-1", now=1101.0)
        assert store.outbox_due(older_than=2000.0, now=2000.0) == []
    finally:
        store.r.close()


def test_an_accepted_submission_left_in_the_outbox_is_resent_under_its_message_id_and_runs(
    start_control, start_agent, client, redis_client
):
    """A control worker accepted a by-name submission, then lost Redis before routing it (a
    failover): the task is `accepted`, its submission still in the outbox. The recovery
    monitor sends it again under the original message id, so the ledger resumes it (a new id
    would be a `duplicate`, and the task would wait for ever)."""
    from orchestrator.models import OrchestrationTask
    from orchestrator.runtime.celeryconf import RECOVERY_QUEUE, ROUTING_QUEUE

    start_agent("a", "count")
    start_control(ORCH_OUTBOX_RESEND_S="0.5")
    kwargs = {"type": "count", "payload": {"key": "resent"}, "task_id": "resent-1"}
    task = OrchestrationTask(type="count", payload={"key": "resent"}, task_id="resent-1")
    status, _ = client.store.accept(
        Acceptance(task, "submit-1", 1000.0, outbox=(kwargs, ROUTING_QUEUE))
    )
    assert status == "new" and ledger(redis_client, "resent-1")["state"] == "accepted"

    client.app.send_task("orchestrator.recovery.monitor", queue=RECOVERY_QUEUE)
    wait_for(lambda: ledger(redis_client, "resent-1").get("state") == "succeeded", timeout=30)
    assert redis_client.get("test:runs:resent") == "1"
    assert redis_client.zcard("orch:outbox") == 0
