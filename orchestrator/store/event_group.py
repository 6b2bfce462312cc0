"""The event stream as control workers consume it: the consumer group, claims, markers, failures.

The stream itself (orchestrator:events, written by every role through StoreBase.event) is
read here as the consumer group EVENTS_GROUP: new entries with XREADGROUP, a dead consumer's
pending ones with XAUTOCLAIM, done ones acknowledged with XACK. Each handler's idempotency
marker per event (events:mark:...) and the record of handlers given up on (events:failed)
live here too, so every key of event processing is read and written in one module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.models import OrchestrationEvent
from orchestrator.store.base import StoreBase, _parse_event
from orchestrator.store.keys import (
    EVENT_MARK_TTL_S,
    EVENTS,
    EVENTS_FAILED,
    EVENTS_FAILED_KEEP,
    EVENTS_GROUP,
    event_mark_key,
)
from orchestrator.store.scripts import RELEASE_LOCK_SIG


@dataclass(frozen=True)
class Delivery:
    """One entry handed to this consumer, and how many times the group has handed it out."""

    id: str
    fields: Mapping[str, str]
    deliveries: int = 1

    def event(self) -> OrchestrationEvent:
        """The entry as an event; ValueError when it is not one (a foreign writer's entry)."""
        try:
            return _parse_event(self.id, self.fields)
        except (ValueError, TypeError) as exc:  # bad JSON, severity or ts
            raise ValueError(f"entry {self.id} is not an orchestrator event: {exc}") from exc


def _no_group(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class EventGroupStore(StoreBase):
    """The control workers' consumer group on the event stream, and its handlers' markers."""

    def ensure_group(self, start: str = "$") -> bool:
        """Create the group on the stream, at `start`; False when it exists already or there
        is no stream yet. It writes nothing while there is no stream (a consumer must not put
        a key back into a Redis just flushed or being restored): the group is made once the
        first event creates the stream. Created at the end (`$`, at a worker's start), a
        first deployment does not replay history; made for a stream that appeared later
        (`0-0`), every entry in it is new."""
        with self._translate():
            if not self.r.exists(EVENTS):
                return False
            try:
                self.r.xgroup_create(EVENTS, EVENTS_GROUP, id=start)
            except redis.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return False
                raise
        return True

    def read_new(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        """Entries no consumer of the group has had yet (waiting at most `block_ms`). A group
        that vanished (Redis flushed or restored), or was never made because there was no
        stream, is made from the stream's start once there is one; nothing is returned."""
        with self._translate():
            try:
                reply = self.r.xreadgroup(
                    EVENTS_GROUP, consumer, {EVENTS: ">"}, count=count, block=block_ms
                )
            except redis.ResponseError as exc:
                if not _no_group(exc):
                    raise
                if not self.ensure_group("0-0"):
                    time.sleep(block_ms / 1000)  # no stream yet: wait as XREADGROUP would
                return []
        return [Delivery(i, f or {}) for _stream, entries in reply or [] for i, f in entries]

    def claim_idle(self, consumer: str, min_idle_ms: int, count: int) -> list[Delivery]:
        """Take over up to `count` entries pending for at least `min_idle_ms` with any
        consumer (a dead one's, or this one's own that a handler failed on), with the number
        of times each has now been delivered."""
        claimed: list[tuple[str, Mapping[str, str]]] = []
        cursor = "0-0"
        with self._translate():
            try:
                while len(claimed) < count:
                    cursor, entries, *_deleted = self.r.xautoclaim(
                        EVENTS, EVENTS_GROUP, consumer, min_idle_ms, cursor, count=count
                    )
                    # Entries trimmed off the stream meanwhile: Redis 7 drops them from the
                    # pending list itself; 6.2 hands them back without fields (acked here).
                    claimed += [(i, f) for i, f in entries if f is not None]
                    gone = [i for i, f in entries if f is None]
                    if gone:
                        self.r.xack(EVENTS, EVENTS_GROUP, *gone)
                    if cursor == "0-0":
                        break
            except redis.ResponseError as exc:
                if not _no_group(exc):
                    raise
                self.ensure_group("0-0")
                return []
            if not claimed:
                return []
            pipe = self.r.pipeline(transaction=False)
            for entry_id, _fields in claimed:
                pipe.xpending_range(EVENTS, EVENTS_GROUP, min=entry_id, max=entry_id, count=1)
            pending = pipe.execute()
        times = {str(p["message_id"]): int(p["times_delivered"]) for one in pending for p in one}
        return [Delivery(i, f, times.get(i, 1)) for i, f in claimed]

    def ack(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._translate():
            return int(self.r.xack(EVENTS, EVENTS_GROUP, *ids))

    def forget_consumer(self, consumer: str) -> bool:
        """Remove this consumer from the group when it holds nothing pending (a warm
        shutdown); with pending entries it stays, for a live consumer to claim them from."""
        with self._translate():
            try:
                consumers = self.r.xinfo_consumers(EVENTS, EVENTS_GROUP)
            except redis.ResponseError:
                return False
            if any(c["name"] == consumer and int(c["pending"]) == 0 for c in consumers):
                self.r.xgroup_delconsumer(EVENTS, EVENTS_GROUP, consumer)
                return True
        return False

    # --- idempotency markers -------------------------------------------------------------

    def take_mark(self, handler: str, event_id: str, *, value: str, lease_ms: int) -> str | None:
        """Set the handler's marker for the event to `value` for `lease_ms` if it has none;
        None when it was taken, else the value it already had. One step (SET NX GET)."""
        with self._translate():
            previous = self.r.set(
                event_mark_key(handler, event_id), value, nx=True, px=lease_ms, get=True
            )
        return None if previous is None else str(previous)

    def end_mark(self, handler: str, event_id: str, value: str) -> None:
        """The handler is done with the event (`value`: done or failed) for good."""
        with self._translate():
            self.r.set(event_mark_key(handler, event_id), value, ex=EVENT_MARK_TTL_S)

    def release_mark(self, handler: str, event_id: str, value: str) -> None:
        """Drop the marker if it still holds `value` (this delivery's lease), so the next
        delivery runs the handler again at once."""
        with self._translate():
            self._release(
                keys=RELEASE_LOCK_SIG.key_list(lock=event_mark_key(handler, event_id)),
                args=RELEASE_LOCK_SIG.arg_list(token=value),
            )

    # --- handlers given up on ------------------------------------------------------------

    def record_failed(self, record: Mapping[str, Any]) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(EVENTS_FAILED, json.dumps(record, default=str))
            pipe.ltrim(EVENTS_FAILED, -EVENTS_FAILED_KEEP, -1)
            pipe.execute()

    # --- reading the stream (the CLI) ----------------------------------------------------

    def events_after(self, last_id: str, count: int = 1000) -> list[OrchestrationEvent]:
        """Up to `count` events written after the entry `last_id` ("0": from the start),
        oldest first, as XREAD would hand them to a reader resuming from `last_id`."""
        with self._translate():
            try:
                entries = self.r.xrange(EVENTS, min=f"({last_id}", count=count)
            except redis.ResponseError as exc:  # not a stream entry id
                raise ValueError(f"{last_id!r} is not a stream entry id: {exc}") from exc
        return [_parse_event(i, f) for i, f in entries]
