"""The autoscaling signal's vocabulary: a capability's backlog and the action a count implies.

The backlog of a capability is every task waiting for it: each priority sub-queue and each
fetched-but-unacknowledged message of the agents that offer it (what KEDA's Redis list scaler
cannot see, kedacore/keda#7066), plus every task waiting in the backlog that needs it (queued
for a free slot, or parked with no agent at all: the case where scaling from zero matters
most). The rules that turn it into a desired count,
with utilisation, latency, hysteresis and a cool-down, are scaling/decide.py. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from orchestrator.models import AutoScalingAction, RegisteredAgent


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
    it offers; backlog tasks count toward each capability they require."""
    out: dict[str, int] = dict(parked)
    for agent in agents:
        for cap in agent.capabilities:
            out[cap] = out.get(cap, 0) + depths.get(agent.queue, 0)
    return out
