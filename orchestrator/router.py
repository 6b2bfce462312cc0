"""The router: validate, record, pick an agent, and hand the task to a publisher.

It sits between the pure decisions (`routing`) and the Celery edge: publishing is a callable
passed in, so the same router serves the `orchestrator.submit` task and the parked-task sweep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Settings
from orchestrator.errors import InvalidTask, NoCapableAgent
from orchestrator.models import (
    OrchestrationStrategy,
    OrchestrationTask,
    RegisteredAgent,
    TaskState,
    parse_task,
)
from orchestrator.routing import (
    integer_weights,
    is_eligible,
    pick_least_loaded,
    pick_power_of_two,
)
from orchestrator.store import StateStore

Publisher = Callable[[OrchestrationTask, RegisteredAgent], None]
AFFINITY_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Outcome:
    """What happened to one submission (for logs, the CLI and tests)."""

    task_id: str
    status: str  # routed | parked | duplicate | rejected | expired
    agent_id: str | None = None


class Router:
    def __init__(
        self,
        store: StateStore,
        settings: Settings,
        publish: Publisher,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.publish = publish
        self.rng = rng or random.Random()
        self.strategy = OrchestrationStrategy(settings.load_balancing_algorithm)

    def submit(self, fields: dict[str, Any], submit_id: str, now: float) -> Outcome:
        """Accept (or reject) one submission and route it. Raises InvalidTask on bad input."""
        try:
            task = parse_task(fields, self.settings.max_payload_bytes)
        except InvalidTask as exc:
            client = fields.get("client_id")
            self.store.record_rejection(
                exc.problems, submit_id, now, client if isinstance(client, str) else None
            )
            raise
        if task.task_id is None:
            task = task.model_copy(update={"task_id": submit_id})
        assert task.task_id is not None
        status, state = self.store.accept(task, submit_id, now)
        if status == "duplicate" or (status == "resume" and TaskState(state).terminal):
            self.store.count_duplicate(task.task_id, now)
            return Outcome(task.task_id, "duplicate")
        return self.route(task, now)

    def choose(
        self, task: OrchestrationTask, agents: list[RegisteredAgent], now: float
    ) -> RegisteredAgent | None:
        required = task.required_capabilities
        eligible = [
            a for a in agents if is_eligible(a, required, now, self.settings.agent_timeout_s)
        ]
        if not eligible:
            return None
        by_id = {a.agent_id: a for a in eligible}
        if task.affinity_key:
            sticky = self.store.get_affinity(task.affinity_key)
            if sticky in by_id:
                return by_id[sticky]
        weights = integer_weights(eligible, required, self.settings.intelligent_routing_enabled)
        if self.strategy is OrchestrationStrategy.LEAST_LOADED:
            chosen = pick_least_loaded(eligible, weights)
        elif self.strategy is OrchestrationStrategy.POWER_OF_TWO:
            chosen = pick_power_of_two(eligible, self.rng)
        else:
            chosen = by_id[self.store.wrr_pick(task.capability_key, weights)]
        if task.affinity_key:
            self.store.set_affinity(task.affinity_key, chosen.agent_id, AFFINITY_TTL_S)
        return chosen

    def route(
        self, task: OrchestrationTask, now: float, agents: list[RegisteredAgent] | None = None
    ) -> Outcome:
        assert task.task_id is not None
        chosen = self.choose(task, agents if agents is not None else self.store.load_agents(), now)
        if chosen is None:
            self.store.park(task, now)
            return Outcome(task.task_id, "parked")
        if not self.store.mark_routed(task, chosen.agent_id, now):
            return Outcome(task.task_id, "duplicate")
        self.publish(task, chosen)
        return Outcome(task.task_id, "routed", chosen.agent_id)

    def route_parked(
        self, now: float, on_expired: Callable[[str, NoCapableAgent], None]
    ) -> list[Outcome]:
        """Route every parked task that has a capable agent now; expire the ones parked too
        long. Each task is claimed first, so concurrent sweeps never route one twice."""
        outcomes: list[Outcome] = []
        parked = self.store.parked()
        if not parked:
            return outcomes
        agents = self.store.load_agents()
        for task_id, parked_at in parked:
            if not self.store.claim_parked(task_id):
                continue
            try:
                task = self.store.load_spec(task_id)
            except Exception:
                continue  # the ledger expired: nothing left to route
            waited = now - parked_at
            if waited > self.settings.pending_timeout_s:
                error = NoCapableAgent(task_id, task.required_capabilities, waited)
                self.store.finish(
                    task_id,
                    TaskState.DEAD_LETTERED,
                    None,
                    now,
                    error=str(error),
                    task_type=task.type,
                )
                on_expired(task_id, error)
                outcomes.append(Outcome(task_id, "expired"))
                continue
            chosen = self.choose(task, agents, now)
            if chosen is None:
                self.store.unclaim_parked(task_id, parked_at)
                continue
            if self.store.mark_routed(task, chosen.agent_id, now):
                self.publish(task, chosen)
                outcomes.append(Outcome(task_id, "routed", chosen.agent_id))
        return outcomes
