"""The state store: every read and write of orchestrator state in Redis.

One class, StateStore, made of the agent half (agents), the task half (ledger, over the
backlog and dispatching in backlog), the dead-letter store of both kinds (dlq), recovery's
plans and lost agents' tasks (recovery), the per-client limits (clients), the control
workers' consumer group on the event stream (events), sleeping agents' checkpoints (sleep)
and the key layout's migration (migrate), over a shared base (base); the end of a run
(settle_run), which spans the agent and task halves, is here. Key names come from keys, the
codes the Lua steps answer with from codes, and the atomic steps from scripts (Lua in lua/),
so a reader finds every key in one place and every multi-key change in another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.config import Settings
from orchestrator.models import CircuitBreakerConfig, TaskState
from orchestrator.store.agents import AgentStore, Fleet, WrrPeers, _circuit_args, _outcome_args
from orchestrator.store.backlog import DispatchConfig, Dispatched, parse_fills
from orchestrator.store.base import now_s
from orchestrator.store.clients import ClientStore
from orchestrator.store.dlq import DeadLetterStore
from orchestrator.store.events import EventGroupStore
from orchestrator.store.keys import AGENT_STATS, circuit_key
from orchestrator.store.ledger import Attempt
from orchestrator.store.migrate import KeyMigrationStore
from orchestrator.store.recovery import RecoveryStore
from orchestrator.store.sleep import SleepStore
from orchestrator.store.telemetry import telemetry_step


class StateStore(
    AgentStore,
    DeadLetterStore,
    RecoveryStore,
    ClientStore,
    EventGroupStore,
    SleepStore,
    KeyMigrationStore,
):
    """All reads and writes of orchestrator state. One instance per process."""

    def configure(self, settings: Settings) -> None:
        self.dispatch_config = DispatchConfig.of(settings)

    def settle_run(
        self,
        task_id: str,
        agent_id: str,
        state: TaskState,
        now: float,
        latency_ms: float,
        task_type: str,
        counts: Mapping[str, int],
        circuit_cfg: CircuitBreakerConfig | None = None,
        result: str | None = None,
        error: str | None = None,
        stats_type: str | None = None,
    ) -> tuple[bool, list[Dispatched]]:
        """The end of a handler run that ends its task, in one round trip: the agent's stats
        and breaker (record_outcome), the terminal state (finish) and, only if this run is the
        one that ended the task, its telemetry `counts`; then the freed slot filled from the
        backlog (the tasks returned, for the caller to publish). False when it had already
        ended. `stats_type` is the type the agent's per-type stats go under (default:
        task_type)."""
        ok = state is TaskState.SUCCEEDED
        kind = task_type if stats_type is None else stats_type
        stats = _outcome_args(agent_id, ok, latency_ms, task_type=kind)
        breaker = _circuit_args(ok, now, circuit_cfg) if circuit_cfg is not None else []
        keys, ending = self._finish_step(
            task_id, state, agent_id, agent_id, now, error, latency_ms, task_type, result
        )
        count_keys, counting = telemetry_step(counts, now)
        args: list[Any] = []
        dispatching = [*self.backlog_context(now), latency_ms / 1000.0]
        for part in (stats, breaker, ending, counting, dispatching):
            args += [len(part), *part]
        with self._translate():
            done, _previous, transition, *fills = self._settle(
                keys=[AGENT_STATS, circuit_key(agent_id), *keys, *count_keys], args=args
            )
        self.announce_circuit(agent_id, str(transition), now)
        return int(done) == 1, parse_fills(fills)


__all__ = ["Attempt", "Dispatched", "Fleet", "StateStore", "WrrPeers", "now_s"]
