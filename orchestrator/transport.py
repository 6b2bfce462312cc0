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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

Push = tuple[str, str]  # (Redis list key, payload)
_captured: ContextVar[list[Push] | None] = ContextVar("orchestrator_captured", default=None)


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


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
