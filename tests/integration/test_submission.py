"""A client's submission against a real redis-server: one atomic step, or the outbox.

A client's submission against a real redis-server, no workers: when the broker is the
state store's Redis, accepting, routing and publishing are one atomic step (no outbox), and a
duplicate changes nothing; with the broker elsewhere the outbox covers the gap."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.errors import DuplicateTask
from orchestrator.models import RegisteredAgent
from orchestrator.store import Acceptance
from orchestrator.store.keys import (
    COUNTERS,
    OUTBOX,
    OUTBOX_MSG,
    TASK_EVENTS,
    history_key,
    task_key,
)

pytestmark = pytest.mark.integration


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """Every message waiting in a queue's priority lists, as (headers, kwargs)."""
    found = []
    for key in sorted(client.keys(f"{queue}*")):
        for raw in client.lrange(key, 0, -1):
            envelope = json.loads(raw)
            _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            found.append({"key": key, "headers": envelope["headers"], "kwargs": kwargs})
    return found


def register(url: str, agent_id: str = "a") -> None:
    client = OrchestratorClient(settings=load_settings(redis_url=url))
    try:
        agent = RegisteredAgent(
            agent_id=agent_id, capabilities={"echo": 1.0}, queue=f"agent.{agent_id}"
        )
        client.store.register_agent(agent, now=client.store.r.time()[0], source="test")
    finally:
        client.close()


def test_client_accepts_routes_and_publishes_in_one_step(redis_url, redis_client):
    register(redis_url)
    with OrchestratorClient(settings=load_settings(redis_url=redis_url)) as client:
        client.submit("echo", {}, task_id="warm-up")  # loads the scripts and the fleet
        redis_client.config_resetstat()
        result = client.submit("echo", {"x": 1}, priority=9, task_id="t-1")
        calls = redis_client.info("commandstats")
    assert result.id == "t-1"
    # one Lua step (accept, the round-robin pick, route and publish), no transaction
    assert calls["cmdstat_evalsha"]["calls"] == 1
    assert "cmdstat_exec" not in calls and "cmdstat_zadd" not in calls
    ledger = redis_client.hgetall(task_key("t-1"))
    assert (ledger["state"], ledger["agent"], ledger["dispatch"]) == ("routed", "a", "1")
    states = [json.loads(h)["state"] for h in redis_client.lrange(history_key("t-1"), 0, -1)]
    assert states == ["accepted", "routed"]
    assert redis_client.hgetall(COUNTERS) == {"submitted": "2", "routed": "2"}
    kinds = [f["type"] for _, f in redis_client.xrange(TASK_EVENTS) if "t-1" in f["data"]]
    assert kinds == ["task.submitted", "task.routed"]
    # nothing was ever in the outbox: there was no moment a crash could strand the task
    assert redis_client.zcard(OUTBOX) == 0 and redis_client.hlen(OUTBOX_MSG) == 0
    [message] = [m for m in queued(redis_client, "agent.a") if m["headers"]["id"] == "t-1"]
    assert message["key"] == "agent.a"  # SPEC priority 9 is the broker's most urgent list
    assert (message["headers"]["task"], message["headers"]["id"]) == ("orchestrator.execute", "t-1")
    assert message["kwargs"]["dispatch"] == 1 and message["kwargs"]["payload"] == {"x": 1}


def test_a_duplicate_submission_changes_nothing_and_publishes_nothing(redis_url, redis_client):
    register(redis_url)
    with OrchestratorClient(settings=load_settings(redis_url=redis_url)) as client:
        client.submit("echo", {"x": 1}, task_id="t-1")
        before = redis_client.hgetall(task_key("t-1"))
        with pytest.warns(DuplicateTask, match="another payload;"):
            again = client.submit("echo", {"x": 2}, task_id="t-1")
    assert again.id == "t-1" and again.duplicate and again.differs == ("payload",)
    assert redis_client.hgetall(task_key("t-1")) == before
    assert len(queued(redis_client, "agent.a")) == 1
    assert redis_client.hget(COUNTERS, "duplicates_ignored") == "1"
    assert redis_client.zcard(OUTBOX) == 0


def test_with_the_broker_on_another_redis_the_outbox_covers_the_gap(redis_url, redis_client):
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    register(redis_url)
    settings = load_settings(redis_url=redis_url, broker_url=broker)
    with OrchestratorClient(settings=settings) as client:
        assert client.submit("echo", {}, task_id="t-2").id == "t-2"
    assert redis_client.hget(task_key("t-2"), "state") == "routed"
    assert queued(redis_client, "agent.a") == []  # not on the state store's database
    with redis.Redis.from_url(broker, decode_responses=True) as other:
        [message] = queued(other, "agent.a")
    assert message["kwargs"]["dispatch"] == 1
    assert redis_client.zcard(OUTBOX) == 0  # dropped once the publish succeeded


