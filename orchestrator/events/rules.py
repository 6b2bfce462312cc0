"""What the built-in event handlers decide from an event and the state they read (pure).

Each built-in handler (events/builtin.py) reads a little state, asks one of these, and then
calls the code that already does the work (the healer, the router, the Alertmanager push).
An event may arrive late (claimed from a dead consumer, or read after an outage), so each
rule also says when an event no longer applies.
"""

from __future__ import annotations

from typing import Any

from orchestrator.models import (
    AlertState,
    CircuitBreakerState,
    OrchestrationEvent,
    ProductionAlert,
    ProductionEventSeverity,
    TaskState,
)


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def agent_of(event: OrchestrationEvent) -> str | None:
    """The agent an agent.* or circuit.* event is about (None: the event names none)."""
    return _text(event.data, "agent_id")


def task_of(event: OrchestrationEvent) -> str | None:
    return _text(event.data, "task_id")


def loss_applies(event_ts: float, registered_at: float | None) -> bool:
    """Whether an agent.lost event still means the agent's work must move: not for an agent
    nobody registered, nor for one that registered again after the event was written (the
    event is about an earlier life of it). The recovery monitor's own agent.lost is written
    after the agent's last registration, so it applies (and moving again finds nothing)."""
    return registered_at is not None and registered_at <= event_ts


def circuit_still_open(state: CircuitBreakerState) -> bool:
    """A circuit.opened event moves queued work only while the breaker has not closed."""
    return state is not CircuitBreakerState.CLOSED


def needs_dead_letter(state: str | None) -> bool:
    """A recovery.escalated event dead-letters its task only while the task has not ended:
    the healer dead-letters before it announces an escalation, so for its own events this is
    False and the handler does nothing."""
    if not state:
        return False
    try:
        return not TaskState(state).terminal
    except ValueError:
        return False


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def alert_to_push(
    event: OrchestrationEvent, stored: ProductionAlert | None, now: float, max_age_s: float
) -> ProductionAlert | None:
    """The alert an alert.firing event should push to Alertmanager now, or None.

    Only critical alerts (the alert's own severity, else the event's). When the alert loop
    keeps an alert of that name, its stored state decides: resolved since means nothing to
    push (a late event must not re-open it), firing means push the stored alert. An alert
    nobody stores (announced by another service) is pushed as the event describes it, unless
    the event is older than `max_age_s` (as long as a pushed alert lives without being sent
    again): read after an outage, it would re-open an alert its sender stopped sending.
    """
    severity = _text(event.data, "alert_severity") or event.severity.value
    name = _text(event.data, "name")
    if severity != ProductionEventSeverity.CRITICAL.value or name is None:
        return None
    if stored is not None:
        return stored if stored.state is AlertState.FIRING else None
    if now - event.ts > max_age_s:
        return None
    since = _number(event.data.get("active_since")) or event.ts
    labels = {**_strings(event.data.get("labels")), "alertname": name, "severity": severity}
    return ProductionAlert(
        name=name,
        state=AlertState.FIRING,
        severity=ProductionEventSeverity.CRITICAL,
        value=_number(event.data.get("value")),
        since=since,
        active_since=since,
        labels=labels,
        annotations=_strings(event.data.get("annotations")),
    )
