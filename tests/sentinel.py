"""A Redis Sentinel group on loopback ports from the system `redis-server`, for tests and benches.

One primary, its replicas, and sentinels (`redis-server sentinel.conf --sentinel`). The
sentinels judge the primary down after `down_after_ms` and promote a replica; `url` is the
sentinel form of ORCH_REDIS_URL (`sentinel://127.0.0.1:P1;sentinel://127.0.0.1:P2/0`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import redis

from tests.support import (
    RedisServer,
    Started,
    find_redis_server,
    free_port,
    no_retry,
    tail,
    wait_for,
)

MASTER = "mymaster"


class Sentinel:
    """One sentinel process with its own (rewritable) configuration file."""

    def __init__(self, workdir: Path, primary_port: int, quorum: int, down_after_ms: int) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"logfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._proc = subprocess.Popen(
            [find_redis_server(), str(self.conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with self.client() as probe:
            wait_for(probe.ping, timeout=10, ignore=(redis.ConnectionError,))
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=1,
            retry=no_retry(),
        )

    def master_port(self) -> int:
        with self.client() as c:
            return int(c.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)[1])

    def log(self) -> str:
        path = self.workdir / "sentinel.log"
        return tail(path.read_text(errors="replace"), 20) if path.exists() else "(no log)"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


class SentinelGroup(Started):
    """A primary, `replicas` replicas and `sentinels` sentinels, ready when every sentinel
    knows every replica and the other sentinels."""

    def __init__(
        self, replicas: int = 1, sentinels: int = 3, quorum: int = 2, down_after_ms: int = 1000
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="orch-sentinel-"))
        # Serves the replicas' first sync at once (Redis waits 5 s by default for more
        # replicas to share a diskless sync).
        self.primary = RedisServer(
            workdir=self.workdir / "primary", extra_args=["--repl-diskless-sync-delay", "0"]
        )
        self.replicas: list[RedisServer] = []
        self.sentinels: list[Sentinel] = []
        self.n_replicas, self.n_sentinels = replicas, sentinels
        self.quorum, self.down_after_ms = quorum, down_after_ms

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels) + "/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def start(self) -> Self:
        self.primary.start()
        for i in range(self.n_replicas):
            replica = RedisServer(
                workdir=self.workdir / f"replica-{i}",
                extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)],
            )
            self.replicas.append(replica.start())
        for replica in self.replicas:
            with replica.client(decode_responses=True) as c:
                wait_for(
                    lambda c=c: c.info("replication").get("master_link_status") == "up",
                    timeout=20,
                    message="a replica never synced",
                )
        for i in range(self.n_sentinels):
            sentinel = Sentinel(
                self.workdir / f"sentinel-{i}", self.primary.port, self.quorum, self.down_after_ms
            )
            self.sentinels.append(sentinel.start())
        for sentinel in self.sentinels:
            with sentinel.client() as c:
                wait_for(
                    lambda c=c: (
                        len(c.execute_command("SENTINEL", "replicas", MASTER)) == self.n_replicas
                        and len(c.execute_command("SENTINEL", "sentinels", MASTER))
                        == self.n_sentinels - 1
                    ),
                    timeout=30,
                    message="the sentinels never found each other and the replicas",
                )
        return self

    def current_primary(self) -> RedisServer:
        port = self.sentinels[0].master_port()
        return next(s for s in self.servers if s.port == port)

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Wait until every sentinel names another primary and it answers as a master;
        returns the seconds it took."""
        started = time.monotonic()
        wait_for(
            lambda: all(s.master_port() != old_port for s in self.sentinels),
            timeout=timeout,
            interval=0.02,
            message="no failover: " + self.sentinels[0].log(),
            ignore=(redis.RedisError,),
        )
        with self.current_primary().client(decode_responses=True) as c:
            wait_for(lambda: c.info("replication")["role"] == "master", timeout=timeout)
        return time.monotonic() - started

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
