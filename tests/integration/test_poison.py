"""No message stops a worker: entries pushed raw into every queue a worker consumes.

A stock Celery worker dies on the first list entry that is not a kombu envelope
(celery#4308, kombu#2421) and runs whatever a well-formed message names. Here each hostile
entry is taken off its queue, kept in the dead-letter store as kind `poison` with its raw
bytes, counted and announced once as `security.threat`; the same worker processes go on
serving the next task.
"""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import yaml
from celery.result import AsyncResult

from orchestrator.config import load_settings
from orchestrator.runtime.celeryconf import CONTROL_QUEUES, EXECUTE, SUBMIT, create_app
from orchestrator.runtime.transport import captured_pushes
from orchestrator.store.keys import COUNTERS, KOMBU_UNACKED, POISON, POISON_MSG, queue_lists
from tests.support import wait_for

pytestmark = pytest.mark.integration

Entry = tuple[str, bytes]  # (what it is, the raw bytes pushed)

#: The module's shared cluster (tests/integration/conftest.py): one control worker with one
#: process and agent `alpha`; the tests here that need settings of their own start their own.
SHARED_CONTROL_CONCURRENCY = 1
SHARED_AGENTS = {"alpha": "echo,count"}


def _template(redis_url: str, name: str, kwargs: dict[str, Any], queue: str) -> dict[str, Any]:
    """A genuine kombu envelope of `name`, as our own producers would push it."""
    app = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    try:
        with captured_pushes() as pushes:
            app.send_task(name, kwargs=kwargs, queue=queue)
    finally:
        app.close()
    (_key, payload), *_ = pushes
    envelope: dict[str, Any] = json.loads(payload)
    return envelope


def _with_body(envelope: dict[str, Any], body: bytes, content_type: str) -> bytes:
    changed = json.loads(json.dumps(envelope))
    changed["body"] = base64.b64encode(body).decode()
    changed["content-type"] = content_type
    return json.dumps(changed).encode()


def _with_headers(envelope: dict[str, Any], **headers: Any) -> bytes:
    changed = json.loads(json.dumps(envelope))
    changed["headers"].update(headers)
    return json.dumps(changed).encode()


def _with_kwargs(envelope: dict[str, Any], kwargs: dict[str, Any]) -> bytes:
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None}])
    return _with_body(envelope, body.encode(), "application/json")


def hostile_entries(redis_url: str, queue: str) -> list[Entry]:
    """Everything a worker of `queue` must refuse without running anything."""
    on_agent = queue.startswith("agent.")
    count = {"type": "count", "payload": {"key": f"hostile-{queue}"}}
    execute = _template(redis_url, EXECUTE, {**count, "max_retries": 3, "dispatch": 1}, queue)
    submit = _template(redis_url, SUBMIT, count, queue)
    legit = execute if on_agent else submit
    entries: list[Entry] = [
        ("garbage bytes", b"\x00\xffgarbage"),
        ("JSON, not an envelope", b'{"not": "an envelope"}'),
        ("a JSON list", b"[1, 2, 3]"),
        ("JSON nested past the recursion limit", b"[" * 30_000 + b"]" * 30_000),
        ("an envelope without delivery info", json.dumps({"body": "", "properties": {}}).encode()),
        ("a body that is not base64", json.dumps({**legit, "body": "%%% not base64"}).encode()),
        (
            "a pickle body",
            _with_body(legit, pickle.dumps(([], count, {})), "application/x-python-serialize"),
        ),
        (
            "a yaml body",
            _with_body(legit, yaml.safe_dump([[], count, {}]).encode(), "application/x-yaml"),
        ),
        ("a msgpack body", _with_body(legit, b"\x93\x90\x80\x80", "application/x-msgpack")),
        ("raw data, no task body", _with_body(legit, b"\x00\x01 raw", "application/data")),
        ("JSON that is no task body", _with_body(legit, b'{"args": 1}', "application/json")),
        ("a body that is not JSON", _with_body(legit, b"{not json", "application/json")),
        ("bogus compression", _with_headers(legit, compression="application/x-nothing")),
        ("an unknown task name", _with_headers(legit, task="evil.run_anything")),
        ("protocol 1 (no task header)", _with_headers(legit, task=None)),
    ]
    if on_agent:
        entries += [
            (
                "execute with a broken spec",
                _with_kwargs(
                    execute,
                    {"type": "Count!", "payload": [1], "max_retries": 99, "dispatch": -1},
                ),
            ),
            (
                "execute with an argument it does not take",
                _with_kwargs(execute, {**count, "max_retries": 3, "dispatch": 1, "run_as": "root"}),
            ),
            ("execute with a bad task id", _with_headers(execute, id="../../etc/passwd")),
            ("a changed task header (execute -> submit)", _with_headers(execute, task=SUBMIT)),
        ]
    else:
        entries += [
            ("execute on a control queue", json.dumps(execute).encode()),
            (
                "a changed task header (submit -> recover)",
                _with_headers(submit, task="orchestrator.recover"),
            ),
        ]
    return entries


