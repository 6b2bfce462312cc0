"""Dispatch when a slot is free: one backlog the whole fleet drains (real workers).

Each agent holds at most concurrency + ORCH_AGENT_PREFETCH unended tasks; the rest wait in
the backlog in Redis, and whoever frees a slot (a settling run, a new or woken agent) takes
the next one: by priority, then fair share between clients by worker-seconds, then age, with
concurrency keys limiting a key fleet-wide. The `timed` handler records when each run
started and ended in a file outside Redis, so the assertions read what the agents did.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.runtime.celeryconf import create_app
from tests.integration.conftest import ledger
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def runs(path: Path) -> list[dict[str, Any]]:
    """The `timed` handler's records, in the order the runs started."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["start"])


def wait_runs(path: Path, n: int, timeout: float = 120) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (rows := runs(path)) and len(rows) >= n and rows,
        timeout=timeout,
        interval=0.2,
        message=f"{n} runs never recorded",
    )


def timed(client: OrchestratorClient, path: Path, key: str, seconds: float, **fields: Any):
    payload = {"path": str(path), "key": key, "seconds": seconds, "client": fields.get("client_id")}
    return client.submit("timed", payload, task_id=key, **fields)


def max_overlap(rows: list[dict[str, Any]]) -> int:
    """The most runs in progress at one moment."""
    edges = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    level = peak = 0
    for _t, step in edges:
        level += step
        peak = max(peak, level)
    return peak


@pytest.fixture
def sender(redis_url: str) -> Any:
    return create_app(load_settings(redis_url=redis_url), with_tasks=False)


def test_agents_started_later_drain_the_existing_backlog(
    start_control, start_agent, client, redis_client, tmp_path
):
    """One agent and 120 tasks of 0.25 s; three more agents started 2 s later take from the
    backlog at once: they run at least half, and the makespan is within 2x of the ideal
    (every slot busy from the moment each agent registered)."""
    path = tmp_path / "runs.jsonl"
    start_control()
    start_agent("a", "timed", concurrency=1)
    t0 = time.time()
    results = [timed(client, path, f"drain-{i}", 0.25) for i in range(120)]
    time.sleep(2)
    for agent_id in ("b", "c", "d"):
        start_agent(agent_id, "timed", concurrency=1, wait=False)
    wait_for(lambda: redis_client.hlen("orch:agents") == 4, timeout=60)
    registered = max(float(redis_client.hget("orch:heartbeats", a) or 0) for a in ("b", "c", "d"))
    for result in results:
        result.get(timeout=120)
    rows = runs(path)
    assert len(rows) == 120 and len({r["key"] for r in rows}) == 120
    shares = Counter(r["agent"] for r in rows)
    assert shares["b"] + shares["c"] + shares["d"] >= 60, shares
    makespan = max(r["end"] for r in rows) - t0
    head = max(0.0, registered - t0)
    ideal = head + max(0.0, 120 * 0.25 - head) / 4
    assert makespan <= 2 * ideal, (makespan, ideal, shares)


def test_a_woken_sleeper_takes_part_of_the_backlog_that_woke_it(
    start_control, start_agent, client, redis_client, sender, tmp_path
):
    sleepy = {"ORCH_SLEEP_AFTER_IDLE_S": "1", "ORCH_SCALE_TARGET_BACKLOG": "2"}
    path = tmp_path / "runs.jsonl"
    start_control(**sleepy)
    for agent_id in ("a", "b"):
        start_agent(agent_id, "timed", **sleepy)

    def one_asleep() -> str | None:
        sender.send_task("orchestrator.sleep_wake")
        asleep = [a for a in ("a", "b") if redis_client.hget("orch:agent_status", a) == "sleeping"]
        return asleep[0] if asleep else None

    sleeper = wait_for(one_asleep, timeout=30, interval=0.5)
    results = [timed(client, path, f"wake-{i}", 0.3) for i in range(20)]

    def woken() -> bool:
        sender.send_task("orchestrator.sleep_wake")
        return redis_client.hget("orch:agent_status", sleeper) == "active"

    wait_for(woken, timeout=30, interval=0.5)
    for result in results:
        result.get(timeout=60)
    shares = Counter(r["agent"] for r in runs(path))
    assert shares[sleeper] >= 4, shares


