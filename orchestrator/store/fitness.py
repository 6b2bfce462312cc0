"""Reads what a Redis server says of its memory policy and persistence (`CONFIG GET`).

The judgement is security.fitness's; this only asks. A server that refuses the command (an ACL
user without CONFIG, NOPERM; a managed Redis that renamed or hid it, "unknown command") gives
a RedisConfig saying so, not an error: the operator is told to check by hand. A server that
cannot be reached raises, as any command would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from redis.cluster import RedisCluster

from orchestrator.security.fitness import RedisConfig
from orchestrator.store.keys import SLOT_KEYS

log = logging.getLogger(__name__)

#: The settings asked, one CONFIG GET each (a pattern list needs Redis 7).
PARAMETERS = ("maxmemory-policy", "maxmemory", "appendonly", "appendfsync", "cluster-enabled")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_config(client: redis.Redis) -> RedisConfig:
    """The five settings of the server `client` talks to, in one round trip."""
    try:
        replies = _ask(client)
    except redis.ResponseError as exc:  # NoPermissionError is one too
        return RedisConfig(unreadable=_reply(exc))
    said: dict[str, str] = {}
    for reply in replies:
        said.update({_text(k): _text(v) for k, v in (reply or {}).items()})
    if "maxmemory-policy" not in said:  # a managed Redis may hide some parameters
        return RedisConfig(unreadable="CONFIG GET maxmemory-policy answered nothing")
    maxmemory = said.get("maxmemory")
    appendonly = said.get("appendonly")
    cluster = said.get("cluster-enabled")
    return RedisConfig(
        policy=said.get("maxmemory-policy"),
        maxmemory=int(maxmemory) if maxmemory and maxmemory.isdigit() else None,
        appendonly=None if appendonly is None else appendonly == "yes",
        appendfsync=said.get("appendfsync"),
        cluster=None if cluster is None else cluster == "yes",
    )


def _ask(client: redis.Redis) -> list[Any]:
    """CONFIG GET of each parameter, in one pipeline; of a Redis Cluster, asked of the node
    that holds the state store's slot (keys.SLOT_KEYS), one command each."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(SLOT_KEYS[0])
        return [client.config_get(name, target_nodes=node) for name in PARAMETERS]
    pipe = client.pipeline(transaction=False)
    for name in PARAMETERS:
        pipe.config_get(name)
    return pipe.execute()


def _reply(exc: redis.ResponseError) -> str:
    """The server's words, without redis-py's pipeline preamble ("Command # 1 (...) of
    pipeline caused error: ")."""
    text = str(exc)
    marker = "caused error: "
    text = text[text.index(marker) + len(marker) :] if marker in text else text
    code = getattr(exc, "status_code", None)
    if isinstance(exc, redis.exceptions.NoPermissionError) and not text.startswith("NOPERM"):
        code = "NOPERM"
    return (f"{code} {text}" if code and not text.startswith(code) else text).strip()


def read_configs(
    urls: Iterable[str],
    connect: Callable[[str], redis.Redis],
    known: Mapping[str, redis.Redis] | None = None,
) -> dict[str, RedisConfig]:
    """read_config of each distinct URL that answers: through `known[url]` when given (a
    client the caller keeps), else through a client `connect(url)` builds and this closes. A
    URL that does not answer is left out (logged): its findings were not checked."""
    out = {}
    for url in dict.fromkeys(urls):
        kept = (known or {}).get(url)
        client = kept if kept is not None else connect(url)
        try:
            out[url] = read_config(client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("the configuration of a Redis could not be read: %s", exc)
        finally:
            if kept is None:
                client.close()
    return out
