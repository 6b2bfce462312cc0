"""Hive Orchestrator: capability-weighted task routing for agent fleets on Celery and Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.events.registry import on_event
from orchestrator.runtime.handlers import capability

if TYPE_CHECKING:
    import pybreaker

    from orchestrator.client import OrchestratorClient


def circuit_breaker(name: str, **kwargs: Any) -> pybreaker.CircuitBreaker:
    """A circuit breaker shared by every agent, for a handler's outbound calls."""
    from orchestrator.recovery.outbound import circuit_breaker as shared

    return shared(name, **kwargs)


def __getattr__(name: str) -> Any:
    # The client is imported when first asked for: a handler module importing `capability`
    # does not load Celery's client side.
    if name == "OrchestratorClient":
        from orchestrator.client import OrchestratorClient

        return OrchestratorClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OrchestratorClient", "capability", "circuit_breaker", "on_event"]
__version__ = "0.1.0"
