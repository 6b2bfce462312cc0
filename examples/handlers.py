"""Example handlers the demo agents of `orchestrator dev` (and the compose workers) run."""

from __future__ import annotations

import time
from typing import Any

from orchestrator import capability
from orchestrator.errors import PermanentError, TransientError


@capability("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Returns its payload: the smallest useful task, for smoke tests and benchmarks."""
    return payload


@capability("sleep")
def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps `seconds` (default 0.1): a stand-in for slow work."""
    seconds = float(payload.get("seconds", 0.1))
    time.sleep(seconds)
    return {"slept": seconds}


@capability("fail")
def fail(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails on purpose: `{"kind": "transient"}` retries, anything else fails permanently."""
    if payload.get("kind") == "transient":
        raise TransientError(payload.get("message", "asked to fail transiently"))
    raise PermanentError(payload.get("message", "asked to fail"))
