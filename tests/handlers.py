"""Handlers the test agents and control workers run (ORCH_HANDLERS=tests.handlers)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis

from orchestrator import capability, on_event
from orchestrator.errors import PermanentError, TransientError
from orchestrator.models import OrchestrationEvent

_client: redis.Redis | None = None
log = logging.getLogger(__name__)


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["ORCH_REDIS_URL"], decode_responses=True)
    return _client


@capability("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@capability("say")
def say(payload: dict[str, Any]) -> dict[str, Any]:
    """Logs a line, and one with a caught exception, through the standard logging module, as
    handlers do (tests/integration/test_json_logs.py)."""
    log.info("handler says %s", payload["words"])
    try:
        raise ValueError(payload["words"])
    except ValueError:
        log.exception("handler caught %s", payload["words"])
    return payload


@capability("rare")
def rare(payload: dict[str, Any]) -> dict[str, Any]:
    return {"rare": True, **payload}


@capability("sleep")
def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(payload.get("seconds", 0.1)))
    return {"slept": payload.get("seconds", 0.1)}


@capability("hold")
def hold(payload: dict[str, Any]) -> dict[str, Any]:
    """Keeps its pool child busy until the test sets `test:release:<key>` (at most
    `max_s`), so a test can hold an agent busy for exactly as long as it needs."""
    key, deadline = payload["key"], time.monotonic() + float(payload.get("max_s", 30))
    while not _redis().exists(f"test:release:{key}") and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"held": key}


@capability("count")
def count(payload: dict[str, Any]) -> dict[str, Any]:
    """Counts its runs in Redis, so a test can tell one execution from two."""
    runs = _redis().incr(f"test:runs:{payload['key']}")
    return {"runs": runs}


@capability("mark")
def mark(payload: dict[str, Any]) -> dict[str, Any]:
    """Appends its key to the file `payload["file"]`, outside Redis: counts runs where a
    Redis failover may lose the last writes (tests/chaos/test_sentinel.py)."""
    with open(payload["file"], "a", encoding="utf-8") as fh:
        fh.write(f"{payload['key']}\n")
    return {"marked": payload["key"]}


@capability("flaky")
def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails transiently until it has run `fail_times` times for this key."""
    runs = _redis().incr(f"test:flaky:{payload['key']}")
    if runs <= int(payload.get("fail_times", 1)):
        raise TransientError(f"flaky run {runs}")
    return {"runs": runs}


@capability("broken")
def broken(payload: dict[str, Any]) -> dict[str, Any]:
    raise PermanentError(payload.get("message", "broken on purpose"))


# --- chaos suite (tests/chaos): every handler counts in Redis under the task id it was given
# as payload["key"]: `test:start:<key>` (runs begun; > 1 is an allowed re-execution),
# `test:done:<key>` (runs completed) and `test:started_at:<key>` (when each run began), so the
# history checker can tell an at-least-once re-run from a run after the task had ended;
# `test:pid:<key>` is the pool child running it now.


def _chaos_start(key: str) -> redis.Redis:
    client = _redis()
    pipe = client.pipeline(transaction=True)
    pipe.incr(f"test:start:{key}")
    pipe.rpush(f"test:started_at:{key}", repr(time.time()))
    pipe.set(f"test:pid:{key}", os.getpid())  # so a test can SIGKILL the child running it
    pipe.execute()
    return client


@capability("chaos")
def chaos(payload: dict[str, Any]) -> dict[str, Any]:
    """Counts its start, sleeps `seconds`, counts its completion."""
    key = payload["key"]
    client = _chaos_start(key)
    time.sleep(float(payload.get("seconds", 0.05)))
    client.incr(f"test:done:{key}")
    return {"key": key}


@capability("suicide")
def suicide(payload: dict[str, Any]) -> dict[str, Any]:
    """SIGKILLs the pool child running it, every time, as the OOM killer would: a poison
    message that only a redelivery cap can stop."""
    import signal

    _chaos_start(payload["key"])
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")  # pragma: no cover