def test_a_routed_task_whose_message_vanished_is_routed_again_and_only_that_one(
    redis_url, redis_client
):
    """kombu hands a message over (BRPOP) before recording it as unacknowledged; when Redis
    dies in between and comes back from its AOF, the ledger says `routed` and the message is
    nowhere. The recovery monitor routes such a task again (a new dispatch, so a copy that
    does turn up is stale); a task whose message waits in a queue, is held by a worker, has
    started, or was routed recently is left alone."""
    from orchestrator.recovery.healer import Healer
    from orchestrator.store.keys import KOMBU_UNACKED

    register(redis_url)
    settings = load_settings(
        redis_url=redis_url,
        visibility_timeout_s=10,
        retry_max_delay_s=5,
        agent_timeout_s=10,
        agent_heartbeat_interval_s=1,
        agent_prefetch=10,  # room for all four in a's queue
    )

    def message_of(task_id: str) -> tuple[str, str]:
        for key in redis_client.keys("agent.a*"):
            for raw in redis_client.lrange(key, 0, -1):
                if json.loads(raw)["headers"]["id"] == task_id:
                    return key, raw
        raise AssertionError(f"no message for {task_id}")

    with OrchestratorClient(settings=settings) as client:
        for task_id in ("lost-1", "queued-2", "held-3", "started-4"):
            client.submit("echo", {}, task_id=task_id)
        routed_at = float(redis_client.hget(task_key("lost-1"), "routed_at"))
        key, raw = message_of("lost-1")
        redis_client.lrem(key, 0, raw)  # popped, and the worker's unacked record lost
        key, raw = message_of("held-3")
        redis_client.lrem(key, 0, raw)
        redis_client.hset(KOMBU_UNACKED, "tag-3", json.dumps([json.loads(raw), "", "agent.a"]))
        key, raw = message_of("started-4")
        redis_client.lrem(key, 0, raw)
        client.store.begin_attempt(
            "started-4", agent_id="a", dispatch=1, now=routed_at + 1, pid=4242, max_deliveries=3
        )

        healer = Healer(client.store, client.router, lambda task_id, exc: None)

        def monitor(at: float) -> int:
            client.store.heartbeat("a", at)  # alive all along
            return healer.monitor(now=at)["rescued"]

        assert monitor(routed_at + 8) == 0  # not missing for ORCH_AGENT_TIMEOUT_S yet
        assert monitor(routed_at + 14) == 1
        assert monitor(routed_at + 20) == 0  # its message is back

    dispatches = {
        t: redis_client.hget(task_key(t), "dispatch")
        for t in ("lost-1", "queued-2", "held-3", "started-4")
    }
    assert dispatches == {"lost-1": "2", "queued-2": "1", "held-3": "1", "started-4": "1"}
    assert json.loads(redis_client.lrange(history_key("lost-1"), -1, -1)[0])["reason"] == (
        "message lost"
    )
    [again] = [m for m in queued(redis_client, "agent.a") if m["headers"]["id"] == "lost-1"]
    assert again["kwargs"]["dispatch"] == 2


def test_routing_again_on_condition_of_the_dispatch_changes_nothing_when_it_moved(redis_url):
    """The rescue routes a task again only if it is still `routed` under the dispatch it
    judged: a copy that started meanwhile is never run twice."""
    from orchestrator.models import OrchestrationTask
    from orchestrator.store import StateStore

    store = StateStore.from_url(redis_url)
    try:
        task = OrchestrationTask(type="echo", task_id="t-3")
        store.accept(Acceptance(task, "s-3", now=100.0))
        assert store.mark_routed(task, agent_id="a", now=101.0) == 1
        assert store.mark_routed(task, agent_id="b", now=102.0, expect_dispatch=5) == 0
        store.begin_attempt("t-3", agent_id="a", dispatch=1, now=103.0, pid=4242, max_deliveries=3)
        assert store.mark_routed(task, agent_id="b", now=104.0, expect_dispatch=1) == 0
        fields = store.task_fields("t-3")
        assert (fields["state"], fields["agent"], fields["dispatch"]) == ("running", "a", "1")
    finally:
        store.r.close()
