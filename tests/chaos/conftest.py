"""Chaos fixtures: a cluster on the flushed session Redis, or on a private AOF Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from tests.chaos.cluster import Cluster, chaos_env
from tests.support import RedisServer


@pytest.fixture
def chaos_client(redis_url: str) -> Iterator[OrchestratorClient]:
    """Submits through `orchestrator.submit`, so the control workers route: the faults hit
    the by-name path (the client's local routing is what the Redis-crash scenario uses)."""
    settings = load_settings(redis_url=redis_url)
    with OrchestratorClient(settings=settings, route_locally=False) as client:
        yield client


@pytest.fixture
def cluster(celery_procs, redis_url: str, redis_client: redis.Redis) -> Cluster:
    """A cluster on the session Redis (flushed for this test); every process it starts is
    stopped at teardown and its log attached to a failure report by tests/conftest.py."""
    return Cluster(
        lambda args, env, name: celery_procs(args, env, name=name),
        chaos_env(redis_url),
        redis_client,
    )


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with AOF `everysec`, as production runs it, for the crash
    scenario. Requested before `celery_procs`, so it is stopped after the workers are."""
    workdir = tmp_path / "aof-redis"
    workdir.mkdir()
    server = RedisServer(
        workdir=workdir,
        extra_args=["--appendonly", "yes", "--appendfsync", "everysec"],
    ).start()
    try:
        yield server
    finally:
        server.close()
