"""History checker: what the cluster recorded about each submitted id, judged against issue 3.

The promise under test: every accepted task ends succeeded, failed with a reason, or
dead-lettered; a completion is recorded once; nothing waits an hour to be recovered. The
checker reads every source of truth a client or an operator could look at (the ledger and its
history, the events stream, the dead-letter set, Celery's result backend, and the handlers' own
`test:start:<id>` / `test:done:<id>` counters) and cross-checks them, because a fault usually
shows as two of them disagreeing rather than as one of them being wrong.

Two layers, so the verdict logic is testable without Redis:
  * `judge(observations)` is pure: `Observation` (raw facts per id) -> `ChaosReport`.
  * `wait_until_settled`, `collect` and `check` read Redis (pipelined, in chunks).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from orchestrator.store.keys import DLQ, EVENTS, history_key, task_key

TERMINAL_STATES = frozenset({"succeeded", "failed", "dead_lettered"})
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


class Fate(StrEnum):
    """How one id ended, from the client's point of view."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    LOST = "lost"  # accepted (or durably in the broker) but not terminal by the deadline
    UNACCEPTED = "unaccepted"  # the submission never got in: no ledger, no message anywhere


@dataclass(frozen=True)
class Observation:
    """Everything recorded about one id, as read from Redis. No judgement here."""

    task_id: str
    state: str | None = None  # the ledger's state; None: no ledger entry at all
    agent: str | None = None
    attempts: int = 0
    error: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    starts: int = 0  # test:start:<id>, the handler's entries
    dones: int = 0  # test:done:<id>, the handler's completions
    start_times: tuple[float, ...] = ()  # test:started_at:<id>, when each run began
    finished_at: float | None = None  # the ledger's finished_at: when the end was recorded
    end_events: Mapping[str, int] = field(default_factory=dict)  # event type -> count
    result_status: str | None = None  # Celery result backend status; None: nothing stored
    result_error: str | None = None  # the stored exception, for a FAILURE
    in_dlq: bool = False
    broker: tuple[str, ...] = ()  # where messages for it still sit ("agent.b", "unacked:agent.b")
    submit_failed: bool = False  # the client's own submission raised (e.g. Redis was down)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def starts_after_end(self) -> int:
        """Runs begun after the end was recorded: a task already ended must never run again
        (a redelivered stale copy has to be recognised by the ledger, not executed)."""
        if self.finished_at is None:
            return 0
        return sum(1 for t in self.start_times if t > self.finished_at)

    def describe(self) -> str:
        """One line of evidence: what the ledger says and where the messages are."""
        states = " > ".join(str(h.get("state", "?")) + _at(h) for h in self.history[-8:])
        parts = [
            f"state={self.state or 'NO LEDGER'}",
            f"agent={self.agent}",
            f"attempts={self.attempts}",
            f"starts={self.starts}",
            f"dones={self.dones}",
            f"result={self.result_status or 'none'}"
            + (f"({self.result_error[:100]})" if self.result_error else ""),
        ]
        if self.end_events:
            ends = sorted(self.end_events.items())
            parts.append("events=" + ",".join(f"{k}x{v}" for k, v in ends))
        if self.starts_after_end:
            parts.append(f"starts_after_end={self.starts_after_end}")
        if self.in_dlq:
            parts.append("in orch:dlq")
        if self.broker:
            parts.append("broker=" + ",".join(self.broker))
        if self.error:
            parts.append(f"error={self.error[:120]!r}")
        if states:
            parts.append(f"history: {states}")
        return " ".join(parts)


def _at(entry: Mapping[str, Any]) -> str:
    agent = entry.get("agent")
    return f"@{agent}" if agent else ""


@dataclass(frozen=True)
class Verdict:
    """One id judged. `problems` are broken promises (they fail the suite); `notes` are
    allowed but worth seeing (a re-execution, a completion that did not stick)."""

    task_id: str
    fate: Fate
    duplicated: bool
    re_executed: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    observation: Observation
    re_completed: bool = False