def test_capacity_a_four_process_agent_takes_about_four_times_the_work(
    start_control, start_agent, redis_url, tmp_path
):
    """Under least_loaded a 4-process and a 1-process agent share a burst about 4:1: each
    takes the next task when it has a slot free, so each one's share follows its pace."""
    path = tmp_path / "runs.jsonl"
    env = {"ORCH_LOAD_BALANCING_ALGORITHM": "least_loaded"}
    start_control(**env)
    start_agent("big", "timed", concurrency=4, wait=False, **env)
    start_agent("small", "timed", concurrency=1, **env)
    settings = load_settings(redis_url=redis_url, load_balancing_algorithm="least_loaded")
    with OrchestratorClient(settings=settings) as client:
        wait_for(lambda: len(client.store.load_agents()) == 2, timeout=60)
        results = [timed(client, path, f"cap-{i}", 0.2) for i in range(80)]
        for result in results:
            result.get(timeout=120)
    shares = Counter(r["agent"] for r in runs(path))
    ratio = shares["big"] / max(1, shares["small"])
    assert 2.5 <= ratio <= 6.5, shares


def test_a_priority_nine_task_starts_at_the_next_free_slot(
    start_control, start_agent, client, tmp_path
):
    """Five priority-9 tasks submitted behind 200 priority-1 tasks each start within three
    starts of their submission: the agent holds at most its slots, the rest wait in the
    backlog, where priority comes first."""
    path = tmp_path / "runs.jsonl"
    start_control()
    start_agent("solo", "timed", concurrency=1)
    low = [timed(client, path, f"low-{i}", 0.02, priority=1) for i in range(200)]
    wait_runs(path, 5)
    submitted = time.time()
    high = [timed(client, path, f"high-{i}", 0.02, priority=9) for i in range(5)]
    for result in [*high, *low]:
        result.get(timeout=120)
    after = [r for r in runs(path) if r["start"] >= submitted]
    order = [r["key"] for r in after]
    for i, result in enumerate(high):
        assert order.index(result.id) <= 3 + i, order[:12]


def test_fair_share_between_clients_by_worker_seconds(start_control, start_agent, client, tmp_path):
    """300 tasks from one client, then 30 from another: while both wait, the second gets
    about half the starts. With ten times longer tasks for the first client, the
    worker-seconds each gets while both wait stay about even (not the starts)."""
    path = tmp_path / "runs.jsonl"
    start_control()
    start_agent("a", "timed", concurrency=2)
    flood = [timed(client, path, f"a-{i}", 0.05, client_id="flood") for i in range(300)]
    wait_runs(path, 3)
    late = [timed(client, path, f"b-{i}", 0.05, client_id="late") for i in range(30)]
    for result in [*late, *flood]:
        result.get(timeout=120)
    rows = runs(path)
    late_starts = [r["start"] for r in rows if r["client"] == "late"]
    window = [r for r in rows if min(late_starts) <= r["start"] <= max(late_starts)]
    share = sum(r["client"] == "late" for r in window) / len(window)
    assert 0.35 <= share <= 0.65, (share, len(window))

    path2 = tmp_path / "runs2.jsonl"
    long = [timed(client, path2, f"L-{i}", 0.5, client_id="long") for i in range(40)]
    wait_runs(path2, 4)
    short = [timed(client, path2, f"S-{i}", 0.05, client_id="short") for i in range(40)]
    for result in [*short, *long]:
        result.get(timeout=120)
    rows = runs(path2)
    short_rows = [r for r in rows if r["client"] == "short"]
    start, end = min(r["start"] for r in short_rows), max(r["start"] for r in short_rows)
    seconds = {"long": 0.0, "short": 0.0}
    for r in rows:  # worker-seconds spent inside the window, clipped to it
        overlap = min(r["end"], end) - max(r["start"], start)
        if overlap > 0:
            seconds[r["client"]] += overlap
    ratio = seconds["long"] / max(seconds["short"], 1e-6)
    assert 0.4 <= ratio <= 2.5, seconds


