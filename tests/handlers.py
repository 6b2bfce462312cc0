"""Handlers the test agents run (ORCH_HANDLERS=tests.handlers)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from orchestrator import capability
from orchestrator.errors import PermanentError, TransientError

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["ORCH_REDIS_URL"], decode_responses=True)
    return _client


@capability("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@capability("rare")
def rare(payload: dict[str, Any]) -> dict[str, Any]:
    return {"rare": True, **payload}


@capability("sleep")
def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(payload.get("seconds", 0.1)))
    return {"slept": payload.get("seconds", 0.1)}


@capability("count")
def count(payload: dict[str, Any]) -> dict[str, Any]:
    """Counts its runs in Redis, so a test can tell one execution from two."""
    runs = _redis().incr(f"test:runs:{payload['key']}")
    return {"runs": runs}


@capability("flaky")
def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails transiently until it has run `fail_times` times for this key."""
    runs = _redis().incr(f"test:flaky:{payload['key']}")
    if runs <= int(payload.get("fail_times", 1)):
        raise TransientError(f"flaky run {runs}")
    return {"runs": runs}


@capability("broken")
def broken(payload: dict[str, Any]) -> dict[str, Any]:
    raise PermanentError(payload.get("message", "broken on purpose"))
