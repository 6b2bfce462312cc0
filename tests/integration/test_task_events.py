"""The task lifecycle events in a stream of their own (orchestrator:events:tasks).

Real control workers, agents and redis-server: a task's events are listed with the others, in
order, by `orchestrator events` and StateStore.read_events; resuming after any id shown (a page,
--since, --follow) misses nothing and repeats nothing across both streams, one id in both
included; the control workers' group never reads the task stream unless a handler of theirs
takes one of its types, and then that handler gets its events; backups carry both streams.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.events.consumer import EventConsumer
from orchestrator.events.registry import EventRegistry
from orchestrator.store import StateStore
from orchestrator.store.event_log import entry_order
from orchestrator.store.keys import EVENTS, EVENTS_GROUP, TASK_EVENT_TYPES, TASK_EVENTS
from tests.ctrl_c import interrupt
from tests.integration.conftest import ledger
from tests.integration.test_events import emit
from tests.support import CLI, cli, cli_json, wait_for

pytestmark = pytest.mark.integration


def lines(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = cli(env, "events", *args, "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def group_on(r: redis.Redis, stream: str) -> dict[str, Any] | None:
    """The control workers' group on `stream`, if it has one."""
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:  # no stream
        return None
    return next((g for g in groups if g["name"] == EVENTS_GROUP), None)


def ended(r: redis.Redis, task_id: str) -> None:
    """Wait for the task's end in the ledger: its caller's result is stored a moment before
    the agent settles the run and announces it."""
    wait_for(lambda: ledger(r, task_id).get("state") == "succeeded", timeout=30)


def types_in(r: redis.Redis, stream: str) -> set[str]:
    return {f["type"] for _, f in r.xrange(stream)}


def test_a_tasks_events_are_listed_in_order_with_the_others_and_the_group_skips_them(
    start_control, start_agent, client, redis_client, redis_url, orch_env
):
    control = start_control()
    start_agent("a", "echo")
    assert client.submit("echo", {"n": 1}, task_id="life-1").get(timeout=30) == {"n": 1}
    ended(redis_client, "life-1")
    client.submit("rare", {}, task_id="life-parked")  # no agent offers it: parked
    wait_for(lambda: ledger(redis_client, "life-parked").get("state") == "parked", timeout=30)

    # Where they went: the normal path's types to the task stream, the others where they were.
    assert types_in(redis_client, TASK_EVENTS) == {
        "task.submitted",
        "task.routed",
        "task.succeeded",
    }
    assert not TASK_EVENT_TYPES & types_in(redis_client, EVENTS)
    assert {"agent.registered", "task.parked"} <= types_in(redis_client, EVENTS)

    store = StateStore.from_url(redis_url)
    try:
        events = store.read_events()
        ids = [e.id or "" for e in events]
        assert ids == sorted(ids, key=entry_order)
        types = [e.type for e in events]
        assert types.index("agent.registered") < types.index("task.submitted")
        life = [e.type for e in events if e.data.get("task_id") == "life-1"]
        assert life == ["task.submitted", "task.routed", "task.succeeded"]
        # Across the two streams the order is the ids': within one millisecond each stream
        # numbers its own entries, so two events of one millisecond may list either way.
        parked = {e.type: e.id or "" for e in events if e.data.get("task_id") == "life-parked"}
        assert set(parked) == {"task.submitted", "task.parked"}
        submitted_ms = entry_order(parked["task.submitted"])[0]
        assert submitted_ms <= entry_order(parked["task.parked"])[0]
        # A reader resuming after each id, one event at a time, sees each once, in order.
        paged, last = [], "0"
        while page := store.events_after(last, 1):
            paged += page
            last = page[-1].id or last
        assert [(e.id, e.type) for e in paged] == [(e.id, e.type) for e in events]
        # The same with a type: only what asked for.
        assert [e.type for e in store.read_events(types=["task.succeeded"])] == ["task.succeeded"]
    finally:
        store.r.close()

    # `orchestrator events`: the same list, from the start, after an id, the newest, by type.
    listed = lines(orch_env, "--since", "0")
    assert [(e["id"], e["type"]) for e in listed] == [(e.id, e.type) for e in events]
    routed = next(e for e in events if e.type == "task.routed")
    after = lines(orch_env, "--since", routed.id or "")
    assert [e["id"] for e in after] == [e.id for e in events][ids.index(routed.id or "") + 1 :]
    assert [e["id"] for e in lines(orch_env)] == ids[-50:]
    assert [e["data"]["task_id"] for e in lines(orch_env, "--type", "task.succeeded")] == ["life-1"]

    # No handler of this worker takes a task type: its group is on orchestrator:events only.
    assert "reads orchestrator:events;" in control.log_text()
    assert group_on(redis_client, TASK_EVENTS) is None
    # Every entry of the main stream read and handled (a handler may still be at work on
    # task.parked or agent.registered a moment after the read: pending until it acks).
    wait_for(
        lambda: (g := group_on(redis_client, EVENTS)) and not g["lag"] and g["pending"] == 0,
        timeout=30,
        message="the control workers' group left main-stream entries unread or unacked",
    )


