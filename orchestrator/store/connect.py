"""Every Redis client of the project is built here, from any URL form a setting accepts.

A redis://, rediss:// or unix:// URL is redis-py's own; with `cluster` (ORCH_STATE_CLUSTER,
the state store only) a redis:// or rediss:// URL names one node of a Redis Cluster, and the
client is redis-py's RedisCluster, which learns the others from it and follows the slots as
they move. A sentinel-form URL (redis_urls.parse_sentinel) gives a client of the master that
Sentinel names: redis-py's `Sentinel.master_for`, whose connections ask the sentinels for the
master's address each time they connect, so after a failover the next reconnect reaches the
promoted replica (and a demoted master's READONLY reply makes it reconnect too). The
sentinels themselves are asked without credentials; the URL's credentials and database are
the master's, as kombu and Celery's result backend read the same URL.
"""

from __future__ import annotations

import os
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from orchestrator.config import Settings
from orchestrator.redis_urls import DEFAULT_SENTINEL_MASTER, is_sentinel, parse_sentinel

#: How long a sentinel may take to answer who the master is.
SENTINEL_TIMEOUT_S = 1.0


def redis_client(
    url: str,
    *,
    sentinel_master: str = DEFAULT_SENTINEL_MASTER,
    cluster: bool = False,
    **kwargs: Any,
) -> redis.Redis:
    """A client of the Redis `url` names (of the Redis Cluster one of whose nodes it names,
    with `cluster`); `kwargs` as redis.Redis takes them."""
    if cluster:
        # RedisCluster answers every command redis.Redis does that the store sends.
        return cast(redis.Redis, RedisCluster.from_url(url, **kwargs))
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    address = parse_sentinel(url)
    timeout = kwargs.get("socket_connect_timeout") or SENTINEL_TIMEOUT_S
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    credentials = {"username": address.username, "password": address.password}
    return sentinel.master_for(
        sentinel_master,
        redis_class=redis.Redis,
        db=address.db,
        **{k: v for k, v in credentials.items() if v is not None},
        **kwargs,
    )


def state_client(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A client of the state store (ORCH_STATE_URL, else ORCH_REDIS_URL); `kwargs` as
    redis.Redis takes them (no decode_responses: DUMP payloads and pybreaker want bytes)."""
    return redis_client(
        settings.effective_state_url,
        sentinel_master=settings.redis_sentinel_master,
        cluster=settings.state_cluster,
        **kwargs,
    )


#: The broker clients of this process, by URL and process id (a forked child makes its own).
_BROKERS: dict[tuple[str, int], redis.Redis] = {}


def broker_client(settings: Settings) -> redis.Redis:
    """A decoding client of the broker's Redis (ORCH_BROKER_URL, else ORCH_REDIS_URL), one per
    process: the reads of the agent queues where the state store is another Redis."""
    key = (settings.effective_broker_url, os.getpid())
    if key not in _BROKERS:
        _BROKERS[key] = redis_client(
            settings.effective_broker_url,
            sentinel_master=settings.redis_sentinel_master,
            decode_responses=True,
            health_check_interval=30,
        )
    return _BROKERS[key]
