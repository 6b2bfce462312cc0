"""The event streams as control workers consume them: the consumer group, claims, markers, failures.

The streams (orchestrator:events, and orchestrator:events:tasks for the task lifecycle types,
written by every role through StoreBase.event and the Lua steps) are read here as the consumer
group EVENTS_GROUP: new entries with XREADGROUP, a dead consumer's pending ones with
XAUTOCLAIM, done ones acknowledged with XACK. A consumer names the streams it reads
(keys.streams_for): the group is made on each of them, and one XREADGROUP reads them all. Each
handler's idempotency marker per event (events:mark:..., events:taskmark:...) and the record
of handlers given up on (events:failed) live here too, so every key of event processing is
read and written in one module.
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
    EVENT_STREAMS,
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
    stream: str = EVENTS

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

    def ensure_group(self, start: str = "$", stream: str = EVENTS) -> bool:
        """Create the group on `stream`, at `start`; False when it exists already or there
        is no stream yet. It writes nothing while there is no stream (a consumer must not put
        a key back into a Redis just flushed or being restored): the group is made once the
        first event creates the stream. Created at the end (`$`, at a worker's start), a
        first deployment does not replay history; made for a stream that appeared later
        (`0-0`), every entry in it is new."""
        return self._ensure(stream, start) is True

    def ensure_groups(self, streams: Sequence[str], start: str = "$") -> tuple[str, ...]:
        """ensure_group on each of `streams`; the ones that have the group now."""
        return tuple(s for s in streams if self._ensure(s, start) is not None)

    def _ensure(self, stream: str, start: str) -> bool | None:
        """True: made now; False: there already; None: no stream yet."""
        with self._translate():
            if not self.r.exists(stream):
                return None
            try:
                self.r.xgroup_create(stream, EVENTS_GROUP, id=start)
            except redis.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return False
                raise
        return True

    def read_new(
        self, consumer: str, count: int, block_ms: int, streams: Sequence[str] = (EVENTS,)
    ) -> list[Delivery] | None:
        """Entries of `streams` no consumer of the group has had yet (waiting at most
        `block_ms`); None when the group is missing on one of them (Redis flushed or
        restored): the caller makes it again (ensure_groups) once there is a stream."""
        if not streams:
            time.sleep(block_ms / 1000)  # no stream yet: wait as XREADGROUP would
            return []
        with self._translate():
            try:
                reply = self.r.xreadgroup(
                    EVENTS_GROUP,
                    consumer,
                    dict.fromkeys(streams, ">"),
                    count=count,
                    block=block_ms,
                )
            except redis.ResponseError as exc:
                if not _no_group(exc):
                    raise
                return None
        return [
            Delivery(i, f or {}, stream=stream)
            for stream, entries in reply or []
            for i, f in entries
        ]

    def claim_idle(
        self, consumer: str, min_idle_ms: int, count: int, stream: str = EVENTS
    ) -> list[Delivery]:
        """Take over up to `count` entries of `stream` pending for at least `min_idle_ms`
        with any consumer (a dead one's, or this one's own that a handler failed on), with
        the number of times each has now been delivered; none while the group is missing
        there (read_new finds that out)."""
        claimed: list[tuple[str, Mapping[str, str]]] = []
        cursor = "0-0"
        with self._translate():
            try:
                while len(claimed) < count:
                    cursor, entries, *_deleted = self.r.xautoclaim(
                        stream, EVENTS_GROUP, consumer, min_idle_ms, cursor, count=count
                    )
                    # Entries trimmed off the stream meanwhile: Redis 7 drops them from the
                    # pending list itself; 6.2 hands them back without fields (acked here).
                    claimed += [(i, f) for i, f in entries if f is not None]
                    gone = [i for i, f in entries if f is None]
                    if gone:
                        self.r.xack(stream, EVENTS_GROUP, *gone)
                    if cursor == "0-0":
                        break
            except redis.ResponseError as exc:
                if not _no_group(exc):
                    raise
                return []
            if not claimed:
                return []
            pipe = self.r.pipeline(transaction=False)
            for entry_id, _fields in claimed:
                pipe.xpending_range(stream, EVENTS_GROUP, min=entry_id, max=entry_id, count=1)
            pending = pipe.execute()
        times = {str(p["message_id"]): int(p["times_delivered"]) for one in pending for p in one}
        return [Delivery(i, f, times.get(i, 1), stream) for i, f in claimed]

    def ack(self, ids: Sequence[str], stream: str = EVENTS) -> int:
        return self.ack_all({stream: ids})

    def ack_all(self, by_stream: Mapping[str, Sequence[str]]) -> int:
        """Acknowledge entries of one or more streams, in one round trip."""
        wanted = {s: ids for s, ids in by_stream.items() if ids}
        if not wanted:
            return 0
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for stream, ids in wanted.items():
                pipe.xack(stream, EVENTS_GROUP, *ids)
            return sum(int(n) for n in pipe.execute())

    def forget_consumer(self, consumer: str) -> bool:
        """Remove this consumer from the group on each stream where it holds nothing pending
        (a warm shutdown); where it holds pending entries it stays, for a live consumer to
        claim them from. True when it is gone from every stream's group."""
        gone = True
        with self._translate():
            for stream in EVENT_STREAMS:
                try:
                    consumers = self.r.xinfo_consumers(stream, EVENTS_GROUP)
                except redis.ResponseError:
                    continue  # no stream, or no group on it
                mine = [c for c in consumers if c["name"] == consumer]
                if any(int(c["pending"]) == 0 for c in mine):
                    self.r.xgroup_delconsumer(stream, EVENTS_GROUP, consumer)
                elif mine:
                    gone = False
        return gone

    # --- idempotency markers -------------------------------------------------------------

    def take_mark(
        self, handler: str, event_id: str, *, value: str, lease_ms: int, stream: str = EVENTS
    ) -> str | None:
        """Set the handler's marker for the event to `value` for `lease_ms` if it has none;
        None when it was taken, else the value it already had. One step (SET NX GET)."""
        with self._translate():
            previous = self.r.set(
                event_mark_key(handler, event_id, stream), value, nx=True, px=lease_ms, get=True
            )
        return None if previous is None else str(previous)

    def end_mark(self, handler: str, event_id: str, value: str, stream: str = EVENTS) -> None:
        """The handler is done with the event (`value`: done or failed) for good."""
        with self._translate():
            self.r.set(event_mark_key(handler, event_id, stream), value, ex=EVENT_MARK_TTL_S)

    def release_mark(self, handler: str, event_id: str, value: str, stream: str = EVENTS) -> None:
        """Drop the marker if it still holds `value` (this delivery's lease), so the next
        delivery runs the handler again at once."""
        with self._translate():
            self._release(
                keys=RELEASE_LOCK_SIG.key_list(lock=event_mark_key(handler, event_id, stream)),
                args=RELEASE_LOCK_SIG.arg_list(token=value),
            )

    # --- handlers given up on ------------------------------------------------------------

    def record_failed(self, record: Mapping[str, Any]) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(EVENTS_FAILED, json.dumps(record, default=str))
            pipe.ltrim(EVENTS_FAILED, -EVENTS_FAILED_KEEP, -1)
            pipe.execute()
