"""Event processing in real control workers, and `orchestrator events`.

Events are written here as another service would write them (a plain XADD of the event's
fields: type, ts, severity, source, data), and the control workers' consumer group reacts.
The handlers these tests register live in tests/handlers.py (ORCH_HANDLERS=tests.handlers on
the control workers). Claims happen after ORCH_AGENT_TIMEOUT_S of idleness: 4 s in these
tests' environment.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import time
from typing import Any

import pytest
import redis

from orchestrator.events.consumer import EventConsumer
from orchestrator.events.registry import EventRegistry
from orchestrator.models import CircuitBreakerState, OrchestrationTask, RegisteredAgent
from orchestrator.recovery.breaker import BreakerState, to_redis_hash
from orchestrator.store import Acceptance, StateStore
from orchestrator.store.keys import EVENTS, EVENTS_FAILED, EVENTS_GROUP
from tests.ctrl_c import interrupt
from tests.integration import test_monitoring
from tests.integration.conftest import ledger
from tests.integration.test_monitoring import get_json
from tests.support import CLI, cli, wait_for

pytestmark = pytest.mark.integration

HANDLERS = {"ORCH_HANDLERS": "tests.handlers"}
#: test_monitoring's `alertmanager` fixture (a real Alertmanager on a free port), by this name.
real_alertmanager = test_monitoring.alertmanager


def emit(
    r: redis.Redis, type_: str, severity: str = "info", source: str = "test", **data: Any
) -> str:
    """Append an event as any service may: the stream's fields, one XADD."""
    fields = {
        "type": type_,
        "ts": repr(time.time()),
        "severity": severity,
        "source": source,
        "data": json.dumps(data),
    }
    return str(r.xadd(EVENTS, fields))


def group(r: redis.Redis) -> dict[str, Any] | None:
    try:
        groups = r.xinfo_groups(EVENTS)
    except redis.ResponseError:  # no stream yet
        return None
    return next((g for g in groups if g["name"] == EVENTS_GROUP), None)


def settled(r: redis.Redis) -> bool:
    """The group has had every entry of the stream and acknowledged each."""
    info = group(r)
    newest = r.xrevrange(EVENTS, count=1)
    return (
        info is not None
        and info["pending"] == 0
        and (not newest or info["last-delivered-id"] == newest[0][0])
    )


def of_type(r: redis.Redis, type_: str) -> list[dict[str, Any]]:
    return [
        {**f, "id": i, "data": json.loads(f["data"])}
        for i, f in r.xrange(EVENTS)
        if f["type"] == type_
    ]


def test_an_event_is_handled_once_across_a_control_worker_sigkill(start_control, redis_client):
    """The worker running a handler dies; another claims the entry (XAUTOCLAIM), runs the
    handler again and acks; the effect happens once, and a redelivery of the same entry
    (the group rewound) is recognised by the handler's marker."""
    first = start_control(name="ctl-a", **HANDLERS)
    second = start_control(name="ctl-b", **HANDLERS)
    event_id = emit(redis_client, "test.effect", hold="sigkill")
    pids = f"test:event:pids:{event_id}"
    effects = f"test:event:effects:{event_id}"
    running = int(wait_for(lambda: redis_client.lindex(pids, 0), timeout=60))
    assert running in (first.pid, second.pid), "the handler runs in the worker's main process"
    victim, survivor = (first, second) if running == first.pid else (second, first)
    victim.kill()
    redis_client.set("test:release:sigkill", 1)

    wait_for(lambda: redis_client.get(effects) == "1", timeout=90, message="never handled")
    wait_for(lambda: settled(redis_client), timeout=60, message="never acknowledged")
    assert [int(p) for p in redis_client.lrange(pids, 0, -1)] == [victim.pid, survivor.pid]
    assert redis_client.get(effects) == "1"

    # Every entry handed out again: the marker says done, the handler does not run again.
    redis_client.xgroup_setid(EVENTS, EVENTS_GROUP, "0")
    later = emit(redis_client, "test.effect")
    wait_for(lambda: redis_client.get(f"test:event:effects:{later}") == "1", timeout=60)
    wait_for(lambda: settled(redis_client), timeout=60, message="never acknowledged again")
    assert redis_client.get(effects) == "1"
    assert redis_client.llen(pids) == 2
    assert redis_client.llen(f"test:event:pids:{later}") == 1


