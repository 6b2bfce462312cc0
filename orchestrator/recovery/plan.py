"""Recovery planning: what to do with a task whose attempt failed (SPEC 7, `RecoveryTier`).

Pure: the edge gathers the facts (attempt counts, who already failed this task, the agents
as the registry sees them, the failing agent's recent record) and passes `now` and a seeded
`random.Random`, so every decision is reproducible in a test and in a post-mortem.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from enum import StrEnum

from orchestrator.models import AgentStatus, RecoveryPlan, RecoveryTier, RegisteredAgent
from orchestrator.routing.weights import agent_weight

# Exponents past this add nothing (any sane cap is reached long before) but would overflow.
_MAX_EXPONENT = 64


class ErrorKind(StrEnum):
    """Why an attempt failed, as the worker edge classifies it."""

    TRANSIENT = "transient"  # the handler raised TransientError
    TIMEOUT = "timeout"  # the attempt ran past its timeout_s
    CRASH = "crash"  # any other exception from the handler
    LOST = "lost"  # the agent died (heartbeat gone) mid-run
    PERMANENT = "permanent"  # the handler raised PermanentError
    POISON = "poison"  # the message was redelivered past the cap


def capable(agent: RegisteredAgent, required: Iterable[str]) -> bool:
    """Active and declares every required capability. The healer passes only agents the
    router found eligible (heartbeat, circuit); this re-check keeps the planner safe on its
    own."""
    return agent.status is AgentStatus.ACTIVE and all(c in agent.capabilities for c in required)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter spreads the retries of many tasks that failed together (one agent or one
    dependency hiccup) instead of sending them back in synchronised waves.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def pick_reroute_target(
    agents: list[RegisteredAgent],
    required: list[str],
    exclude: Iterable[str],
) -> RegisteredAgent | None:
    """The capable agent with the highest weight outside `exclude`; ties go to the lowest
    agent_id so that the same facts always give the same plan."""
    excluded = set(exclude)
    candidates = [a for a in agents if a.agent_id not in excluded and capable(a, required)]
    if not candidates:
        return None
    return min(candidates, key=lambda a: (-agent_weight(a, required, intelligent=True), a.agent_id))


def plan_recovery(
    *,
    task_id: str,
    error_kind: ErrorKind,
    attempts: int,
    max_retries: int,
    failed_agent: str | None,
    failed_agents_for_task: set[str],
    agents: list[RegisteredAgent],
    required_capabilities: list[str],
    agent_recent_failures: int,
    quarantine_threshold: int,
    now: float,
    rng: random.Random,
    base_delay_s: float = 1.0,
    max_delay_s: float = 60.0,
    escalation_timeout_s: float = 300.0,
    quarantine_allowed: bool = True,
) -> RecoveryPlan:
    """Choose the recovery tier for a failed attempt. First matching rule wins:

    1. permanent -> escalate: retrying cannot help.
    2. poison -> escalate: the message must leave circulation.
    3. attempts >= max_retries + 1 -> escalate: retries exhausted (`attempts` counts every
       attempt made so far, the failed one included).
    4. the failing agent has >= quarantine_threshold recent failures and the ejection floor
       allows its quarantine (`quarantine_allowed`, recovery/floor.py) -> quarantine it and
       send the task to the best other capable agent that has not failed it. With none left
       (every capable agent failed it) the plan has no target and the edge dead-letters the
       task: waiting would only hand it to an agent that failed it, once its quarantine
       ends. A quarantine the floor refuses leaves the agent eligible, and the next rules
       decide.
    5. transient / timeout -> retry on the same agent after a jittered backoff, or reroute
       if that agent is no longer eligible.
    6. crash / lost -> reroute to the highest-weight capable agent that has not failed this
       task; failing that, retry on the same agent if it is still eligible.
    If no agent is left for 5 or 6 -> escalate ("no other capable agent").

    `plan.attempt` is `attempts`; `plan.deadline` is when an unfinished plan escalates.
    """
    deadline = now + escalation_timeout_s
    by_id = {a.agent_id: a for a in agents}
    exclude = set(failed_agents_for_task)
    if failed_agent is not None:
        exclude.add(failed_agent)

    def plan(
        tier: RecoveryTier, reason: str, target: str | None = None, delay: float = 0.0
    ) -> RecoveryPlan:
        return RecoveryPlan(
            task_id=task_id,
            tier=tier,
            reason=reason,
            attempt=attempts,
            failed_agent=failed_agent,
            target_agent=target,
            delay_s=delay,
            created_at=now,
            deadline=deadline,
        )

    def retry(reason: str) -> RecoveryPlan:
        delay = backoff_delay(attempts, base_delay_s, max_delay_s, rng)
        return plan(RecoveryTier.RETRY, reason, failed_agent, delay)

    def reroute_or_escalate(reason: str) -> RecoveryPlan:
        target = pick_reroute_target(agents, required_capabilities, exclude)
        if target is None:
            return plan(RecoveryTier.ESCALATE, f"{reason}; no other capable agent")
        return plan(RecoveryTier.REROUTE, reason, target.agent_id)

    kind = ErrorKind(error_kind)
    if kind is ErrorKind.PERMANENT:
        return plan(RecoveryTier.ESCALATE, "permanent error: retrying cannot help")
    if kind is ErrorKind.POISON:
        return plan(RecoveryTier.ESCALATE, "poison message: redelivery cap exceeded")
    if attempts >= max_retries + 1:
        return plan(
            RecoveryTier.ESCALATE,
            f"retries exhausted ({attempts} attempts, max_retries={max_retries})",
        )
    if (
        failed_agent is not None
        and agent_recent_failures >= quarantine_threshold
        and quarantine_allowed
    ):
        target = pick_reroute_target(agents, required_capabilities, exclude)
        reason = (
            f"agent {failed_agent} failed {agent_recent_failures} recent tasks "
            f"(threshold {quarantine_threshold})"
        )
        if target is None:
            reason += "; every capable agent failed this task"
        return plan(RecoveryTier.QUARANTINE, reason, None if target is None else target.agent_id)

    same = by_id.get(failed_agent) if failed_agent is not None else None
    same_ok = same is not None and capable(same, required_capabilities)
    if kind in (ErrorKind.TRANSIENT, ErrorKind.TIMEOUT):
        if same_ok:
            return retry(f"{kind.value} error: retry on the same agent after backoff")
        why = (
            "no failing agent is known"
            if failed_agent is None
            else f"agent {failed_agent} is not eligible"
        )
        return reroute_or_escalate(f"{kind.value} error and {why}")

    target = pick_reroute_target(agents, required_capabilities, exclude)
    if target is not None:
        return plan(RecoveryTier.REROUTE, f"{kind.value}: move to another agent", target.agent_id)
    if same_ok:
        return retry(f"{kind.value}: no other capable agent; retry on the same agent")
    return plan(RecoveryTier.ESCALATE, f"{kind.value}: no other capable agent")
