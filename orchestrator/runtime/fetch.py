"""The atomic fetch's pieces: its Lua script, kombu's QoS without a second record, the wake.

runtime/transport.py's Channel takes a message off its lists and records it as
unacknowledged in one Lua step (store/lua/fetch.lua); the QoS here does not record it again,
and acknowledges without MULTI; an idle channel is woken through Redis's client tracking
(WAKE, INVALIDATE). See transport.py's docstring for the whole design.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from orchestrator.runtime.screening import refuse

log = logging.getLogger(__name__)


#: The atomic fetch (beside the state store's scripts, read here: the transport is the broker
#: edge and imports nothing of the store).
FETCH = (Path(__file__).parent.parent / "store" / "lua" / "fetch.lua").read_text(encoding="utf-8")
FETCH_SHA = hashlib.sha1(FETCH.encode()).hexdigest()


def _out_of_memory(exc: Exception) -> bool:
    """Whether Redis refused a command for lack of memory (maxmemory under noeviction)."""
    return "maxmemory" in str(exc) or str(exc).startswith("OOM")


def _wake() -> None:
    """A timer's callback: waking the event loop is all it is for."""


#: The poller registration of a channel's wake connection (beside kombu's BRPOP and LISTEN).
WAKE = "WAKE"
#: Where Redis sends the invalidation messages of tracked keys (RESP2 subscribers).
INVALIDATE = "__redis__:invalidate"
#: Reasons Redis refused tracking that were already noted in this process's log.
_noted_refusals: set[str] = set()


class _WakeLink:
    """The `client` of a WAKE registration: kombu's poller reads `client.connection`, and
    forgets the registration when that connection disconnects."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection


def wake_refusal(exc: Exception) -> bool:
    """Whether an error reply to setting the wake up will not change while this server runs:
    no permission (ACL) or a command it does not know (before Redis 6, renamed, a proxy)."""
    text = str(exc).lower()
    return isinstance(exc, redis.exceptions.NoPermissionError) or "unknown" in text


def wake_delay(now: float, empty_at: float, least: float) -> float:
    """Seconds a fetch woken by Redis at `now` waits: none, unless the last fetch found
    nothing less than `least` seconds ago (then the rest of that)."""
    return max(0.0, empty_at + least - now)


def _load_fetch(client: Any) -> tuple[str, str]:
    """Load the fetch script into Redis: the `#!lua` form, or on a Redis that has no script
    flags (before 7) the legacy form, which runs even out of memory (it then records
    beyond maxmemory, by about the size of the entry it takes)."""
    try:
        return FETCH, client.script_load(FETCH)
    except redis.exceptions.ResponseError as exc:
        if "OOM" in str(exc) or not FETCH.startswith("#!"):
            raise
    legacy = FETCH.split("\n", 1)[1]
    return legacy, client.script_load(legacy)


class QoS(kombu_redis.QoS):
    """kombu's QoS, but a message the fetch script already recorded is not recorded again, a
    record that is no kombu record is dropped instead of stopping every restore, and acks,
    rejects and requeues stop no worker while Redis is out of memory."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        channel = self.channel
        if delivery_tag is not None and delivery_tag == channel._recorded_tag:
            channel._recorded_tag = None
            virtual.QoS.append(self, message, delivery_tag)  # the in-memory part only
            return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def _forget(self, delivery_tag: Any) -> None:
        """Delete the record of a message and its index entry. kombu does it in a MULTI,
        which Redis refuses as a whole while it is out of memory (noeviction), and the error
        stops the worker; the deletions alone are allowed: the record first, so a crash in
        between leaves only an index entry, which the next restore sweep drops."""
        try:
            self._remove_from_indices(delivery_tag).execute()
        except redis.exceptions.ResponseError as exc:
            if not _out_of_memory(exc):
                raise
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                pipe.hdel(self.unacked_key, delivery_tag).zrem(self.unacked_index_key, delivery_tag)
                pipe.execute()

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        # kombu's own, but for a record it cannot decode: the fetch script records what Lua's
        # JSON decoder reads (which takes a few forms Python's refuses); kombu's restore would
        # raise on it at every sweep, before restoring the records after it.
        refused: list[bytes] = []

        def restore_transaction(pipe: Any) -> None:
            p = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if p:
                try:
                    m, ex, rk = loads(bytes_to_str(p))
                except (ValueError, TypeError, RecursionError):
                    refused.append(p if isinstance(p, bytes) else str(p).encode())
                    return
                self.channel._do_restore_message(m, ex, rk, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as client:
            try:
                client.transaction(restore_transaction, self.unacked_key)
            except redis.exceptions.ResponseError as exc:
                # Out of memory, Redis cannot push it back: the record stays, and the sweep
                # restores it after the visibility timeout, as after a crash.
                if not _out_of_memory(exc):
                    raise
                log.warning("Redis is out of memory: message %s stays unacknowledged", tag)
        for raw in refused:
            refuse("(unacked)", raw, "an unacknowledged record that is not kombu's")