def judge_one(
    obs: Observation, *, counted: bool = True, missing_ledger_is_lost: bool = True
) -> Verdict:
    """Judge one id.

    `counted`: its handler keeps the test:start/test:done counters, so a success with no
    completion, or two completions, can be seen. `missing_ledger_is_lost`: whether an id
    that left no trace at all (no ledger, no message in the broker, no event, never started)
    is lost (Redis stayed up: the client's submission was acknowledged, so it must be
    somewhere) or merely unaccepted (Redis crashed and took the AOF's last second with it).
    A submission that raised at the client and left no trace is always unaccepted.
    """
    problems: list[str] = []
    notes: list[str] = []
    traceless = obs.state is None and not obs.broker and not obs.end_events and not obs.starts
    if obs.terminal and obs.state is not None:
        fate = Fate(obs.state)
    elif traceless and (obs.submit_failed or not missing_ledger_is_lost):
        fate = Fate.UNACCEPTED
    else:
        fate = Fate.LOST
        if obs.state is not None:
            problems.append(f"not terminal: still {obs.state}")
        elif traceless:
            problems.append("no ledger entry and no message anywhere: the submission vanished")
        else:
            problems.append("no ledger entry, yet messages or runs exist for it")

    succeeded_events = obs.end_events.get("task.succeeded", 0)
    end_total = sum(obs.end_events.values())
    late = obs.starts_after_end if obs.terminal else 0
    duplicated = succeeded_events > 1 or end_total > 1 or late > 0
    if succeeded_events > 1:
        problems.append(f"task.succeeded emitted {succeeded_events} times")
    if late:
        problems.append(f"handler started {late} time(s) after the task was recorded {obs.state}")
    # Two completions of one handler are not a duplicate by themselves: an attempt SIGKILLed
    # after its handler returned and before the ledger recorded it is re-run (at-least-once),
    # and the re-run completes again. The promise is about the recorded completion (events
    # and ledger, above) and about never running after the end (`late`).
    re_completed = obs.dones > 1
    if re_completed:
        notes.append(
            f"handler completed {obs.dones} times (an attempt cut off between its handler "
            "returning and the ledger recording it)"
        )
    if end_total > 1 and succeeded_events <= 1:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(obs.end_events.items()))
        problems.append(f"more than one end event: {kinds}")
    re_executed = obs.starts > 1
    if re_executed:
        notes.append(f"handler started {obs.starts} times")

    if obs.terminal:
        expected_event = f"task.{obs.state}"
        if obs.end_events.get(expected_event, 0) == 0:
            problems.append(f"ledger says {obs.state} but no {expected_event} event")
        want = "SUCCESS" if obs.state == "succeeded" else "FAILURE"
        if obs.result_status is None:
            problems.append(
                f"ledger says {obs.state} but no Celery result: AsyncResult.get() would hang"
            )
        elif obs.result_status != want:
            problems.append(f"ledger says {obs.state} but the Celery result is {obs.result_status}")
        if obs.state in ("failed", "dead_lettered") and not (obs.error or "").strip():
            problems.append(f"{obs.state} without a reason (empty error)")
        if counted and obs.state == "succeeded" and obs.dones == 0:
            problems.append("ledger says succeeded but the handler never completed")
        if counted and obs.state != "succeeded" and obs.dones > 0:
            notes.append(f"handler completed {obs.dones} time(s) yet the task ended {obs.state}")
    if obs.state == "dead_lettered" and not obs.in_dlq:
        problems.append("dead-lettered but missing from orch:dlq")
    if obs.in_dlq and obs.state != "dead_lettered":
        problems.append(f"in orch:dlq but the ledger says {obs.state}")
    return Verdict(
        obs.task_id,
        fate,
        duplicated,
        re_executed,
        tuple(problems),
        tuple(notes),
        obs,
        re_completed,
    )


