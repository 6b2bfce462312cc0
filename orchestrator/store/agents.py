"""The agent half of the state store: registry, heartbeats, stats, breakers, routing state."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator.models import (
    AgentStatus,
    CircuitBreakerConfig,
    ProductionEventSeverity,
    RegisteredAgent,
)
from orchestrator.recovery.breaker import (
    CLOSED_BREAKER,
    BreakerState,
    BreakerTransition,
    admit,
    current_state,
    from_redis_hash,
    to_redis_hash,
)
from orchestrator.store.base import StoreBase, _pairs
from orchestrator.store.keys import (
    AGENT_STATS,
    AGENT_STATUS,
    AGENTS,
    CIRCUIT_PREFIX,
    FLEET_VERSION,
    HEARTBEATS,
    INFLIGHT_PREFIX,
    PERF_SCORES,
    QUARANTINED_UNTIL,
    affinity_key,
    circuit_key,
    wrr_key,
)
from orchestrator.store.scripts import (
    AFFINITY_PICK_SIG,
    HEARTBEAT_SIG,
    LOAD_FLEET_SIG,
    RECORD_CIRCUIT_SIG,
    RECORD_OUTCOME_AND_CIRCUIT_SIG,
    RECORD_OUTCOME_SIG,
    WRR_PICK_SIG,
    WRR_STATE_SIG,
)

SUCCESS_EWMA_ALPHA = 0.1
LATENCY_EWMA_ALPHA = 0.2


@dataclass
class Fleet:
    """Every agent with its live figures, and each one's circuit breaker as stored."""

    agents: list[RegisteredAgent]
    breakers: dict[str, BreakerState] = field(default_factory=dict)
    version: int = 0  # the fleet version read with it (FLEET_VERSION)

    def by_id(self) -> dict[str, RegisteredAgent]:
        return {a.agent_id: a for a in self.agents}


@dataclass(frozen=True)
class WrrPeers:
    """The eligible agents and their integer weights as the round-robin script takes them:
    the ids sorted (JSON), weights and slots (MessagePack), and a digest of all three. A
    router builds it once per view of the fleet and capability set; the script keeps the
    peers under their digest, so a pick sends the digest and the task id, whatever the
    fleet's size, and the peers only when the script answers that it does not know them."""

    ids: tuple[str, ...]
    ids_json: str
    weights: bytes  # a MessagePack array of int32, aligned with ids
    digest: str
    #: With slots: each peer's concurrency + prefetch (a MessagePack array, aligned), so a
    #: pick skips the peers with no free slot.
    slots: bytes | None = None

    @classmethod
    def of(cls, weights: Mapping[str, int], slots: Mapping[str, int] | None = None) -> WrrPeers:
        if not weights:
            raise ValueError("the round-robin needs at least one weighted peer")
        ids = tuple(sorted(weights))
        bad = [i for i in ids if not isinstance(weights[i], int) or weights[i] <= 0]
        if bad:
            raise ValueError(f"weights must be positive integers: {', '.join(bad)}")
        ids_json = json.dumps(ids, separators=(",", ":"))
        packed = _msgpack_array([struct.pack(">Bi", 0xD2, weights[i]) for i in ids])
        packed_slots = None
        if slots is not None:
            packed_slots = _msgpack_array([struct.pack(">Bi", 0xD2, slots[i]) for i in ids])
        digest = hashlib.blake2b(digest_size=12)
        for part in (ids_json.encode(), packed, packed_slots or b""):
            digest.update(struct.pack(">I", len(part)) + part)
        return cls(ids, ids_json, packed, digest.hexdigest(), packed_slots)

    def args(
        self, task_id: str | None = None, *, all_free: bool = False, full: bool = False
    ) -> list[str | bytes]:
        """wrr_pick's ARGV: the digest, and with `full` the peers themselves; `all_free`
        skips no full peer (an affinity key's pick)."""
        return WRR_PICK_SIG.arg_list(
            digest=self.digest,
            task_id=task_id or "",
            all_free="1" if all_free else "",
            ids=self.ids_json if full else None,
            weights=self.weights if full else None,
            slots=self.slots if full else None,
        )


