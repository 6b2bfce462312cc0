"""kombu's Redis transport: no crash when Redis restarts under a worker, one client per channel.

When Redis goes away, Celery releases the broker connection and then closes its channel;
closing restores unacknowledged messages, which needs a client, which kombu then builds from
the already released connection: AttributeError ('NoneType' has no 'hostname'), an error no
one expects, so the worker dies ("Unrecoverable error"). Reported here as what it is, a lost
connection, Celery reconnects instead, and the messages come back through the visibility
timeout as they would after any crash.

kombu also builds a new redis.Redis for every publish, ack and event (`conn_or_acquire`), a
few percent of a worker's CPU for an object that only wraps the channel's connection pool and
checks a connection out per command. A channel keeps one and builds another only when kombu
has replaced the pool (after close, disconnect or fork). The asynchronous client is untouched.

Inside `captured_pushes()`, a message published to a queue is not pushed: its list key and
payload (kombu's own envelope, priority list and all) are handed back, so that a Lua step can
push it atomically with the state change it belongs to (the client's accept-route-publish).

A command Redis refuses (out of memory, ...) is not a lost connection: kombu retries it as it
is and then reports it in Redis's words, instead of reconnecting under the publish it belongs
to (`_RefusalIsNotALostConnection`).

No entry stops a consumer. kombu decodes a popped list entry with a bare `json.loads` and
builds the message by indexing the envelope's fields, both inside the worker's event loop, so
one entry that is not a kombu envelope stops the worker for good ("Unrecoverable error",
celery#4308, kombu#2421). Here every entry is screened where kombu decodes it: the envelope
(orchestrator.security.screen.check_envelope) before kombu builds a message from it, then, through
the
installed Gate (orchestrator.runtime.gate, set up by every worker of this project), the decoded task
message. A refused entry is off its queue already (BRPOP took it; one that was recorded as
unacknowledged is acknowledged), is handed to the gate to keep, and consuming goes on.

Taking a message is one Redis step. kombu BRPOPs an entry and records it as unacknowledged
(`unacked`, `unacked_index`) in a second command: a Redis killed in between keeps the pop
and loses the record, and the message is gone without a trace. Here a Lua script
(orchestrator/store/lua/fetch.lua) pops from the consumer's lists in kombu's order and writes
kombu's own record in the same step, so restore_visible brings back every popped message
whose consumer never acknowledged it; kombu's QoS.append then only does its in-memory part.
Lua cannot block, so an idle channel is woken by Redis instead: a fetch that finds every list
empty also reads them (fetch.lua), and the fetching connection has asked Redis to track the
keys it reads (`CLIENT TRACKING ON REDIRECT <id> NOLOOP`, server-assisted client-side caching),
so the first change to any of them afterwards (a push, a restore, a flush) sends one
invalidation message to a second connection of the channel (subscribed to
`__redis__:invalidate`), which the worker's event loop watches beside the fetch; the message
wakes the fetch. Nothing is read while busy (a key is tracked only from an empty fetch to its
next change), and no server setting is changed. A fetch woken again within `fetch_backoff_min`
of an empty one waits that long first (a bound, should invalidations ever come in a stream);
a safety fetch runs every `fetch_idle_poll` seconds all the same, so a lost message costs at
most that. Where Redis refuses tracking (a Redis before 6, an ACL without `client|tracking`
or the channel, a server that lacks it), and without an event loop (drain_events), the idle
channel polls instead: each fetch that finds every list empty waits twice as long as the last
one, from `fetch_backoff_min` up to `fetch_backoff_max` (a refusal is noted once in the log).
All four are transport options (seconds; `fetch_wake=False` polls). A fetch Redis refuses (out of
memory under noeviction: the script takes nothing) is logged once, retried every
`fetch_refused_backoff` seconds, and consuming resumes by itself. Fanout (pub/sub) is
untouched. Relies on kombu's Redis channel internals (`_brpop_start`/`_brpop_read`, the
`handlers` and `_register` of its MultiChannelPoller, which forgets a registration when its
connection disconnects, QoS.append's record), as of kombu 5.7: pyproject.toml pins that
series and tests/unit/test_kombu_internals.py fails when one of them changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from orchestrator.runtime.fetch import (
    FETCH,
    FETCH_SHA,
    INVALIDATE,
    WAKE,
    QoS,
    _load_fetch,
    _noted_refusals,
    _wake,
    _WakeLink,
    wake_delay,
    wake_refusal,
)
from orchestrator.runtime.screening import (
    Gate,
    LoggingGate,
    Push,
    captured,
    captured_pushes,
    gate,
    install_gate,
    refuse,
)
from orchestrator.security.screen import check_envelope, sender_task_id

__all__ = [  # the broker edge's names, some kept in runtime/screening.py
    "SENTINEL_TRANSPORT",
    "TRANSPORT",
    "Channel",
    "Gate",
    "LoggingGate",
    "Push",
    "SentinelTransport",
    "Transport",
    "captured_pushes",
    "install_gate",
    "wake_delay",
    "wake_refusal",
]

log = logging.getLogger(__name__)


class Channel(kombu_redis.Channel):
    QoS = QoS

    #: The synchronous client of `conn_or_acquire`, valid while it wraps `self.pool`.
    _sync_client: Any = None

    # --- the atomic fetch (see the module's docstring) -------------------------------------

    #: Seconds an idle channel waits between fetches: doubling from the least to the most.
    fetch_backoff_min = 0.002
    fetch_backoff_max = 0.02
    #: Seconds between fetches while Redis refuses them (out of memory).
    fetch_refused_backoff = 1.0
    #: Wake the idle fetch on Redis's word (CLIENT TRACKING) instead of polling.
    fetch_wake = True
    #: Seconds between the safety fetches of an idle channel Redis wakes.
    fetch_idle_poll = 1.0

    fetch_options = (
        "fetch_backoff_min",
        "fetch_backoff_max",
        "fetch_refused_backoff",
        "fetch_wake",
        "fetch_idle_poll",
    )
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        *fetch_options,
    )

    #: The delivery tag the fetch script recorded, until QoS.append has seen the message.
    _recorded_tag: Any = None
    #: The current wait, and the monotonic time before which no fetch is sent.
    _backoff = 0.0
    _fetch_after = 0.0
    #: Why Redis refused the last fetch (None while fetches succeed): logged once an episode.
    _refused: str | None = None
    #: The timer of the current wait (cancelled when Redis wakes the fetch sooner).
    _timer: Any = None

    # The wake (see the module's docstring).
    #: The connection invalidation messages come to, while it is up.
    _wake_conn: Any = None
    _wake_pool: Any = None
    #: (fetch socket, wake socket) of the tracking Redis last accepted.
    _tracking: tuple[Any, Any] | None = None
    #: Why Redis refused tracking: the channel polls for good.
    _wake_refused: str | None = None
    #: Before this monotonic time the wake is not set up (an error Redis may get over).
    _wake_retry_at = 0.0
    #: Whether the fetch in flight was sent with tracking on (an empty reply then waits for
    #: Redis's word), whether Redis spoke since it was sent, and when one last found nothing.
    _fetch_armed = False
    _woken = False
    _empty_at = 0.0

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection was already released")
        return super()._connparams(asynchronous=asynchronous)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # `self.pool` builds a pool only where kombu would (none yet, or reset), so the
        # hardening above still applies; the client is reused only over that very pool.
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        pushes = captured()
        if pushes is None or kwargs.get("_publish_batch") is not None:
            return super()._put(queue, message, **kwargs)
        if self._expires and queue in self._expires:
            raise RuntimeError(f"queue {queue!r} expires: its pushes cannot be captured")
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        pushes.append((self.global_keyprefix + key, dumps(message)))
        return None

    # --- screening (see the module's docstring) -------------------------------------------

    #: The last envelope _brpop_read checked, so the delivery callback does not check it again.
    _checked: Any = None

    def _admit_entry(self, queue: str, item: bytes | str) -> Any:
        """The decoded envelope of a popped entry, or None when it was refused."""
        raw = item if isinstance(item, bytes) else item.encode("utf-8", "surrogateescape")
        limit = gate().max_entry_bytes
        if limit is not None and len(raw) > limit:
            refuse(queue, raw, f"entry of {len(raw)} bytes exceeds the limit of {limit}")
            return None
        try:
            payload = loads(bytes_to_str(item))
        except (ValueError, TypeError, RecursionError) as exc:  # (UnicodeDecodeError is one)
            refuse(queue, raw, f"not JSON ({type(exc).__name__}: {exc})")
            return None
        reason = check_envelope(payload)
        if reason is not None:
            refuse(queue, raw, reason)
            return None
        self._checked = payload
        return payload

    # --- the atomic fetch ------------------------------------------------------------------

    #: Queues consumed without acknowledgement: what is taken from them is not recorded.
    _no_ack_queues: frozenset[str] = frozenset()
    #: The fetch script this server runs (the legacy form on a Redis without `#!lua`).
    _fetch_script: tuple[str, str] = (FETCH, FETCH_SHA)

    def _event_loop(self) -> Any:
        """The worker's event loop (kombu's hub) driving this channel, or None (drain_events)."""
        return getattr(self.connection.cycle, "fetch_loop", None)

    def _wait(self, seconds: float) -> None:
        """Send no fetch for `seconds`; a timer makes sure the event loop wakes up then."""
        self._cancel_wait()
        self._fetch_after = time.monotonic() + seconds
        loop = self._event_loop()
        if loop is not None:
            self._timer = loop.call_later(seconds, _wake)

    def _cancel_wait(self) -> None:
        self._fetch_after = 0.0
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _brpop_start(self, timeout: Any = None) -> None:
        # In place of kombu's BRPOP: the fetch script over the same lists, in the same order.
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        loop = self._event_loop()
        wait = self._fetch_after - time.monotonic()
        if wait > 0:
            if loop is not None:
                return  # a timer, or Redis's word, wakes the loop, which calls this again
            time.sleep(wait)
        args = self._fetch_args(tuple(queues))
        connection = self.client.connection
        self._fetch_armed = loop is not None and self._track(connection)
        self._woken = False
        self._in_poll = connection
        self._brpop_sent_at = kombu_redis.monotonic()  # type: ignore[assignment]
        connection.send_command("EVALSHA", self._fetch_script[1], *args[0], time.time(), *args[1])

    # --- the wake (see the module's docstring) ---------------------------------------------

    def _track(self, connection: Any) -> bool:
        """Whether Redis tracks the keys `connection` reads, for the wake connection: asked
        for once per pair of connections (a reconnect of either asks again)."""
        if not self.fetch_wake or self._wake_refused is not None:
            return False
        wake = self._wake_conn
        if (
            wake is not None
            and wake._sock is not None
            and self._tracking == (connection._sock, wake._sock)
        ):
            return True
        if time.monotonic() < self._wake_retry_at:
            return False
        try:
            wake, wake_id = self._wake_connect()
            connection.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", wake_id, "NOLOOP")
            connection.read_response()
        except self.ResponseError as exc:
            self._drop_wake()
            if wake_refusal(exc):
                self._refuse_wake(str(exc))
            else:  # some passing state of the server's: poll a while, then ask again
                self._wake_retry_at = time.monotonic() + self.fetch_refused_backoff
            return False
        self._tracking = (connection._sock, wake._sock)
        return True

    def _wake_connect(self) -> tuple[Any, int]:
        """The wake connection (a new one unless it is up) and its client id."""
        self._drop_wake()
        pool = self.async_pool
        wake = pool.get_connection()
        self._wake_conn, self._wake_pool = wake, pool
        wake.send_command("CLIENT", "ID")
        wake_id = int(wake.read_response())
        # RESP2 needs the subscription to be sent invalidations; RESP3 sends them as pushes.
        wake.send_command("SUBSCRIBE", INVALIDATE)
        wake.read_response(push_request=True)
        self.connection.cycle._register(self, _WakeLink(wake), WAKE)
        return wake, wake_id

    def _drop_wake(self) -> None:
        """Close the wake connection, if any (kombu's poller forgets its registration)."""
        wake, pool = self._wake_conn, self._wake_pool
        self._wake_conn = self._wake_pool = self._tracking = None
        if wake is not None:
            wake.disconnect()
            pool.release(wake)

    def _refuse_wake(self, reason: str) -> None:
        self._wake_refused = reason
        self._drop_wake()
        if reason not in _noted_refusals:
            _noted_refusals.add(reason)
            log.warning(
                "Redis will not wake this worker when messages arrive (%s); idle, it looks "
                "for them every %g s at most instead",
                reason,
                self.fetch_backoff_max,
            )

    def _wake_read(self) -> None:
        """The wake connection is readable: Redis says a list changed (or it closed)."""
        wake = self._wake_conn
        try:
            if wake is None:
                raise redis.ConnectionError("the wake connection is closed")
            wake.read_response(push_request=True)
            while wake.can_read(timeout=0):
                wake.read_response(push_request=True)
        except self.connection_errors:
            # Fetch at once: the next one sets the wake up again, or meets the error itself.
            self._drop_wake()
            self._cancel_wait()
            return
        self._woken = True
        if self._in_poll or self._refused is not None:
            return  # the empty reply in flight sees _woken; a refusal waits its turn
        delay = wake_delay(time.monotonic(), self._empty_at, self.fetch_backoff_min)
        if delay > 0:
            self._wait(delay)
        else:
            self._cancel_wait()

    #: The last fetch's arguments: (queues, no_ack queues) -> (numkeys, KEYS and the record
    #: keys, record flags): `now` goes between the two.
    _fetch_cache: tuple[Any, tuple[list[Any], list[str]]] | None = None

    def _fetch_args(self, queues: tuple[str, ...]) -> tuple[list[Any], list[str]]:
        """The fetch's KEYS (with their count, then the record keys) and its record flags,
        built again only when the queues change: an idle channel fetches dozens of times a
        second."""
        ident = (queues, self._no_ack_queues)
        if self._fetch_cache is not None and self._fetch_cache[0] == ident:
            return self._fetch_cache[1]
        prefix = self.global_keyprefix
        record: dict[str, str] = {}
        for pri in self.priority_steps:
            for queue in queues:
                acked = self.ack_emulation and queue not in self._no_ack_queues
                record.setdefault(prefix + self._q_for_pri(queue, pri), "1" if acked else "0")
        keys = list(record)  # the records' keys go in ARGV (fetch.lua says why)
        records = [prefix + self.unacked_key, prefix + self.unacked_index_key]
        args = ([len(keys), *keys, *records], list(record.values()))
        self._fetch_cache = (ident, args)
        return args

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, for the fetch script's reply, and with the entry screened instead of a
        # bare loads().
        if not self._in_poll:
            # No fetch asked: a push of the server's on the idle connection (RESP3: one that
            # says the wake connection is gone). Read it; the next fetch sets the wake up.
            connection = self.client.connection
            while connection.can_read(timeout=0):
                connection.read_response(push_request=True)
            raise Empty()
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.connection_errors:
                # Disconnect, so the next iteration reconnects (as kombu does).
                self.client.connection.disconnect()
                raise
            except self.ResponseError as exc:
                self._fetch_failed(exc)
                raise Empty() from None
            if self._refused is not None:
                log.warning("Redis hands out messages again (it refused: %s)", self._refused)
                self._refused = None
            if not reply:
                self._empty_at = time.monotonic()
                if not self._fetch_armed:
                    self._backoff = min(
                        self.fetch_backoff_max, max(self.fetch_backoff_min, 2 * self._backoff)
                    )
                    self._wait(self._backoff)
                elif self._woken:  # Redis spoke while this fetch was on its way
                    self._wait(self.fetch_backoff_min)
                else:
                    self._wait(self.fetch_idle_poll)
                raise Empty()
            self._backoff = 0.0
            key, item, recorded = reply
            dest = bytes_to_str(key)[len(self.global_keyprefix) :]
            queue = dest.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            tag = bytes_to_str(recorded) or None
            payload = self._admit_entry(queue, item)
            if tag is not None and (
                payload is None or payload["properties"]["delivery_tag"] != tag
            ):
                # Refused (or read differently here than in Lua): not delivered under that tag.
                self.qos._remove_from_indices(tag).execute()
                tag = None
            if payload is not None:
                self._recorded_tag = tag
                try:
                    self.connection._deliver(payload, queue)
                finally:
                    self._recorded_tag = None
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _fetch_failed(self, exc: Exception) -> None:
        """A fetch Redis answered with an error: it took nothing. Load the script it does not
        know (after a restart), or wait and try again (out of memory, ...)."""
        if isinstance(exc, redis.exceptions.NoScriptError):
            try:
                with self.conn_or_acquire() as client:
                    self._fetch_script = _load_fetch(client)
                return  # the next tick fetches again at once
            except self.ResponseError as load_exc:
                exc = load_exc
        reason = str(exc)
        if self._refused is None:
            log.warning(
                "Redis refused to hand out messages (%s); trying again every %g s",
                reason,
                self.fetch_refused_backoff,
            )
        self._refused = reason
        self._wait(self.fetch_refused_backoff)

    def close(self) -> None:
        self._cancel_wait()
        self._drop_wake()
        super().close()

    def _receive_one(self, c: Any) -> Any:
        # A fanout (pub/sub) message: kombu's own catches a JSON error, not a RecursionError.
        try:
            return super()._receive_one(c)
        except RecursionError:
            refuse("(fanout)", b"", "a fanout message nested past the recursion limit")
            raise Empty() from None

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Callable[[Any], Any], consumer_tag: str, **kw: Any
    ) -> Any:
        def screened(message: Any) -> Any:
            try:
                reason = gate().screen(queue, message)
            except Exception as exc:
                reason = f"could not be screened ({type(exc).__name__}: {exc})"
            if reason is None:
                return callback(message)
            if not no_ack:  # recorded as unacknowledged on delivery: take it off there
                self.basic_ack(message.delivery_tag)
            task_id = sender_task_id(message.headers, message.content_type, message.body)
            refuse(queue, dumps(message._raw).encode(), reason, task_id)
            return None

        if no_ack:
            self._no_ack_queues |= {queue}
        else:
            self._no_ack_queues -= {queue}
        result = super().basic_consume(queue, no_ack, screened, consumer_tag, **kw)
        deliver = self.connection._callbacks[queue]

        def checked(payload: Any) -> Any:
            # Entries of BRPOP were checked as they were popped; fanout ones arrive here.
            if payload is not self._checked:
                reason = check_envelope(payload)
                if reason is not None:
                    refuse(queue, dumps(payload).encode(), reason)
                    return None
            self._checked = None
            return deliver(payload)

        self.connection._callbacks[queue] = checked
        return result