def test_a_concurrency_key_limits_the_fleet_and_survives_a_killed_agent(
    start_control, start_agent, client, redis_client, sender, tmp_path
):
    """Limit 2 over 40 keyed and 40 unkeyed tasks on 3 agents: never more than 2 keyed runs
    at once, the unkeyed ones are not held back by the waiting keyed ones, and with an agent
    SIGKILLed mid keyed task the limit still holds and every task ends (the dead agent's
    permit comes back when recovery moves its task)."""
    path = tmp_path / "runs.jsonl"
    start_control()
    agents = {a: start_agent(a, "timed", concurrency=2) for a in ("a", "b", "c")}
    keyed = [
        timed(client, path, f"k-{i}", 0.3, concurrency_key="db", concurrency_limit=2)
        for i in range(40)
    ]
    plain = [timed(client, path, f"p-{i}", 0.1) for i in range(40)]

    def victim() -> str | None:
        for r in keyed:
            fields = ledger(redis_client, r.id)
            if fields.get("state") == "running":
                return fields["agent"]
        return None

    dead = wait_for(victim, timeout=30, interval=0.05)
    os.killpg(agents[dead].pid, signal.SIGKILL)
    deadline = time.time() + 150

    def all_ended() -> bool:
        sender.send_task("orchestrator.recovery.monitor")
        states = [ledger(redis_client, r.id).get("state") for r in [*keyed, *plain]]
        return all(s in ("succeeded", "failed", "dead_lettered") for s in states)

    wait_for(all_ended, timeout=deadline - time.time(), interval=1.0)
    rows = runs(path)
    keyed_rows = [r for r in rows if r["key"].startswith("k-")]
    plain_rows = [r for r in rows if r["key"].startswith("p-")]
    assert {r["key"] for r in keyed_rows} == {r.id for r in keyed}
    assert {r["key"] for r in plain_rows} == {r.id for r in plain}
    assert max_overlap(keyed_rows) <= 2
    # The unkeyed tasks ran alongside, not after, the 40 keyed ones (which take 6 s at 2 at a
    # time): four in five were done before half of the keyed ones had started (the few the
    # killed agent held wait for recovery: ORCH_AGENT_TIMEOUT_S).
    keyed_starts = sorted(r["start"] for r in keyed_rows)
    plain_ends = sorted(r["end"] for r in plain_rows)
    assert plain_ends[int(len(plain_ends) * 0.8)] < keyed_starts[len(keyed_starts) // 2]
    assert redis_client.scard("orch:ck:h:db") == 0


def test_backlog_events_are_emitted_only_while_a_handler_listens(
    start_control, start_agent, client, redis_client, tmp_path
):
    """`task.queued` and `task.dispatched` cost nothing when no control worker has a handler
    for them; once one has, every task through the backlog is announced both ways."""
    path = tmp_path / "runs.jsonl"

    def stream_types() -> list[str]:
        return [f["type"] for _, f in redis_client.xrange("orchestrator:events")]

    control = start_control()
    start_agent("a", "timed", concurrency=1)
    for result in [timed(client, path, f"quiet-{i}", 0.05) for i in range(6)]:
        result.get(timeout=60)
    assert "task.queued" not in stream_types() and "task.dispatched" not in stream_types()

    control.terminate()
    start_control(name="listening", ORCH_HANDLERS="tests.handlers")
    wait_for(lambda: redis_client.scard("orch:events:want:task.queued") == 1, timeout=30)
    loud = [timed(client, path, f"loud-{i}", 0.05) for i in range(6)]
    for result in loud:
        result.get(timeout=60)
    queued = {r.id for r in loud if redis_client.hget(f"orch:task:{r.id}", "fc")}
    assert queued, "no task went through the backlog"
    wait_for(
        lambda: queued <= set(redis_client.lrange("test:event:task.dispatched", 0, -1)),
        timeout=30,
    )
    assert queued <= set(redis_client.lrange("test:event:task.queued", 0, -1))
