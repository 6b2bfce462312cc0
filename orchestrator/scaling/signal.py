"""The autoscaling signal: per capability, the agents its backlog needs (pure).

The backlog of a capability is every task waiting for it: each priority sub-queue and each
fetched-but-unacknowledged message of the agents that offer it (what KEDA's Redis list scaler
cannot see, kedacore/keda#7066), plus the parked tasks that need it (no agent can take them:
the case where scaling from zero matters most). The desired count gives each agent at most
`target_backlog` of them, within [lo, hi]. This is the backlog rule only; hysteresis, a
cool-down and the latency and utilisation inputs are not part of it yet (README, Scaling).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.models import AgentStatus, AutoScalingAction, RegisteredAgent


@dataclass(frozen=True)
class CapabilityScale:
    """One row of the signal: what `orchestrator_desired_agents{capability}` serves."""

    capability: str
    current: int  # active agents offering it
    backlog: int  # tasks waiting (all priorities, unacknowledged, parked) for it
    desired: int
    action: AutoScalingAction


def desired_agents(backlog: int, target_backlog: int, lo: int, hi: int) -> int:
    """ceil(backlog / target_backlog), within [lo, hi]; at least one agent while any task
    waits, whatever `lo` says, so a parked task is never left without a capable agent."""
    floor = max(lo, 1) if backlog > 0 else lo
    return min(max(math.ceil(max(0, backlog) / target_backlog), floor), hi)


def action_for(current: int, desired: int) -> AutoScalingAction:
    if desired > current:
        return AutoScalingAction.SCALE_UP
    if desired < current:
        return AutoScalingAction.SCALE_DOWN
    return AutoScalingAction.MAINTAIN


def capability_backlogs(
    agents: Iterable[RegisteredAgent], depths: Mapping[str, int], parked: Mapping[str, int]
) -> dict[str, int]:
    """Tasks waiting per capability: each agent's queue depth counts toward every capability
    it offers; parked tasks count toward each capability they require."""
    out: dict[str, int] = dict(parked)
    for agent in agents:
        for cap in agent.capabilities:
            out[cap] = out.get(cap, 0) + depths.get(agent.queue, 0)
    return out


def scaling_signal(
    agents: Iterable[RegisteredAgent],
    depths: Mapping[str, int],
    parked: Mapping[str, int],
    *,
    target_backlog: int,
    lo: int,
    hi: int,
) -> list[CapabilityScale]:
    """One row per capability that any registered agent offers or any parked task needs,
    sorted by name. `agents` carry their effective status (only active ones count)."""
    agents = list(agents)
    backlogs = capability_backlogs(agents, depths, parked)
    current: dict[str, int] = {cap: 0 for cap in backlogs}
    for agent in agents:
        if agent.status is AgentStatus.ACTIVE:
            for cap in agent.capabilities:
                current[cap] = current.get(cap, 0) + 1
    rows = []
    for cap in sorted(current):
        desired = desired_agents(backlogs.get(cap, 0), target_backlog, lo, hi)
        rows.append(
            CapabilityScale(
                capability=cap,
                current=current[cap],
                backlog=backlogs.get(cap, 0),
                desired=desired,
                action=action_for(current[cap], desired),
            )
        )
    return rows