class _Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, and the channels' wake connections: read whenever they are readable
    (kombu reads a channel's sockets only while it may consume; an unread socket would keep
    the event loop spinning)."""

    def on_readable(self, fileno: int) -> None:
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is not None and chan_type[1] == WAKE:
            chan_type[0]._wake_read()
            return
        super().on_readable(fileno)


class _FetchLoop:
    """Keeps the event loop a connection is registered with, for the fetch's waits; polls
    the channels' wake connections too."""

    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = _Poller()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[misc]
        self.cycle.fetch_loop = loop


class _RefusalIsNotALostConnection:
    """Which Redis errors are a lost connection, for kombu's retries (Connection.ensure).

    kombu's Redis transport does not say, so kombu takes every error, a command Redis refused
    (its error reply: out of memory, NOPERM, ...) included, for a lost connection: it releases
    the connection, connects again and retries the publish. The publish first declares its
    queue (a write, refused too by a full Redis) under a retry of its own, which on that
    refusal releases the connection the publish is running on and connects again; when the
    declare then succeeds, the publish goes on over its released channel ("the broker
    connection was already released") in place of the refusal. Here only errors of the
    connection are (kombu reconnects for them, as before); an error reply is retried as it
    is, on the same connection, and once the retries are spent it is what the caller gets, in
    Redis's words (a full Redis: `maxmemory`)."""

    recoverable_connection_errors = kombu_redis.Transport.connection_errors
    recoverable_channel_errors = kombu_redis.Transport.channel_errors


