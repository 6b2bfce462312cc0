"""What a submitter is told, as pure decisions: why parked, and how a resubmitted spec differs.

Why no agent can take a task, and how a spec submitted again under an id already accepted
differs from the accepted one. A parked task waits up to ORCH_PENDING_TIMEOUT_S and then goes
to the dead-letter store; a duplicate runs nothing again. Neither is an error, so nothing would
say why unless these do.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from orchestrator.models import AgentStatus, CircuitBreakerState, OrchestrationTask, RegisteredAgent
from orchestrator.routing.weights import effective_status

#: How many capable agents a reason names before it says "and N more".
NAMED_AGENTS = 5


def _names(capabilities: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in capabilities)


def _why_not(agent: RegisteredAgent, now: float, timeout_s: float, exclude: Collection[str]) -> str:
    """What keeps one agent that offers every required capability from taking the task."""
    if agent.agent_id in exclude:
        return "excluded (the task is moving off it)"
    status = effective_status(agent, now, timeout_s)
    if status is not AgentStatus.ACTIVE:
        return status.value
    if agent.circuit is CircuitBreakerState.OPEN:
        return "circuit open"
    return "circuit half-open"  # its trial calls taken: it admits no more for now


def park_reason(
    required: Sequence[str],
    agents: Iterable[RegisteredAgent],
    now: float,
    timeout_s: float,
    exclude: Collection[str] = (),
) -> str:
    """Why no agent is eligible for a task that needs `required`, in one line: the
    capabilities no registered agent offers; else that none offers them all together; else
    each agent that does, and what keeps it out (offline, sleeping, quarantined, its circuit,
    or `exclude`: the agents the task is being moved off)."""
    fleet = list(agents)
    offered = {name for a in fleet for name in a.capabilities}
    missing = [c for c in required if c not in offered]
    if missing:
        return f"no agent offers {_names(missing)}" + ("" if fleet else " (no agent is registered)")
    capable = sorted(
        (a for a in fleet if all(c in a.capabilities for c in required)), key=lambda a: a.agent_id
    )
    if not capable:
        return f"no agent offers {' and '.join(repr(c) for c in required)} together"
    parts = [f"{a.agent_id} {_why_not(a, now, timeout_s, exclude)}" for a in capable]
    shown = ", ".join(parts[:NAMED_AGENTS])
    if len(parts) > NAMED_AGENTS:
        shown += f" and {len(parts) - NAMED_AGENTS} more"
    which = f"no agent that offers {_names(required)}" if required else "no agent"
    return f"{which} can take it now: {shown}"


def parked_reason(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The reason recorded when the task was last parked (None: never parked, or parked by
    a version that kept none)."""
    for entry in reversed(history):
        if entry.get("state") == "parked":
            reason = entry.get("reason")
            return reason if isinstance(reason, str) else None
    return None


#: What is not the work itself: the id (which made it a duplicate), who submitted it, and the
#: links Celery's canvas hung on the submit message (new ids each time a chain is built).
NOT_THE_WORK = frozenset({"task_id", "client_id", "canvas"})


def spec_differences(accepted: OrchestrationTask, submitted: OrchestrationTask) -> tuple[str, ...]:
    """The fields (sorted) in which a spec submitted under an id already accepted asks for
    other work than the accepted one; () for a retry of the same spec, whoever sends it. Both
    are compared as JSON, as the ledger keeps a spec (a tuple in a payload is a list there)."""
    before = accepted.model_dump(mode="json", exclude=set(NOT_THE_WORK))
    after = submitted.model_dump(mode="json", exclude=set(NOT_THE_WORK))
    return tuple(sorted(name for name in before if before[name] != after.get(name)))
