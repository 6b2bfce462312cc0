"""The event consumer: one control worker's member of the consumer group, running handlers.

Delivery is at least once. Each control worker process reads new entries of
orchestrator:events as its own consumer of the group (XREADGROUP), and every few seconds
takes over entries left pending for the claim time (XAUTOCLAIM): a dead worker's, or ones a
handler raised on. The task lifecycle events (several per task) have a stream of their own,
orchestrator:events:tasks, which the same XREADGROUP reads only when a handler of this
process takes one of its types (keys.streams_for): otherwise the group never reads it, and a
task on its normal path costs the consumer nothing.

An entry is acknowledged (XACK) only after every handler of its type ran, had run before, or
was given up on (registry.settle). A handler runs at most once per event (stream and id)
however often the entry is delivered: before running it the delivery takes the handler's
marker with a lease (SET NX), and marks it done afterwards; a lease of a dead worker lapses
after the claim time, so the next claim runs the handler again. Only a worker dying between
a handler's effect and its marker makes an effect happen twice, and the built-in handlers'
effects are idempotent in themselves.

The loop runs in one thread the worker's bootstep (runtime/event_processing.py) starts and stops.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.config import Settings
from orchestrator.events.registry import (
    DONE,
    FAILED,
    REGISTRY,
    EventRegistry,
    Outcome,
    before_run,
    mark_of,
    running_mark,
    settle,
)
from orchestrator.store import StateStore, now_s
from orchestrator.store.event_group import Delivery
from orchestrator.store.keys import ON_DEMAND_EVENTS, streams_for

if TYPE_CHECKING:
    from orchestrator.recovery.healer import Healer
    from orchestrator.routing.router import Router

log = logging.getLogger(__name__)

#: Entries read or claimed per call.
BATCH = 100
#: How long one read waits for new entries: also how soon the thread notices a stop.
BLOCK_MS = 1000
#: How long the loop rests after Redis failed it, before trying again.
BACKOFF_S = 1.0
#: How long a stop waits for a running handler before leaving its entry to a claim.
STOP_TIMEOUT_S = 10.0


@dataclass
class EventContext:
    """What a handler gets besides the event: the worker's settings, a state store of the
    consumer's own, the healer (and through it the router), and the Celery app."""

    settings: Settings
    store: StateStore
    healer: Healer
    app: Any = None

    @property
    def router(self) -> Router:
        return self.healer.router

    def fail_task(self, task_id: str, error: Exception) -> None:
        """Store a task's final failure where its caller's result waits (Celery's backend)."""
        self.healer.fail_task(task_id, error)


