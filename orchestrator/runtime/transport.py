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

No entry stops a consumer. kombu decodes a popped list entry with a bare `json.loads` and
builds the message by indexing the envelope's fields, both inside the worker's event loop, so
one entry that is not a kombu envelope stops the worker for good ("Unrecoverable error",
celery#4308, kombu#2421). Here every entry is screened where kombu decodes it: the envelope
(orchestrator.security.screen.check_envelope) before kombu builds a message from it, then, through
the
installed Gate (orchestrator.runtime.gate, set up by every worker of this project), the decoded task
message. A refused entry is off its queue already (BRPOP took it; one that was recorded as
unacknowledged is acknowledged), is handed to the gate to keep, and consuming goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from orchestrator.security.screen import check_envelope, excerpt

log = logging.getLogger(__name__)

Push = tuple[str, str]  # (Redis list key, payload)
_captured: ContextVar[list[Push] | None] = ContextVar("orchestrator_captured", default=None)


class Gate(Protocol):
    """What a consuming process lets through, and what it does with what it refuses."""

    #: Entries longer than this are refused before they are decoded (None: no limit).
    max_entry_bytes: int | None

    def screen(self, queue: str, message: Any) -> str | None:
        """None to deliver the kombu message, else the reason to refuse it."""

    def refuse(self, queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
        """Keep (or report) a refused entry; `task_id` is the id header of a refused task
        message, so its sender can be told. Must not raise."""


class LoggingGate:
    """The gate of a process that installed none: envelopes are checked, refusals logged."""

    max_entry_bytes: int | None = None

    def screen(self, queue: str, message: Any) -> str | None:
        return None

    def refuse(self, queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
        log.error("refused an entry of queue %s (%s): %s", queue, reason, excerpt(raw))


_gate: Gate = LoggingGate()


def install_gate(gate: Gate) -> None:
    """Screen every message this process consumes through `gate` (one per process)."""
    global _gate
    _gate = gate


def _refuse(queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
    try:
        _gate.refuse(queue, raw, reason, task_id)
    except Exception as exc:  # keeping it failed: report it, never stop consuming
        log.error("refused an entry of queue %s (%s) and could not keep it: %s", queue, reason, exc)


@contextmanager
def captured_pushes() -> Iterator[list[Push]]:
    """Collect the pushes of the messages published in this block instead of making them."""
    pushes: list[Push] = []
    token = _captured.set(pushes)
    try:
        yield pushes
    finally:
        _captured.reset(token)


class Channel(kombu_redis.Channel):
    #: The synchronous client of `conn_or_acquire`, valid while it wraps `self.pool`.
    _sync_client: Any = None

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
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
        pushes = _captured.get()
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
        limit = _gate.max_entry_bytes
        if limit is not None and len(raw) > limit:
            _refuse(queue, raw, f"entry of {len(raw)} bytes exceeds the limit of {limit}")
            return None
        try:
            payload = loads(bytes_to_str(item))
        except (ValueError, TypeError, RecursionError) as exc:  # (UnicodeDecodeError is one)
            _refuse(queue, raw, f"not JSON ({type(exc).__name__}: {exc})")
            return None
        reason = check_envelope(payload)
        if reason is not None:
            _refuse(queue, raw, reason)
            return None
        self._checked = payload
        return payload

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, but for the entry: screened instead of a bare loads().
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # Disconnect, so the next iteration reconnects (as kombu does).
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            payload = self._admit_entry(queue, item)
            if payload is not None:
                self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _receive_one(self, c: Any) -> Any:
        # A fanout (pub/sub) message: kombu's own catches a JSON error, not a RecursionError.
        try:
            return super()._receive_one(c)
        except RecursionError:
            _refuse("(fanout)", b"", "a fanout message nested past the recursion limit")
            raise Empty() from None

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Callable[[Any], Any], consumer_tag: str, **kw: Any
    ) -> Any:
        def screened(message: Any) -> Any:
            try:
                reason = _gate.screen(queue, message)
            except Exception as exc:
                reason = f"could not be screened ({type(exc).__name__}: {exc})"
            if reason is None:
                return callback(message)
            if not no_ack:  # recorded as unacknowledged on delivery: take it off there
                self.basic_ack(message.delivery_tag)
            headers = message.headers if isinstance(message.headers, dict) else {}
            task_id = headers.get("id")
            raw = dumps(message._raw).encode()
            _refuse(queue, raw, reason, task_id if isinstance(task_id, str) else None)
            return None

        result = super().basic_consume(queue, no_ack, screened, consumer_tag, **kw)
        deliver = self.connection._callbacks[queue]

        def checked(payload: Any) -> Any:
            # Entries of BRPOP were checked as they were popped; fanout ones arrive here.
            if payload is not self._checked:
                reason = check_envelope(payload)
                if reason is not None:
                    _refuse(queue, dumps(payload).encode(), reason)
                    return None
            self._checked = None
            return deliver(payload)

        self.connection._callbacks[queue] = checked
        return result


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The channel above over kombu's Sentinel channel: its pool is the master's, as the
    sentinels name it whenever a connection is made (so a failover is a reconnect)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """For a sentinel-form broker URL (`sentinel://h1:26379;sentinel://h2:26379/0`)."""

    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"

# kombu treats the `;`-separated parts of a broker URL as failover alternates and, switching to
# the next after a connection error, takes the transport from that part's scheme: for
# `sentinel://` kombu's stock one, without the screening above, whose publish inside
# captured_pushes() pushes for real (outside the atomic step) and captures nothing. Found by
# the failover test; the alias keeps every part on this transport, in this project's processes.
TRANSPORT_ALIASES["sentinel"] = SENTINEL_TRANSPORT
