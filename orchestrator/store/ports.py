"""The slices of the state store its consumers use, as Protocols.

Each consumer types its store with its own slice, so mypy proves it uses nothing else.
StateStore implements them all (orchestrator.store checks that too).

The executor (workers/execute.py), the router (routing/router.py and its mixin
routing/dispatch.py; workers/routing.py reaches it as `router.store`), the healer
(recovery/healer.py; workers/recovery.py reaches it as `healer.store`), the loops
(what the monitoring and scaling loops, the metrics snapshot and the exporter reach as
`LoopContext.store`) and the CLI (orchestrator/cli). Two acts that take a store from more
than one of them have a slice of their own, which those extend: sleep/wake
(scaling/sleepwake.py, from the loops and the CLI) and a backup's restore
(backup/restore.py, from the CLI). A method more than one slice needs is declared once, in a
one-method Protocol the slices extend (Fills, EndsTasks, Announces, ...). The event handlers
(events/) still take StateStore whole.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.models import CircuitBreakerConfig, ProductionEventSeverity
from orchestrator.store.codes import RejectionReason

if TYPE_CHECKING:
    import redis

    from orchestrator.models import (
        AgentStatus,
        OrchestrationEvent,
        OrchestrationTask,
        RecoveryPlan,
        RegisteredAgent,
        TaskRecord,
        TaskState,
    )
    from orchestrator.store import Acceptance, Settlement
    from orchestrator.store.agents import Fleet, WrrPeers
    from orchestrator.store.backlog import BacklogGroup, Dispatched
    from orchestrator.store.calls import Attempt
    from orchestrator.store.codes import AcceptStatus, AdmitVerdict


class TelemetrySink(Protocol):
    def add(self, fields: Mapping[str, int], now: float, cumulative: bool = True) -> None: ...


class Fills(Protocol):
    """Dispatches the backlog to an agent's free slots."""

    def fill(
        self, agent_id: str, *, now: float, limit: int | None = None, trusted: bool = False
    ) -> list[Dispatched]: ...


class LoadsFleet(Protocol):
    """Reads the fleet view."""

    def load_fleet(
        self, circuit_cfg: CircuitBreakerConfig | None = None, now: float | None = None
    ) -> Fleet: ...


class KnowsTasks(Protocol):
    """Says whether a task is in the ledger."""

    def task_exists(self, task_id: str) -> bool: ...


class LoadsSpecs(Protocol):
    """Reads a task's spec from the ledger."""

    def load_spec(self, task_id: str) -> OrchestrationTask: ...


class Parks(Protocol):
    """Parks a task no agent can take."""

    def park(
        self,
        task: OrchestrationTask,
        *,
        now: float,
        source: str = "new",
        avoid: Collection[str] = (),
        from_agent: str | None = None,
        reason: str | None = None,
    ) -> bool: ...


class EndsTasks(Protocol):
    """Ends a task in the ledger."""

    def finish(
        self,
        task_id: str,
        *,
        state: TaskState,
        agent_id: str | None,
        now: float,
        error: str | None = None,
        latency_ms: float | None = None,
        task_type: str | None = None,
        result: str | None = None,
    ) -> bool: ...


class ReadsTasks(Protocol):
    """Reads a task's ledger fields."""

    def task_fields(self, task_id: str) -> dict[str, str]: ...


class LoadsAgents(Protocol):
    """Reads the registered agents."""

    def load_agents(self) -> list[RegisteredAgent]: ...


class Announces(Protocol):
    """Writes an orchestration event."""

    def event(
        self,
        type_: str,
        *,
        now: float,
        source: str,
        pipe: Any = None,
        severity: ProductionEventSeverity = ProductionEventSeverity.INFO,
        **data: Any,
    ) -> None: ...


class Locks(Protocol):
    """Holds a lock one process at a time."""

    def singleton(self, name: str, ttl_s: float) -> AbstractContextManager[bool]: ...


class HasConnection(Protocol):
    """The Redis connection other stores are built on."""

    @property
    def r(self) -> redis.Redis: ...


class ReadsBacklog(Protocol):
    """Reads the backlog by group."""

    def backlog(self, now: float, sample: int = 10000) -> list[BacklogGroup]: ...


