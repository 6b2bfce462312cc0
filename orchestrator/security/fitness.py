"""Whether a Redis is fit to hold queues and state, judged from its own configuration, pure.

A Redis that evicts (any maxmemory-policy but noeviction) deletes keys when it is full: queued
tasks, task records, agent records and beat's lock go without an error to anyone, so work that
was acknowledged vanishes. One without an AOF loses, on a restart, what came after its last
snapshot. The facts come from `CONFIG GET` (orchestrator.store.fitness reads them); here they
become findings, which every role's start-up check (security.preflight: an evicting policy
refuses the start unless ORCH_ALLOW_EVICTING_REDIS) and the security loop both use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.models import ProductionEventSeverity as Severity
from orchestrator.security.policy import ROLES, Finding, RedisEndpoint

#: The only maxmemory-policy under which a full Redis refuses writes instead of deleting keys.
NO_EVICTION = "noeviction"
#: The finding that stops a start (unless allowed).
EVICTING = "redis_evicting"
#: Finding kinds of a Redis's configuration.
KINDS = (EVICTING, "redis_no_aof", "redis_aof_unsynced", "redis_config_unreadable")


@dataclass(frozen=True)
class RedisConfig:
    """What `CONFIG GET` said of one Redis server (None: it did not say); `unreadable` (the
    server's reply) instead, when the command was refused: an ACL user without CONFIG, or a
    managed Redis that renamed it."""

    policy: str | None = None  # maxmemory-policy
    maxmemory: int | None = None  # bytes; 0 is no limit
    appendonly: bool | None = None
    appendfsync: str | None = None
    unreadable: str | None = None
    cluster: bool | None = None  # cluster-enabled: a Redis Cluster node


def memory_text(maxmemory: int | None) -> str:
    """maxmemory as an operator writes it (`maxmemory 20mb`), or that there is none."""
    if not maxmemory:
        return "no maxmemory set"
    for unit, size in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
        if maxmemory % size == 0:
            return f"maxmemory {maxmemory // size}{unit}"
    return f"maxmemory {maxmemory} bytes"


def judge_redis(
    names: str, address: str, config: RedisConfig, allow_evicting: bool = False, key: str = ""
) -> list[Finding]:
    """The findings on one Redis: `names` says what it is to us ("broker, result backend and
    state store"), `key` ends the findings' ids (by default the address).

    An evicting policy is critical (a warning when the operator allowed it with
    ORCH_ALLOW_EVICTING_REDIS); no AOF, or an AOF the kernel flushes when it likes (appendfsync
    no), is a warning; a configuration that could not be read is a note (info)."""
    key = key or address
    where = f"the {names} at {address}"
    if config.unreadable is not None:
        return [
            Finding.of(
                "redis_config_unreadable",
                key,
                severity=Severity.INFO,
                summary=(
                    f"could not read the configuration of {where} ({config.unreadable}); "
                    "check by hand that maxmemory-policy is noeviction and appendonly is yes"
                ),
                data={"address": address, "reply": config.unreadable},
            )
        ]
    data: dict[str, Any] = {
        "address": address,
        "policy": config.policy,
        "maxmemory": config.maxmemory,
        "appendonly": config.appendonly,
        "appendfsync": config.appendfsync,
    }
    out = []
    if config.policy is not None and config.policy != NO_EVICTION:
        fix = (
            " (allowed by ORCH_ALLOW_EVICTING_REDIS)"
            if allow_evicting
            else ", or ORCH_ALLOW_EVICTING_REDIS=true to run anyway"
        )
        out.append(
            Finding.of(
                EVICTING,
                key,
                severity=Severity.WARNING if allow_evicting else Severity.CRITICAL,
                summary=(
                    f"{where} has maxmemory-policy {config.policy} "
                    f"({memory_text(config.maxmemory)}): when full it deletes keys, queued "
                    "tasks, task records and locks among them, so acknowledged work vanishes; "
                    "set maxmemory-policy noeviction (redis.conf, or CONFIG SET)" + fix
                ),
                data=data,
            )
        )
    if config.appendonly is False:
        out.append(
            Finding.of(
                "redis_no_aof",
                key,
                severity=Severity.WARNING,
                summary=(
                    f"{where} has appendonly no: a restart loses every queued task and record "
                    "written since its last snapshot (appendonly yes, appendfsync everysec)"
                ),
                data=data,
            )
        )
    elif config.appendonly and config.appendfsync == "no":
        out.append(
            Finding.of(
                "redis_aof_unsynced",
                key,
                severity=Severity.WARNING,
                summary=(
                    f"{where} has appendfsync no: the kernel writes the AOF out when it likes, "
                    "so a machine crash loses the last seconds of queued tasks and records "
                    "(appendfsync everysec)"
                ),
                data=data,
            )
        )
    return out


def cluster_refusal(address: str, config: RedisConfig, expected: bool) -> str | None:
    """Why a Redis Cluster node (or a server that is not one) cannot serve where it was named,
    or None: `expected` when it is the state store with ORCH_STATE_CLUSTER. Only the state
    store can be a cluster: kombu and Celery's result backend have no Redis Cluster client."""
    if config.cluster is None or config.cluster == expected:
        return None
    if expected:
        return (
            f"ORCH_STATE_CLUSTER is true, but the Redis at {address} is not a Redis Cluster "
            "node (cluster-enabled no)"
        )
    return (
        f"the Redis at {address} is a Redis Cluster node: only the state store can be one "
        "(ORCH_STATE_URL, with ORCH_STATE_CLUSTER=true); the broker and the result backend "
        "need a single Redis"
    )


def role_names(roles: list[str]) -> str:
    """`broker, result backend and state store`."""
    named = [ROLES.get(r, r) for r in roles]
    return " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)


def config_findings(
    urls: Mapping[str, str], configs: Mapping[str, RedisConfig], allow_evicting: bool = False
) -> list[Finding]:
    """judge_redis on each Redis the roles use (`urls`: role -> URL, as policy.url_findings
    takes them; `configs`: URL -> what it said; a URL not there was not asked); roles sharing
    one URL make one finding, keyed by the roles (`redis_evicting:broker+results+state`)."""
    by_url: dict[str, list[str]] = {}
    for role, url in urls.items():
        by_url.setdefault(url, []).append(role)
    out = []
    for url, roles in by_url.items():
        if url in configs:
            address = RedisEndpoint.parse(url).address
            out += judge_redis(
                role_names(roles), address, configs[url], allow_evicting, "+".join(roles)
            )
    return out