def test_following_the_log_shows_both_streams_in_order(
    start_control, start_agent, client, orch_env, tmp_path: Path
):
    start_control()
    start_agent("a", "echo")
    client.submit("echo", {}, task_id="warm").get(timeout=30)
    ended(client.store.r, "warm")
    newest = lines(orch_env, "--count", "1")[0]["id"]
    out = tmp_path / "follow.jsonl"  # a file: several lines come at once

    def seen() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.read_text().splitlines()]

    with (
        open(out, "w") as sink,
        subprocess.Popen(
            [*CLI, "events", "--since", newest, "--follow", "--json"],
            env=orch_env,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        ) as follow,
    ):
        try:
            client.submit("echo", {}, task_id="followed").get(timeout=30)
            ended(client.store.r, "followed")
            emit(client.store.r, "test.mark", n=1)
            wait_for(lambda: any(e["type"] == "test.mark" for e in seen()), timeout=30)
        finally:
            err = interrupt(follow)  # Ctrl-C: a clean exit
    assert follow.returncode == 0, err
    shown = seen()
    ids = [e["id"] for e in shown]
    assert ids == sorted(ids, key=entry_order)
    assert len({json.dumps(e, sort_keys=True) for e in shown}) == len(shown)  # none twice
    mine = [e["type"] for e in shown if e["data"].get("task_id") == "followed"]
    assert mine == ["task.submitted", "task.routed", "task.succeeded"]
    # The mark was written after the task ended: none of the task's entries is of a later
    # millisecond (within one, each stream numbers its own entries: the order is the ids').
    (mark,) = [e["id"] for e in shown if e["type"] == "test.mark"]
    assert all(
        entry_order(e["id"])[0] <= entry_order(mark)[0]
        for e in shown
        if e["data"].get("task_id") == "followed"
    )


def test_a_handler_of_a_task_type_gets_its_events_from_the_task_stream(
    start_control, start_agent, client, redis_client
):
    control = start_control(ORCH_HANDLERS="tests.task_handlers")
    start_agent("a", "echo")
    for result in [client.submit("echo", {"n": i}, task_id=f"h-{i}") for i in range(3)]:
        result.get(timeout=30)

    def noted() -> list[tuple[str, str]]:
        rows = [tuple(x.split()) for x in redis_client.lrange("test:event:succeeded", 0, -1)]
        return rows if len(rows) >= 3 else []

    rows = wait_for(noted, timeout=60, message="the handler never got task.succeeded")
    assert sorted(task for task, _ in rows) == ["h-0", "h-1", "h-2"]
    assert "reads orchestrator:events, orchestrator:events:tasks;" in control.log_text()
    # Read from the task stream and acknowledged there, each marked done under its stream.
    tasks = wait_for(lambda: (g := group_on(redis_client, TASK_EVENTS)) and not g["lag"] and g)
    assert tasks["pending"] == 0 and tasks["entries-read"] == redis_client.xlen(TASK_EVENTS)
    for _task, event_id in rows:
        key = f"orch:events:taskmark:tests.task_handlers.note_succeeded:{event_id}"
        assert redis_client.get(key) == "done"