def test_a_handler_that_keeps_raising_is_retried_then_recorded_as_failed(
    start_control, redis_client
):
    control = start_control(ORCH_MAX_DELIVERIES="2", **HANDLERS)
    broken = emit(redis_client, "test.broken", source="billing")
    fine = emit(redis_client, "test.effect")  # a custom handler (ORCH_HANDLERS) runs

    def recorded() -> list[dict[str, Any]]:
        return [
            r
            for r in (json.loads(x) for x in redis_client.lrange(EVENTS_FAILED, 0, -1))
            if r["id"] == broken
        ]

    failed = wait_for(recorded, timeout=90, message="the failing handler was never given up on")
    wait_for(lambda: settled(redis_client), timeout=60)
    assert len(failed) == 1
    assert failed[0]["handler"] == "tests.handlers.always_raise"
    assert failed[0]["deliveries"] == 2 and failed[0]["source"] == "billing"
    assert "RuntimeError: broken on purpose" in failed[0]["error"]
    assert redis_client.get(f"test:event:raised:{broken}") == "2"
    assert redis_client.get(f"test:event:effects:{fine}") == "1"
    # A warm shutdown stops the consumer's thread (the worker exits by itself, not killed at
    # the deadline) and, with nothing pending, it leaves the group.
    assert redis_client.xinfo_consumers(EVENTS, EVENTS_GROUP)
    assert control.terminate() == 0
    assert redis_client.xinfo_consumers(EVENTS, EVENTS_GROUP) == []


def test_agent_lost_moves_its_queued_tasks_before_any_monitor_tick(
    start_control, start_agent, celery_procs, orch_env, client, redis_client
):
    """Another service saw the agent die and says so; its queued task moves at once. The
    recovery monitor runs hourly here and would wait 300 s of silence anyway."""
    slow = {
        "ORCH_RECOVERY_MONITOR_INTERVAL_S": "3600",
        "ORCH_AGENT_TIMEOUT_S": "300",
        **HANDLERS,
    }
    start_control(**slow)
    celery_procs(["beat", "-l", "info"], {**orch_env, **slow}, name="beat")
    stuck = start_agent("stuck", "hold,echo", **slow)
    client.submit("hold", {"key": "lost"}, task_id="holding")
    wait_for(lambda: ledger(redis_client, "holding").get("state") == "running", timeout=30)
    queued = client.submit("echo", {"waiting": True}, task_id="queued")
    wait_for(lambda: ledger(redis_client, "queued").get("state") == "routed", timeout=30)
    start_agent("fresh", "echo", **slow)
    stuck.kill()

    emit(redis_client, "agent.lost", "error", "k8s-watcher", agent_id="stuck", reason="pod gone")
    assert queued.get(timeout=60) == {"waiting": True}
    assert ledger(redis_client, "queued")["agent"] == "fresh"
    assert redis_client.hget("orch:agent_status", "stuck") == "offline"
    # The team's own handler for agent.lost ran beside the built-in one.
    wait_for(lambda: "stuck" in redis_client.lrange("test:event:lost", 0, -1), timeout=30)
    # What `stuck` was running has nowhere to go (only it can `hold`): parked, not lost.
    wait_for(lambda: ledger(redis_client, "holding").get("state") == "parked", timeout=30)


