"""The state store: every read and write of orchestrator state in Redis.

Key names come from orchestrator.keys and the atomic steps from orchestrator.scripts, so a
reader finds every key in one place and every multi-key change in another.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator import scripts
from orchestrator.breaker import BreakerState, admit, current_state, from_redis_hash, to_redis_hash
from orchestrator.errors import StoreUnavailable, UnknownTask
from orchestrator.keys import (
    AGENT_STATS,
    AGENT_STATUS,
    AGENTS,
    CIRCUIT_PREFIX,
    COUNTERS,
    DLQ,
    EVENTS,
    HEARTBEATS,
    INFLIGHT_PREFIX,
    KOMBU_UNACKED,
    KOMBU_UNACKED_INDEX,
    PARKED,
    QUARANTINED_UNTIL,
    RECOVERY,
    RECOVERY_DEADLINES,
    affinity_key,
    circuit_key,
    history_key,
    inflight_key,
    lock_key,
    queue_lists,
    task_key,
    wrr_key,
)
from orchestrator.models import (
    AgentStatus,
    CircuitBreakerConfig,
    CircuitBreakerState,
    OrchestrationEvent,
    OrchestrationTask,
    ProductionEventSeverity,
    RecoveryPlan,
    RegisteredAgent,
    TaskRecord,
    TaskState,
)
from orchestrator.routing import performance_score

SUCCESS_EWMA_ALPHA = 0.1
LATENCY_EWMA_ALPHA = 0.2
ACTIVE_STATES = (
    TaskState.ACCEPTED,
    TaskState.PARKED,
    TaskState.ROUTED,
    TaskState.RUNNING,
    TaskState.RECOVERING,
)


def _history(state: str, now: float, **data: Any) -> str:
    entry = {"ts": now, "state": state, **{k: v for k, v in data.items() if v is not None}}
    return json.dumps(entry)


def _event_fields(event: OrchestrationEvent) -> dict[str, str]:
    return {
        "type": event.type,
        "ts": repr(event.ts),
        "severity": event.severity.value,
        "source": event.source,
        "data": json.dumps(event.data, default=str),
    }


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass
class Fleet:
    """Every agent with its live figures, and each one's circuit breaker as stored."""

    agents: list[RegisteredAgent]
    breakers: dict[str, BreakerState] = field(default_factory=dict)

    def by_id(self) -> dict[str, RegisteredAgent]:
        return {a.agent_id: a for a in self.agents}


@dataclass(frozen=True)
class Attempt:
    """What begin_attempt decided for one delivered copy of a task."""

    code: int  # >0: the attempt number, run it; <0: see scripts.BEGIN_ATTEMPT
    info: str

    @property
    def run(self) -> bool:
        return self.code > 0