def test_one_id_in_both_streams_is_two_events_to_readers_and_handlers(redis_url, redis_client):
    """Ids are counted per stream: the same id can name an entry in each. Readers show both
    (orchestrator:events' first) and resume past both; a handler of both types runs for each,
    under markers of their own; entries of milliseconds not over yet wait for a resume."""
    store = StateStore.from_url(redis_url)
    try:
        fields = {"ts": "1.0", "severity": "info", "source": "test", "data": "{}"}
        redis_client.xadd(EVENTS, {**fields, "type": "task.parked"}, id="100-0")
        redis_client.xadd(TASK_EVENTS, {**fields, "type": "task.succeeded"}, id="100-0")
        redis_client.xadd(TASK_EVENTS, {**fields, "type": "task.routed"}, id="100-1")
        redis_client.xadd(EVENTS, {**fields, "type": "agent.lost"}, id="101-0")
        both = [("100-0", "task.parked"), ("100-0", "task.succeeded"), ("100-1", "task.routed")]
        both.append(("101-0", "agent.lost"))
        assert [(e.id, e.type) for e in store.read_events()] == both
        assert [(e.id, e.type) for e in store.events_after("0", 1)] == both[:2]
        assert [(e.id, e.type) for e in store.events_after("100-0", 1)] == both[2:3]
        assert [(e.id, e.type) for e in store.tail_events(2)] == both[2:]
        future = f"{int(time.time() * 1000) + 60_000}-0"
        redis_client.xadd(EVENTS, {**fields, "type": "agent.woken"}, id=future)
        assert [e.id for e in store.events_after("101-0")] == []  # not settled
        assert [e.id for e in store.read_events("(101-0")] == [future]  # a snapshot has it

        ran: list[tuple[str | None, str]] = []
        registry = EventRegistry()
        registry.on_event("task.parked", "task.succeeded")(
            lambda event, ctx: ran.append((event.id, event.type))
        )
        consumer = EventConsumer(
            store, None, "inproc", claim_idle_s=60, max_deliveries=3, registry=registry
        )
        assert consumer.streams == (EVENTS, TASK_EVENTS)
        assert consumer.poll(0) == 5
        assert ran == [("100-0", "task.parked"), ("100-0", "task.succeeded")]
        for stream in (EVENTS, TASK_EVENTS):
            info = group_on(redis_client, stream)
            assert info is not None and info["pending"] == 0 and not info["lag"]

        # A consumer with no handler of a task type leaves the task stream alone.
        redis_client.xgroup_destroy(TASK_EVENTS, EVENTS_GROUP)
        plain = EventRegistry()
        plain.on_event("agent.lost")(lambda event, ctx: ran.append((event.id, event.type)))
        other = EventConsumer(
            store, None, "plain", claim_idle_s=60, max_deliveries=3, registry=plain
        )
        assert other.streams == (EVENTS,)
        other.poll(10)
        assert group_on(redis_client, TASK_EVENTS) is None
    finally:
        store.r.close()


def test_a_backup_carries_both_streams(orch_env, redis_client, redis_url, tmp_path: Path):
    env = {**orch_env, "ORCH_BACKUP_DIR": str(tmp_path / "backups")}
    store = StateStore.from_url(redis_url)
    try:
        store.event("task.succeeded", now=time.time(), source="a", task_id="b-1")
        store.event("agent.lost", now=time.time(), source="test", agent_id="x")
        before = [(e.id, e.type) for e in store.read_events()]
        assert {t for _, t in before} == {"task.succeeded", "agent.lost"}
        manifest = cli_json(env, "backup", "create")
        assert manifest["kinds"]["events"] == 2
        redis_client.flushall()
        cli(env, "backup", "restore", manifest["path"])
        assert [(e.id, e.type) for e in store.read_events()] == before
    finally:
        store.r.close()