@dataclass
class ChaosReport:
    """The verdicts for one run, with the counts CI logs show."""

    verdicts: dict[str, Verdict]
    name: str = "chaos"
    waited_s: float = 0.0

    def ids(self, fate: Fate) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.fate is fate]

    @property
    def lost(self) -> list[str]:
        return self.ids(Fate.LOST)

    @property
    def unaccepted(self) -> list[str]:
        return self.ids(Fate.UNACCEPTED)

    @property
    def duplicated(self) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.duplicated]

    @property
    def re_executed(self) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.re_executed]

    @property
    def re_completed(self) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.re_completed]

    @property
    def inconsistent(self) -> list[str]:
        """Ids with a broken promise other than being lost or duplicated (e.g. a terminal
        ledger whose Celery result was never stored)."""
        return [
            i
            for i, v in self.verdicts.items()
            if v.problems and v.fate is not Fate.LOST and not v.duplicated
        ]

    def failure_reasons(self) -> Counter[str]:
        return Counter(
            (v.observation.error or "(no reason)")[:80]
            for v in self.verdicts.values()
            if v.fate in (Fate.FAILED, Fate.DEAD_LETTERED)
        )

    def counts(self) -> dict[str, int]:
        starts = [v.observation.starts for v in self.verdicts.values()]
        return {
            "ids": len(self.verdicts),
            "succeeded": len(self.ids(Fate.SUCCEEDED)),
            "failed": len(self.ids(Fate.FAILED)),
            "dead_lettered": len(self.ids(Fate.DEAD_LETTERED)),
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "re_executed": len(self.re_executed),
            "re_completed": len(self.re_completed),
            "max_starts": max(starts, default=0),
            "inconsistent": len(self.inconsistent),
            "unaccepted": len(self.unaccepted),
            "submit_failed": sum(v.observation.submit_failed for v in self.verdicts.values()),
        }

    def summary(self) -> str:
        """The counts line, e.g. `chaos[agent-kill]: 120 ids | succeeded 120, failed 0, ...`."""
        c = self.counts()
        line = (
            f"{self.name}: {c['ids']} ids | succeeded {c['succeeded']}, failed {c['failed']}, "
            f"dead_lettered {c['dead_lettered']} | LOST {c['lost']}, "
            f"DUPLICATED {c['duplicated']}, re-executed {c['re_executed']} "
            f"(max starts {c['max_starts']}), re-completed {c['re_completed']}, "
            f"inconsistent {c['inconsistent']} | "
            f"unaccepted {c['unaccepted']} (client submit errors {c['submit_failed']}) | "
            f"settled in {self.waited_s:.1f}s"
        )
        reasons = self.failure_reasons()
        if reasons:
            line += " | reasons: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
        return line

    def details(self, ids: Iterable[str], limit: int = 10) -> str:
        ids = list(ids)
        lines = []
        for task_id in ids[:limit]:
            v = self.verdicts[task_id]
            lines.append(f"  {task_id}: {'; '.join(v.problems)}\n    {v.observation.describe()}")
        if len(ids) > limit:
            lines.append(f"  ... and {len(ids) - limit} more")
        return "\n".join(lines)

    def where_lost(self) -> Counter[str]:
        """Lost ids grouped by (ledger state, where their message sits): the pattern of a
        loss is usually one line here ("routed @b, in agent.b")."""
        groups: Counter[str] = Counter()
        for task_id in self.lost:
            o = self.verdicts[task_id].observation
            where = ",".join(sorted({b.split(":", 1)[0] for b in o.broker})) or "nowhere"
            groups[f"{o.state or 'no ledger'} @{o.agent} (broker: {where})"] += 1
        return groups

    def problems_text(self) -> str:
        sections = [self.summary()]
        if self.lost:
            sections.append(
                "LOST by (state @agent, broker):\n"
                + "\n".join(f"  {n:4d} {k}" for k, n in self.where_lost().most_common())
            )
            sections.append("LOST (first 10):\n" + self.details(self.lost))
        if self.duplicated:
            sections.append("DUPLICATED (first 10):\n" + self.details(self.duplicated))
        if self.inconsistent:
            sections.append("INCONSISTENT (first 10):\n" + self.details(self.inconsistent))
        return "\n".join(sections)

    def assert_nothing_lost(self) -> None:
        """Raise AssertionError naming every lost, duplicated and inconsistent id's story."""
        if self.lost or self.duplicated or self.inconsistent:
            raise AssertionError("chaos history check failed\n" + self.problems_text())


def judge(
    observations: Mapping[str, Observation],
    *,
    name: str = "chaos",
    counted: bool | Iterable[str] = True,
    waited_s: float = 0.0,
    missing_ledger_is_lost: bool = True,
) -> ChaosReport:
    """Judge every id. `counted`: True (all ids' handlers keep the counters), False, or the
    ids that do."""
    counted_ids = (
        set(observations) if counted is True else set() if counted is False else set(counted)
    )
    verdicts = {
        i: judge_one(o, counted=i in counted_ids, missing_ledger_is_lost=missing_ledger_is_lost)
        for i, o in observations.items()
    }
    return ChaosReport(verdicts, name, waited_s)


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
    """(entry id, type, data) of every event (of `types`, if given) in the stream."""
    wanted = set(types)
    found: list[tuple[str, str, dict[str, Any]]] = []
    last = since
    while True:
        entries = r.xrange(EVENTS, min=last, count=2000)
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
            return found
        last = "(" + (_text(entries[-1][0]) or "")


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
    last = "-"
    while True:
        entries = r.xrange(EVENTS, min=last, count=2000)
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