class StateStore:
    """All reads and writes of orchestrator state. One instance per process."""

    def __init__(
        self, client: redis.Redis, ledger_ttl_s: int = 7 * 24 * 3600, events_max_len: int = 100_000
    ) -> None:
        self.r = client
        self.ledger_ttl_s = ledger_ttl_s
        self.events_max_len = events_max_len
        self._wrr = client.register_script(scripts.WRR_PICK)
        self._fleet = client.register_script(scripts.LOAD_FLEET)
        self._accept = client.register_script(scripts.ACCEPT)
        self._transition = client.register_script(scripts.TRANSITION)
        self._route = client.register_script(scripts.ROUTE)
        self._begin = client.register_script(scripts.BEGIN_ATTEMPT)
        self._outcome = client.register_script(scripts.RECORD_OUTCOME)
        self._circuit = client.register_script(scripts.RECORD_CIRCUIT)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._release = client.register_script(scripts.RELEASE_LOCK)

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
        self, since_id: str = "-", count: int = 1000, types: Sequence[str] = ()
    ) -> list[OrchestrationEvent]:
        with self._translate():
            entries = self.r.xrange(EVENTS, min=since_id, count=count)
        events = (_parse_event(i, f) for i, f in entries)
        return [e for e in events if not types or e.type in types]

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
        record = agent.model_dump_json(
            include={
                "agent_id",
                "capabilities",
                "queue",
                "hostname",
                "pid",
                "concurrency",
                "registered_at",
            }
        )
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(AGENTS, agent.agent_id, record)
            pipe.hset(HEARTBEATS, agent.agent_id, repr(now))
            pipe.hset(AGENT_STATUS, agent.agent_id, AgentStatus.ACTIVE.value)
            pipe.hdel(QUARANTINED_UNTIL, agent.agent_id)
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

    def heartbeat(self, agent_id: str, now: float) -> str:
        """Beat; returns the agent's status afterwards ('' if it is not registered)."""
        with self._translate():
            return str(
                self._heartbeat(
                    keys=[HEARTBEATS, AGENT_STATUS, QUARANTINED_UNTIL], args=[agent_id, repr(now)]
                )
            )

    def set_status(
        self,
        agent_id: str,
        status: AgentStatus,
        now: float,
        source: str,
        event: str | None = None,
        severity: ProductionEventSeverity = ProductionEventSeverity.INFO,
        **data: Any,
    ) -> bool:
        """Change an agent's status; False (and no event) when it already had it."""
        with self._translate():
            previous = self.r.hget(AGENT_STATUS, agent_id)
            if previous == status.value:
                return False
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(AGENT_STATUS, agent_id, status.value)
            if event:
                self.event(
                    event,
                    now,
                    source,
                    pipe,
                    severity=severity,
                    agent_id=agent_id,
                    previous=previous,
                    **data,
                )
            pipe.execute()
        return True

    def quarantine(self, agent_id: str, until: float, now: float, reason: str) -> bool:
        with self._translate():
            self.r.hset(QUARANTINED_UNTIL, agent_id, repr(until))
        return self.set_status(
            agent_id,
            AgentStatus.QUARANTINED,
            now,
            "recovery",
            event="agent.quarantined",
            severity=ProductionEventSeverity.WARNING,
            reason=reason,
            until=until,
        )

    def deregister_agent(self, agent_id: str, now: float, source: str) -> None:
        """Warm shutdown: the agent stays listed as offline so its queue can be re-routed."""
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(AGENT_STATUS, agent_id, AgentStatus.OFFLINE.value)
            self.event("agent.deregistered", now, source, pipe, agent_id=agent_id)
            pipe.execute()

    def forget_agent(self, agent_id: str) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            for key in (AGENTS, HEARTBEATS, AGENT_STATUS, QUARANTINED_UNTIL):
                pipe.hdel(key, agent_id)
            pipe.delete(circuit_key(agent_id), inflight_key(agent_id))
            pipe.execute()

    def load_fleet(
        self, circuit_cfg: CircuitBreakerConfig | None = None, now: float | None = None
    ) -> Fleet:
        """Every registered agent with its live figures and breaker, in one round trip."""
        with self._translate():
            records, beats, stats, statuses, circuits = self._fleet(
                keys=[AGENTS, HEARTBEATS, AGENT_STATS, AGENT_STATUS], args=[CIRCUIT_PREFIX]
            )
        beats, stats, statuses = _pairs(beats), _pairs(stats), _pairs(statuses)
        breakers = {
            str(circuits[i]): from_redis_hash(_pairs(circuits[i + 1]))
            for i in range(0, len(circuits), 2)
        }
        agents = []
        for agent_id, raw in _pairs(records).items():
            agent = RegisteredAgent.model_validate_json(raw)
            agent.status = AgentStatus(statuses.get(agent_id, AgentStatus.ACTIVE.value))
            agent.last_heartbeat = float(beats.get(agent_id, 0.0))
            agent.tasks_succeeded = int(stats.get(f"{agent_id}|ok", 0))
            agent.tasks_failed = int(stats.get(f"{agent_id}|fail", 0))
            lat = stats.get(f"{agent_id}|lat")
            sr = stats.get(f"{agent_id}|sr")
            agent.latency_ms = float(lat) if lat is not None else None
            agent.in_flight = max(0, int(stats.get(f"{agent_id}|inflight", 0)))
            agent.performance_score = float(sr) if sr is not None else 1.0
            breaker = breakers.get(agent_id, BreakerState())
            agent.circuit = (
                current_state(breaker, circuit_cfg, now)
                if circuit_cfg is not None and now is not None
                else breaker.state
            )
            agents.append(agent)
        _score(agents)
        return Fleet(sorted(agents, key=lambda a: a.agent_id), breakers)

    def load_agents(self) -> list[RegisteredAgent]:
        return self.load_fleet().agents

    def record_outcome(
        self,
        agent_id: str,
        ok: bool,
        latency_ms: float,
        settle: bool = True,
        circuit_cfg: CircuitBreakerConfig | None = None,
        now: float | None = None,
    ) -> str:
        """Update the agent's stats and (when given a config) its breaker in one round trip;
        returns the breaker transition ('opened', 'closed' or '') and announces it."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
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
                client=pipe,
            )
            if circuit_cfg is not None:
                self._circuit(
                    keys=[circuit_key(agent_id)],
                    args=[
                        1 if ok else 0,
                        repr(now or time.time()),
                        circuit_cfg.failure_threshold,
                        min(circuit_cfg.success_threshold, circuit_cfg.half_open_max_calls),
                        circuit_cfg.window_size,
                        circuit_cfg.minimum_calls,
                        circuit_cfg.failure_rate_threshold,
                    ],
                    client=pipe,
                )
            replies = pipe.execute()
        transition = str(replies[1]) if circuit_cfg is not None else ""
        if transition:
            severity = (
                ProductionEventSeverity.WARNING
                if transition == "opened"
                else ProductionEventSeverity.INFO
            )
            self.event(
                f"circuit.{transition}",
                now or time.time(),
                agent_id,
                severity=severity,
                agent_id=agent_id,
            )
        return transition

    def admit_circuit(self, agent_id: str, cfg: CircuitBreakerConfig, now: float) -> bool:
        """Take a trial slot of a half-open breaker (or move an open one past its timeout to
        half-open); atomic with WATCH so concurrent routers never over-admit."""
        key = circuit_key(agent_id)
        with self._translate(), self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state = from_redis_hash(pipe.hgetall(key))  # type: ignore[arg-type]
                    decision = admit(state, cfg, now)
                    if decision.state == state:
                        pipe.unwatch()
                        return decision.admitted
                    pipe.multi()
                    pipe.delete(key)
                    pipe.hset(key, mapping=dict(to_redis_hash(decision.state)))  # type: ignore[arg-type]
                    if decision.transition is not None:
                        self.event(
                            decision.transition.event_type, now, "router", pipe, agent_id=agent_id
                        )
                    pipe.execute()
                    return decision.admitted
                except redis.WatchError:
                    continue

    def circuit(self, agent_id: str) -> BreakerState:
        with self._translate():
            return from_redis_hash(self.r.hgetall(circuit_key(agent_id)))

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

    # --- locks ---------------------------------------------------------------------------

    @contextmanager
    def singleton(self, name: str, ttl_s: float) -> Iterator[bool]:
        """Yields True when this caller holds the lock `name` (for at most ttl_s)."""
        token = uuid.uuid4().hex
        with self._translate():
            held = bool(self.r.set(lock_key(name), token, nx=True, px=max(1, int(ttl_s * 1000))))
        try:
            yield held
        finally:
            if held:
                with self._translate():
                    self._release(keys=[lock_key(name)], args=[token])

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

    def task_fields(self, task_id: str) -> dict[str, str]:
        with self._translate():
            return dict(self.r.hgetall(task_key(task_id)))

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

    def mark_routed(
        self, task: OrchestrationTask, agent_id: str, now: float, **history: Any
    ) -> int:
        """Assign the task to an agent; returns the new dispatch number (0: it had ended)."""
        assert task.task_id is not None
        with self._translate():
            dispatch, _previous = self._route(
                keys=[task_key(task.task_id), history_key(task.task_id)],
                args=[
                    agent_id,
                    repr(now),
                    _history("routed", now, agent=agent_id, **history),
                    INFLIGHT_PREFIX,
                    task.task_id,
                ],
            )
            if int(dispatch) <= 0:
                return 0
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(COUNTERS, "routed", 1)
            pipe.hincrby(AGENT_STATS, f"{agent_id}|inflight", 1)
            pipe.zrem(PARKED, task.task_id)
            self.event(
                "task.routed",
                now,
                "router",
                pipe,
                task_id=task.task_id,
                agent_id=agent_id,
                type=task.type,
                dispatch=int(dispatch),
            )
            pipe.execute()
        return int(dispatch)

    def park(self, task: OrchestrationTask, now: float) -> bool:
        assert task.task_id is not None
        done, _ = self._move(
            task.task_id, TaskState.PARKED, ACTIVE_STATES, now, parked_at=repr(now)
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

    def begin_attempt(
        self,
        task_id: str,
        agent_id: str,
        dispatch: int,
        now: float,
        pid: int,
        max_deliveries: int,
        force: bool = False,
    ) -> Attempt:
        with self._translate():
            code, info = self._begin(
                keys=[task_key(task_id), history_key(task_id)],
                args=[
                    agent_id,
                    repr(now),
                    _history("running", now, agent=agent_id),
                    dispatch,
                    pid,
                    max_deliveries,
                    "1" if force else "0",
                ],
            )
        return Attempt(int(code), str(info))

    def mark_recovering(
        self, task_id: str, agent_id: str, now: float, error: str, kind: str
    ) -> bool:
        done, _ = self._move(
            task_id,
            TaskState.RECOVERING,
            [TaskState.RUNNING, TaskState.ROUTED],
            now,
            history={"agent": agent_id, "error": error, "kind": kind},
            error=error,
        )
        return done == 1

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
            ACTIVE_STATES,
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
            owner = agent_id or self.r.hget(task_key(task_id), "agent")
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(COUNTERS, state.value, 1)
            pipe.expire(task_key(task_id), self.ledger_ttl_s)
            pipe.expire(history_key(task_id), self.ledger_ttl_s)
            pipe.hdel(RECOVERY, task_id)
            pipe.zrem(RECOVERY_DEADLINES, task_id)
            pipe.zrem(PARKED, task_id)
            if owner:
                pipe.srem(inflight_key(owner), task_id)
            if state is TaskState.DEAD_LETTERED:
                pipe.zadd(DLQ, {task_id: now})
            self.event(
                f"task.{state.value}",
                now,
                agent_id or "recovery",
                pipe,
                severity=severity,
                task_id=task_id,
                agent_id=owner,
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

    def failed_agents(self, task_id: str) -> set[str]:
        """Agents on which this task already failed (its `recovering` history entries)."""
        with self._translate():
            entries = self.r.lrange(history_key(task_id), 0, -1)
        failed = set()
        for raw in entries:
            entry = json.loads(raw)
            if entry.get("state") == TaskState.RECOVERING.value and entry.get("agent"):
                failed.add(entry["agent"])
        return failed

    def counters(self) -> dict[str, int]:
        with self._translate():
            return {k: int(v) for k, v in self.r.hgetall(COUNTERS).items()}

    # --- recovery ------------------------------------------------------------------------

    def save_plan(self, plan: RecoveryPlan) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(RECOVERY, plan.task_id, plan.model_dump_json())
            pipe.zadd(RECOVERY_DEADLINES, {plan.task_id: plan.deadline})
            pipe.execute()

    def overdue_plans(self, now: float, limit: int = 500) -> list[RecoveryPlan]:
        with self._translate():
            ids = self.r.zrangebyscore(RECOVERY_DEADLINES, "-inf", now, start=0, num=limit)
            raws = self.r.hmget(RECOVERY, ids) if ids else []
        plans = []
        for task_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                with self._translate():
                    self.r.zrem(RECOVERY_DEADLINES, task_id)
                continue
            plans.append(RecoveryPlan.model_validate_json(raw))
        return plans

    def inflight(self, agent_id: str) -> list[str]:
        with self._translate():
            return sorted(self.r.smembers(inflight_key(agent_id)))

    def purge_agent_queue(self, queue: str) -> int:
        """Empty a lost agent's broker lists and its unacked entries, once every task in them
        has been re-routed under a new dispatch (the copies left there are stale)."""
        removed = 0
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for name in queue_lists(queue):
                pipe.llen(name)
            removed = sum(int(n) for n in pipe.execute())
            self.r.delete(*queue_lists(queue))
            stale = []
            for tag, raw in self.r.hscan_iter(KOMBU_UNACKED, count=500):
                try:
                    _payload, _exchange, routing_key = json.loads(raw)
                except (ValueError, TypeError):
                    continue
                if routing_key == queue:
                    stale.append(tag)
            if stale:
                pipe = self.r.pipeline(transaction=True)
                pipe.hdel(KOMBU_UNACKED, *stale)
                pipe.zrem(KOMBU_UNACKED_INDEX, *stale)
                pipe.execute()
        return removed + len(stale)

    # --- dead letters --------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[tuple[str, float]]:
        with self._translate():
            return [
                (str(m), float(s)) for m, s in self.r.zrevrange(DLQ, 0, limit - 1, withscores=True)
            ]

    def reopen_dead_letter(self, task_id: str, now: float) -> OrchestrationTask:
        """Park a dead-lettered task again with a fresh attempt count, for the next sweep to
        route; its history (and its dispatch counter, so old copies stay stale) is kept."""
        spec = self.load_spec(task_id)
        done, state = self._move(
            task_id,
            TaskState.PARKED,
            [TaskState.DEAD_LETTERED],
            now,
            history={"replayed": True},
            attempts=0,
            deliveries=0,
            parked_at=repr(now),
        )
        if done != 1:
            raise UnknownTask(f"task {task_id!r} is {state or 'unknown'}, not dead-lettered")
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(DLQ, task_id)
            pipe.hdel(task_key(task_id), "finished_at", "result", "error")
            pipe.persist(task_key(task_id))
            pipe.persist(history_key(task_id))
            pipe.zadd(PARKED, {task_id: now})
            self.event("task.replayed", now, "cli", pipe, task_id=task_id)
            pipe.execute()
        return spec

    def purge_dead_letters(self, task_ids: Sequence[str] | None = None) -> int:
        with self._translate():
            if task_ids is None:
                task_ids = [str(m) for m in self.r.zrange(DLQ, 0, -1)]
            if not task_ids:
                return 0
            return int(self.r.zrem(DLQ, *task_ids))


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


__all__ = ["Attempt", "CircuitBreakerState", "Fleet", "StateStore", "now_s"]