class Transport(_RefusalIsNotALostConnection, _FetchLoop, kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The channel above over kombu's Sentinel channel: its pool is the master's, as the
    sentinels name it whenever a connection is made (so a failover is a reconnect)."""

    # Both parents' options: the fetch's (Channel) and the sentinels' (master_name, ...),
    # which the first parent's tuple alone would hide.
    from_transport_options = (  # type: ignore[assignment]
        *Channel.from_transport_options,
        *(
            name
            for name in kombu_redis.SentinelChannel.from_transport_options
            if name not in Channel.from_transport_options
        ),
    )


class SentinelTransport(_RefusalIsNotALostConnection, _FetchLoop, kombu_redis.SentinelTransport):
    """For a sentinel-form broker URL (`sentinel://h1:26379;sentinel://h2:26379/0`)."""

    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"


# kombu treats the `;`-separated parts of a broker URL as failover alternates and, switching to
# the next after a connection error, takes the transport from that part's scheme: for
# `sentinel://` kombu's stock one, without the screening above, whose publish inside
# captured_pushes() pushes for real (outside the atomic step) and captures nothing. Found by
# the failover test; the alias keeps every part on this transport. kombu's alias table is one per
# process, so the app factory sets it (importing this module changes nothing in kombu).
def alias_sentinel_scheme() -> None:
    """Resolve `sentinel://` URL parts to this project's SentinelTransport (idempotent)."""
    TRANSPORT_ALIASES["sentinel"] = SENTINEL_TRANSPORT