def _msgpack_array(items: list[bytes]) -> bytes:
    return struct.pack(">BI", 0xDD, len(items)) + b"".join(items)


def _msgpack_str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">BI", 0xDB, len(raw)) + raw


def _outcome_args(agent_id: str, ok: bool, latency_ms: float, task_type: str = "") -> list[Any]:
    """ARGV of scripts.RECORD_OUTCOME (with a task type: per agent and type too)."""
    return RECORD_OUTCOME_SIG.arg_list(
        agent=agent_id,
        ok=1 if ok else 0,
        latency_ms=latency_ms,
        success_alpha=SUCCESS_EWMA_ALPHA,
        latency_alpha=LATENCY_EWMA_ALPHA,
        task_type=task_type,
    )


def _circuit_args(ok: bool, now: float, cfg: CircuitBreakerConfig) -> list[Any]:
    """ARGV of scripts.RECORD_CIRCUIT."""
    return RECORD_CIRCUIT_SIG.arg_list(
        ok=1 if ok else 0,
        now=repr(now),
        failure_threshold=cfg.failure_threshold,
        successes_to_close=min(cfg.success_threshold, cfg.half_open_max_calls),
        window_size=cfg.window_size,
        minimum_calls=cfg.minimum_calls,
        failure_rate=cfg.failure_rate_threshold,
    )