@capability("sometimes_fail_on")
def sometimes_fail_on(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails (a plain crash, not a TransientError) on the agent named `bad_agent` until the
    Redis flag `test:healed:<agent>` is set; succeeds everywhere else."""
    key = payload["key"]
    agent = os.environ.get("ORCH_AGENT_ID", "")
    client = _chaos_start(key)
    time.sleep(float(payload.get("seconds", 0.0)))
    if agent == payload.get("bad_agent") and not client.exists(f"test:healed:{agent}"):
        raise RuntimeError(f"agent {agent} is broken for this handler")
    client.incr(f"test:done:{key}")
    return {"key": key, "agent": agent}


@capability("pace")
def pace(payload: dict[str, Any]) -> dict[str, Any]:
    """Takes `seconds`, or `slow_seconds` while the Redis flag `test:slow:<agent>` is set: an
    agent a test slows down and speeds up again (tests/integration/test_allocation.py)."""
    agent = os.environ.get("ORCH_AGENT_ID", "")
    slow = _redis().exists(f"test:slow:{agent}")
    time.sleep(float(payload["slow_seconds"] if slow else payload["seconds"]))
    return {"agent": agent}


# --- event handlers (tests/integration/test_events.py): control workers given
# ORCH_HANDLERS=tests.handlers register them. Each counts in Redis under the event id, apart
# from the consumer's own markers, so a test can tell one effect from two.


@on_event("test.effect")
def count_effect(event: OrchestrationEvent, ctx: Any) -> None:
    """Notes the pid of the worker running it (`test:event:pids:<id>`), waits until
    `test:release:<hold>` exists when the event has data.hold (at most 60 s), then counts
    the effect (`test:event:effects:<id>`)."""
    client = _redis()
    client.rpush(f"test:event:pids:{event.id}", os.getpid())
    hold, deadline = event.data.get("hold"), time.monotonic() + 60
    while hold and not client.exists(f"test:release:{hold}") and time.monotonic() < deadline:
        time.sleep(0.02)
    client.incr(f"test:event:effects:{event.id}")


@on_event("test.broken")
def always_raise(event: OrchestrationEvent, ctx: Any) -> None:
    """Counts its runs (`test:event:raised:<id>`) and raises every time."""
    _redis().incr(f"test:event:raised:{event.id}")
    raise RuntimeError("broken on purpose")


@on_event("agent.lost")
def note_lost(event: OrchestrationEvent, ctx: Any) -> None:
    """A team's own handler beside the built-in one: lists the agents announced lost."""
    _redis().rpush("test:event:lost", str(event.data.get("agent_id")))


@capability("always_fail")
def always_fail(payload: dict[str, Any]) -> dict[str, Any]:
    """Crashes on every agent, every time: a task whose own payload is bad (a plain
    exception, not a PermanentError, so recovery cannot tell it from a failing agent)."""
    raise RuntimeError(f"bad payload {payload.get('key', '')}")


@capability("record_run")
def record_run(payload: dict[str, Any]) -> dict[str, Any]:
    """Appends `key` as one line to the file `path`: a record of each run kept outside Redis,
    which a Redis that loses its last writes cannot lose (tests/integration/test_atomic_fetch)."""
    with open(payload["path"], "a", encoding="utf-8") as fh:  # one short O_APPEND write
        fh.write(f"{payload['key']}\n")
    return {"key": payload["key"]}


@capability("timed")
def timed(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps `seconds` and appends one JSON line {key, agent, client, start, end} to the file
    `path`: when each run started and ended, kept outside Redis (tests/integration/
    test_dispatch.py)."""
    start = time.time()
    time.sleep(float(payload.get("seconds", 0.0)))
    end = time.time()
    line = {
        "key": payload.get("key"),
        "agent": os.environ.get("ORCH_AGENT_ID", ""),
        "client": payload.get("client"),
        "start": start,
        "end": end,
    }
    with open(payload["path"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    return {"key": payload.get("key")}


@on_event("task.queued", "task.dispatched")
def note_dispatch(event: OrchestrationEvent, ctx: Any) -> None:
    """Lists backlog events by type: a subscriber that turns them on (test_dispatch)."""
    _redis().rpush(f"test:event:{event.type}", str(event.data.get("task_id")))


@capability("stamp_start")
def stamp_start(payload: dict[str, Any]) -> dict[str, Any]:
    """Appends `key` and the wall-clock time it started to the file `path`, one line each
    (tests/integration/test_atomic_fetch: how soon an idle agent starts a message)."""
    with open(payload["path"], "a", encoding="utf-8") as fh:
        fh.write(f"{payload['key']} {time.time()!r}\n")
    return {"key": payload["key"]}


@capability("step")
def step(payload: dict[str, Any]) -> dict[str, Any]:
    """A workflow step (tests/integration/test_canvas.py): sleeps `seconds`, appends one JSON
    line {key, start, end, ok} to the file `path` (kept outside Redis), and returns its key
    with the previous result it was given. With `fail` it raises PermanentError, with
    `crash` a plain exception (recovery's to retry or dead-letter)."""
    key, start = payload["key"], time.time()
    time.sleep(float(payload.get("seconds", 0.0)))
    ok = not (payload.get("fail") or payload.get("crash"))
    with open(payload["path"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"key": key, "start": start, "end": time.time(), "ok": ok}) + "\n")
    if payload.get("fail"):
        raise PermanentError(f"step {key} failed on purpose")
    if payload.get("crash"):
        raise RuntimeError(f"step {key} crashed on purpose")
    return {"key": key, "previous": payload.get("previous")}
