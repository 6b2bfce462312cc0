"""ORCH_SUBMIT_WAIT_REPLICAS on a real primary and replica: a confirmed submission is on both.

With the replica stalled (DEBUG SLEEP), a submission returns only once the replica has caught
up, so the replica holds the ledger entry the moment `submit` returns; with no replica at all
WAIT falls short, the submission still stands on the primary, the shortfall is counted and
logged, and the next submissions do not wait while WAIT rests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from tests.support import RedisServer, no_retry, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    # The primary serves the replica's first sync at once (Redis waits 5 s by default for
    # more replicas to share a diskless sync).
    with RedisServer(extra_args=["--repl-diskless-sync-delay", "0"]) as primary:
        replica = RedisServer(
            extra_args=[
                "--replicaof",
                "127.0.0.1",
                str(primary.port),
                "--enable-debug-command",
                "local",
            ]
        )
        with replica, replica.client(decode_responses=True) as r:
            wait_for(lambda: r.info("replication")["master_link_status"] == "up", timeout=20)
            yield primary, replica


def client_of(primary: RedisServer, wait_ms: int) -> OrchestratorClient:
    settings = load_settings(redis_url=primary.url, submit_wait_replicas=1, submit_wait_ms=wait_ms)
    return OrchestratorClient(settings=settings)


def asleep(server: RedisServer) -> bool:
    with server.client(socket_timeout=0.2, retry=no_retry()) as probe:
        try:
            probe.ping()
        except redis.TimeoutError:
            return True
    return False


def test_a_submission_is_confirmed_only_once_the_replica_has_it(pair) -> None:
    primary, replica = pair
    with client_of(primary, wait_ms=10_000) as client, replica.client() as r:
        stalled = threading.Thread(target=lambda: r.execute_command("DEBUG", "SLEEP", "3"))
        stalled.start()
        wait_for(lambda: asleep(replica), timeout=5)
        submitting = threading.Thread(
            target=lambda: client.submit("echo", {}, task_id="w-1")  # no agent: parked
        )
        submitting.start()
        submitting.join(0.5)
        assert submitting.is_alive() and asleep(replica), "not confirmed while the replica sleeps"
        stalled.join()
        submitting.join(10)
        assert not submitting.is_alive()
        with replica.client(decode_responses=True) as check:
            assert check.hget("orch:task:w-1", "state") == "parked"
        assert client.store.unreplicated == 0


def test_without_a_replica_the_shortfall_is_counted_and_waiting_rests(
    pair, caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = pair
    replica.stop()
    with client_of(primary, wait_ms=50) as client, primary.client(decode_responses=True) as r:
        wait_for(lambda: r.info("replication")["connected_slaves"] == 0, timeout=20)
        client.submit("echo", {}, task_id="w-2")
        assert r.hget("orch:task:w-2", "state") == "parked", "the submission stands"
        assert client.store.unreplicated == 1
        assert "reached 0 of 1 replicas within 50 ms" in caplog.text
        client.submit("echo", {}, task_id="w-3")
        assert client.store.unreplicated == 1, "WAIT rests after a shortfall"


def test_the_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="ORCH_SUBMIT_WAIT_REPLICAS"):
        load_settings(submit_wait_replicas=-1)
