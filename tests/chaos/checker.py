"""History checker: what the cluster recorded about each submitted id, judged by the promise.

The promise under test: every accepted task ends succeeded, failed with a reason, or
dead-lettered; a completion is recorded once; nothing waits an hour to be recovered. The
checker reads every source of truth a client or an operator could look at (the ledger and its
history, the event streams, the dead-letter set, Celery's result backend, and the handlers' own
`test:start:<id>` / `test:done:<id>` counters) and cross-checks them, because a fault usually
shows as two of them disagreeing rather than as one of them being wrong.

Two layers, so the verdict logic is testable without Redis:
  * `judge(observations)` is pure (tests/chaos/verdict.py): `Observation` -> `ChaosReport`.
  * `wait_until_settled`, `collect` and `check`, here, read Redis (pipelined, in chunks).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from orchestrator.store.event_log import entry_order
from orchestrator.store.keys import DLQ, EVENT_STREAMS, history_key, task_key
from tests.chaos.verdict import (
    TERMINAL_STATES,
    ChaosReport,
    Observation,
    judge,
)

#: Event type -> the ledger end state it announces.
END_EVENTS = {
    "task.succeeded": "succeeded",
    "task.failed": "failed",
    "task.dead_lettered": "dead_lettered",
}
#: Celery's Redis result backend key prefix (celery.backends.base.KeyValueStoreBackend).
RESULT_PREFIX = "celery-task-meta-"
READY_RESULT_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: kombu's Redis transport: in-flight messages, and the separator of priority sub-queues.
UNACKED = "unacked"
PRIORITY_SEP = "\x06\x16"
CHUNK = 500


# --- reading Redis ------------------------------------------------------------------------


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    text = _text(value)
    return int(text) if text else 0


def _float(value: Any) -> float | None:
    text = _text(value)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _result_status(raw: Any) -> str | None:
    return _result(raw)[0]


def _result(raw: Any) -> tuple[str | None, str | None]:
    """(status, "ExcType: message" for a failure) of a stored Celery result."""
    text = _text(raw)
    if text is None:
        return None, None
    try:
        meta = json.loads(text)
        status = str(meta.get("status"))
    except (ValueError, AttributeError):
        return "UNREADABLE", None
    result = meta.get("result")
    if status == "FAILURE" and isinstance(result, dict):
        return status, f"{result.get('exc_type')}: {result.get('exc_message')}"
    return status, None


def terminal_count(r: redis.Redis, ids: Sequence[str]) -> int:
    """How many of `ids` have a terminal ledger state (one pipelined round trip per chunk)."""
    n = 0
    for chunk in _chunks(ids):
        pipe = r.pipeline(transaction=False)
        for task_id in chunk:
            pipe.hget(task_key(task_id), "state")
        n += sum(_text(s) in TERMINAL_STATES for s in pipe.execute())
    return n


def counter_total(r: redis.Redis, prefix: str, ids: Sequence[str]) -> int:
    """Sum of `<prefix><id>` counters, e.g. counter_total(r, "test:done:", ids)."""
    total = 0
    for chunk in _chunks(ids):
        total += sum(_int(v) for v in r.mget([prefix + i for i in chunk]))
    return total


def ledger_states(r: redis.Redis, ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """id -> (ledger state, agent), pipelined: for "mid-run" conditions and progress lines."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for chunk in _chunks(ids):
        pipe = r.pipeline(transaction=False)
        for task_id in chunk:
            pipe.hmget(task_key(task_id), ["state", "agent"])
        for task_id, (state, agent) in zip(chunk, pipe.execute(), strict=True):
            out[task_id] = (_text(state), _text(agent))
    return out


def read_events(
    r: redis.Redis, types: Iterable[str] = (), since: str = "-"
) -> list[tuple[str, str, dict[str, Any]]]:
    """(entry id, type, data) of every event (of `types`, if given) in both event streams,
    by entry id."""
    wanted = set(types)
    found: list[tuple[str, str, dict[str, Any]]] = []
    for stream in EVENT_STREAMS:
        last = since
        while True:
            entries = r.xrange(stream, min=last, count=2000)
            for entry_id, fields in entries:
                kind = _text(fields.get("type") or fields.get(b"type")) or ""
                if wanted and kind not in wanted:
                    continue
                try:
                    data = json.loads(_text(fields.get("data") or fields.get(b"data")) or "{}")
                except ValueError:
                    data = {}
                data.setdefault("_ts", float(_text(fields.get("ts") or fields.get(b"ts")) or 0))
                found.append((_text(entry_id) or "", kind, data))
            if len(entries) < 2000:
                break
            last = "(" + (_text(entries[-1][0]) or "")
    return sorted(found, key=lambda e: entry_order(e[0]))  # stable: a tie keeps EVENTS' first


