"""The built-in event handlers: lost agents, open circuits, new agents, parked tasks, alerts.

Parked tasks wake a sleeping agent that can take them; escalations are dead-lettered.

Each reacts as soon as the event is read instead of at a loop's next tick, by calling the code
that already does the work (the healer, the router's parked sweep, the Alertmanager push);
events/rules.py decides whether a (possibly late) event still applies. Every effect here is
idempotent in itself, on top of the consumer's once-per-event markers.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from orchestrator.events.registry import on_event
from orchestrator.events.rules import (
    agent_of,
    alert_to_push,
    circuit_still_open,
    loss_applies,
    needs_dead_letter,
    task_of,
)
from orchestrator.models import OrchestrationEvent
from orchestrator.monitoring import alertmanager
from orchestrator.routing.weights import effective_status
from orchestrator.scaling.sleep import AgentView, wake_for
from orchestrator.scaling.sleepwake import wake
from orchestrator.store import now_s
from orchestrator.store.monitoring import MonitoringStore

if TYPE_CHECKING:
    from orchestrator.events.consumer import EventContext

log = logging.getLogger(__name__)


@on_event("agent.lost")
def move_work_of_lost_agent(event: OrchestrationEvent, ctx: EventContext) -> None:
    """Mark the agent offline, move everything it held and empty its queue, as the recovery
    monitor does for an agent whose heartbeat stopped (Healer.agent_lost). Another service
    that saw the agent die (an orchestrator of containers) announces the loss sooner than
    ORCH_AGENT_TIMEOUT_S of silence would; the monitor's own announcement finds it done."""
    agent_id = agent_of(event)
    if agent_id is None:
        return
    agent = next((a for a in ctx.store.load_agents() if a.agent_id == agent_id), None)
    if not loss_applies(event.ts, agent.registered_at if agent is not None else None):
        log.info(
            "agent.lost %s: agent %s unknown or registered since; nothing to move",
            event.id,
            agent_id,
        )
        return
    reason = event.data.get("reason") or f"agent.lost from {event.source}"
    moved = ctx.healer.agent_lost(agent_id, now_s(), str(reason))
    log.info("agent.lost %s: %d task(s) of agent %s moved", event.id, moved, agent_id)


@on_event("circuit.opened")
def move_queued_off_open_circuit(event: OrchestrationEvent, ctx: EventContext) -> None:
    """Route the tasks waiting in the agent's queue elsewhere (those it is running finish
    there), as a quarantine does: an open circuit means more of them would fail. Unless the
    ejection floor keeps the agent eligible for every capability it offers (announced as
    `agent.ejection_refused`, once per opening and capability left short)."""
    agent_id = agent_of(event)
    if agent_id is None or not ctx.settings.circuit_breaker_enabled:
        return
    if not circuit_still_open(ctx.store.circuit(agent_id).state):
        return
    if ctx.healer.keeps_open_circuit(agent_id, now_s()):
        return  # the ejection floor keeps the agent for all it offers: its queue stays
    moved = ctx.healer.move_queued(agent_id, now_s(), only_queued=True)
    log.info("circuit.opened %s: %d queued task(s) of agent %s moved", event.id, moved, agent_id)


@on_event("agent.registered")
def route_parked_for_new_agent(event: OrchestrationEvent, ctx: EventContext) -> None:
    """Route parked tasks that the new agent (or any other) can take now, and expire the ones
    parked too long: the parked sweep of `orchestrator.route_parked`."""
    outcomes = ctx.router.dispatch_sweep(now_s(), ctx.fail_task)
    if outcomes:
        log.info(
            "agent.registered %s: %d parked task(s) routed or expired", event.id, len(outcomes)
        )


@on_event("task.parked")
def wake_agent_for_parked_task(event: OrchestrationEvent, ctx: EventContext) -> None:
    """Wake a sleeping agent that can take the parked task (when no awake one can), and route
    the parked tasks: now, instead of at the sleep/wake loop's next tick."""
    task_id = task_of(event)
    fields = ctx.store.task_fields(task_id) if task_id else {}
    if task_id is None or fields.get("state") != "parked" or not fields.get("spec"):
        return
    loaded = json.loads(fields["spec"])
    needs = frozenset(str(c) for c in loaded.get("required_capabilities") or [loaded["type"]])
    now = now_s()
    agents = ctx.store.load_agents()
    for agent in agents:
        agent.status = effective_status(agent, now, ctx.settings.agent_timeout_s)
    views = [AgentView(a.agent_id, frozenset(a.capabilities), a.status) for a in agents]
    chosen = wake_for(needs, views)
    sleeper = next((a for a in agents if a.agent_id == chosen), None)
    if sleeper is not None and wake(ctx.store, ctx.app, sleeper, now, "parked", "events"):
        ctx.router.dispatch_sweep(now_s(), ctx.fail_task)
        log.info("task.parked %s: agent %s woken for task %s", event.id, chosen, task_id)


@on_event("alert.firing")
def push_critical_alert(event: OrchestrationEvent, ctx: EventContext) -> None:
    """Push a critical alert to Alertmanager (ORCH_ALERTMANAGER_URL) now. Alertmanager keys
    alerts by their labels, so this push and the alert loop's own one are the same alert.
    A push Alertmanager refuses raises, and the event is delivered again."""
    name = event.data.get("name")
    stored = next((a for a in MonitoringStore(ctx.store.r).all_alerts() if a.name == name), None)
    every = ctx.settings.alert_evaluation_interval
    # A pushed firing alert lives 4 evaluation intervals (alerting.to_alertmanager).
    alert = alert_to_push(event, stored, now_s(), max_age_s=4 * every)
    if alert is None:
        return
    url = ctx.settings.alertmanager_url
    if not url:
        log.warning("critical alert %s is firing; no ORCH_ALERTMANAGER_URL to push it to", name)
        return
    generator = alertmanager.generator_url(ctx.settings.exporter_port)
    alertmanager.push(url, [alert], now_s(), generator, eval_interval_s=every)
    log.info("alert.firing %s: critical alert %s pushed to Alertmanager", event.id, name)


@on_event("recovery.escalated")
def dead_letter_escalated(event: OrchestrationEvent, ctx: EventContext) -> None:
    """Dead-letter the task (Healer.escalate) unless it has ended. The healer dead-letters
    before it announces an escalation, so for its own events this does nothing; an
    escalation announced by another service gets the task dead-lettered and its caller's
    result failed."""
    task_id = task_of(event)
    if task_id is None or not needs_dead_letter(ctx.store.task_fields(task_id).get("state")):
        return
    reason = event.data.get("reason") or f"escalated by {event.source}"
    ctx.healer.escalate(task_id, str(reason), now_s())
    log.info("recovery.escalated %s: task %s dead-lettered", event.id, task_id)
