"""A Redis Cluster of primaries on loopback ports from the system `redis-server`, for tests.

Each node is a RedisServer started with `--cluster-enabled yes`; the 16,384 hash slots are
split evenly (CLUSTER ADDSLOTSRANGE), the nodes meet the first one (CLUSTER MEET), and
start() returns once every node says `cluster_state:ok`. No replicas: what is tested is that
the state store's steps run on a cluster, not a failover.
"""

from __future__ import annotations

from typing import Self

import redis

from tests.support import RedisServer, wait_for

SLOTS = 16384


class RedisClusterNodes:
    """`count` primaries; `url` names the first node, as ORCH_STATE_URL would."""

    def __init__(self, count: int = 3) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.nodes = [RedisServer(extra_args=args) for _ in range(count)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        try:
            share = SLOTS // len(clients)
            for i, client in enumerate(clients):
                last = SLOTS - 1 if i == len(clients) - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)

            def settled() -> bool:
                return all(
                    b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients
                ) and all(
                    len(c.execute_command("CLUSTER", "NODES").splitlines()) == len(clients)
                    for c in clients
                )

            wait_for(settled, timeout=20, message="the cluster never settled")
        finally:
            for client in clients:
                client.close()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