def test_the_built_in_handlers_react_to_their_events(
    start_control,
    start_agent,
    real_alertmanager,
    client,
    redis_url,
    redis_client,
):
    """circuit.opened moves queued work, agent.registered routes parked work, a critical
    alert.firing reaches Alertmanager (a warning one does not), recovery.escalated
    dead-letters a task that has not ended (and the healer's own announcement after it finds
    it done)."""
    env = {"ORCH_ALERTMANAGER_URL": real_alertmanager, "ORCH_AGENT_TIMEOUT_S": "60"}
    start_control(**env)
    store = StateStore.from_url(redis_url)
    try:
        # agent.registered: an agent of a capability nobody had; nothing else sweeps here.
        client.submit("rare", {}, task_id="parked-rare")
        wait_for(lambda: ledger(redis_client, "parked-rare").get("state") == "parked", timeout=30)
        ghost = RegisteredAgent(agent_id="ghost", capabilities={"rare": 1.0}, queue="agent.ghost")
        store.register_agent(ghost, time.time(), source="test")
        wait_for(lambda: ledger(redis_client, "parked-rare").get("agent") == "ghost", timeout=30)
        assert ledger(redis_client, "parked-rare")["state"] == "routed"

        # circuit.opened: the task waiting in the agent's queue goes to another agent.
        start_agent("busy", "hold,echo", **env)
        blocker = client.submit("hold", {"key": "circuit"}, task_id="cb-blocker")
        wait_for(lambda: ledger(redis_client, "cb-blocker").get("state") == "running", timeout=30)
        queued = client.submit("echo", {"q": 1}, task_id="cb-queued")
        wait_for(lambda: ledger(redis_client, "cb-queued").get("state") == "routed", timeout=30)
        start_agent("other", "echo", **env)
        opened = BreakerState(state=CircuitBreakerState.OPEN, opened_at=time.time())
        redis_client.hset("orch:circuit:busy", mapping=to_redis_hash(opened))
        emit(redis_client, "circuit.opened", "warning", "busy", agent_id="busy")
        assert queued.get(timeout=60) == {"q": 1}
        assert ledger(redis_client, "cb-queued")["agent"] == "other"
        redis_client.set("test:release:circuit", 1)
        assert blocker.get(timeout=60) == {"held": "circuit"}  # it finished where it ran

        # alert.firing: critical ones are pushed at once.
        for name, level in (("EventPathAlert", "critical"), ("WarmAlert", "warning")):
            emit(
                redis_client,
                "alert.firing",
                level,
                "another-monitor",
                name=name,
                alert_severity=level,
                labels={"team": "ops"},
                annotations={"summary": f"{name} from another monitor"},
            )

        def in_alertmanager(name: str) -> list[dict[str, Any]]:
            alerts = get_json(real_alertmanager + "/api/v2/alerts")
            return [a for a in alerts if a["labels"]["alertname"] == name]

        pushed = wait_for(lambda: in_alertmanager("EventPathAlert"), timeout=60, ignore=(OSError,))
        assert pushed[0]["labels"] == {
            "alertname": "EventPathAlert",
            "severity": "critical",
            "team": "ops",
        }

        # recovery.escalated: a task routed to an agent that will never run it.
        task = OrchestrationTask(type="echo", task_id="esc-1")
        store.accept(Acceptance(task, "esc-1", time.time()))
        store.mark_routed(task, agent_id="nobody", now=time.time())
        emit(
            redis_client,
            "recovery.escalated",
            "critical",
            "ops-console",
            task_id="esc-1",
            reason="ops gave up",
        )
        wait_for(lambda: ledger(redis_client, "esc-1").get("state") == "dead_lettered", timeout=60)
        assert "ops gave up" in ledger(redis_client, "esc-1")["error"]
        wait_for(lambda: settled(redis_client), timeout=60)
        escalations = [
            e
            for e in of_type(redis_client, "recovery.escalated")
            if e["data"]["task_id"] == "esc-1"
        ]
        assert [e["source"] for e in escalations] == ["ops-console", "recovery"]
        assert [t for t, _ in store.dead_letters()] == ["esc-1"]
        assert not in_alertmanager("WarmAlert")
    finally:
        store.r.close()


def test_with_event_processing_off_nothing_is_consumed(start_control, redis_client):
    """No consumer group is ever created (it is, before `ready.`, when processing is on), so
    no entry is read or handled; the two derived-event loops are off too (unit-tested in
    tests/unit/test_monitoring_loops.py)."""
    event_id = emit(redis_client, "test.effect")
    control = start_control(ORCH_EVENT_PROCESSING_ENABLED="false", **HANDLERS)
    log = control.wait_for_log("event processing is off")
    assert "ready." in log and "event processing: consumer" not in log
    assert group(redis_client) is None
    assert redis_client.get(f"test:event:effects:{event_id}") is None
    # Turned on, a worker starts reading at the end of the stream: history is not replayed.
    start_control(name="ctl-on", **HANDLERS)
    assert group(redis_client) is not None
    later = emit(redis_client, "test.effect")
    wait_for(lambda: redis_client.get(f"test:event:effects:{later}") == "1", timeout=60)
    assert redis_client.get(f"test:event:effects:{event_id}") is None