class AgentStore(StoreBase):
    """Agents: registry, status, heartbeats, stats, circuit breakers and routing state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # load_fleet's parsed records and breakers by their stored form, from the last read
        # only (so bounded by the fleet): at 1,000 agents re-validating each unchanged one
        # on every read was most of a routing decision's Python time.
        self._records: dict[str, RegisteredAgent] = {}
        self._breakers: dict[tuple[str, ...], BreakerState] = {}

    # --- agents --------------------------------------------------------------------------

    def register_agent(self, agent: RegisteredAgent, now: float, source: str) -> None:
        record = agent.model_dump_json(
            include={
                "agent_id",
                "capabilities",
                "queue",
                "hostname",
                "node",
                "pid",
                "concurrency",
                "registered_at",
                "handler_tasks",
            }
        )
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(AGENTS, agent.agent_id, record)
            pipe.hset(HEARTBEATS, agent.agent_id, repr(now))
            pipe.hset(AGENT_STATUS, agent.agent_id, AgentStatus.ACTIVE.value)
            pipe.hdel(QUARANTINED_UNTIL, agent.agent_id)
            pipe.incr(FLEET_VERSION)
            self.event(
                "agent.registered",
                now=now,
                source=source,
                pipe=pipe,
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
                    keys=HEARTBEAT_SIG.key_list(
                        heartbeats=HEARTBEATS,
                        statuses=AGENT_STATUS,
                        quarantined_until=QUARANTINED_UNTIL,
                        version=FLEET_VERSION,
                    ),
                    args=HEARTBEAT_SIG.arg_list(agent=agent_id, now=repr(now)),
                )
            )

    def set_status(
        self,
        agent_id: str,
        *,
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
            pipe.incr(FLEET_VERSION)
            if event:
                self.event(
                    event,
                    now=now,
                    source=source,
                    pipe=pipe,
                    severity=severity,
                    agent_id=agent_id,
                    previous=previous,
                    **data,
                )
            pipe.execute()
        return True

    def quarantine(self, agent_id: str, *, until: float, now: float, reason: str) -> bool:
        with self._translate():
            self.r.hset(QUARANTINED_UNTIL, agent_id, repr(until))
        return self.set_status(
            agent_id,
            status=AgentStatus.QUARANTINED,
            now=now,
            source="recovery",
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
            pipe.incr(FLEET_VERSION)
            self.event("agent.deregistered", now=now, source=source, pipe=pipe, agent_id=agent_id)
            pipe.execute()

    def load_fleet(
        self, circuit_cfg: CircuitBreakerConfig | None = None, now: float | None = None
    ) -> Fleet:
        """Every registered agent with its live figures and breaker, in one round trip.

        With `now`, each agent's `circuit` is breaker.current_state under `circuit_cfg`
        (Settings.circuit_rule(): None with breakers off), the state routing and every
        display show; without it, the stored state, for readers that never look at it."""
        with self._translate():
            records, beats, stats, statuses, circuits, scores, inflight, version = self._fleet(
                keys=LOAD_FLEET_SIG.key_list(
                    agents=AGENTS,
                    heartbeats=HEARTBEATS,
                    stats=AGENT_STATS,
                    statuses=AGENT_STATUS,
                    scores=PERF_SCORES,
                    version=FLEET_VERSION,
                ),
                args=LOAD_FLEET_SIG.arg_list(
                    circuit_prefix=CIRCUIT_PREFIX, inflight_prefix=INFLIGHT_PREFIX
                ),
            )
        beats, stats, statuses = _pairs(beats), _pairs(stats), _pairs(statuses)
        in_flight = _pairs(inflight)
        by_agent: dict[str, dict[str, float]] = {}
        for pair, value in _pairs(scores).items():
            agent_id, _, cap = pair.rpartition("|")
            by_agent.setdefault(agent_id, {})[cap] = float(value)
        known_breakers, self._breakers = self._breakers, {}
        breakers = {}
        for i in range(0, len(circuits), 2):
            flat = tuple(str(v) for v in circuits[i + 1])
            state = known_breakers.get(flat)
            if state is None:
                state = from_redis_hash(_pairs(flat))  # frozen: safe to share between reads
            self._breakers[flat] = breakers[str(circuits[i])] = state
        known_records, self._records = self._records, {}
        agents = []
        for agent_id, raw in _pairs(records).items():
            template = known_records.get(raw)
            if template is None:
                template = RegisteredAgent.model_validate_json(raw)
            self._records[raw] = template
            lat = stats.get(f"{agent_id}|lat")
            own = by_agent.get(agent_id, {})
            scores = {c: s for c, s in own.items() if c in template.capabilities}
            breaker = breakers.get(agent_id, CLOSED_BREAKER)
            # A copy per read (the template's own dicts are shared, and never changed in
            # place): callers set status and the like on the agents they get.
            agent = template.model_copy(
                update={
                    "status": AgentStatus(statuses.get(agent_id, AgentStatus.ACTIVE.value)),
                    "last_heartbeat": float(beats.get(agent_id, 0.0)),
                    "tasks_succeeded": int(stats.get(f"{agent_id}|ok", 0)),
                    "tasks_failed": int(stats.get(f"{agent_id}|fail", 0)),
                    "latency_ms": float(lat) if lat is not None else None,
                    "in_flight": int(in_flight.get(agent_id, 0)),
                    "capability_scores": scores,
                    "performance_score": min(scores.values(), default=1.0),
                    "circuit": (
                        current_state(breaker, circuit_cfg, now)
                        if now is not None
                        else breaker.state
                    ),
                }
            )
            agents.append(agent)
        return Fleet(sorted(agents, key=lambda a: a.agent_id), breakers, int(version or 0))

    def fleet_version(self) -> int:
        """The fleet version: a router whose view was read under another re-reads it."""
        with self._translate():
            return int(self.r.get(FLEET_VERSION) or 0)

    def load_agents(self) -> list[RegisteredAgent]:
        return self.load_fleet().agents

    def liveness(self) -> dict[str, tuple[AgentStatus, float]]:
        """Every registered agent's stored status and last heartbeat, and nothing else: what
        the recovery monitor needs every tick (a whole fleet read costs ~20 ms at 1,000)."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hkeys(AGENTS)
            pipe.hgetall(HEARTBEATS)
            pipe.hgetall(AGENT_STATUS)
            ids, beats, statuses = pipe.execute()
        return {
            str(agent_id): (
                AgentStatus(statuses.get(agent_id, AgentStatus.ACTIVE.value)),
                float(beats.get(agent_id, 0.0)),
            )
            for agent_id in ids
        }

    def record_outcome(
        self,
        agent_id: str,
        *,
        ok: bool,
        latency_ms: float,
        circuit_cfg: CircuitBreakerConfig | None = None,
        now: float | None = None,
        task_type: str = "",
    ) -> str:
        """Update the agent's stats and (when given a config) its breaker in one round trip;
        returns the breaker transition ('opened', 'closed' or '') and announces it."""
        now = now or time.time()
        stats = _outcome_args(agent_id, ok, latency_ms, task_type)
        with self._translate():
            if circuit_cfg is None:
                self._outcome(keys=RECORD_OUTCOME_SIG.key_list(stats=AGENT_STATS), args=stats)
                return ""
            transition = str(
                self._outcome_circuit(
                    keys=RECORD_OUTCOME_AND_CIRCUIT_SIG.key_list(
                        stats_key=AGENT_STATS, circuit_key=circuit_key(agent_id)
                    ),
                    args=RECORD_OUTCOME_AND_CIRCUIT_SIG.arg_list(
                        outcome=stats, breaker=_circuit_args(ok, now, circuit_cfg)
                    ),
                )
            )
        self.announce_circuit(agent_id, transition, now)
        return transition

    def announce_circuit(self, agent_id: str, transition: str, now: float) -> None:
        """The `circuit.opened` / `circuit.closed` event of a breaker transition, if any."""
        if not transition:
            return
        severity = (
            ProductionEventSeverity.WARNING
            if transition == BreakerTransition.OPENED
            else ProductionEventSeverity.INFO
        )
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.incr(FLEET_VERSION)
            self.event(
                f"circuit.{transition}",
                now=now,
                source=agent_id,
                pipe=pipe,
                severity=severity,
                agent_id=agent_id,
            )
            pipe.execute()

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
                    pipe.incr(FLEET_VERSION)
                    if decision.transition is not None:
                        self.event(
                            decision.transition.event_type,
                            now=now,
                            source="router",
                            pipe=pipe,
                            agent_id=agent_id,
                        )
                    pipe.execute()
                    return decision.admitted
                except redis.WatchError:
                    continue

    def circuit(self, agent_id: str) -> BreakerState:
        with self._translate():
            return from_redis_hash(self.r.hgetall(circuit_key(agent_id)))

    # --- routing state -------------------------------------------------------------------

    def wrr_pick(
        self,
        capability_key: str,
        peers: Mapping[str, int] | WrrPeers,
        task_id: str | None = None,
    ) -> str | None:
        """The next smooth weighted round-robin pick among `peers` (agent -> integer weight,
        or prepared), one atomic step shared by every router; None when peers prepared with
        slots all have none free (`task_id`'s own slot, where it holds one, counts as free).
        One round trip while the script knows the peers; a second sends them."""
        if not isinstance(peers, WrrPeers):
            peers = WrrPeers.of(peers)
        keys = WRR_PICK_SIG.key_list(state=wrr_key(capability_key))
        with self._translate():
            index = int(self._wrr(keys=keys, args=peers.args(task_id)))
            if index < 0:
                index = int(self._wrr(keys=keys, args=peers.args(task_id, full=True)))
        return peers.ids[index - 1] if index > 0 else None

    def wrr_state(self, capability_key: str) -> dict[str, int]:
        """The round-robin's `current` per agent (tests and diagnostics)."""
        with self._translate():
            ids, cur = self._wrr_state(keys=WRR_STATE_SIG.key_list(state=wrr_key(capability_key)))
        if not ids:
            return {}
        return {str(k): int(v) for k, v in zip(json.loads(ids), cur, strict=True)}

    def affinity_pick(
        self,
        key: str,
        *,
        capability_key: str,
        weights: Mapping[str, int] | WrrPeers,
        fallback: str | None,
        ttl_s: int,
    ) -> str:
        """The agent affinity key `key` sticks to, read and (re)written in one atomic step,
        so routers racing on a new key agree on one agent: the stuck agent while it is among
        `weights` (the eligible agents; its TTL is refreshed), else `fallback` (the router's
        own pick), or with None the next weighted round-robin pick, which advances only then."""
        if not isinstance(weights, WrrPeers):
            weights = WrrPeers.of(weights)
        keys = AFFINITY_PICK_SIG.key_list(
            affinity=affinity_key(key), wrr_state=wrr_key(capability_key)
        )
        with self._translate():
            for full in (False, True):
                wrr = weights.args(all_free=True, full=full)
                args = AFFINITY_PICK_SIG.arg_list(ttl=ttl_s, pick=fallback or "", wrr=wrr)
                chosen = self._affinity(keys=keys, args=args)
                if chosen != -1:
                    break
            return str(chosen)