def _settled(r: redis.Redis, ids: Sequence[str], require_result: bool) -> set[str]:
    done: set[str] = set()
    for chunk in _chunks(ids):
        pipe = r.pipeline(transaction=False)
        for task_id in chunk:
            pipe.hget(task_key(task_id), "state")
            if require_result:
                pipe.get(RESULT_PREFIX + task_id)
        replies = pipe.execute()
        step = 2 if require_result else 1
        for k, task_id in enumerate(chunk):
            state = _text(replies[k * step])
            if state not in TERMINAL_STATES:
                continue
            if require_result and _result_status(replies[k * step + 1]) not in READY_RESULT_STATES:
                continue
            done.add(task_id)
    return done


def wait_until_settled(
    r: redis.Redis,
    ids: Sequence[str],
    timeout: float,
    *,
    poll_s: float = 0.25,
    require_result: bool = True,
    optional: Iterable[str] = (),
) -> float:
    """Poll until every id's ledger is terminal (and its Celery result stored), or `timeout`.

    Only the ids still pending are asked about again, one pipeline per 500 of them. Redis
    being unreachable counts as "not yet". An `optional` id (a submission that may never have
    got in) stops being waited for once it has no ledger entry and no message left anywhere
    in the broker: nothing can bring it in any more, and waiting would only burn the deadline.
    Returns the seconds waited; never raises on timeout (the report says what was pending).
    """
    started = time.monotonic()
    deadline = started + timeout
    pending = list(dict.fromkeys(ids))
    maybe_absent = set(optional)
    last_scan = 0.0
    while pending:
        try:
            done = _settled(r, pending, require_result)
            pending = [i for i in pending if i not in done]
            now = time.monotonic()
            if pending and maybe_absent and now - last_scan >= 1.0:
                last_scan = now
                missing = _without_ledger(r, [i for i in pending if i in maybe_absent])
                if missing:
                    held = broker_holdings(r)
                    gone = {i for i in missing if i not in held}
                    pending = [i for i in pending if i not in gone]
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            pass
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return time.monotonic() - started


def _without_ledger(r: redis.Redis, ids: Sequence[str]) -> set[str]:
    missing: set[str] = set()
    for chunk in _chunks(ids):
        pipe = r.pipeline(transaction=False)
        for task_id in chunk:
            pipe.exists(task_key(task_id))
        missing.update(i for i, e in zip(chunk, pipe.execute(), strict=True) if not e)
    return missing