def test_a_flushed_redis_stays_empty_until_an_event_then_the_group_returns(
    start_control, redis_client
):
    """A consumer writes nothing into a Redis just flushed (a restore's dry run must find it
    empty); the first event after makes the stream, and the group comes back from its start,
    so that event is handled too."""
    start_control(**HANDLERS)
    assert group(redis_client) is not None or redis_client.exists(EVENTS) == 0
    redis_client.flushall()
    deadline = time.monotonic() + 3  # several read and claim passes of the consumer
    while time.monotonic() < deadline:
        ours = [k for k in redis_client.keys("*") if not k.startswith("_kombu.")]
        assert ours == [], ours  # kombu re-declares its own bindings; that is not ours
        time.sleep(0.1)
    first = emit(redis_client, "test.effect")
    wait_for(lambda: redis_client.get(f"test:event:effects:{first}") == "1", timeout=60)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, failing the test after `timeout` s."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no line within {timeout:g} s")
    return proc.stdout.readline()


def test_events_cli_reads_after_an_id_filters_by_type_and_follows(orch_env, redis_client):
    ids = [emit(redis_client, t, n=i) for i, t in enumerate(["test.a", "test.b", "test.a"])]

    def lines(*args: str) -> list[dict[str, Any]]:
        out = cli(orch_env, "events", *args, "--json").stdout
        return [json.loads(line) for line in out.splitlines()]

    assert [e["id"] for e in lines("--since", ids[0])] == ids[1:]
    assert [e["id"] for e in lines("--since", "0", "--type", "test.a")] == [ids[0], ids[2]]
    assert [e["data"]["n"] for e in lines("--since", "0", "--count", "2")] == [0, 1]
    assert lines("--since", ids[2]) == []
    assert [e["id"] for e in lines("--count", "1")] == ids[2:]  # the newest, as before
    text = cli(orch_env, "events", "--since", ids[1]).stdout
    assert text.split()[0] == ids[2] and "test.a" in text
    bad = cli(orch_env, "events", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "not a stream entry id" in bad.stderr

    # --follow from an id: what came after it, then what comes next, of the type asked.
    with subprocess.Popen(
        [*CLI, "events", "--since", ids[1], "--follow", "--type", "test.a", "--json"],
        env=orch_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follow:
        try:
            assert json.loads(read_line(follow, 30))["id"] == ids[2]
            emit(redis_client, "test.b")
            newest = emit(redis_client, "test.a", n=3)
            assert json.loads(read_line(follow, 30))["id"] == newest
        finally:
            err = interrupt(follow)  # Ctrl-C: a clean exit
    assert follow.returncode == 0, err


def test_entries_no_handler_takes_are_acked_unread_and_bad_ones_a_handler_takes_recorded(
    redis_url, redis_client
):
    """In-process consumer, real Redis: a malformed entry of a type with a handler is
    acknowledged and recorded as failed; task events nobody handles (three per task) are
    acknowledged without being parsed, malformed or not."""
    registry = EventRegistry()
    seen: list[str] = []
    registry.on_event("test.handled")(lambda event, ctx: seen.append(event.type))
    store = StateStore.from_url(redis_url)
    try:
        emit(redis_client, "task.routed", task_id="t1")
        store.ensure_group("0")
        bad_handled = redis_client.xadd(
            EVENTS, {"type": "test.handled", "ts": "x", "severity": "bogus", "source": "s"}
        )
        redis_client.xadd(EVENTS, {"type": "task.routed", "ts": "x", "severity": "bogus"})
        emit(redis_client, "test.handled")
        consumer = EventConsumer(
            store, None, "inproc", claim_idle_s=60, max_deliveries=3, registry=registry
        )
        assert consumer.poll(0) == 4
        assert seen == ["test.handled"]
        failed = [json.loads(x) for x in redis_client.lrange(EVENTS_FAILED, 0, -1)]
        assert [f["id"] for f in failed] == [bad_handled]
        assert settled(redis_client)
    finally:
        store.r.close()
