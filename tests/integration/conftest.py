"""Cluster fixtures: a control worker and agents, each a real `celery worker` process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from tests.support import CeleryProcess, wait_for

WORKER_FLAGS = ["--without-gossip", "--without-mingle", "-l", "info"]


def control_args(concurrency: int = 2, name: str = "control") -> list[str]:
    return ["worker", "-n", f"{name}@%h", "-c", str(concurrency), "-P", "prefork", *WORKER_FLAGS]


def agent_args(agent_id: str, concurrency: int = 1) -> list[str]:
    return [
        "worker",
        "-n",
        f"{agent_id}@%h",
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        *WORKER_FLAGS,
    ]


@pytest.fixture
def start_control(celery_procs, orch_env) -> Callable[..., CeleryProcess]:
    def start(
        concurrency: int = 2, name: str = "control", wait: bool = True, **env: str
    ) -> CeleryProcess:
        proc = celery_procs(control_args(concurrency, name), {**orch_env, **env}, name=name)
        if wait:
            proc.wait_for_log("ready.", timeout=60)
        return proc

    return start


@pytest.fixture
def start_agent(celery_procs, orch_env, redis_client) -> Callable[..., CeleryProcess]:
    """Start an agent worker and wait until it has registered itself in Redis."""

    def start(
        agent_id: str,
        capabilities: str,
        concurrency: int = 1,
        wait: bool = True,
        handlers: str = "tests.handlers",
        **env: str,
    ) -> CeleryProcess:
        proc = celery_procs(
            agent_args(agent_id, concurrency),
            {
                **orch_env,
                "ORCH_AGENT_ID": agent_id,
                "ORCH_AGENT_CAPABILITIES": capabilities,
                "ORCH_HANDLERS": handlers,
                **env,
            },
            name=agent_id,
        )
        if wait:
            wait_for(
                lambda: redis_client.hexists("orch:agents", agent_id),
                timeout=60,
                message=f"agent {agent_id} never registered",
            )
            proc.wait_for_log("ready.", timeout=60)
        return proc

    return start


@pytest.fixture
def client(redis_url: str) -> Iterator[OrchestratorClient]:
    settings = load_settings(redis_url=redis_url)
    with OrchestratorClient(settings=settings) as c:
        yield c


def ledger(redis_client: redis.Redis, task_id: str) -> dict[str, Any]:
    return redis_client.hgetall(f"orch:task:{task_id}")


@pytest.fixture
def durable_redis(redis_server) -> Iterator[None]:
    """The session Redis with an AOF for one test, for tests that count the security loop's
    findings: without it, its own configuration is one more (`redis_no_aof`)."""
    with redis_server.client() as admin:
        admin.config_set("appendonly", "yes")
    yield
    if redis_server.alive:
        with redis_server.client() as admin:
            admin.config_set("appendonly", "no")
