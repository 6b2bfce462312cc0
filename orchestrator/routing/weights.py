"""Pure routing decisions: eligibility, weights, and the three selection algorithms.

Nothing here touches Redis, Celery or the clock: the store runs the same weighted
round-robin step as a Lua script, and tests compare the two.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping, Sequence

from orchestrator.models import AgentStatus, CircuitBreakerState, RegisteredAgent

WEIGHT_SCALE = 1000
"""Weights travel to Redis as integers (proficiency x score x 1000), so every router and the
Lua script do exact integer arithmetic and agree on ties."""

LATENCY_FLOOR_MS = 50.0
"""Latencies below this are treated as equal: sub-millisecond noise must not skew routing."""


def wrr_step(current: Mapping[str, int], weights: Mapping[str, int]) -> tuple[str, dict[str, int]]:
    """One pick of nginx's smooth weighted round-robin.

    Every peer gains its weight, the largest `current` wins (ties: first in sorted id order),
    and the winner pays back the total. Peers absent from `weights` drop out of the state.
    """
    if not weights:
        raise ValueError("wrr_step needs at least one weighted peer")
    total = 0
    best: str | None = None
    state: dict[str, int] = {}
    for peer in sorted(weights):
        weight = weights[peer]
        if weight <= 0:
            raise ValueError(f"weight of {peer!r} must be positive (got {weight})")
        value = current.get(peer, 0) + weight
        state[peer] = value
        total += weight
        if best is None or value > state[best]:
            best = peer
    assert best is not None
    state[best] -= total
    return best, state


def wrr_sequence(weights: Mapping[str, int], n: int) -> list[str]:
    """The first `n` picks from a zero state (for tests and documentation)."""
    state: dict[str, int] = {}
    picks = []
    for _ in range(n):
        peer, state = wrr_step(state, weights)
        picks.append(peer)
    return picks


def effective_status(agent: RegisteredAgent, now: float, timeout_s: float) -> AgentStatus:
    """An active or sleeping agent whose heartbeat is older than the timeout counts as
    offline, whatever it said (a sleeping agent still beats)."""
    if (
        agent.status in (AgentStatus.ACTIVE, AgentStatus.SLEEPING)
        and now - agent.last_heartbeat > timeout_s
    ):
        return AgentStatus.OFFLINE
    return agent.status


def is_eligible(
    agent: RegisteredAgent,
    required: Iterable[str],
    now: float,
    timeout_s: float,
    circuit_admits: bool = True,
) -> bool:
    """Active, fresh heartbeat, every required capability, and a circuit that admits work."""
    if effective_status(agent, now, timeout_s) is not AgentStatus.ACTIVE:
        return False
    if agent.circuit is CircuitBreakerState.OPEN or not circuit_admits:
        return False
    return all(cap in agent.capabilities for cap in required)


def performance_score(
    succeeded: int,
    failed: int,
    latency_ms: float | None,
    reference_latency_ms: float | None,
    success_rate: float | None = None,
) -> float:
    """Recent success rate x relative speed, in [0.05, 1]; 1.0 for an agent with no history.

    `success_rate` is the agent's recent (exponentially weighted) rate when known; otherwise
    the lifetime counts are smoothed with a prior of four successes so one early failure does
    not halve a new agent's share.
    """
    if success_rate is None:
        success_rate = (succeeded + 4) / (succeeded + failed + 4)
    speed = 1.0
    if latency_ms is not None and reference_latency_ms is not None:
        speed = min(
            1.0, (reference_latency_ms + LATENCY_FLOOR_MS) / (latency_ms + LATENCY_FLOOR_MS)
        )
    return max(0.05, min(1.0, success_rate * speed))


def health_factor(agent: RegisteredAgent) -> float:
    """Half-open circuits get a small share: they are on probation."""
    return 0.25 if agent.circuit is CircuitBreakerState.HALF_OPEN else 1.0


def agent_weight(agent: RegisteredAgent, required: Sequence[str], intelligent: bool) -> float:
    """Lowest proficiency among the required capabilities x the lowest performance score
    among them (orchestrator.optimize's, routing/scores.py; where a capability has none yet,
    the agent's own, which is 1.0 for a new agent) x health."""
    if not intelligent:
        return 1.0
    proficiency = min((agent.capabilities[cap] for cap in required), default=1.0)
    own = agent.performance_score
    score = min((agent.capability_scores.get(cap, own) for cap in required), default=own)
    return proficiency * score * health_factor(agent)


def integer_weights(
    agents: Sequence[RegisteredAgent], required: Sequence[str], intelligent: bool
) -> dict[str, int]:
    return {
        a.agent_id: max(1, round(agent_weight(a, required, intelligent) * WEIGHT_SCALE))
        for a in agents
    }


def pick_least_loaded(
    agents: Sequence[RegisteredAgent], weights: Mapping[str, int]
) -> RegisteredAgent:
    """Fewest in-flight tasks per unit of weight; ties go to the higher weight, then the id."""
    return min(
        agents,
        key=lambda a: (a.in_flight / weights[a.agent_id], -weights[a.agent_id], a.agent_id),
    )


def pick_power_of_two(
    agents: Sequence[RegisteredAgent],
    rng: random.Random,
    slots: Mapping[str, int] | None = None,
) -> RegisteredAgent:
    """Power of two choices on latency x (in-flight + 1) / slots: cheap and hard to herd;
    an agent with four times the slots counts its load a quarter as heavy.

    A tie goes to the first of the two drawn, so agents that look alike (an idle fleet) share
    at random; ordering ties by id would send every tie to the lowest id."""
    if len(agents) == 1:
        return agents[0]
    first, second = rng.sample(list(agents), 2)

    def cost(agent: RegisteredAgent) -> float:
        latency = max(agent.latency_ms or 0.0, 1.0)
        room = slots.get(agent.agent_id, 1) if slots else 1
        return latency * (agent.in_flight + 1) / room / max(agent.performance_score, 0.05)

    return min(first, second, key=cost)


def follow_affinity(stuck: str | None, eligible: Collection[str], fallback: str) -> str:
    """An affinity key stays with its agent while that agent is eligible, and moves to the
    router's own pick when it is not (or has none yet). The store runs this as one Lua step
    with the read and the write together, so routers racing on a new key agree."""
    return stuck if stuck is not None and stuck in eligible else fallback


def to_broker_priority(priority: int) -> int:
    """SPEC priority 9 is most urgent; Redis's priority lists serve 0 first."""
    return 9 - priority
