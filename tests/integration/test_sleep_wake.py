"""Agents sleep when idle and wake when work needs them (real workers).

What a worker consumes is read as an operator would, with Celery's `inspect active_queues`;
the registry (`orch:agent_status`) and the event stream say the rest. The sleep/wake loop is
`orchestrator.sleep_wake` on the control worker; the tests send it ticks (beat would every
ORCH_SCALE_INTERVAL_S) so they wait on conditions rather than on a schedule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.config import load_settings
from orchestrator.runtime.celeryconf import create_app
from orchestrator.store.monitoring import MonitoringStore
from tests.support import cli, cli_json, wait_for

pytestmark = pytest.mark.integration

SLEEPY = {"ORCH_SLEEP_AFTER_IDLE_S": "1", "ORCH_SCALE_TARGET_BACKLOG": "2"}


@pytest.fixture
def sender(redis_url: str) -> Any:
    return create_app(load_settings(redis_url=redis_url), with_tasks=False)


def consuming(sender: Any, redis_client, agent_id: str) -> bool | None:
    """Whether the agent's worker consumes its queue (inspect active_queues); None: no reply."""
    node = json.loads(redis_client.hget("orch:agents", agent_id))["node"]
    replies = sender.control.inspect(destination=[node], timeout=2).active_queues() or {}
    if node not in replies:
        return None
    return f"agent.{agent_id}" in {q["name"] for q in replies[node]}


def status(redis_client, agent_id: str) -> str:
    return redis_client.hget("orch:agent_status", agent_id)


def events(redis_client, type_: str) -> list[dict[str, Any]]:
    return [
        json.loads(f["data"])
        for _, f in redis_client.xrange("orchestrator:events")
        if f["type"] == type_
    ]


def ticking(sender: Any, predicate: Callable[[], Any]) -> Callable[[], Any]:
    """`predicate`, after sending the loop a tick."""

    def check() -> Any:
        sender.send_task("orchestrator.sleep_wake")
        return predicate()

    return check


def ticks(sender: Any, redis_client, n: int) -> None:
    """Send the loop `n` ticks and wait until each has run (or skipped: lock held)."""
    sent = {sender.send_task("orchestrator.sleep_wake").id for _ in range(n)}
    wait_for(
        lambda: sent <= {r["task_id"] for r in MonitoringStore(redis_client).runs()}, timeout=20
    )


def test_an_idle_agent_sleeps_keeping_one_awake_and_wakes_on_backlog(
    start_control, start_agent, redis_client, client, sender, orch_env
):
    start_control(**SLEEPY)
    for agent_id in ("a", "b"):
        start_agent(agent_id, "sleep", **SLEEPY)

    def asleep() -> list[str]:
        return [x for x in ("a", "b") if status(redis_client, x) == "sleeping"]

    sleeper = wait_for(ticking(sender, asleep), timeout=30, interval=0.5)[0]
    awake = "b" if sleeper == "a" else "a"
    ticks(sender, redis_client, 4)  # more ticks: the minimum awake (1) holds
    wait_for(lambda: consuming(sender, redis_client, sleeper) is False, timeout=10)
    assert asleep() == [sleeper]
    assert status(redis_client, awake) == "active"
    assert consuming(sender, redis_client, awake) is True
    checkpoint = json.loads(redis_client.hget("orch:sleep", sleeper))
    assert checkpoint["reason"] == "idle" and "tasks_succeeded" in checkpoint
    assert [e["agent_id"] for e in events(redis_client, "agent.sleeping")] == [sleeper]
    status_now = cli_json(orch_env, "status")  # the metrics snapshot counts it
    assert (status_now["agents_sleeping"], status_now["agents_active"]) == (1, 1)
    listed = {a["agent_id"]: a["status"] for a in cli_json(orch_env, "agents")}
    assert listed == {sleeper: "sleeping", awake: "active"}

    # A backlog of 6 on one awake agent is over 2 per awake agent: the sleeper wakes
    results = [client.submit("sleep", {"seconds": 0.5}) for _ in range(6)]
    wait_for(
        ticking(sender, lambda: status(redis_client, sleeper) == "active"),
        timeout=30,
        interval=0.5,
    )
    wait_for(lambda: consuming(sender, redis_client, sleeper) is True, timeout=10)
    woken = events(redis_client, "agent.woken")
    assert [(e["agent_id"], e["reason"]) for e in woken] == [(sleeper, "backlog")]
    assert not redis_client.hexists("orch:sleep", sleeper)
    for result in results:
        assert result.get(timeout=60) == {"slept": 0.5}