def _message_task_ids(raw: Mapping[str, Any]) -> list[str]:
    """The orchestration ids one kombu message is about: the Celery id, and for
    `orchestrator.submit` the `task_id` kwarg (the id a client tracks)."""
    headers = raw.get("headers") or {}
    found = [str(headers["id"])] if headers.get("id") else []
    if headers.get("task") == "orchestrator.submit":
        try:
            body = raw.get("body", "")
            if (raw.get("properties") or {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _args, kwargs, _embed = json.loads(body)
            if isinstance(kwargs, dict) and kwargs.get("task_id"):
                found.append(str(kwargs["task_id"]))
        except (ValueError, TypeError):
            pass
    return found


def broker_holdings(r: redis.Redis, scan_count: int = 1000) -> dict[str, list[str]]:
    """Where messages sit in the broker, by orchestration id: queue names (priority
    sub-queues folded into their queue) and `unacked:<queue>` for messages a worker took and
    never acknowledged (kombu restores those only after the visibility timeout)."""
    holdings: dict[str, list[str]] = {}

    def note(task_ids: list[str], where: str) -> None:
        for task_id in task_ids:
            holdings.setdefault(task_id, []).append(where)

    for key in r.scan_iter(count=scan_count, _type="list"):
        name = _text(key) or ""
        if name.startswith(("orch:", "test:", RESULT_PREFIX)):
            continue
        queue = name.split(PRIORITY_SEP, 1)[0]
        for item in r.lrange(key, 0, -1):
            try:
                raw = json.loads(_text(item) or "")
            except ValueError:
                note(["<undecodable>"], queue)
                continue
            if isinstance(raw, dict):
                note(_message_task_ids(raw), queue)
    for _tag, item in r.hscan_iter(UNACKED, count=scan_count):
        try:
            raw, _exchange, routing_key = json.loads(_text(item) or "")
        except (ValueError, TypeError):
            continue
        note(_message_task_ids(raw), f"unacked:{routing_key}")
    return holdings


def _read_end_events(r: redis.Redis, wanted: set[str]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for stream in EVENT_STREAMS:
        last = "-"
        while True:
            entries = r.xrange(stream, min=last, count=2000)
            if not entries:
                break
            for _entry_id, fields in entries:
                kind = _text(fields.get("type") or fields.get(b"type"))
                if kind not in END_EVENTS:
                    continue
                try:
                    data = json.loads(_text(fields.get("data") or fields.get(b"data")) or "{}")
                except ValueError:
                    continue
                task_id = str(data.get("task_id"))
                if task_id in wanted:
                    counts.setdefault(task_id, Counter())[kind] += 1
            last = "(" + (_text(entries[-1][0]) or "")
            if len(entries) < 2000:
                break
    return counts


def collect(
    r: redis.Redis,
    ids: Sequence[str],
    *,
    submit_failed: Iterable[str] = (),
    scan_broker: bool = True,
) -> dict[str, Observation]:
    """Read every recorded fact about `ids`: per chunk, one pipeline for the ledger, its
    history, the counters, the result and the DLQ; then the events stream once and, for the
    evidence of where a pending task is stuck, the broker's queues and unacked hash once."""
    failed_at_client = set(submit_failed)
    ids = list(dict.fromkeys(ids))
    events = _read_end_events(r, set(ids))
    holdings = broker_holdings(r) if scan_broker else {}
    observations: dict[str, Observation] = {}
    for chunk in _chunks(ids):
        pipe = r.pipeline(transaction=False)
        for task_id in chunk:
            pipe.hgetall(task_key(task_id))
            pipe.lrange(history_key(task_id), 0, -1)
            pipe.get(f"test:start:{task_id}")
            pipe.get(f"test:done:{task_id}")
            pipe.get(RESULT_PREFIX + task_id)
            pipe.zscore(DLQ, task_id)
            pipe.lrange(f"test:started_at:{task_id}", 0, -1)
        replies = pipe.execute()
        for k, task_id in enumerate(chunk):
            ledger, history, starts, dones, result, dlq, started_at = replies[k * 7 : k * 7 + 7]
            ledger = {_text(a): _text(b) for a, b in (ledger or {}).items()}
            parsed_history = []
            for entry in history or []:
                try:
                    parsed_history.append(json.loads(_text(entry) or "{}"))
                except ValueError:
                    parsed_history.append({"state": "<unreadable>"})
            observations[task_id] = Observation(
                task_id=task_id,
                state=ledger.get("state"),
                agent=ledger.get("agent"),
                attempts=_int(ledger.get("attempts")),
                error=ledger.get("error") or None,
                history=tuple(parsed_history),
                starts=_int(starts),
                dones=_int(dones),
                start_times=tuple(float(_text(t) or 0) for t in started_at or ()),
                finished_at=_float(ledger.get("finished_at")),
                end_events=dict(events.get(task_id, {})),
                result_status=_result(result)[0],
                result_error=_result(result)[1],
                in_dlq=dlq is not None,
                broker=tuple(holdings.get(task_id, ())),
                submit_failed=task_id in failed_at_client,
            )
    return observations


def check(
    r: redis.Redis,
    ids: Sequence[str],
    *,
    timeout: float = 60.0,
    name: str = "chaos",
    counted: bool | Iterable[str] = True,
    submit_failed: Iterable[str] = (),
    missing_ledger_is_lost: bool = True,
    require_result: bool = True,
    poll_s: float = 0.25,
) -> ChaosReport:
    """Wait (up to `timeout`) until every id is settled, then read and judge the history.

    `submit_failed`: ids whose submission raised at the client; they are judged too (one
    that got in after all must still end properly) but one that left no trace is not lost.
    `missing_ledger_is_lost=False`: the same for every id (the Redis-crash scenario, where
    the AOF's last second is gone and with it whatever the clients sent in it).
    """
    failed = set(submit_failed)
    ids = list(dict.fromkeys(ids))
    waited = wait_until_settled(
        r,
        ids,
        timeout,
        poll_s=poll_s,
        require_result=require_result,
        optional=failed if missing_ledger_is_lost else ids,
    )
    observations = collect(r, ids, submit_failed=failed)
    return judge(
        observations,
        name=name,
        counted=counted,
        waited_s=waited,
        missing_ledger_is_lost=missing_ledger_is_lost,
    )
