"""The ejection floor: how far quarantine and open circuits may thin a capability's agents.

Envoy's outlier detection never ejects a cluster's hosts below its panic threshold: with
fewer healthy hosts than that it balances over all of them, because a failing host still
serves some requests and an empty cluster serves none. Here the same rule keeps at least
`min_healthy_fraction` of each capability's live agents eligible, and at least one: an
ejection past the floor is refused (the agent keeps receiving work), so a task that fails
everywhere fails quickly, with its reason, instead of parking until a quarantine ends.

Pure: the router and the healer pass in the fleet as they read it and `now`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.models import (
    AgentStatus,
    CircuitBreakerConfig,
    CircuitBreakerState,
    RegisteredAgent,
)
from orchestrator.recovery.breaker import CLOSED_BREAKER, BreakerState, would_admit

# ceil(0.5 * 4) must be 2, not 3 from a float just above 2.0.
_EPSILON = 1e-9


@dataclass(frozen=True)
class EjectionRefused:
    """An ejection the floor refused: taking `agent_id` out would leave `healthy` of the
    `total` live agents of `capability` eligible, fewer than `floor`."""

    agent_id: str
    capability: str
    healthy: int
    total: int
    floor: int


def healthy_floor(total: int, fraction: float) -> int:
    """How many of `total` live agents must stay eligible: ceil(fraction x total), and at
    least one while there is any. A fraction of 0 turns the floor off."""
    if fraction <= 0 or total <= 0:
        return 0
    return max(1, math.ceil(fraction * total - _EPSILON))


def refused_ejections(
    pools: Mapping[str, Collection[str]], ejecting: Sequence[str], fraction: float
) -> dict[str, EjectionRefused]:
    """Which of `ejecting` the floor refuses, given each pool's live agents (a capability's,
    or a capability set's).

    The ejections are granted in the order given (the caller puts the ones that stand first)
    while every pool holding the agent keeps at least `healthy_floor` agents not ejected;
    each one that would take a pool below its floor is refused, and stays eligible. An agent
    in no pool (not live) is no one's last hope: its ejection stands.
    """
    totals = {name: len(set(agents)) for name, agents in pools.items()}
    floors = {name: healthy_floor(total, fraction) for name, total in totals.items()}
    member_of: dict[str, list[str]] = {}
    for name in sorted(pools):
        for agent_id in set(pools[name]):
            member_of.setdefault(agent_id, []).append(name)
    out = dict.fromkeys(pools, 0)
    refused: dict[str, EjectionRefused] = {}
    seen: set[str] = set()
    for agent_id in ejecting:
        if agent_id in seen:
            continue
        seen.add(agent_id)
        names = member_of.get(agent_id, [])
        short = next((n for n in names if totals[n] - out[n] - 1 < floors[n]), None)
        if short is not None:
            refused[agent_id] = EjectionRefused(
                agent_id, short, totals[short] - out[short] - 1, totals[short], floors[short]
            )
            continue
        for name in names:
            out[name] += 1
    return refused


def is_live(agent: RegisteredAgent, now: float, timeout_s: float) -> bool:
    """Up and beating, whether routing takes it or an ejection holds it out: the agents a
    floor is a share of (a sleeping agent is parked on purpose, not ejected)."""
    return (
        agent.status in (AgentStatus.ACTIVE, AgentStatus.QUARANTINED)
        and now - agent.last_heartbeat <= timeout_s
    )


def circuit_out(
    agents: Iterable[RegisteredAgent],
    breakers: Mapping[str, BreakerState],
    cfg: CircuitBreakerConfig | None,
    now: float,
) -> dict[str, float]:
    """The agents (not quarantined) whose breaker keeps work from them now, the way routing
    judges it (open, or half-open with every trial slot taken), each with when it opened."""
    out: dict[str, float] = {}
    for agent in agents:
        if agent.status is AgentStatus.QUARANTINED:
            continue
        breaker = breakers.get(agent.agent_id, CLOSED_BREAKER)
        refuses = agent.circuit is CircuitBreakerState.OPEN or (
            cfg is not None and not would_admit(breaker, cfg, now)
        )
        if refuses:
            out[agent.agent_id] = breaker.opened_at or breaker.half_opened_at or 0.0
    return out


def ejection_order(pool: Iterable[RegisteredAgent], out: Mapping[str, float]) -> list[str]:
    """Quarantines first (the healer checked the floor before each), then open circuits,
    longest open first: when the floor takes some back, it takes the newest."""
    agents = list(pool)
    quarantined = sorted(a.agent_id for a in agents if a.status is AgentStatus.QUARANTINED)
    circuits = sorted((out[a.agent_id], a.agent_id) for a in agents if a.agent_id in out)
    return quarantined + [agent_id for _, agent_id in circuits if agent_id not in quarantined]


def readmitted(
    agents: Sequence[RegisteredAgent],
    required: Sequence[str],
    *,
    breakers: Mapping[str, BreakerState],
    cfg: CircuitBreakerConfig | None,
    now: float,
    timeout_s: float,
    fraction: float,
) -> dict[str, RegisteredAgent]:
    """The ejected agents routing takes back for tasks needing `required` (panic mode),
    each as routing should see it: active with a closed circuit, so no trial slot is asked
    for. Empty in the usual case (nothing ejected, or enough left)."""
    if fraction <= 0:
        return {}
    pool = [
        a
        for a in agents
        if is_live(a, now, timeout_s) and all(cap in a.capabilities for cap in required)
    ]
    order = ejection_order(pool, circuit_out(pool, breakers, cfg, now))
    if not order:
        return {}
    refused = refused_ejections({",".join(required): [a.agent_id for a in pool]}, order, fraction)
    return {
        a.agent_id: a.model_copy(
            update={"status": AgentStatus.ACTIVE, "circuit": CircuitBreakerState.CLOSED}
        )
        for a in pool
        if a.agent_id in refused
    }


def ejection_refusals(
    agent_id: str,
    agents: Sequence[RegisteredAgent],
    *,
    breakers: Mapping[str, BreakerState],
    cfg: CircuitBreakerConfig | None,
    now: float,
    timeout_s: float,
    fraction: float,
    quarantine: bool,
) -> list[EjectionRefused]:
    """Would ejecting `agent_id` (a quarantine, or else its open circuit) break the floor of
    any of its capabilities? One refusal per capability it would leave short.

    A quarantine asked for now ranks after the quarantines in force and before every open
    circuit, as routing will rank it once granted."""
    agent = next((a for a in agents if a.agent_id == agent_id), None)
    if agent is None or fraction <= 0:
        return []
    refusals = []
    for capability in sorted(agent.capabilities):
        pool = [a for a in agents if is_live(a, now, timeout_s) and capability in a.capabilities]
        if quarantine:
            held = [a for a in pool if a.status is AgentStatus.QUARANTINED]
            order = [*ejection_order(held, {}), agent_id]
        else:
            order = ejection_order(pool, circuit_out(pool, breakers, cfg, now))
        verdict = refused_ejections({capability: [a.agent_id for a in pool]}, order, fraction)
        if agent_id in verdict:
            refusals.append(verdict[agent_id])
    return refusals
