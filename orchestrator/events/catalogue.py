"""The catalogue of the event types the orchestrator writes to its event streams (pure).

Events are written from many places, some of them Lua scripts, so the catalogue is declared
here once: what each type means, its severity, who writes it, the keys of its `data`, and
whether it is one of the task lifecycle types that every task writes on its normal path, which
go to orchestrator:events:tasks instead of orchestrator:events (store.keys.TASK_EVENT_TYPES).
tests/unit/test_event_catalogue.py holds it to the code (every type written is here, and every
type here is written, with those keys), and the docs' events reference is made from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventSpec:
    """One event type: `severity` is a level, or says what it depends on; `source` is what
    the event's `source` field holds (who wrote it)."""

    type: str
    severity: str
    source: str
    fields: tuple[str, ...]
    meaning: str
    on_demand: bool = False  # written only while some control worker's handler takes it
    task_stream: bool = False  # written to orchestrator:events:tasks, not orchestrator:events


_TERMINAL = ("task_id", "agent_id", "error", "latency_ms", "type")
_ALERT = ("name", "alert_severity", "value", "labels", "annotations", "active_since")

CATALOGUE: tuple[EventSpec, ...] = (
    EventSpec(
        "task.submitted",
        "info",
        "router",
        ("task_id", "type", "client_id", "priority"),
        "A router accepted a submission: it is in the ledger, routed or waiting.",
        task_stream=True,
    ),
    EventSpec(
        "task.rejected",
        "warning",
        "router",
        ("submit_id", "problems", "client_id", "reason"),
        "A router refused a submission (reason invalid, rate_limited or blocked); nothing ran.",
    ),
    EventSpec(
        "task.queued",
        "info",
        "dispatch",
        ("task_id", "capabilities", "priority", "client_id", "concurrency_key"),
        "A task went into the backlog to wait for a free slot.",
        on_demand=True,
    ),
    EventSpec(
        "task.parked",
        "info",
        "router",
        ("task_id", "type", "required_capabilities", "reason"),
        "No agent offers every capability the task requires: it waits, at most "
        "ORCH_PENDING_TIMEOUT_S, for one to register or wake; `reason` says why no agent can "
        "take it.",
    ),
    EventSpec(
        "task.routed",
        "info",
        "router, dispatch",
        ("task_id", "agent_id", "type", "dispatch"),
        "The task was handed to an agent's queue (dispatch: its dispatch number).",
        task_stream=True,
    ),
    EventSpec(
        "task.dispatched",
        "info",
        "dispatch",
        ("task_id", "agent_id", "waited_s"),
        "A task left the backlog for an agent after waiting waited_s seconds.",
        on_demand=True,
    ),
    EventSpec(
        "task.succeeded",
        "info",
        "the agent's id",
        _TERMINAL,
        "The task's handler returned; its result is stored.",
        task_stream=True,
    ),
    EventSpec(
        "task.failed",
        "error",
        "the agent's id; recovery for a cancel",
        _TERMINAL,
        "The task ended failed: its handler failed for good, or it was cancelled.",
        task_stream=True,
    ),
    EventSpec(
        "task.dead_lettered",
        "error",
        "recovery",
        _TERMINAL,
        "The task went to the dead-letter store: recovery escalated it, or it stayed parked "
        "past ORCH_PENDING_TIMEOUT_S.",
    ),
    EventSpec(
        "task.replayed",
        "info",
        "cli",
        ("task_id",),
        "A dead-lettered task was sent again (`orchestrator dlq replay`).",
    ),
    EventSpec(
        "agent.registered",
        "info",
        "the agent's id",
        ("agent_id", "capabilities", "queue"),
        "An agent started and registered its capabilities.",
    ),
    EventSpec(
        "agent.deregistered",
        "info",
        "the agent's id",
        ("agent_id",),
        "An agent shut down warmly; it stays listed as offline.",
    ),
    EventSpec(
        "agent.lost",
        "error",
        "recovery, or the service announcing it",
        ("agent_id", "previous", "reason"),
        "An agent is gone (heartbeat silent past ORCH_AGENT_TIMEOUT_S, or announced): it is "
        "offline and everything it held is moved.",
    ),
    EventSpec(
        "agent.quarantined",
        "warning",
        "recovery",
        ("agent_id", "previous", "reason", "until"),
        "An agent failed ORCH_QUARANTINE_FAILURES attempts within ORCH_QUARANTINE_WINDOW_S: "
        "it takes no work until `until` (unix time).",
    ),
    EventSpec(
        "agent.ejection_refused",
        "warning",
        "recovery",
        ("agent_id", "capability", "cause", "reason", "healthy", "total", "floor"),
        "Quarantining the agent, or acting on its open circuit, would leave too few of the "
        "capability's agents eligible (ORCH_MIN_HEALTHY_FRACTION): it stays eligible.",
    ),
    EventSpec(
        "agent.sleeping",
        "info",
        "sleep-wake, cli",
        ("agent_id", "reason"),
        "An agent was put to sleep: it consumes nothing until woken.",
    ),
    EventSpec(
        "agent.woken",
        "info",
        "sleep-wake, cli, events",
        ("agent_id", "reason"),
        "A sleeping agent was woken and consumes its queue again.",
    ),
    EventSpec(
        "agent.recycled",
        "info",
        "sleep-wake",
        ("agent_id", "window"),
        "An idle agent's pool was restarted inside a sleep window.",
    ),
    EventSpec(
        "circuit.opened",
        "warning",
        "the agent's id",
        ("agent_id",),
        "An agent's circuit breaker opened: routing leaves the agent out.",
    ),
    EventSpec(
        "circuit.half_opened",
        "info",
        "router",
        ("agent_id",),
        "An open circuit's timeout passed: the agent takes a few trial tasks.",
    ),
    EventSpec(
        "circuit.closed",
        "info",
        "the agent's id",
        ("agent_id",),
        "The trial tasks succeeded: the agent is routed to again.",
    ),
    EventSpec(
        "recovery.started",
        "info",
        "recovery",
        ("task_id", "tier", "agent_id", "target", "kind", "delay_s", "reason"),
        "A failed attempt got a recovery plan: its tier (retry, reroute, quarantine, "
        "escalate), target agent and delay.",
    ),
    EventSpec(
        "recovery.escalated",
        "critical",
        "recovery, or the service announcing it",
        ("task_id", "reason"),
        "Recovery gave the task up: it is dead-lettered and its result fails.",
    ),
    EventSpec(
        "alert.firing",
        "the alert's",
        "monitor, or the service announcing it",
        _ALERT,
        "An alert rule held for its duration and fires.",
    ),
    EventSpec(
        "alert.resolved",
        "info",
        "monitor",
        _ALERT,
        "A firing alert's condition no longer holds.",
    ),
    EventSpec(
        "sla.breached",
        "error",
        "monitor",
        ("name", "sli", "objective", "value", "error_budget_remaining"),
        "An SLA target stopped being met (once per breach).",
    ),
    EventSpec(
        "anomaly.detected",
        "warning",
        "monitor",
        ("series", "ts", "value", "baseline", "scale", "score", "direction"),
        "A metric series began an anomalous episode (once, at its onset).",
    ),
    EventSpec(
        "regression.detected",
        "warning",
        "monitor",
        (
            "type",
            "baseline_median",
            "recent_median",
            "shift",
            "u",
            "z",
            "p_value",
            "n_baseline",
            "n_recent",
        ),
        "A task type's run time got significantly slower than its baseline.",
    ),
    EventSpec(
        "security.threat",
        "the finding's (warning for a refused message)",
        "monitor; the worker's node name for a refused message",
        ("kind", "finding", "summary", "id", "queue", "reason", "size", "excerpt", "ts"),
        "A new security finding (kind, finding, summary and the finding's own data), or a "
        "message a worker refused at its edge (kind poison: id, queue, reason, size, excerpt).",
    ),
    EventSpec(
        "backup.completed",
        "info",
        "monitor",
        ("path", "sha256", "created_at", "keys", "bytes", "kinds"),
        "The backup loop wrote a backup of the Redis state.",
    ),
    EventSpec(
        "scale.executed",
        "info (warning if the command failed)",
        "autoscale",
        ("capability", "desired", "argv", "exit_code", "output", "duration_s"),
        "ORCH_SCALE_COMMAND ran for a capability's new desired count.",
    ),
)

BY_TYPE: dict[str, EventSpec] = {spec.type: spec for spec in CATALOGUE}
