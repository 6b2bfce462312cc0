"""runtime.transport against a real redis-server: the kombu Redis transport, hardened.

One synchronous client per channel pool, rebuilt when kombu replaces the pool, the
released-connection hardening still in force, and publishes captured for a Lua step to push."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from orchestrator.runtime.transport import TRANSPORT, Channel, captured_pushes
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    conn = Connection(redis_url, transport=TRANSPORT)
    try:
        yield conn
    finally:
        conn.release()


@pytest.fixture
def channel(connection: Connection) -> Channel:
    chan = connection.default_channel
    assert isinstance(chan, Channel)
    return chan


def record_clients(channel: Channel) -> list[Any]:
    """Every client the channel builds from now on (sync and async), in order.

    Instrumentation, not a stub: the real class still builds the real clients."""
    built: list[Any] = []
    make = channel.Client

    def counting(**kwargs: Any) -> Any:
        client = make(**kwargs)
        built.append(client)
        return client

    channel.Client = counting
    return built


def drain_until(conn: Connection, done: Callable[[], bool], timeout: float = 3.0) -> None:
    def step() -> bool:
        if not done():
            with contextlib.suppress(TimeoutError):  # socket.timeout: nothing arrived
                conn.drain_events(timeout=0.05)
        return done()

    wait_for(step, timeout=timeout, interval=0, message="messages not consumed")


def pattern_subscribers(redis_client: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in redis_client.client_list() if int(c.get("psub", 0))]


def sync_client(channel: Channel) -> Any:
    with channel.conn_or_acquire() as client:
        return client


def test_one_client_serves_publishes_acks_and_fanout(connection, channel, redis_client):
    """Queue and fanout messages flow, and after the first publish no synchronous client is
    built again: publishes, acks and fanout PUBLISHes all reuse the one over `channel.pool`,
    which holds no connection between commands."""
    direct = Queue("t.direct", Exchange("t.direct", type="direct"), routing_key="t.direct")
    fanout = Exchange("t.fan", type="fanout")
    received: list[tuple[str, Any]] = []

    def on_message(body: Any, message: Message) -> None:
        received.append((message.delivery_info["exchange"], body))
        message.ack()

    # kombu delivers a fanout message once per subscribed channel: one fanout queue each.
    other = connection.channel()
    Consumer(channel, [direct, Queue("t.fan.a", fanout)], callbacks=[on_message]).consume()
    Consumer(other, [Queue("t.fan.b", fanout)], callbacks=[on_message]).consume()
    producer = Producer(channel)
    producer.publish("warm-up", exchange=direct.exchange, routing_key="t.direct")
    drain_until(connection, lambda: len(received) == 1)
    # Fanout messages reach only subscribers, and kombu subscribes while draining.
    drain_until(connection, lambda: len(pattern_subscribers(redis_client)) == 2)

    client = sync_client(channel)
    assert client is sync_client(channel)
    assert client.connection_pool is channel.pool
    built = record_clients(channel)

    for i in range(20):
        producer.publish(i, exchange=direct.exchange, routing_key="t.direct")
        producer.publish(-i, exchange=fanout)
    drain_until(connection, lambda: len(received) == 1 + 20 + 2 * 20)

    assert sorted(b for e, b in received if e == "t.direct" and b != "warm-up") == list(range(20))
    assert sorted(b for e, b in received if e == "t.fan") == sorted([-i for i in range(20)] * 2)
    assert [c for c in built if c.connection_pool is channel.pool] == []
    assert sync_client(channel) is client
    assert not channel.pool._in_use_connections
    # Acked: nothing left in kombu's unacked hash to be restored later.
    assert redis_client.hlen("unacked") == 0


@pytest.mark.parametrize("reset", ["disconnect_pools", "pool_none", "other_pool"])
def test_new_pool_gets_new_client(reset, channel):
    """When kombu resets the pool (disconnect, fork, close: `_disconnect_pools`), or it is
    otherwise replaced, the next client wraps the new pool and messages still flow."""
    queue = Queue("t.reset", Exchange("t.reset"), routing_key="t.reset")(channel)
    queue.declare()
    Producer(channel).publish("before", exchange=queue.exchange, routing_key="t.reset")
    old_client, old_pool = sync_client(channel), channel.pool

    if reset == "disconnect_pools":
        channel._disconnect_pools()
    elif reset == "pool_none":
        channel._pool = None
    else:
        channel._pool = channel._get_pool()

    new_client = sync_client(channel)
    assert new_client is not old_client
    assert new_client.connection_pool is channel.pool is not old_pool
    assert sync_client(channel) is new_client

    Producer(channel).publish("after", exchange=queue.exchange, routing_key="t.reset")
    bodies = []
    while (message := queue.get(no_ack=True)) is not None:
        bodies.append(message.payload)
    assert bodies == ["before", "after"]
    assert sync_client(channel) is new_client
    assert not old_pool._in_use_connections
    old_pool.disconnect()  # kombu did (disconnect_pools) or no one will (the replaced pool)


def test_new_channel_after_close_has_its_own_client(connection, channel):
    """Closing a channel drops its pool; a channel opened afterwards builds its own client."""
    queue = Queue("t.close", Exchange("t.close"), routing_key="t.close")
    Producer(channel).publish(
        "one", exchange=queue.exchange, routing_key="t.close", declare=[queue]
    )
    old_client = sync_client(channel)
    channel.close()

    with connection.channel() as fresh:
        assert isinstance(fresh, Channel)
        client = sync_client(fresh)
        assert client is not old_client
        assert client.connection_pool is fresh.pool
        Producer(fresh).publish("two", exchange=queue.exchange, routing_key="t.close")
        bound = queue(fresh)
        assert [bound.get(no_ack=True).payload for _ in range(2)] == ["one", "two"]
        assert sync_client(fresh) is client


def test_closing_after_release_raises_connection_error(connection, channel, redis_client):
    """Celery releases the broker connection before closing the channel: restoring the unacked
    message must fail as a lost connection (not kombu's AttributeError, and not through the
    client reused from before the release), leaving the message for the visibility timeout."""
    queue = Queue("t.release", Exchange("t.release"), routing_key="t.release")
    Producer(channel).publish(
        "held", exchange=queue.exchange, routing_key="t.release", declare=[queue]
    )
    message = queue(channel).get(no_ack=False)
    assert message is not None and message.payload == "held"
    assert sync_client(channel).connection_pool is channel.pool

    channel.connection.client = None  # what kombu's Connection.release() does to the transport
    with pytest.raises(redis.ConnectionError, match="already released"):
        channel.close()

    assert redis_client.hlen("unacked") == 1
    assert redis_client.llen("t.release") == 0


def test_captured_publishes_are_handed_back_not_pushed(connection, channel, redis_client):
    """Inside captured_pushes a message is not pushed: its priority list key and kombu's own
    envelope come back, and pushing that payload later delivers the message unchanged."""
    queue = Queue("t.cap", Exchange("t.cap", type="direct"), routing_key="t.cap")
    producer = Producer(channel)
    producer.publish("declare", exchange=queue.exchange, routing_key="t.cap", declare=[queue])
    assert queue(channel).get(no_ack=True).payload == "declare"

    with captured_pushes() as pushes:
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="t.cap", priority=6)
    assert [key for key, _ in pushes] == [channel._q_for_pri("t.cap", 6)]
    assert not [k for k in redis_client.keys("t.cap*") if redis_client.llen(k)]

    redis_client.lpush(*pushes[0])
    message = queue(channel).get(no_ack=True)
    assert message is not None and message.payload == {"n": 1}
    assert message.properties["priority"] == 6
    # Outside the block, publishing pushes again.
    producer.publish("after", exchange=queue.exchange, routing_key="t.cap")
    assert queue(channel).get(no_ack=True).payload == "after"