class ExecutorStore(Fills, Protocol):
    """What `orchestrator.execute` reads and writes: an attempt begun, a run settled or handed
    to recovery, the stored result of a task already ended, the freed slot filled."""

    @property
    def telemetry(self) -> TelemetrySink: ...

    def begin_attempt(
        self,
        task_id: str,
        *,
        agent_id: str,
        dispatch: int,
        now: float,
        pid: int,
        max_deliveries: int,
        force: bool = False,
    ) -> Attempt: ...

    def stored_result(self, task_id: str) -> str | None: ...

    def settle_run(self, settlement: Settlement) -> tuple[bool, list[Dispatched]]: ...

    def record_outcome(
        self,
        agent_id: str,
        *,
        ok: bool,
        latency_ms: float,
        circuit_cfg: CircuitBreakerConfig | None = None,
        now: float | None = None,
        task_type: str = "",
    ) -> str: ...

    def mark_recovering(
        self, task_id: str, *, agent_id: str, now: float, error: str, kind: str
    ) -> bool: ...


class RouterStore(Fills, LoadsFleet, KnowsTasks, LoadsSpecs, Parks, EndsTasks, Protocol):
    """What the router reads and writes: the fleet and the picks among it, a submission
    admitted, accepted or refused, the task routed, held in the backlog or deferred, free
    slots filled, and the dispatch sweep's due, parked and expired tasks."""

    # the fleet and the picks
    def fleet_version(self) -> int: ...

    def admit_circuit(self, agent_id: str, cfg: CircuitBreakerConfig, now: float) -> bool: ...

    def wrr_pick(
        self, capability_key: str, peers: Mapping[str, int] | WrrPeers, task_id: str | None = None
    ) -> str | None: ...

    def affinity_pick(
        self,
        key: str,
        *,
        capability_key: str,
        weights: Mapping[str, int] | WrrPeers,
        fallback: str | None,
        ttl_s: int,
    ) -> str: ...

    # submissions
    def admit_client(
        self, client_id: str, *, now: float, rate: float, burst: int, check_block: bool
    ) -> tuple[AdmitVerdict, float]: ...

    def record_rejection(
        self,
        problems: Sequence[str],
        *,
        submit_id: str,
        now: float,
        client_id: str | None,
        reason: RejectionReason = RejectionReason.INVALID,
    ) -> None: ...

    def accept(self, acceptance: Acceptance) -> tuple[AcceptStatus, str]: ...

    def accept_and_route(
        self,
        acceptance: Acceptance,
        *,
        agent_id: str,
        pushes: Sequence[tuple[str, str]],
        slots: int | None = None,
    ) -> tuple[AcceptStatus, str]: ...

    def accept_and_place(
        self,
        acceptance: Acceptance,
        *,
        peers: WrrPeers,
        stand_in: RegisteredAgent,
        pushes: Sequence[tuple[str, str]],
    ) -> tuple[AcceptStatus, str]: ...

    def count_duplicate(self, differing: bool = False) -> None: ...

    def outbox_drop(self, task_id: str, pipe: Any = None) -> None: ...

    # routing, the backlog and the dispatch sweep
    def mark_routed(
        self,
        task: OrchestrationTask,
        *,
        agent_id: str,
        now: float,
        drop_outbox: bool = True,
        expect_dispatch: int | None = None,
        slots: int | None = None,
        lost_from: str | None = None,
        **history: Any,
    ) -> int: ...

    def enqueue(
        self,
        task: OrchestrationTask,
        *,
        now: float,
        parked: bool = False,
        source: str = "new",
        expect_dispatch: int | None = None,
        front: bool = False,
        event: tuple[str, dict[str, Any]] | None = None,
        avoid: Collection[str] = (),
        from_agent: str | None = None,
        **history: Any,
    ) -> bool: ...

    def defer(
        self, task_id: str, *, due: float, now: float, prefer: str | None = None, **history: Any
    ) -> bool: ...

    def deferred_due(self, now: float, limit: int = 500) -> list[tuple[str, str | None]]: ...

    def parked(self, limit: int = 1000) -> list[tuple[str, float]]: ...

    def claim_parked(self, task_id: str) -> bool: ...

    def backlog_sets(self) -> list[str]: ...