class EventConsumer:
    """One consumer of the group: reads, claims, runs handlers, acknowledges."""

    def __init__(
        self,
        store: StateStore,
        context: Any,
        name: str,
        *,
        claim_idle_s: float,
        max_deliveries: int,
        registry: EventRegistry = REGISTRY,
        clock: Callable[[], float] = now_s,
    ) -> None:
        self.store = store
        self.context = context
        self.name = name
        self.lease_ms = max(1, int(claim_idle_s * 1000))
        self.claim_every_s = max(1.0, claim_idle_s / 4)
        self.max_deliveries = max_deliveries
        self.registry = registry
        self.clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._claim_at = 0.0  # monotonic time of the next claim pass
        #: The streams this consumer reads, and those of them the group is made on.
        self.streams = streams_for(self.registry.types())
        self._ready: tuple[str, ...] = ()

    # --- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Join the group (creating it at the stream's end if there is none and the stream
        exists; otherwise once the first event makes it) and start consuming in a thread of
        this process."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.streams = streams_for(self.registry.types())
        try:
            self._ready = self.store.ensure_groups(self.streams)
            self.store.want_events(self.name, self._on_demand())
        except Exception as exc:  # Redis away at start: the loop creates the group later
            log.warning("event processing: cannot create the consumer group yet: %s", exc)
        # A fresh event per thread: a thread a stop gave up waiting for still sees its own.
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stopping,), name="orchestrator-events", daemon=True
        )
        self._thread.start()
        log.info(
            "event processing: consumer %s started; reads %s; handlers %s",
            self.name,
            ", ".join(self.streams),
            self.registry.types(),
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop after the handler running now (if any); entries not finished stay pending
        for another consumer to claim."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(timeout)
        if not thread.is_alive():
            log.info("event processing: consumer %s stopped", self.name)
        else:
            log.warning(
                "event processing: consumer %s still running a handler after %.0f s; its "
                "entry stays pending for another control worker",
                self.name,
                timeout,
            )

    def _on_demand(self) -> list[str]:
        """The on-demand event types (task.queued, task.dispatched) a handler here takes."""
        handled = self.registry.types()
        return [t for t in ON_DEMAND_EVENTS if t in handled]

    def leave(self) -> None:
        """Leave the group for good (warm shutdown), unless entries are still pending with
        this consumer: then it stays listed until another one claims them."""
        try:
            self.store.forget_consumer(self.name)
            self.store.want_events(self.name, ON_DEMAND_EVENTS, on=False)
        except Exception as exc:
            log.warning(
                "event processing: consumer %s could not leave the group: %s", self.name, exc
            )

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.poll(BLOCK_MS)
            except Exception as exc:  # Redis restarting, failing over: rest and go on
                log.warning("event processing: %s; again in %.0f s", exc, BACKOFF_S)
                stopping.wait(BACKOFF_S)

    # --- one pass ------------------------------------------------------------------------

    def poll(self, block_ms: int) -> int:
        """Claim what is due (every claim_every_s), then read new entries (waiting up to
        `block_ms`), and handle them; returns how many entries were handled. A stream that
        has no group yet (no stream yet, or Redis flushed) gets it from its start once the
        stream exists."""
        if len(self._ready) < len(self.streams):
            missing = [s for s in self.streams if s not in self._ready]
            made = set(self._ready) | set(self.store.ensure_groups(missing, "0-0"))
            self._ready = tuple(s for s in self.streams if s in made)
        handled = 0
        if time.monotonic() >= self._claim_at and self._ready:
            self._claim_at = time.monotonic() + self.claim_every_s
            for stream in self._ready:
                claimed = self.store.claim_idle(self.name, self.lease_ms, BATCH, stream)
                handled += self.handle(claimed)
        new = self.store.read_new(self.name, BATCH, block_ms, self._ready)
        if new is None:  # a group vanished: made again, from the start, once there is a stream
            self._ready = ()
            return handled
        return handled + self.handle(new)

    def handle(self, deliveries: Sequence[Delivery]) -> int:
        """Handle each entry and acknowledge those that are finished, in one round trip.
        While stopping, entries with handlers are left pending (for a claim) and the rest
        acked."""
        finished: dict[str, list[str]] = {}
        for delivery in deliveries:
            if self._stopping.is_set() and self._has_handlers(delivery):
                continue
            if self.deliver(delivery):
                finished.setdefault(delivery.stream, []).append(delivery.id)
        self.store.ack_all(finished)
        return len(deliveries)

    def _has_handlers(self, delivery: Delivery) -> bool:
        return bool(self.registry.handlers_for(delivery.fields.get("type", "")))

    def deliver(self, delivery: Delivery) -> bool:
        """Run the entry's handlers that still need to run; True when it can be acked. An
        entry of a type no handler takes (most task events) is acked unparsed."""
        if not self._has_handlers(delivery):
            return True
        try:
            event = delivery.event()
        except ValueError as exc:
            log.warning("event processing: %s; acknowledged and recorded as failed", exc)
            self._record_failed(delivery, None, str(exc), {})
            return True
        handlers = self.registry.handlers_for(event.type)
        lease = running_mark(f"{self.name}:{uuid.uuid4().hex}")
        outcomes: dict[str, Outcome] = {}
        errors: dict[str, str] = {}
        for name, handler in handlers:
            held = self.store.take_mark(
                name, delivery.id, value=lease, lease_ms=self.lease_ms, stream=delivery.stream
            )
            skip = before_run(mark_of(held))
            if skip is not None:
                outcomes[name] = skip
                continue
            started = time.monotonic()
            try:
                handler(event, self.context)
            except Exception as exc:
                log.exception(
                    "event %s (%s): handler %s raised on delivery %d of %d",
                    delivery.id,
                    event.type,
                    name,
                    delivery.deliveries,
                    self.max_deliveries,
                )
                self.store.release_mark(name, delivery.id, lease, delivery.stream)
                outcomes[name] = Outcome.RAISED
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            self.store.end_mark(name, delivery.id, DONE, delivery.stream)
            outcomes[name] = Outcome.RAN
            took_ms = (time.monotonic() - started) * 1000
            if took_ms > self.lease_ms:
                log.warning(
                    "event %s: handler %s took %.1f s, longer than its lease (%.1f s): "
                    "another control worker may have run it as well",
                    delivery.id,
                    name,
                    took_ms / 1000,
                    self.lease_ms / 1000,
                )
        verdict = settle(outcomes, delivery.deliveries, self.max_deliveries)
        for name in verdict.give_up:
            self.store.end_mark(name, delivery.id, FAILED, delivery.stream)
            self._record_failed(delivery, event.type, errors[name], {"handler": name})
            log.error(
                "event %s (%s): handler %s gave up after %d deliveries: %s",
                delivery.id,
                event.type,
                name,
                delivery.deliveries,
                errors[name],
            )
        return verdict.ack

    def _record_failed(
        self, delivery: Delivery, event_type: str | None, error: str, extra: dict[str, Any]
    ) -> None:
        self.store.record_failed(
            {
                "id": delivery.id,
                "stream": delivery.stream,
                "type": event_type or delivery.fields.get("type"),
                "source": delivery.fields.get("source"),
                "handler": None,
                **extra,
                "error": error,
                "deliveries": delivery.deliveries,
                "consumer": self.name,
                "ts": self.clock(),
            }
        )