def _poison(redis_client: redis.Redis, besides: set[str] = frozenset()) -> list[dict[str, Any]]:
    """The poison store's entries, but those in `besides` (kept before a test began)."""
    ids = [i for i in redis_client.zrange(POISON, 0, -1) if i not in besides]
    return [json.loads(redis_client.hget(POISON_MSG, i)) for i in ids]


def _threats(redis_client: redis.Redis, since: str = "-") -> list[dict[str, Any]]:
    entries = redis_client.xrange("orchestrator:events", min=since)
    found = [json.loads(f["data"]) for _, f in entries if f["type"] == "security.threat"]
    return [d for d in found if d.get("kind") == "poison"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_entry_stops_a_worker_and_each_is_kept_as_poison(shared: Any) -> None:
    client, redis_client, redis_url, orch_env = shared.client, shared.redis, shared.url, shared.env
    control, agent = shared.proc("control"), shared.proc("alpha")
    pids = (control.pid, agent.pid)
    # What the cluster kept, ran and dead-lettered for the tests before this one.
    earlier = set(redis_client.zrange(POISON, 0, -1))
    ran_before = set(redis_client.keys("test:runs:*"))
    dead_before = redis_client.zrevrange("orch:dlq", 0, -1)
    assert client.submit("echo", {"before": True}).get(timeout=30) == {"before": True}

    raw = redis.Redis.from_url(redis_url)  # bytes in, bytes out
    pushed: list[tuple[str, str, bytes]] = []
    for queue in [*CONTROL_QUEUES, "agent.alpha"]:
        for what, entry in hostile_entries(redis_url, queue):
            raw.lpush(queue, entry)
            pushed.append((queue, what, entry))

    kept = wait_for(
        lambda: (found := _poison(redis_client, earlier)) and len(found) >= len(pushed) and found,
        timeout=60,
        message=f"not every one of {len(pushed)} entries was refused",
    )
    # Each entry refused once, from its own queue, with a reason; nothing ran.
    assert len(kept) == len(pushed)
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for entry in kept:
        by_queue.setdefault(entry["queue"], []).append(entry)
    for queue in [*CONTROL_QUEUES, "agent.alpha"]:
        expected = [e for q, _, e in pushed if q == queue]
        got = by_queue.get(queue, [])
        assert len(got) == len(expected), (queue, [g["reason"] for g in got])
        assert all(g["reason"] and g["size"] > 0 for g in got)
        # The raw bytes are kept: byte for byte where the entry was not an envelope, and the
        # same envelope where it was refused after decoding.
        kept_raw = [base64.b64decode(g["raw"]) for g in got]
        for entry in expected:
            assert entry in kept_raw or any(_same_json(entry, k) for k in kept_raw), entry[:80]
    assert set(redis_client.keys("test:runs:*")) == ran_before
    assert shared.counter("poison") == len(pushed)
    threats = _threats(redis_client, since=shared.events_after)
    assert len(threats) == len(pushed)
    assert all({"queue", "reason", "size", "excerpt"} <= set(t) for t in threats)
    garbage = next(t for t in threats if t["queue"] == "agent.alpha" and t["size"] == 9)
    assert garbage["reason"].startswith("not JSON") and "garbage" in garbage["excerpt"]

    # Off the queues for good: no list holds them, none waits to be restored as unacked.
    for queue in [*CONTROL_QUEUES, "agent.alpha"]:
        assert sum(redis_client.llen(q) for q in queue_lists(queue)) == 0, queue
    assert redis_client.hlen(KOMBU_UNACKED) == 0

    # The same processes serve the next task, on both submission paths.
    assert (control.pid, agent.pid) == pids and control.alive and agent.alive
    assert client.submit("echo", {"after": 1}).get(timeout=30) == {"after": 1}
    plain = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    by_name = plain.send_task(SUBMIT, kwargs={"type": "count", "payload": {"key": "ok"}})
    assert plain.AsyncResult(by_name.id).get(timeout=30) == {"runs": 1}
    plain.close()
    assert "Unrecoverable error" not in control.log_text() + agent.log_text()

    # The CLI lists, shows and purges them.
    listed = _cli(orch_env, "dlq", "list", "--kind", "poison", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == len(pushed) + len(earlier) and all(r["kind"] == "poison" for r in rows)
    assert {r["id"] for r in rows} - earlier == {e["id"] for e in kept}
    assert {"id", "queue", "reason", "size", "excerpt", "ts"} <= set(rows[0])
    tasks = json.loads(_cli(orch_env, "dlq", "list", "--json").stdout)
    assert [d["task_id"] for d in tasks] == dead_before  # no task died
    shown = _cli(orch_env, "dlq", "show", garbage["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert base64.b64decode(json.loads(shown.stdout)["raw"]) == b"\x00\xffgarbage"
    replay = _cli(orch_env, "dlq", "replay", garbage["id"])
    assert replay.returncode == 1 and "cannot be replayed" in " ".join(replay.stderr.split())
    purged = _cli(orch_env, "dlq", "purge", "--kind", "poison", "--all", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert f"{len(pushed) + len(earlier)} poison message(s)" in purged.stdout
    assert redis_client.zcard(POISON) == 0 and redis_client.hlen(POISON_MSG) == 0


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def test_the_store_keeps_at_most_the_configured_number(
    start_agent: Callable[..., Any], redis_client: redis.Redis, redis_url: str
) -> None:
    start_agent("beta", "echo", ORCH_POISON_KEEP="3", ORCH_POISON_RAW_MAX_BYTES="64")
    raw = redis.Redis.from_url(redis_url)
    for i in range(5):
        raw.lpush("agent.beta", b"junk-%d-" % i + b"x" * 200)
    wait_for(lambda: int(redis_client.hget(COUNTERS, "poison") or 0) == 5, timeout=30)
    kept = _poison(redis_client)
    assert len(kept) == 3
    assert all(e["size"] == 207 and e["truncated"] for e in kept)
    assert all(len(base64.b64decode(e["raw"])) == 64 for e in kept)
    assert sorted(base64.b64decode(e["raw"])[:6] for e in kept) == [b"junk-2", b"junk-3", b"junk-4"]
    # An entry longer than any message a router would publish is refused before decoding.
    limit = 2 * 1_048_576 + 65_536
    raw.lpush("agent.beta", b"[" + b" " * limit + b"]")
    wait_for(lambda: int(redis_client.hget(COUNTERS, "poison") or 0) == 6, timeout=30)
    newest = max(_poison(redis_client), key=lambda e: e["ts"])
    assert newest["reason"] == f"entry of {limit + 2} bytes exceeds the limit of {limit}"


def test_a_replayed_message_runs_nothing_again(shared: Any) -> None:
    """A well-formed message pushed again after it ran (a replay, with or without an edited
    id header) passes the gate: the ledger is what stops it from running twice."""
    client, redis_client, redis_url = shared.client, shared.redis, shared.url
    poison_before = redis_client.zcard(POISON)
    settings = load_settings(redis_url=redis_url)
    app = create_app(settings, with_tasks=False)
    with captured_pushes() as pushes:
        app.send_task(SUBMIT, kwargs={"type": "count", "payload": {"key": "r"}, "task_id": "r-1"})
    (key, submit_entry), *_ = pushes
    raw = redis.Redis.from_url(redis_url)
    raw.lpush(key, submit_entry)
    assert app.AsyncResult("r-1").get(timeout=30) == {"runs": 1}

    with captured_pushes() as pushes:
        app.send_task(
            EXECUTE,
            task_id="r-1",
            kwargs={"type": "count", "payload": {"key": "r"}, "max_retries": 3, "dispatch": 1},
            queue="agent.alpha",
        )
    (exec_key, exec_entry), *_ = pushes
    replays = [
        (key, submit_entry),  # the same submission again
        (key, _with_headers(json.loads(submit_entry), id="edited-id").decode()),
        (exec_key, exec_entry),  # the first dispatch's execute again
    ]
    for list_key, entry in replays:
        raw.lpush(list_key, entry)
    wait_for(
        lambda: (
            all(redis_client.llen(k) == 0 for k, _ in replays)
            and redis_client.hlen(KOMBU_UNACKED) == 0
        ),
        timeout=30,
        message="the replays were not consumed",
    )
    # Consumed and answered from the ledger: the handler ran once, and the task's record
    # still says one attempt.
    assert client.submit("count", {"key": "other"}).get(timeout=30) == {"runs": 1}
    assert redis_client.get("test:runs:r") == "1"
    assert client.task("r-1").attempts == 1
    assert redis_client.zcard(POISON) == poison_before  # nothing refused
    app.close()


def test_the_sender_of_a_refused_task_message_is_told_why(shared: Any) -> None:
    """A producer that names a task no worker has, or sends pickle, gets the refusal as its
    result (as Celery answers an unknown task), not a result that never comes; a forged
    message never overwrites the outcome of a real task."""
    from celery import Celery

    client, redis_client, redis_url = shared.client, shared.redis, shared.url
    poison_before = redis_client.zcard(POISON)
    plain = Celery(broker=redis_url, backend=redis_url)
    typo = plain.send_task("orchestrator.submitt", kwargs={"type": "echo"})
    with pytest.raises(Exception, match=r"unknown task 'orchestrator\.submitt'; nothing ran"):
        typo.get(timeout=30)
    plain.close()
    pickler = Celery(broker=redis_url, backend=redis_url)
    pickler.conf.task_serializer = "pickle"
    pickled = pickler.send_task(SUBMIT, kwargs={"type": "echo", "payload": {}})
    with pytest.raises(Exception, match="content type 'application/x-python-serialize'"):
        pickled.get(timeout=30)
    pickler.close()

    done = client.submit("echo", {"real": 1}, task_id="real-1")
    assert done.get(timeout=30) == {"real": 1}
    forged = _with_headers(
        _template(redis_url, SUBMIT, {"type": "echo"}, "celery"), id="real-1", task="nope"
    )
    redis.Redis.from_url(redis_url).lpush("celery", forged)
    wait_for(lambda: redis_client.zcard(POISON) == poison_before + 3, timeout=30)
    assert client.result("real-1").get(timeout=5) == {"real": 1}


def test_the_sender_of_a_protocol_1_message_is_told_it_is_refused(shared: Any) -> None:
    """Celery's protocol 1 carries the task's name and id in the body, not in headers: it is
    refused, and answered under the body's id, so its sender's get() does not wait forever."""
    from celery import Celery

    redis_client, redis_url = shared.redis, shared.url
    poison_before = redis_client.zcard(POISON)
    task_id = str(uuid.uuid4())
    fields = {"task": SUBMIT, "id": task_id, "args": [], "kwargs": {"type": "echo"}}
    envelope = _template(redis_url, SUBMIT, {"type": "echo"}, "celery")
    envelope["headers"] = {}
    entry = _with_body(envelope, json.dumps(fields).encode(), "application/json")
    redis.Redis.from_url(redis_url).lpush("celery", entry)

    client_app = Celery(broker=redis_url, backend=redis_url)
    try:
        with pytest.raises(Exception, match=r"message refused .*protocol 1 is not accepted"):
            AsyncResult(task_id, app=client_app).get(timeout=10)
    finally:
        client_app.close()
    assert redis_client.zcard(POISON) == poison_before + 1
    assert shared.proc("control").alive


def test_no_broadcast_stops_a_worker(shared: Any) -> None:
    """Remote control arrives by pub/sub (fanout): hostile entries published there do not
    stop the worker either, and it still answers `celery inspect ping`."""
    redis_client, orch_env = shared.redis, shared.env
    control = shared.proc("control")
    # kombu subscribes with a pattern (PSUBSCRIBE) when fanout patterns are on.
    wait_for(lambda: redis_client.pubsub_channels() or redis_client.pubsub_numpat(), timeout=30)
    channels = {*redis_client.pubsub_channels(), "/0.celery.pidbox", "/0.celery.pidbox/x"}
    for channel in channels:
        for entry in (b"\x00\xff", b'{"x": 1}', b"[" * 30_000 + b"]" * 30_000):
            redis_client.publish(channel, entry)
    pong = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "orchestrator.app", "inspect", "ping", "-t", "5"],
        env=orch_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pong.returncode == 0 and "pong" in pong.stdout, pong.stdout + pong.stderr
    assert control.alive and "Unrecoverable error" not in control.log_text()
