"""The state store: every read and write of orchestrator state in Redis.

One class, StateStore, made of the agent half (agents), the task half (ledger, over the
backlog and dispatching in backlog; a new task placed in one step in placing), the
dead-letter store of both kinds (dlq), recovery's plans and lost agents' tasks (recovery),
the per-client limits (clients), the control workers' consumer group on the event streams
(event_group), the event log's readers (event_log), sleeping agents' checkpoints (sleep)
and the key layout's migration (migrate), over a shared base (base); the end of a run
(settle_run), which spans the agent and task halves, is here. Key names come from keys, the
codes the Lua steps answer with from codes, and the atomic steps from scripts (Lua in lua/),
so a reader finds every key in one place and every multi-key change in another.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import Settings
from orchestrator.models import TaskState
from orchestrator.store.agents import AgentStore, Fleet, WrrPeers, _circuit_args, _outcome_args
from orchestrator.store.backlog import DispatchConfig, Dispatched, parse_fills
from orchestrator.store.base import now_s
from orchestrator.store.calls import Acceptance, Attempt, ResultWrite, Settlement
from orchestrator.store.clients import ClientStore
from orchestrator.store.dlq import DeadLetterStore
from orchestrator.store.event_group import EventGroupStore
from orchestrator.store.event_log import EventLogStore
from orchestrator.store.keys import AGENT_STATS, circuit_key
from orchestrator.store.migrate import KeyMigrationStore
from orchestrator.store.placing import PlacingStore
from orchestrator.store.ports import (
    CliStore,
    ExecutorStore,
    HealerStore,
    LoopsStore,
    RouterStore,
)
from orchestrator.store.recovery import RecoveryStore
from orchestrator.store.scripts import SETTLE_RUN_SIG
from orchestrator.store.sleep import SleepStore
from orchestrator.store.telemetry import telemetry_step


class StateStore(
    AgentStore,
    PlacingStore,
    DeadLetterStore,
    RecoveryStore,
    ClientStore,
    EventGroupStore,
    EventLogStore,
    SleepStore,
    KeyMigrationStore,
):
    """All reads and writes of orchestrator state. One instance per process."""

    def configure(self, settings: Settings) -> None:
        self.dispatch_config = DispatchConfig.of(settings)

    def settle_run(self, settlement: Settlement) -> tuple[bool, list[Dispatched]]:
        """The end of a handler run that ends its task, in one round trip: the agent's stats
        and breaker (record_outcome), the terminal state (finish) and, only if this run is the
        one that ended the task, its telemetry counts; then the freed slot filled from the
        backlog (the tasks returned, for the caller to publish). False when it had already
        ended."""
        run = settlement
        ok = run.state is TaskState.SUCCEEDED
        kind = run.task_type if run.stats_type is None else run.stats_type
        stats = _outcome_args(run.agent_id, ok, run.latency_ms, task_type=kind)
        breaker = [] if run.circuit_cfg is None else _circuit_args(ok, run.now, run.circuit_cfg)
        finish_keys, ending = self._finish_step(
            run.task_id,
            state=run.state,
            agent_id=run.agent_id,
            owner=run.agent_id,
            now=run.now,
            error=run.error,
            latency_ms=run.latency_ms,
            task_type=run.task_type,
            result=run.result,
        )
        count_keys, counting = telemetry_step(run.counts, run.now)
        keys = SETTLE_RUN_SIG.key_list(
            stats_key=AGENT_STATS,
            circuit_key=circuit_key(run.agent_id),
            finish=finish_keys,
            count=count_keys,
        )
        args = SETTLE_RUN_SIG.arg_list(
            stats=stats,
            breaker=breaker,
            ending=ending,
            counts=counting,
            dispatching=[*self.backlog_context(run.now), run.latency_ms / 1000.0],
            result=_result_args(run),
        )
        with self._translate():
            done, _previous, transition, *fills = self._settle(keys=keys, args=args)
        self.announce_circuit(run.agent_id, str(transition), run.now)
        return int(done) == 1, parse_fills(fills)


def _result_args(run: Settlement) -> list[Any]:
    """settle_run's `result` section: Celery's result of the run (none: nothing to write)."""
    out = run.celery_result
    if out is None:
        return []
    return [out.prefix, run.task_id, out.head, out.expires, out.aliases]


def _implements(
    store: StateStore,
) -> tuple[ExecutorStore, RouterStore, HealerStore, LoopsStore, CliStore]:
    """StateStore is every consumer's slice of the store (checked by mypy; the monitor's and
    the CLI's extend the sleep/wake and restore acts' slices)."""
    return store, store, store, store, store


__all__ = [
    "Acceptance",
    "Attempt",
    "Dispatched",
    "Fleet",
    "ResultWrite",
    "Settlement",
    "StateStore",
    "WrrPeers",
    "now_s",
]