class HealerStore(LoadsSpecs, EndsTasks, ReadsTasks, LoadsAgents, Announces, Locks, Protocol):
    """What the healer reads and writes besides the router's part: a failed task's ledger and
    its plan, the agent's recent failures and quarantine, a lost agent's status, tasks and
    queue, vanished messages, overdue plans; and the recovery monitor's lock and outbox."""

    def failed_agents(self, task_id: str) -> set[str]: ...

    def note_failure(self, agent_id: str, *, attempt: str, now: float, window_s: float) -> int: ...

    def forget_failures(self, agent_id: str) -> None: ...

    def save_plan(self, plan: RecoveryPlan) -> None: ...

    def overdue_plans(self, now: float, limit: int = 500) -> list[RecoveryPlan]: ...

    def quarantine(self, agent_id: str, *, until: float, now: float, reason: str) -> bool: ...

    def set_status(
        self,
        agent_id: str,
        *,
        status: AgentStatus,
        now: float,
        source: str,
        event: str | None = None,
        severity: ProductionEventSeverity = ProductionEventSeverity.INFO,
        **data: Any,
    ) -> bool: ...

    def liveness(self) -> dict[str, tuple[AgentStatus, float]]: ...

    def inflight(self, agent_id: str) -> list[str]: ...

    def vanished(self, agent_id: str, queue: str, routed_before: float) -> dict[str, int]: ...

    def purge_agent_queue(self, queue: str) -> int: ...

    def outbox_due(
        self, older_than: float, now: float, limit: int = 500
    ) -> list[tuple[str, dict[str, Any]]]: ...


class SleepWakeStore(Announces, Protocol):
    """What putting an agent to sleep, waking it and recycling it write
    (scaling/sleepwake.py: the sleep/wake loop's acts, which the CLI runs by hand too)."""

    def fall_asleep(
        self, agent: RegisteredAgent, *, now: float, reason: str, source: str
    ) -> bool: ...

    def wake_up(self, agent_id: str, *, now: float, reason: str, source: str) -> bool: ...

    def mark_recycled(self, agent_ids: Iterable[str], window: str) -> None: ...


class LoopsStore(
    SleepWakeStore, LoadsFleet, LoadsAgents, Locks, HasConnection, ReadsBacklog, Protocol
):
    """What the monitoring and scaling loops, the metrics snapshot and the exporter read and
    write through `LoopContext.store` (their own keys are MonitoringStore's): the fleet, the
    counters and the backlog, client blocks, the sleep/wake loop's marks, each loop's lock,
    the events they announce, and the connection for the stores built on it."""

    def counters(self) -> dict[str, int]: ...

    def block_client(self, client_id: str, until: float, now: float) -> None: ...

    def blocked_clients(self, now: float) -> dict[str, float]: ...

    def anyone_sleeping(self) -> bool: ...

    def mark_idle(self, idle: Mapping[str, bool], now: float) -> dict[str, float]: ...

    def sleep_checkpoints(self) -> dict[str, dict[str, Any]]: ...

    def recycled_marks(self) -> dict[str, str]: ...


class RestoreStore(LoadsSpecs, Parks, Protocol):
    """What restoring a backup writes besides its keys (backup/restore.py): the snapshot's
    unfinished tasks waiting again."""

    def wait_again(self, task: OrchestrationTask, now: float) -> None: ...


class CliStore(
    SleepWakeStore,
    RestoreStore,
    LoadsFleet,
    KnowsTasks,
    EndsTasks,
    ReadsTasks,
    LoadsAgents,
    HasConnection,
    ReadsBacklog,
    Protocol,
):
    """What the CLI's verbs read and write (and the sleep/wake and restore acts they run): a
    task's record and its cancel, the fleet, the backlog, the events, the dead-letter store of
    both kinds, a client's block lifted, the key layout's migration."""

    def task_record(self, task_id: str) -> TaskRecord: ...

    def concurrency_keys(self) -> dict[str, tuple[int, int, int]]: ...

    def deferred_count(self) -> int: ...

    def parked_count(self) -> int: ...

    def tail_events(
        self, count: int = 20, *, settled: bool = False
    ) -> list[OrchestrationEvent]: ...

    def events_after(self, last_id: str, count: int = 1000) -> list[OrchestrationEvent]: ...

    def follow_events(
        self, last_id: str = "$", block_ms: int = 1000
    ) -> tuple[str, list[OrchestrationEvent]]: ...

    def dead_letters(self, limit: int = 100) -> list[tuple[str, float]]: ...

    def reopen_dead_letter(self, task_id: str, now: float) -> OrchestrationTask: ...

    def purge_dead_letters(self, task_ids: Sequence[str] | None = None) -> int: ...

    def poison_messages(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def poison_message(self, poison_id: str) -> dict[str, Any] | None: ...

    def purge_poison(self, poison_ids: Sequence[str] | None = None) -> int: ...

    def unblock_client(self, client_id: str) -> bool: ...

    def migrate_keys(self, scan_count: int = 1000) -> int: ...
