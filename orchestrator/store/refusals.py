"""What a Redis error reply (`ResponseError`) becomes for a client: a named orchestrator error.

Pure functions over the exception and the name of the store step it came from, used by
StoreBase._translate: a client never sees a raw `redis.exceptions.ResponseError`.
"""

from __future__ import annotations

import hashlib
import re
from types import TracebackType

import redis
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    NoPermissionError,
    ReadOnlyError,
)

from orchestrator.errors import ConfigError, OrchestratorError, StoreError, StoreUnavailable
from orchestrator.redis_urls import STATE_CLUSTER_VARIABLE
from orchestrator.store import scripts

#: The store's Lua scripts by SHA1 (what Redis names in a script's error reply).
SCRIPT_NAMES = {
    hashlib.sha1(text.encode("utf-8")).hexdigest(): name.lower()
    for name, text in vars(scripts).items()
    if name.isupper() and not name.startswith("_") and isinstance(text, str)
}
_SCRIPT_SHA = re.compile(r"script: ([0-9a-f]{40})")
#: Frames that are not the store's step itself: this translation and the context manager.
_PLUMBING = ("_translate", "__exit__", "translated")


def step_of(tb: TracebackType | None) -> str:
    """The store method a failure came from: the outermost frame of its traceback that is not
    the translating context manager (the method whose `with self._translate()` it left)."""
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name not in _PLUMBING and not code.co_filename.endswith("contextlib.py"):
            return code.co_name
        tb = tb.tb_next
    return "?"


#: What a cluster node says to a client that is not a cluster client.
_CLUSTER_REPLIES = ("CROSSSLOT", "MOVED ", "ASK ", "CLUSTERDOWN", "non local key", "same slot")


def _from_a_cluster(exc: redis.ResponseError, core: str) -> bool:
    """Whether `exc` is a Redis Cluster node's refusal of keys outside what it serves."""
    if isinstance(exc, (ClusterCrossSlotError, AskError, ClusterDownError)):  # MovedError too
        return True
    return any(word in core for word in _CLUSTER_REPLIES)


def translated(exc: redis.ResponseError, step: str) -> OrchestratorError:
    """The named error a client gets for Redis's error reply `exc` to the store's `step`."""
    said = str(exc).strip().rstrip(".")
    found = _SCRIPT_SHA.search(said)
    script = SCRIPT_NAMES.get(found.group(1), "a Lua script") if found else ""
    where = f"step {step!r}" + (f" (Lua script {script})" if script else "")
    # A pipeline's reply names the command first: "Command # 1 (...) of pipeline caused error:".
    core = said.rsplit(" caused error: ", 1)[-1]
    # redis-py turns an `OOM command not allowed ...` reply into its OutOfMemoryError, without
    # the `OOM` word; a script's error keeps it.
    if core.startswith("OOM") or "> 'maxmemory'" in core:
        return StoreUnavailable(
            f"Redis state store is full: it refused the writes of {where} because its memory "
            "is at its limit (maxmemory): raise maxmemory (CONFIG SET maxmemory, or redis.conf) "
            "or free memory (a shorter ORCH_LEDGER_TTL_S keeps fewer tasks), then retry. "
            f"Redis said: {said}"
        )
    if _from_a_cluster(exc, core):
        return ConfigError(
            f"{STATE_CLUSTER_VARIABLE}: the state store's Redis is a Redis Cluster node, and "
            f"this process's keys are not laid out for one ({where}): set "
            f"{STATE_CLUSTER_VARIABLE}=true in the environment (or .env) of every process "
            "that reaches it, with the broker and result backend on a single Redis. "
            f"Redis said: {said}"
        )
    if isinstance(exc, ReadOnlyError) or core.startswith("READONLY"):
        return StoreUnavailable(
            f"Redis state store refused {where}: the server at ORCH_STATE_URL / ORCH_REDIS_URL "
            "is a read-only replica (a failover under way?); point it at the primary, or use a "
            f"sentinel:// URL. Redis said: {said}"
        )
    if core.startswith("BUSY "):
        return StoreUnavailable(
            f"Redis state store is busy running a script and refused {where}; retry. "
            f"Redis said: {said}"
        )
    if isinstance(exc, NoPermissionError) or core.startswith("NOPERM"):
        advice = (
            "the Redis user of ORCH_STATE_URL / ORCH_REDIS_URL lacks a permission the "
            "orchestrator needs: grant it what deploy/redis/users.acl grants (ACL SETUSER)"
        )
    elif core.startswith("WRONGTYPE"):
        advice = (
            "a key holds a value of another type than the orchestrator keeps there: a key of an "
            "older orchestrator's layout (a control worker of this version renames them when it "
            "starts: start one) or one written by another program into this Redis (find and "
            "delete it: `redis-cli --scan --pattern 'orch:*'` lists the orchestrator's keys)"
        )
    else:
        advice = (
            "an error of the orchestrator's own step: report it with this message; the task's "
            "state is as the step left it (see `orchestrator task <id>`)"
        )
    return StoreError(f"Redis state store refused {where}: {said}; {advice}")
