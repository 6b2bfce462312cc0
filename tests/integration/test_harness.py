"""The harness itself: a private redis-server, flush isolation, deadline polling, crash/restart."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import redis

from tests.support import FORBIDDEN_PORT, RedisServer, free_port, no_retry, wait_for

pytestmark = pytest.mark.integration


def test_redis_fixture_is_private_and_answers_ping(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    assert redis_server.port != FORBIDDEN_PORT
    assert redis_client.ping() is True
    assert redis_client.connection_pool.connection_kwargs["port"] == redis_server.port
    assert redis_client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


# Two tests write the same key; whichever runs second must start from an empty database.
@pytest.mark.parametrize("writer", ["first", "second"])
def test_each_test_starts_from_an_empty_database(redis_client: redis.Redis, writer: str) -> None:
    assert redis_client.dbsize() == 0
    assert redis_client.set("harness:isolation", writer, nx=True)


def test_wait_for_returns_the_truthy_value() -> None:
    calls = itertools.count()
    assert wait_for(lambda: next(calls) >= 3 and "done", timeout=5, interval=0.01) == "done"


def test_wait_for_timeout_names_the_condition_and_last_value() -> None:
    with pytest.raises(
        AssertionError, match=r"agent never registered \(waited 0.2s; last value: \[\]\)"
    ):
        wait_for(lambda: [], timeout=0.2, interval=0.01, message="agent never registered")


def test_wait_for_treats_ignored_exceptions_as_not_yet() -> None:
    def refuse() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"last value: ConnectionError\('refused'\)"):
        wait_for(refuse, timeout=0.2, interval=0.01, ignore=(ConnectionError,))
    with pytest.raises(ConnectionError):
        wait_for(refuse, timeout=0.2, interval=0.01)


def test_free_port_never_returns_the_machine_redis_port() -> None:
    assert all(free_port() != FORBIDDEN_PORT for _ in range(20))
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=FORBIDDEN_PORT)


def test_killed_server_restarts_on_the_same_port(tmp_path: Path) -> None:
    with RedisServer(workdir=tmp_path) as server, server.client(retry=no_retry()) as client:
        port = server.port
        client.set("k", "v")
        server.kill()
        assert not server.alive
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.restart()
        assert server.port == port
        # The client reconnects by itself; the data is gone because persistence is off.
        wait_for(client.ping, timeout=5, ignore=(redis.ConnectionError,), message="no PING")
        assert client.get("k") is None


def test_appendonly_server_keeps_data_across_a_crash(tmp_path: Path) -> None:
    with (
        RedisServer(
            workdir=tmp_path, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
        ) as server,
        server.client(decode_responses=True) as client,
    ):
        client.set("k", "v")
        server.kill()
        server.restart()
        assert wait_for(lambda: client.get("k"), ignore=(redis.ConnectionError,)) == "v"
