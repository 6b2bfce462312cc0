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
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


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


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
