"""Who sleeps, who wakes, who is recycled: the sleep/wake decisions (pure).

The loop (orchestrator.scaling.sleepwake) reads the fleet, its queues and the parked tasks,
calls `plan`, and carries the decisions out through Celery's own remote control
(`cancel_consumer`, `add_consumer`, `pool_restart`). Rules, in order:

1. **Wake** a sleeping agent when
   - tasks wait in its own queue (routed to it in the instant it fell asleep): `queued`;
   - a parked task needs a set of capabilities no awake agent offers and it does: `parked`;
   - the tasks waiting for one of its capabilities exceed `target_backlog` per awake agent
     (or any wait and none is awake): `backlog`, as many as bring it back under;
   - it was put to sleep by a window that has ended: `window ended`;
   - a capability it offers has fewer than `min_awake` awake agents (one died, say), unless
     an operator put it to sleep: `minimum awake`.
2. **Sleep** an active agent that has been idle (nothing routed to it unfinished) for
   `idle_after_s` (inside a sleep window: at once), longest idle first, while every capability
   it offers keeps at least `min_awake` awake agents and the remaining ones stay under the
   wake threshold (so a sleep is never undone by the next tick's backlog rule).
3. **Recycle** (pool restart, for consolidation) inside a window, each agent once per window
   occurrence and one agent per capability per tick: sleeping agents first, an idle awake one
   only when every capability it offers has another awake agent, so capacity never drops to 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.models import AgentStatus

Action = Literal["sleep", "wake", "recycle"]
WINDOW_REASON = "window"
MANUAL_REASON = "manual"  # `orchestrator agent sleep`: not undone to make up the minimum


@dataclass(frozen=True)
class AgentView:
    """What the decisions need to know of one agent."""

    agent_id: str
    capabilities: frozenset[str]
    status: AgentStatus  # effective: a stale heartbeat reads offline
    idle_s: float | None = None  # seen idle this long (nothing unfinished routed to it); None: busy
    waiting: int = 0  # messages waiting in its own queue (not yet fetched)
    slept_for: str | None = None  # why it sleeps: idle, window, manual, ...
    recycled_in: str | None = None  # the window occurrence it was last recycled in


@dataclass(frozen=True)
class SleepPolicy:
    idle_after_s: float  # 0: agents sleep only inside a window
    min_awake: int
    target_backlog: int  # tasks per awake agent a capability may have before one wakes


@dataclass(frozen=True)
class Decision:
    agent_id: str
    action: Action
    reason: str


@dataclass
class _Tally:
    """Awake agents per capability, kept current as decisions are taken."""

    awake: dict[str, int] = field(default_factory=dict)

    def add(self, caps: Iterable[str], n: int) -> None:
        for cap in caps:
            self.awake[cap] = self.awake.get(cap, 0) + n

    def of(self, cap: str) -> int:
        return self.awake.get(cap, 0)


def _needed(backlog: int, target: int) -> int:
    """Awake agents a backlog needs so none has more than `target` waiting."""
    return -(-backlog // target) if backlog > 0 else 0


def _wakes(
    agents: Sequence[AgentView],
    backlog: Mapping[str, int],
    parked: Mapping[frozenset[str], int],
    policy: SleepPolicy,
    window: str | None,
    tally: _Tally,
) -> list[Decision]:
    asleep = [a for a in agents if a.status is AgentStatus.SLEEPING]
    woken: dict[str, str] = {}

    def wake(agent: AgentView, reason: str) -> None:
        if agent.agent_id not in woken:
            woken[agent.agent_id] = reason
            tally.add(agent.capabilities, 1)

    for agent in asleep:
        if agent.waiting > 0:
            wake(agent, "queued")
    awake = [a for a in agents if a.status is AgentStatus.ACTIVE]
    for needs in sorted(parked, key=sorted):
        if parked[needs] <= 0 or any(needs <= a.capabilities for a in awake):
            continue
        if any(needs <= a.capabilities for a in asleep if a.agent_id in woken):
            continue
        capable = [a for a in asleep if needs <= a.capabilities]
        if capable:
            wake(capable[0], "parked")
    for cap in sorted(backlog):
        want = _needed(backlog[cap], policy.target_backlog)
        for agent in (a for a in asleep if cap in a.capabilities):
            if tally.of(cap) >= want:
                break
            wake(agent, "backlog")
    for agent in asleep:
        if agent.slept_for == WINDOW_REASON and window is None:
            wake(agent, "window ended")
    for agent in asleep:
        if agent.slept_for != MANUAL_REASON and any(
            tally.of(cap) < policy.min_awake for cap in agent.capabilities
        ):
            wake(agent, "minimum awake")
    return [Decision(a.agent_id, "wake", woken[a.agent_id]) for a in asleep if a.agent_id in woken]


def _sleeps(
    agents: Sequence[AgentView],
    backlog: Mapping[str, int],
    policy: SleepPolicy,
    window: str | None,
    tally: _Tally,
) -> list[Decision]:
    threshold = 0.0 if window is not None else policy.idle_after_s
    if window is None and policy.idle_after_s <= 0:
        return []
    idle = [
        a
        for a in agents
        if a.status is AgentStatus.ACTIVE and a.idle_s is not None and a.idle_s >= threshold
    ]
    out = []
    for agent in sorted(idle, key=lambda a: (-(a.idle_s or 0.0), a.agent_id)):
        left = {cap: tally.of(cap) - 1 for cap in agent.capabilities}
        if all(
            n >= policy.min_awake and n >= _needed(backlog.get(cap, 0), policy.target_backlog)
            for cap, n in left.items()
        ):
            tally.add(agent.capabilities, -1)
            reason = WINDOW_REASON if window is not None else "idle"
            out.append(Decision(agent.agent_id, "sleep", reason))
    return out


def _recycles(
    agents: Sequence[AgentView], window: str, decided: Mapping[str, Action], tally: _Tally
) -> list[Decision]:
    """Sleeping agents (asleep before this tick) first, then idle awake ones with a spare."""
    due = [a for a in agents if a.recycled_in != window and a.agent_id not in decided]
    asleep = [a for a in due if a.status is AgentStatus.SLEEPING]
    awake = [a for a in due if a.status is AgentStatus.ACTIVE and a.idle_s is not None]
    used: set[str] = set()
    out = []
    for agent in [*asleep, *awake]:
        if used & agent.capabilities:
            continue
        if agent.status is AgentStatus.ACTIVE and any(
            tally.of(cap) < 2 for cap in agent.capabilities
        ):
            continue
        used |= agent.capabilities
        out.append(Decision(agent.agent_id, "recycle", window))
    return out


def wake_for(needs: frozenset[str], agents: Sequence[AgentView]) -> str | None:
    """The sleeping agent a parked task needing `needs` wakes now (the event handler's
    shortcut of rule 1): None while an awake agent could take it (it is routed at the next
    sweep) or no sleeping one can."""
    if any(a.status is AgentStatus.ACTIVE and needs <= a.capabilities for a in agents):
        return None
    asleep = sorted(
        (a for a in agents if a.status is AgentStatus.SLEEPING and needs <= a.capabilities),
        key=lambda a: a.agent_id,
    )
    return asleep[0].agent_id if asleep else None


def plan(
    agents: Sequence[AgentView],
    backlog: Mapping[str, int],
    parked: Mapping[frozenset[str], int],
    policy: SleepPolicy,
    window: str | None = None,
) -> list[Decision]:
    """This tick's decisions: wakes, then sleeps, then (inside a window) recycles.

    `backlog` is the tasks waiting per capability in awake agents' queues; `parked` counts
    parked tasks by the set of capabilities they require; `window` names the sleep window
    occurrence now in force (None outside every window)."""
    agents = sorted(agents, key=lambda a: a.agent_id)
    tally = _Tally()
    for agent in agents:
        if agent.status is AgentStatus.ACTIVE:
            tally.add(agent.capabilities, 1)
    decisions = _wakes(agents, backlog, parked, policy, window, tally)
    decisions += _sleeps(agents, backlog, policy, window, tally)
    if window is not None:
        decided = {d.agent_id: d.action for d in decisions}
        decisions += _recycles(agents, window, decided, tally)
    return decisions
