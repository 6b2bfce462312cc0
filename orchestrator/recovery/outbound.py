"""Circuit breakers for handlers' own outbound calls (a flaky API a handler depends on).

pybreaker does the state machine; its Redis storage makes every agent share one breaker per
name, so when one agent sees the API fail, the others stop hammering it too.
"""

from __future__ import annotations

import os
import threading

import pybreaker

from orchestrator.config import Settings, load_settings
from orchestrator.store.connect import state_client
from orchestrator.store.keys import HANDLER_CIRCUIT_PREFIX

_lock = threading.Lock()
_breakers: dict[tuple[str, int], pybreaker.CircuitBreaker] = {}

CircuitBreakerError = pybreaker.CircuitBreakerError


def circuit_breaker(
    name: str,
    *,
    fail_max: int | None = None,
    reset_timeout_s: float | None = None,
    settings: Settings | None = None,
) -> pybreaker.CircuitBreaker:
    """The shared breaker called `name` (decorator or `.call(fn, ...)`).

    Defaults come from ORCH_CIRCUIT_FAILURE_THRESHOLD and ORCH_CIRCUIT_RECOVERY_TIMEOUT_S. An
    open breaker raises `CircuitBreakerError`; raise TransientError from it in a handler to
    have the task retried later instead of failing.
    """
    key = (name, os.getpid())  # a forked pool child must not share its parent's socket
    with _lock:
        breaker = _breakers.get(key)
        if breaker is None:
            settings = settings or load_settings()
            # pybreaker's storage decodes bytes itself: a client without decode_responses.
            client = state_client(settings)
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace=HANDLER_CIRCUIT_PREFIX + name
            )
            breaker = pybreaker.CircuitBreaker(
                fail_max=fail_max or settings.circuit_failure_threshold,
                reset_timeout=reset_timeout_s or settings.circuit_recovery_timeout_s,
                state_storage=storage,
                name=name,
            )
            _breakers[key] = breaker
        return breaker
