"""The state store: every Redis key and Lua script the orchestrator uses lives here.

Every key name comes from orchestrator.keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from orchestrator.errors import StoreUnavailable, UnknownTask
from orchestrator.keys import (
    AGENT_STATS,
    AGENTS,
    COUNTERS,
    DLQ,
    EVENTS,
    HEARTBEATS,
    PARKED,
    affinity_key,
    history_key,
    task_key,
    wrr_key,
)
from orchestrator.models import (
    OrchestrationEvent,
    OrchestrationTask,
    ProductionEventSeverity,
    RegisteredAgent,
    TaskRecord,
    TaskState,
)
from orchestrator.routing import performance_score

SUCCESS_EWMA_ALPHA = 0.1
LATENCY_EWMA_ALPHA = 0.2


# Smooth weighted round-robin, atomically: ARGV = agent, weight, agent, weight, ... sorted by
# agent id (ties go to the first, as in routing.wrr_step). The whole state is rewritten, so
# agents that are no longer eligible drop out of it.
_WRR_PICK = """
local cur = redis.call('HGETALL', KEYS[1])
local state = {}
for i = 1, #cur, 2 do state[cur[i]] = tonumber(cur[i + 1]) end
local total, best, bestv = 0, nil, nil
local new = {}
for i = 1, #ARGV, 2 do
  local peer, w = ARGV[i], tonumber(ARGV[i + 1])
  local c = (state[peer] or 0) + w
  new[#new + 1] = peer
  new[#new + 1] = c
  total = total + w
  if bestv == nil or c > bestv then best = i + 1; bestv = c end
end
new[best] = new[best] - total
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(new))
return new[best - 1]
"""

# Accept a submission: KEYS = ledger, history; ARGV = submit_id, now, spec JSON, type,
# history entry JSON, ttl. Returns {"new"} or {"resume", state} (the same submit message
# redelivered before it finished routing) or {"duplicate", state}.
_ACCEPT = """
if redis.call('HSETNX', KEYS[1], 'submit_id', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'accepted', 'submitted_at', ARGV[2], 'spec', ARGV[3],
             'type', ARGV[4], 'attempts', 0)
  redis.call('RPUSH', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  return {'new', 'accepted'}
end
local owner = redis.call('HGET', KEYS[1], 'submit_id')
local state = redis.call('HGET', KEYS[1], 'state') or ''
if owner == ARGV[1] then return {'resume', state} end
return {'duplicate', state}
"""

# Move a ledger entry from one of the allowed states to another, atomically.
# KEYS = ledger, history; ARGV = new state, history JSON, n, allowed..., then field/value pairs.
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, ''} end
local n = tonumber(ARGV[3])
local ok = (n == 0)
for i = 4, 3 + n do if ARGV[i] == state then ok = true end end
if not ok then return {0, state} end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 4 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[2])
return {1, state}
"""

# Start an attempt on an agent unless the task already ended. KEYS = ledger, history;
# ARGV = agent, now, history JSON. Returns {attempts, previous state} or {-1, state}.
_BEGIN_ATTEMPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'dead_lettered' then
  return {-1, state}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'agent', ARGV[1], 'started_at', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
return {attempts, state or ''}
"""

# Record one outcome in an agent's stats. KEYS = stats hash; ARGV = agent, ok(1/0),
# latency ms, success alpha, latency alpha, settle (1: the task left the agent, 0: it retries).
_RECORD_OUTCOME = """
local a = ARGV[1]
local ok = tonumber(ARGV[2])
local lat = tonumber(ARGV[3])
if ok == 1 then redis.call('HINCRBY', KEYS[1], a .. '|ok', 1)
else redis.call('HINCRBY', KEYS[1], a .. '|fail', 1) end
local sr = tonumber(redis.call('HGET', KEYS[1], a .. '|sr') or '1')
sr = sr + tonumber(ARGV[4]) * (ok - sr)
redis.call('HSET', KEYS[1], a .. '|sr', tostring(sr))
local old = redis.call('HGET', KEYS[1], a .. '|lat')
if old then lat = tonumber(old) + tonumber(ARGV[5]) * (lat - tonumber(old)) end
redis.call('HSET', KEYS[1], a .. '|lat', tostring(lat))
if ARGV[6] == '1' then
  local inflight = redis.call('HINCRBY', KEYS[1], a .. '|inflight', -1)
  if inflight < 0 then redis.call('HSET', KEYS[1], a .. '|inflight', 0) end
end
return 1
"""


def _history(state: str, now: float, **data: Any) -> str:
    return json.dumps(
        {"ts": now, "state": state, **{k: v for k, v in data.items() if v is not None}}
    )


def _event_fields(event: OrchestrationEvent) -> dict[str, str]:
    return {
        "type": event.type,
        "ts": repr(event.ts),
        "severity": event.severity.value,
        "source": event.source,
        "data": json.dumps(event.data, default=str),
    }


class StateStore:
    """All reads and writes of orchestrator state. One instance per process."""

    def __init__(
        self, client: redis.Redis, ledger_ttl_s: int = 7 * 24 * 3600, events_max_len: int = 100_000
    ) -> None:
        self.r = client
        self.ledger_ttl_s = ledger_ttl_s
        self.events_max_len = events_max_len
        self._wrr = client.register_script(_WRR_PICK)
        self._accept = client.register_script(_ACCEPT)
        self._transition = client.register_script(_TRANSITION)
        self._begin = client.register_script(_BEGIN_ATTEMPT)
        self._outcome = client.register_script(_RECORD_OUTCOME)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> StateStore:
        client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        return cls(client, **kwargs)

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis state store unreachable: {exc}") from exc

    def ping(self) -> bool:
        with self._translate():
            return bool(self.r.ping())

    # --- events --------------------------------------------------------------------------

    def emit(self, event: OrchestrationEvent, pipe: Any = None) -> None:
        target = pipe if pipe is not None else self.r
        with self._translate():
            target.xadd(EVENTS, _event_fields(event), maxlen=self.events_max_len, approximate=True)

    def event(
        self,
        type_: str,
        now: float,
        source: str,
        pipe: Any = None,
        severity: ProductionEventSeverity = ProductionEventSeverity.INFO,
        **data: Any,
    ) -> None:
        self.emit(
            OrchestrationEvent(type=type_, ts=now, severity=severity, source=source, data=data),
            pipe,
        )

    def read_events(
        self, since_id: str = "-", count: int = 100, types: Sequence[str] = ()
    ) -> list[OrchestrationEvent]:
        with self._translate():
            entries = self.r.xrange(EVENTS, min=since_id, count=count)
        return [e for e in (_parse_event(i, f) for i, f in entries) if not types or e.type in types]

    def tail_events(self, count: int = 20) -> list[OrchestrationEvent]:
        with self._translate():
            entries = self.r.xrevrange(EVENTS, count=count)
        return [_parse_event(i, f) for i, f in reversed(entries)]

    def follow_events(
        self, last_id: str = "$", block_ms: int = 1000
    ) -> tuple[str, list[OrchestrationEvent]]:
        with self._translate():
            reply = self.r.xread({EVENTS: last_id}, block=block_ms, count=100)
        events = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                events.append(_parse_event(entry_id, fields))
                last_id = entry_id
        return last_id, events

    # --- agents --------------------------------------------------------------------------

    def register_agent(self, agent: RegisteredAgent, now: float, source: str) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(
                AGENTS,
                agent.agent_id,
                agent.model_dump_json(
                    include={
                        "agent_id",
                        "capabilities",
                        "status",
                        "queue",
                        "hostname",
                        "pid",
                        "concurrency",
                        "registered_at",
                    }
                ),
            )
            pipe.hset(HEARTBEATS, agent.agent_id, repr(now))
            self.event(
                "agent.registered",
                now,
                source,
                pipe,
                agent_id=agent.agent_id,
                capabilities=agent.capabilities,
                queue=agent.queue,
            )
            pipe.execute()

    def heartbeat(self, agent_id: str, now: float) -> None:
        with self._translate():
            self.r.hset(HEARTBEATS, agent_id, repr(now))

    def deregister_agent(self, agent_id: str, now: float, source: str) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hdel(AGENTS, agent_id)
            pipe.hdel(HEARTBEATS, agent_id)
            self.event("agent.deregistered", now, source, pipe, agent_id=agent_id)
            pipe.execute()

    def load_agents(self) -> list[RegisteredAgent]:
        """Every registered agent with its live figures, in one round trip."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(AGENTS)
            pipe.hgetall(HEARTBEATS)
            pipe.hgetall(AGENT_STATS)
            records, beats, stats = pipe.execute()
        agents = []
        for agent_id, raw in records.items():
            agent = RegisteredAgent.model_validate_json(raw)
            agent.last_heartbeat = float(beats.get(agent_id, 0.0))
            ok = int(stats.get(f"{agent_id}|ok", 0))
            fail = int(stats.get(f"{agent_id}|fail", 0))
            lat = stats.get(f"{agent_id}|lat")
            sr = stats.get(f"{agent_id}|sr")
            agent.tasks_succeeded, agent.tasks_failed = ok, fail
            agent.latency_ms = float(lat) if lat is not None else None
            agent.in_flight = max(0, int(stats.get(f"{agent_id}|inflight", 0)))
            agent.performance_score = float(sr) if sr is not None else 1.0
            agents.append(agent)
        _score(agents)
        return sorted(agents, key=lambda a: a.agent_id)

    def record_outcome(
        self, agent_id: str, ok: bool, latency_ms: float, settle: bool = True
    ) -> None:
        with self._translate():
            self._outcome(
                keys=[AGENT_STATS],
                args=[
                    agent_id,
                    1 if ok else 0,
                    latency_ms,
                    SUCCESS_EWMA_ALPHA,
                    LATENCY_EWMA_ALPHA,
                    1 if settle else 0,
                ],
            )

    # --- routing state -------------------------------------------------------------------

    def wrr_pick(self, capability_key: str, weights: Mapping[str, int]) -> str:
        args: list[Any] = []
        for agent_id in sorted(weights):
            args += [agent_id, weights[agent_id]]
        with self._translate():
            return str(self._wrr(keys=[wrr_key(capability_key)], args=args))

    def get_affinity(self, key: str) -> str | None:
        with self._translate():
            value = self.r.get(affinity_key(key))
        return str(value) if value is not None else None

    def set_affinity(self, key: str, agent_id: str, ttl_s: int) -> None:
        with self._translate():
            self.r.set(affinity_key(key), agent_id, ex=ttl_s)

    # --- the ledger ----------------------------------------------------------------------

    def accept(self, task: OrchestrationTask, submit_id: str, now: float) -> tuple[str, str]:
        """Record a new task; tell a fresh acceptance from a redelivery or a duplicate."""
        assert task.task_id is not None
        with self._translate():
            status, state = self._accept(
                keys=[task_key(task.task_id), history_key(task.task_id)],
                args=[
                    submit_id,
                    repr(now),
                    task.model_dump_json(),
                    task.type,
                    _history("accepted", now, client_id=task.client_id),
                    self.ledger_ttl_s,
                ],
            )
            if status == "new":
                pipe = self.r.pipeline(transaction=False)
                pipe.hincrby(COUNTERS, "submitted", 1)
                self.event(
                    "task.submitted",
                    now,
                    "router",
                    pipe,
                    task_id=task.task_id,
                    type=task.type,
                    client_id=task.client_id,
                    priority=task.priority,
                )
                pipe.execute()
        return str(status), str(state)

    def record_rejection(
        self, problems: Sequence[str], submit_id: str, now: float, client_id: str | None
    ) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(COUNTERS, "rejected", 1)
            self.event(
                "task.rejected",
                now,
                "router",
                pipe,
                severity=ProductionEventSeverity.WARNING,
                submit_id=submit_id,
                problems=list(problems),
                client_id=client_id,
            )
            pipe.execute()

    def count_duplicate(self, task_id: str, now: float) -> None:
        with self._translate():
            self.r.hincrby(COUNTERS, "duplicates_ignored", 1)

    def task_exists(self, task_id: str) -> bool:
        with self._translate():
            return bool(self.r.exists(task_key(task_id)))

    def load_spec(self, task_id: str) -> OrchestrationTask:
        with self._translate():
            raw = self.r.hget(task_key(task_id), "spec")
        if raw is None:
            raise UnknownTask(f"no task {task_id!r} in the ledger (expired, or never accepted)")
        return OrchestrationTask.model_validate_json(raw)

    def _move(
        self,
        task_id: str,
        new: TaskState,
        allowed: Sequence[TaskState],
        now: float,
        history: dict[str, Any] | None = None,
        **fields: Any,
    ) -> tuple[int, str]:
        args: list[Any] = [new.value, _history(new.value, now, **(history or {})), len(allowed)]
        args += [s.value for s in allowed]
        for name, value in fields.items():
            if value is not None:
                args += [name, value]
        with self._translate():
            done, previous = self._transition(
                keys=[task_key(task_id), history_key(task_id)], args=args
            )
        return int(done), str(previous)

    def mark_routed(self, task: OrchestrationTask, agent_id: str, now: float) -> bool:
        assert task.task_id is not None
        done, _ = self._move(
            task.task_id,
            TaskState.ROUTED,
            [TaskState.ACCEPTED, TaskState.PARKED, TaskState.ROUTED],
            now,
            history={"agent": agent_id},
            agent=agent_id,
            routed_at=repr(now),
        )
        if done != 1:
            return False
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(COUNTERS, "routed", 1)
            pipe.hincrby(AGENT_STATS, f"{agent_id}|inflight", 1)
            self.event(
                "task.routed",
                now,
                "router",
                pipe,
                task_id=task.task_id,
                agent_id=agent_id,
                type=task.type,
            )
            pipe.execute()
        return True

    def park(self, task: OrchestrationTask, now: float) -> bool:
        assert task.task_id is not None
        done, _ = self._move(
            task.task_id,
            TaskState.PARKED,
            [TaskState.ACCEPTED, TaskState.PARKED, TaskState.ROUTED],
            now,
            parked_at=repr(now),
        )
        if done != 1:
            return False
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.zadd(PARKED, {task.task_id: now}, nx=True)
            pipe.hincrby(COUNTERS, "parked", 1)
            self.event(
                "task.parked",
                now,
                "router",
                pipe,
                task_id=task.task_id,
                type=task.type,
                required_capabilities=task.required_capabilities,
            )
            pipe.execute()
        return True

    def parked(self, limit: int = 1000) -> list[tuple[str, float]]:
        with self._translate():
            return [
                (str(m), float(s)) for m, s in self.r.zrange(PARKED, 0, limit - 1, withscores=True)
            ]

    def claim_parked(self, task_id: str) -> bool:
        """Take a parked task out of the parked set; only one router wins it."""
        with self._translate():
            return bool(self.r.zrem(PARKED, task_id))

    def unclaim_parked(self, task_id: str, parked_at: float) -> None:
        with self._translate():
            self.r.zadd(PARKED, {task_id: parked_at})

    def begin_attempt(self, task_id: str, agent_id: str, now: float) -> int:
        """Returns the attempt number, or -1 when the task already ended (do not run it)."""
        with self._translate():
            attempts, _ = self._begin(
                keys=[task_key(task_id), history_key(task_id)],
                args=[agent_id, repr(now), _history("running", now, agent=agent_id)],
            )
        return int(attempts)

    def finish(
        self,
        task_id: str,
        state: TaskState,
        agent_id: str | None,
        now: float,
        error: str | None = None,
        latency_ms: float | None = None,
        task_type: str | None = None,
        result: str | None = None,
    ) -> bool:
        """Record a terminal state once; False when the task had already ended.

        The handler's encoded result is kept in the ledger so a redelivered copy of a task
        that already succeeded can hand it back without running the handler again."""
        done, _ = self._move(
            task_id,
            state,
            [TaskState.ACCEPTED, TaskState.PARKED, TaskState.ROUTED, TaskState.RUNNING],
            now,
            history={"agent": agent_id, "error": error},
            finished_at=repr(now),
            error=error,
            result=result,
            latency_ms=None if latency_ms is None else repr(latency_ms),
        )
        if done != 1:
            return False
        severity = (
            ProductionEventSeverity.INFO
            if state is TaskState.SUCCEEDED
            else ProductionEventSeverity.ERROR
        )
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(COUNTERS, state.value, 1)
            pipe.expire(task_key(task_id), self.ledger_ttl_s)
            pipe.expire(history_key(task_id), self.ledger_ttl_s)
            if state is TaskState.DEAD_LETTERED:
                pipe.zadd(DLQ, {task_id: now})
            self.event(
                f"task.{state.value}",
                now,
                agent_id or "router",
                pipe,
                severity=severity,
                task_id=task_id,
                agent_id=agent_id,
                error=error,
                latency_ms=latency_ms,
                type=task_type,
            )
            pipe.execute()
        return True

    def stored_result(self, task_id: str) -> str | None:
        with self._translate():
            value = self.r.hget(task_key(task_id), "result")
        return str(value) if value is not None else None

    def requeue_for_retry(self, task_id: str, agent_id: str, now: float, error: str) -> None:
        self._move(
            task_id,
            TaskState.ROUTED,
            [TaskState.RUNNING],
            now,
            history={"agent": agent_id, "error": error, "retry": True},
            error=error,
        )

    def task_record(self, task_id: str) -> TaskRecord:
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(task_key(task_id))
            pipe.lrange(history_key(task_id), 0, -1)
            fields, history = pipe.execute()
        if not fields:
            raise UnknownTask(f"no task {task_id!r} in the ledger (expired, or never accepted)")
        spec = json.loads(fields.get("spec", "{}"))

        def num(name: str) -> float | None:
            return float(fields[name]) if name in fields else None

        return TaskRecord(
            task_id=task_id,
            type=fields.get("type", spec.get("type", "")),
            state=TaskState(fields["state"]),
            agent_id=fields.get("agent"),
            attempts=int(fields.get("attempts", 0)),
            priority=spec.get("priority", 5),
            required_capabilities=spec.get("required_capabilities", []),
            client_id=spec.get("client_id", "anonymous"),
            submitted_at=num("submitted_at"),
            routed_at=num("routed_at"),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            error=fields.get("error"),
            history=[json.loads(h) for h in history],
        )

    def counters(self) -> dict[str, int]:
        with self._translate():
            return {k: int(v) for k, v in self.r.hgetall(COUNTERS).items()}


def _score(agents: list[RegisteredAgent]) -> None:
    """Fill each agent's performance score against the fleet's median latency."""
    latencies = sorted(a.latency_ms for a in agents if a.latency_ms is not None)
    reference = latencies[len(latencies) // 2] if latencies else None
    for agent in agents:
        recent = agent.performance_score if agent.tasks_succeeded + agent.tasks_failed else None
        agent.performance_score = performance_score(
            agent.tasks_succeeded, agent.tasks_failed, agent.latency_ms, reference, recent
        )


def _parse_event(entry_id: str, fields: Mapping[str, str]) -> OrchestrationEvent:
    return OrchestrationEvent(
        id=entry_id,
        type=fields.get("type", ""),
        ts=float(fields.get("ts", 0.0)),
        severity=ProductionEventSeverity(fields.get("severity", "info")),
        source=fields.get("source", ""),
        data=json.loads(fields.get("data", "{}")),
    )


def now_s() -> float:
    """The edge's clock (the core never reads one)."""
    return time.time()
