"""The backlog per capability and each agent's free slots, as the exporter serves them (pure).

The store reads the backlog per capability set (BacklogGroup: a set is the capabilities one
task needs); a capability's figures take in every set that names it, so a task needing
several capabilities counts toward each of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from orchestrator.models import AgentStatus, RegisteredAgent

if TYPE_CHECKING:
    from orchestrator.store.backlog import BacklogGroup


def capabilities_of(capability_key: str) -> list[str]:
    """The capability names of a capability set key (`a,b`)."""
    return [name for name in capability_key.split(",") if name]


def capability_backlog(
    groups: Iterable[BacklogGroup],
) -> tuple[dict[tuple[str, int], int], dict[str, float]]:
    """Tasks waiting per (capability, priority), and the oldest wait per capability (s)."""
    tasks: dict[tuple[str, int], int] = {}
    oldest: dict[str, float] = {}
    for group in groups:
        if group.waiting <= 0:
            continue
        for name in capabilities_of(group.capability_key):
            for priority, n in group.by_priority.items():
                tasks[(name, priority)] = tasks.get((name, priority), 0) + n
            oldest[name] = max(oldest.get(name, 0.0), group.oldest_s)
    return tasks, oldest


def slots_of(concurrency: int, prefetch: int) -> int:
    """How many unended tasks an agent may hold: its concurrency + ORCH_AGENT_PREFETCH."""
    return max(1, concurrency) + prefetch


def slots_free(agents: Iterable[RegisteredAgent], prefetch: int) -> dict[str, int]:
    """Free slots of every live agent (its effective status not offline): its slots minus
    its unended tasks, never below 0."""
    return {
        a.agent_id: max(0, slots_of(a.concurrency, prefetch) - a.in_flight)
        for a in agents
        if a.status is not AgentStatus.OFFLINE
    }