def test_an_agent_keeps_to_its_stored_status_at_each_heartbeat(
    start_agent, redis_client, sender, client, orch_env
):
    """A cancel_consumer the worker missed: its next heartbeat reads `sleeping` and stops
    consuming; `active` again and it consumes again. And an agent with tasks waiting in its
    queue is not put to sleep by hand."""
    start_agent("solo", "hold")
    held = [client.submit("hold", {"key": f"h{i}"}) for i in range(2)]
    waiting = MonitoringStore(redis_client).waiting
    wait_for(lambda: waiting(["agent.solo"]) == {"agent.solo": 1}, timeout=15)  # 1 runs
    refused = cli(orch_env, "agent", "sleep", "solo", check=False)
    assert refused.returncode == 1 and "1 task(s) waiting in its queue" in refused.stderr
    assert status(redis_client, "solo") == "active"
    for i in range(2):
        redis_client.set(f"test:release:h{i}", 1)
    assert [r.get(timeout=30) for r in held] == [{"held": "h0"}, {"held": "h1"}]

    assert consuming(sender, redis_client, "solo") is True
    redis_client.hset("orch:agent_status", "solo", "sleeping")
    wait_for(lambda: consuming(sender, redis_client, "solo") is False, timeout=15)
    redis_client.hset("orch:agent_status", "solo", "active")
    wait_for(lambda: consuming(sender, redis_client, "solo") is True, timeout=15)


def test_a_parked_task_wakes_a_sleeping_capable_agent(
    start_control, start_agent, redis_client, client, orch_env, sender
):
    """`orchestrator agent sleep` by hand; a task only it can take is parked, and the
    control worker's event consumer wakes it at once (`task.parked`), without a loop tick."""
    start_control()
    start_agent("common", "echo")
    special = start_agent("special", "rare")
    slept = json.loads(cli(orch_env, "agent", "sleep", "special", "--json").stdout)
    assert slept == {"agent_id": "special", "status": "sleeping", "changed": True}
    wait_for(lambda: consuming(sender, redis_client, "special") is False, timeout=10)
    assert json.loads(redis_client.hget("orch:sleep", "special"))["reason"] == "manual"

    result = client.submit("rare", {"n": 1})
    assert result.get(timeout=60) == {"rare": True, "n": 1}
    woken = events(redis_client, "agent.woken")
    assert [(e["agent_id"], e["reason"]) for e in woken] == [("special", "parked")]
    assert consuming(sender, redis_client, "special") is True

    # By hand again, both ways; and what cannot be done is said
    assert cli(orch_env, "agent", "sleep", "special").stdout.strip() == (
        "agent special is sleeping"
    )
    assert json.loads(cli(orch_env, "agent", "wake", "special", "--json").stdout)["changed"]
    again = json.loads(cli(orch_env, "agent", "wake", "special", "--json").stdout)
    assert again == {"agent_id": "special", "status": "active", "changed": False}
    unknown = cli(orch_env, "agent", "sleep", "nobody", check=False)
    assert unknown.returncode == 1 and "no agent 'nobody'" in unknown.stderr

    # A sleeping agent still beats; when its worker dies it is lost like an active one
    cli(orch_env, "agent", "sleep", "special")
    special.kill()

    def lost() -> bool:
        sender.send_task("orchestrator.recovery.monitor")
        return status(redis_client, "special") == "offline"

    wait_for(lost, timeout=30, interval=0.5)
    assert [e["agent_id"] for e in events(redis_client, "agent.lost")] == ["special"]


def test_a_sleep_window_sleeps_idle_agents_at_once_and_recycles_the_sleepers(
    start_control, start_agent, redis_client, sender
):
    """A window around now (UTC): no idle time is needed, one agent stays awake, and each
    sleeping one has its pool restarted once in this window (new pool processes)."""
    now = datetime.now(UTC)
    around = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=1):%H:%M}"
    window = {"ORCH_SLEEP_WINDOWS": around}
    start_control(**window)
    agents = {x: start_agent(x, "echo", **window) for x in ("w1", "w2")}
    before = {x: set(proc.child_pids()) for x, proc in agents.items()}

    def recycled() -> list[str]:
        return [e["agent_id"] for e in events(redis_client, "agent.recycled")]

    wait_for(ticking(sender, recycled), timeout=30, interval=0.5)
    sleeper = recycled()[0]
    slept = events(redis_client, "agent.sleeping")
    assert [(e["agent_id"], e["reason"]) for e in slept] == [(sleeper, "window")]
    wait_for(
        lambda: set(agents[sleeper].child_pids()) - before[sleeper],
        timeout=20,
        message="the pool was not restarted",
    )
    ticks(sender, redis_client, 3)
    assert recycled() == [sleeper]  # once per window occurrence
