"""A whole orchestrator cluster from real processes, for chaos tests and the chaos bench.

The integration fixtures (`start_control`, `start_agent`) are bound to the session Redis; chaos
scenarios also run against a Redis of their own (the AOF crash) and the bench runs outside
pytest, so this module takes the environment and a process spawner as arguments instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from orchestrator.store.keys import AGENTS
from tests.support import REPO_ROOT, CeleryProcess, hermetic_environ, wait_for

WORKER_FLAGS = ["--without-gossip", "--without-mingle", "-l", "info"]

#: Timings that make loss detection and recovery take seconds, not minutes. The monitor
#: interval is read by the lead's `orchestrator.recovery.monitor`; unknown ORCH_* variables
#: are ignored by Settings, so setting it before that lands is harmless.
CHAOS_TIMINGS = {
    "ORCH_AGENT_HEARTBEAT_INTERVAL_S": "1",
    "ORCH_AGENT_TIMEOUT_S": "4",
    "ORCH_RECOVERY_MONITOR_INTERVAL_S": "1",
    "ORCH_PARKED_SWEEP_INTERVAL_S": "1",
    # What a dead control worker held comes back after this (production default: 60 s).
    "ORCH_VISIBILITY_TIMEOUT_S": "10",
    "ORCH_RETRY_MAX_DELAY_S": "5",
    "ORCH_OUTBOX_RESEND_S": "10",
}

Spawn = Callable[[Sequence[str], Mapping[str, str], str], CeleryProcess]


def chaos_env(redis_url: str, **extra: str) -> dict[str, str]:
    """A hermetic child environment (no inherited ORCH_*) on `redis_url`, chaos timings on."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return hermetic_environ(
        {
            "ORCH_REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": pythonpath,
            **CHAOS_TIMINGS,
            **extra,
        }
    )


def worker_args(name: str, concurrency: int) -> list[str]:
    return ["worker", "-n", f"{name}@%h", "-c", str(concurrency), "-P", "prefork", *WORKER_FLAGS]


class ProcessSet:
    """A spawner that remembers what it started, for code outside pytest (the bench)."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self.procs: list[CeleryProcess] = []

    def __call__(self, args: Sequence[str], env: Mapping[str, str], name: str) -> CeleryProcess:
        proc = CeleryProcess(args, env, name=name, log_dir=self.log_dir)
        self.procs.append(proc)
        return proc.start()

    def kill_all(self) -> None:
        """SIGKILL every live group at once: for Ctrl-C, when nobody wants to wait for warm
        stops. Processes already reaped are left alone (their group was swept when reaped)."""
        for proc in self.procs:
            if proc.alive:
                proc.kill()


class Cluster:
    """Starts control workers, agents and beat on one Redis, and tells when they are up."""

    def __init__(self, spawn: Spawn, env: Mapping[str, str], redis_client: redis.Redis) -> None:
        self.spawn = spawn
        self.env = dict(env)
        self.r = redis_client
        self.agents: dict[str, CeleryProcess] = {}
        self.controls: dict[str, CeleryProcess] = {}
        self._beats = 0

    def control(
        self, name: str = "control", concurrency: int = 2, wait: bool = True, **env: str
    ) -> CeleryProcess:
        proc = self.spawn(worker_args(name, concurrency), {**self.env, **env}, name)
        self.controls[name] = proc
        if wait:
            proc.wait_for_log("ready.", timeout=60)
        return proc

    def agent(
        self,
        agent_id: str,
        capabilities: str,
        concurrency: int = 1,
        wait: bool = True,
        **env: str,
    ) -> CeleryProcess:
        proc = self.spawn(
            worker_args(agent_id, concurrency),
            {
                **self.env,
                "ORCH_AGENT_ID": agent_id,
                "ORCH_AGENT_CAPABILITIES": capabilities,
                "ORCH_HANDLERS": "tests.handlers",
                **env,
            },
            agent_id,
        )
        self.agents[agent_id] = proc
        if wait:
            self.wait_ready([agent_id])
        return proc

    def beat(self, schedule_dir: str | os.PathLike[str], **env: str) -> CeleryProcess:
        """Celery beat (the periodic recovery monitor and the parked sweep need it)."""
        self._beats += 1
        schedule = Path(schedule_dir) / f"beat-schedule-{self._beats}"
        args = ["beat", "-l", "info", "--schedule", str(schedule)]
        return self.spawn(args, {**self.env, **env}, f"beat-{self._beats}")

    def wait_ready(self, agent_ids: Iterable[str], timeout: float = 60.0) -> None:
        """Every agent registered in Redis and its worker ready to consume."""
        agent_ids = list(agent_ids)
        wait_for(
            lambda: all(self.r.hexists(AGENTS, a) for a in agent_ids),
            timeout=timeout,
            message=f"agents {agent_ids} never all registered",
        )
        for agent_id in agent_ids:
            self.agents[agent_id].wait_for_log("ready.", timeout=timeout)

    def wait_controls_ready(self, timeout: float = 60.0) -> None:
        for proc in self.controls.values():
            proc.wait_for_log("ready.", timeout=timeout)

    def logs_mentioning(self, needle: str, limit: int = 5) -> list[str]:
        """Log lines (any process) containing `needle`: evidence for a report."""
        found = []
        for proc in [*self.controls.values(), *self.agents.values()]:
            for line in proc.log_text().splitlines():
                if needle in line:
                    found.append(f"[{proc.name}] {line.strip()[:300]}")
                    if len(found) >= limit:
                        return found
        return found


def submit_chaos(
    client: Any, prefix: str, count: int, seconds: float = 0.1, start: int = 0, **fields: Any
) -> list[str]:
    """Submit `count` `chaos` tasks whose ids (and counter keys) are `<prefix>-<n>`."""
    ids = []
    for n in range(start, start + count):
        task_id = f"{prefix}-{n:05d}"
        client.submit("chaos", {"key": task_id, "seconds": seconds}, task_id=task_id, **fields)
        ids.append(task_id)
    return ids
