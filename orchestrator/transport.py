"""kombu's Redis transport, hardened where Redis restarting under it crashes a worker.

When Redis goes away, Celery releases the broker connection and then closes its channel;
closing restores unacknowledged messages, which needs a client, which kombu then builds from
the already released connection: AttributeError ('NoneType' has no 'hostname'), an error no
one expects, so the worker dies ("Unrecoverable error"). Reported here as what it is, a lost
connection, Celery reconnects instead, and the messages come back through the visibility
timeout as they would after any crash.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was already released")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
