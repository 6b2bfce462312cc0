"""The state store's foundation: the connection, error translation, events and locks.

The other modules of orchestrator.store each add a part on top of StoreBase (agents,
backlog, ledger, dlq, recovery, clients, events, sleep, migrate); orchestrator.store puts
them together as StateStore. Key names come from keys, Lua from scripts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestrator.config import DEFAULT_SENTINEL_MASTER, Settings
from orchestrator.errors import StoreUnavailable
from orchestrator.models import (
    OrchestrationEvent,
    ProductionEventSeverity,
)
from orchestrator.store import refusals, scripts
from orchestrator.store.connect import redis_client
from orchestrator.store.keys import (
    INFLIGHT_LOG,
    INFLIGHT_LOG_KEEP,
    INFLIGHT_LOG_TRIM,
    INFLIGHT_SEQ,
    events_key,
    inflight_key,
    lock_key,
)
from orchestrator.store.telemetry import TelemetryWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def _event_args(event: OrchestrationEvent) -> list[str]:
    """An event's stream fields as the flat field/value list a Lua step passes to XADD."""
    return [item for pair in _event_fields(event).items() for item in pair]


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


class StoreBase:
    """Connection, scripts, events and locks, shared by every part of the store."""

    #: After a WAIT that fell short (a replica missing), submissions go unconfirmed this long
    #: before WAIT is tried again, so a primary left without replicas stays fast.
    WAIT_BACKOFF_S = 5.0

    def __init__(
        self,
        client: redis.Redis,
        ledger_ttl_s: int = 7 * 24 * 3600,
        events_max_len: int = 100_000,
        wait_replicas: int = 0,
        wait_ms: int = 100,
    ) -> None:
        self.r = client
        self.ledger_ttl_s = ledger_ttl_s
        self.events_max_len = events_max_len
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        self._wait_off_until = 0.0
        #: Submissions confirmed before enough replicas had them (see replicated()).
        self.unreplicated = 0
        self._wrr = client.register_script(scripts.WRR_PICK)
        self._wrr_state = client.register_script(scripts.WRR_STATE)
        self._affinity = client.register_script(scripts.AFFINITY_PICK)
        self._fleet = client.register_script(scripts.LOAD_FLEET)
        self._accept = client.register_script(scripts.ACCEPT)
        self._transition = client.register_script(scripts.TRANSITION)
        self._route = client.register_script(scripts.ROUTE)
        self._begin = client.register_script(scripts.BEGIN_ATTEMPT)
        self._outcome = client.register_script(scripts.RECORD_OUTCOME)
        self._outcome_circuit = client.register_script(scripts.RECORD_OUTCOME_AND_CIRCUIT)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._release = client.register_script(scripts.RELEASE_LOCK)
        self._finish = client.register_script(scripts.FINISH)
        self._settle = client.register_script(scripts.SETTLE_RUN)
        self._accept_route = client.register_script(scripts.ACCEPT_AND_ROUTE)
        self._vanished = client.register_script(scripts.VANISHED)
        self._poison = client.register_script(scripts.POISON_RECORD)
        self._admit = client.register_script(scripts.ADMIT_CLIENT)
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._defer = client.register_script(scripts.DEFER)
        self._fill = client.register_script(scripts.FILL)
        self.telemetry = TelemetryWriter(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        sentinel_master: str = DEFAULT_SENTINEL_MASTER,
        cluster: bool = False,
        **kwargs: Any,
    ) -> Self:
        # Fail within about a second when Redis is down (redis-py's default retries for
        # several seconds): callers turn StoreUnavailable into a clear error or a redelivery.
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3)
        client = redis_client(
            url,
            sentinel_master=sentinel_master,
            cluster=cluster,
            decode_responses=True,
            health_check_interval=30,
            retry=retry,
        )
        return cls(client, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Self:
        """The store at ORCH_STATE_URL (or ORCH_REDIS_URL), with the settings' ledger TTL and
        event stream length."""
        store = cls.from_url(
            settings.effective_state_url,
            sentinel_master=settings.redis_sentinel_master,
            cluster=settings.state_cluster,
            ledger_ttl_s=settings.ledger_ttl_s,
            events_max_len=settings.events_max_len,
            wait_replicas=settings.submit_wait_replicas,
            wait_ms=settings.submit_wait_ms,
            **kwargs,
        )
        store.configure(settings)
        return store

    def configure(self, settings: Settings) -> None:
        """Take what the store's steps need of the settings (the dispatch half's)."""

    def replicated(self, step: Callable[[redis.Redis], T]) -> T:
        """`step(client)`'s writes, confirmed by `wait_replicas` replicas (Redis WAIT on the
        same connection, at most `wait_ms`) before this returns; without replicas to wait
        for, just `step(self.r)`. A WAIT that falls short is logged and counted (the writes
        stand on the primary) and WAIT rests for WAIT_BACKOFF_S. Callers translate errors."""
        if self.wait_replicas <= 0 or time.monotonic() < self._wait_off_until:
            return step(self.r)
        with self.r.client() as one:  # WAIT counts the writes of one connection
            result = step(one)
            acked = int(one.wait(self.wait_replicas, self.wait_ms))
        if acked < self.wait_replicas:
            self.unreplicated += 1
            self._wait_off_until = time.monotonic() + self.WAIT_BACKOFF_S
            log.warning(
                "a submission reached %d of %d replicas within %d ms; confirming submissions "
                "without waiting for %.0f s",
                acked,
                self.wait_replicas,
                self.wait_ms,
                self.WAIT_BACKOFF_S,
            )
        return result

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Redis's failures as named errors: StoreUnavailable when it cannot be reached (or
        cannot take writes for now: maxmemory, a read-only replica), StoreError when it
        refused a step (store.refusals); never a raw redis exception."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis state store unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            raise refusals.translated(exc, refusals.step_of(exc.__traceback__)) from exc

    def _inflight_remove(self, agent_id: str, task_id: str) -> None:
        """Take the task from the agent's in-flight set, logged as every change of one is
        (keys.lua_header's inflight_changed: the round-robin re-checks that agent's slots)."""
        with self._translate(), self.r.pipeline(transaction=True) as pipe:
            pipe.srem(inflight_key(agent_id), task_id)
            pipe.incr(INFLIGHT_SEQ)
            pipe.rpush(INFLIGHT_LOG, agent_id)
            if pipe.execute()[1] % INFLIGHT_LOG_TRIM == 0:
                self.r.ltrim(INFLIGHT_LOG, -INFLIGHT_LOG_KEEP, -1)

    def ping(self) -> bool:
        with self._translate():
            return bool(self.r.ping())

    # --- events --------------------------------------------------------------------------

    def emit(self, event: OrchestrationEvent, pipe: Any = None) -> None:
        target = pipe if pipe is not None else self.r
        with self._translate():
            target.xadd(
                events_key(event.type),
                _event_fields(event),
                maxlen=self.events_max_len,
                approximate=True,
            )

    def event(
        self,
        type_: str,
        *,
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
                    self._release(
                        keys=scripts.RELEASE_LOCK_SIG.key_list(lock=lock_key(name)),
                        args=scripts.RELEASE_LOCK_SIG.arg_list(token=token),
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
