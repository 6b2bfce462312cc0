"""Cluster fixtures: a control worker and agents, each a real `celery worker` process.

`start_control` / `start_agent` start a test's own processes on the session Redis. `shared`
hands a test a cluster started once for its module (see `shared_cluster`), for tests that
only submit work and read results, the ledger or the CLI.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.models import OrchestrationEvent
from orchestrator.store.event_log import entry_order
from orchestrator.store.keys import COUNTERS, EVENT_STREAMS
from tests.conftest import CELERY_PROCS_KEY
from tests.support import (
    FORBIDDEN_PORT,
    CeleryProcess,
    RedisServer,
    wait_for,
    worker_environ,
)

WORKER_FLAGS = ["--without-gossip", "--without-mingle", "-l", "info"]
#: Every loop beat schedules, each second.
LOOP_INTERVALS = {
    "ORCH_ALERT_EVALUATION_INTERVAL": "1",
    "ORCH_SLA_MONITORING_INTERVAL": "1",
    "ORCH_SECURITY_MONITORING_INTERVAL": "1",
    "ORCH_ANOMALY_DETECTION_INTERVAL": "1",
    "ORCH_PERFORMANCE_OPTIMIZATION_INTERVAL": "1",
}
#: And backups every 1.8 s, beat ticking each second.
FAST_LOOPS = {
    **LOOP_INTERVALS,
    "ORCH_BACKUP_INTERVAL_HOURS": "0.0005",
    "ORCH_BEAT_MAX_INTERVAL_S": "1",
    "ORCH_BEAT_LOCK_TIMEOUT_S": "3",
}


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


# --- a cluster shared by a module --------------------------------------------------------

#: Set on an item whose setup, call or teardown failed: the shared cluster it used may hold
#: leftovers (a task still running, a queue not drained), so the next test gets a fresh one.
_FAILED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED_KEY] = True
    return report


@dataclass
class SharedCluster:
    """One control worker and the agents a module declares, on a redis-server of its own.

    A module declares its agents as `SHARED_AGENTS = {agent_id: capabilities}` (or
    `{agent_id: (capabilities, concurrency)}`; concurrency 1 by default) and may set
    `SHARED_CONTROL_CONCURRENCY` (2 by default). The command lines are start_control's and
    start_agent's, the environment orch_env's.
    """

    server: RedisServer
    agents: Mapping[str, tuple[str, int]]
    control_concurrency: int
    log_root: Path
    procs: list[CeleryProcess] = field(default_factory=list)
    generation: int = 0
    #: A test failed on it, or left a process dead: the next test restarts it.
    dirty: bool = False

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def env(self) -> dict[str, str]:
        return worker_environ(self.url)

    @property
    def alive(self) -> bool:
        return self.server.alive and bool(self.procs) and all(p.alive for p in self.procs)

    def proc(self, name: str) -> CeleryProcess:
        return next(p for p in self.procs if p.name == name)

    def start(self) -> None:
        """Start every process at once, then wait until each agent is registered and all are
        ready. Each start logs to a directory of its own, so a failed test's report shows the
        logs of the processes it ran with."""
        assert self.server.port != FORBIDDEN_PORT, "refusing to run on the machine's own Redis"
        self.generation += 1
        log_dir = self.log_root / f"run{self.generation}"
        env = self.env
        self.procs = [
            CeleryProcess(
                control_args(self.control_concurrency), env, name="control", log_dir=log_dir
            ).start()
        ]
        for agent_id, (capabilities, concurrency) in self.agents.items():
            agent_env = {
                **env,
                "ORCH_AGENT_ID": agent_id,
                "ORCH_AGENT_CAPABILITIES": capabilities,
                "ORCH_HANDLERS": "tests.handlers",
            }
            proc = CeleryProcess(
                agent_args(agent_id, concurrency), agent_env, name=agent_id, log_dir=log_dir
            )
            self.procs.append(proc.start())
        with self.server.client(decode_responses=True) as r:
            for agent_id in self.agents:
                wait_for(
                    lambda agent_id=agent_id: r.hexists("orch:agents", agent_id),
                    timeout=60,
                    message=f"agent {agent_id} never registered",
                )
        for proc in self.procs:
            proc.wait_for_log("ready.", timeout=60)

    def kill(self) -> None:
        for proc in self.procs:
            proc.kill()

    def restart(self) -> None:
        """Kill every process, empty the module's server (its own, nobody else's) and start
        again: what the next test gets after one left the cluster unusable."""
        self.kill()
        if not self.server.alive:
            self.server.restart()
        with self.server.client() as admin:
            admin.flushall()
        self.start()


def _declared_agents(module: Any) -> dict[str, tuple[str, int]]:
    declared = getattr(module, "SHARED_AGENTS", None)
    if not declared:
        raise pytest.UsageError(f"{module.__name__} uses `shared` but declares no SHARED_AGENTS")
    return {
        agent_id: (spec, 1) if isinstance(spec, str) else (spec[0], int(spec[1]))
        for agent_id, spec in declared.items()
    }


@pytest.fixture(scope="module")
def shared_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedCluster]:
    """The module's cluster, started at its first `shared` test, killed at the module's end.

    Its redis-server is its own, never the session one: `redis_url` flushes that before every
    test, which would take the agents' registrations and kombu's bindings from under them.
    """
    root = tmp_path_factory.mktemp("shared-cluster")
    server = RedisServer(workdir=root / "redis").start()
    cluster = SharedCluster(
        server=server,
        agents=_declared_agents(request.module),
        control_concurrency=int(getattr(request.module, "SHARED_CONTROL_CONCURRENCY", 2)),
        log_root=root / "celery",
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
        server.close()


@dataclass
class Shared:
    """What a test on the module's cluster gets: a client, a redis client, URL and env.

    Other tests' tasks ran on the same server before this one, so whatever accumulates there
    (the events stream, the counters) is read from where this test began: `events()` and
    `counter()`.
    """

    cluster: SharedCluster
    client: OrchestratorClient
    redis: redis.Redis
    url: str
    env: dict[str, str]
    events_after: str
    counters_before: dict[str, str]

    def events(self, types: tuple[str, ...] = ()) -> list[OrchestrationEvent]:
        """The events announced since this test began, oldest first."""
        return self.client.store.read_events(since_id=self.events_after, types=types)

    def counter(self, name: str) -> int:
        """How much `orch:counters` field `name` grew since this test began."""
        now = int(self.redis.hget(COUNTERS, name) or 0)
        return now - int(self.counters_before.get(name, 0))

    def proc(self, name: str) -> CeleryProcess:
        return self.cluster.proc(name)


@pytest.fixture
def shared(request: pytest.FixtureRequest, shared_cluster: SharedCluster) -> Iterator[Shared]:
    """The module's cluster for one test; a fresh one if a process of it died or the test
    before failed on it. Its processes' logs go in this test's failure report."""
    if shared_cluster.dirty or not shared_cluster.alive:
        shared_cluster.restart()
        shared_cluster.dirty = False
    request.node.stash.setdefault(CELERY_PROCS_KEY, []).extend(shared_cluster.procs)
    r = redis.Redis.from_url(shared_cluster.url, decode_responses=True)
    # The newest entry of either event stream: what the test reads comes after it.
    newest = [e[0][0] for e in (r.xrevrange(s, count=1) for s in EVENT_STREAMS) if e]
    try:
        with OrchestratorClient(settings=load_settings(redis_url=shared_cluster.url)) as client:
            yield Shared(
                cluster=shared_cluster,
                client=client,
                redis=r,
                url=shared_cluster.url,
                env=shared_cluster.env,
                events_after=f"({max(newest, key=entry_order)}" if newest else "-",
                counters_before=r.hgetall(COUNTERS),
            )
    finally:
        r.close()
        if request.node.stash.get(_FAILED_KEY, False) or not shared_cluster.alive:
            shared_cluster.dirty = True
        gc.collect()
