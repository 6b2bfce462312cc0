"""Dispatch: the part of the router that puts tasks in the backlog and fills free slots.

A task no eligible agent has a free slot for waits in the backlog (store/backlog.py); an
agent with a free slot takes the best task it can (pump, fill); the dispatch sweep releases
deferred tasks, expires parked ones and lets every free agent take. Router mixes this in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InvalidTask, NoCapableAgent, UnknownTask
from orchestrator.models import OrchestrationTask, RegisteredAgent, TaskState
from orchestrator.routing.explain import park_reason, spec_differences
from orchestrator.store import Acceptance, Dispatched, Fleet
from orchestrator.store.codes import AcceptStatus
from orchestrator.store.ports import RouterStore

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.routing.router import Publisher, RouteView


class OutcomeStatus(StrEnum):
    """What happened to one task the router handled."""

    ROUTED = "routed"  # published to an agent (for the sweep: some task of the set was)
    QUEUED = "queued"  # waiting in the backlog: no eligible agent has a free slot
    PARKED = "parked"  # waiting in the backlog: no capable agent exists
    DEFERRED = "deferred"  # held in Redis until due
    DUPLICATE = "duplicate"  # a submission of an id already accepted: nothing runs again
    EXPIRED = "expired"  # parked past ORCH_PENDING_TIMEOUT_S: dead-lettered
    ENDED = "ended"  # no longer in a state to move (ended, or moved by someone else)
    FULL = "full"  # the chosen agent had no free slot: nothing changed


#: The outcomes that leave a task dispatched or waiting for an agent.
PLACED = frozenset({OutcomeStatus.ROUTED, OutcomeStatus.QUEUED, OutcomeStatus.PARKED})


@dataclass(frozen=True)
class Outcome:
    """What happened to one submission (for logs, the CLI and tests)."""

    task_id: str
    status: OutcomeStatus
    agent_id: str | None = None
    sent: Any = field(default=None, compare=False, repr=False)  # the Publisher's handle
    #: Parked: why no agent can take it (routing.explain.park_reason).
    reason: str | None = field(default=None, compare=False)
    #: A duplicate: the fields in which its spec differs from the accepted one.
    differs: tuple[str, ...] = field(default=(), compare=False)


class Dispatching:
    """Router's backlog side (every method runs on a Router, which provides the rest)."""

    store: RouterStore
    settings: Settings
    publish: Publisher

    if TYPE_CHECKING:

        def fleet(self, now: float, fresh: bool = False) -> Fleet: ...

        def view(
            self,
            task: OrchestrationTask,
            fleet: Fleet,
            now: float,
            exclude: Collection[str] = (),
        ) -> RouteView: ...

        def choose(
            self,
            task: OrchestrationTask,
            fleet: Fleet,
            now: float,
            exclude: Collection[str] = (),
        ) -> RegisteredAgent | None: ...

        def dispatch(
            self,
            task: OrchestrationTask,
            agent: RegisteredAgent,
            now: float,
            countdown: float = 0.0,
            expect_dispatch: int | None = None,
            lost_from: str | None = None,
            **history: Any,
        ) -> Outcome: ...

    def submit_later(
        self, task: OrchestrationTask, submit_id: str, now: float, due: float
    ) -> Outcome:
        """Record a valid task and hold it in Redis until `due` (a submission's countdown or
        ETA), when the dispatch sweep releases it: however far off, it runs once. At most
        ORCH_LEDGER_TTL_S ahead (the ledger would forget it first): InvalidTask beyond."""
        assert task.task_id is not None
        if due - now > self.settings.ledger_ttl_s:
            error = InvalidTask(
                f"eta: at most ORCH_LEDGER_TTL_S ({self.settings.ledger_ttl_s} s) ahead "
                f"(got {due - now:.0f} s)"
            )
            self.store.record_rejection(
                error.problems, submit_id=submit_id, now=now, client_id=task.client_id
            )
            raise error
        status, state = self.store.accept(Acceptance(task, submit_id, now))
        if status is AcceptStatus.DUPLICATE:
            return self.duplicate(task)
        if status is AcceptStatus.RESUME and TaskState(state) is not TaskState.ACCEPTED:
            self.store.count_duplicate()
            return Outcome(task.task_id, OutcomeStatus.DUPLICATE)
        return self.defer(task, due, now, countdown=round(due - now, 3))

    def duplicate(self, task: OrchestrationTask) -> Outcome:
        """A submission of an id another submission was accepted under: nothing runs again.
        Its spec is compared with the accepted one (one read, only for a duplicate), so the
        submitter can be told when it differs; the difference is counted too."""
        assert task.task_id is not None
        try:
            differs = spec_differences(self.store.load_spec(task.task_id), task)
        except UnknownTask:  # forgotten (ORCH_LEDGER_TTL_S) since: nothing to compare with
            differs = ()
        self.store.count_duplicate(differing=bool(differs))
        return Outcome(task.task_id, OutcomeStatus.DUPLICATE, differs=differs)

    def hold(
        self,
        task: OrchestrationTask,
        now: float,
        *,
        parked: bool,
        source: str = "new",
        expect_dispatch: int | None = None,
        exclude: Collection[str] = (),
        avoid: Collection[str] = (),
        fleet: Fleet | None = None,
        **history: Any,
    ) -> Outcome:
        """Put the task in the backlog (no agent in `avoid`, those it failed on, takes it
        from there), then let any agent free now but those in `exclude` take from it. A
        parked task keeps why (park_reason over `fleet`, the view it was judged on)."""
        assert task.task_id is not None
        from_agent = history.get("moved_from") if source == "lost" else None
        reason = None
        if parked:
            reason = park_reason(
                task.required_capabilities,
                (fleet or self.fleet(now)).agents,
                now,
                self.settings.agent_timeout_s,
                exclude,
            )
            done = self.store.park(
                task, now=now, source=source, avoid=avoid, from_agent=from_agent, reason=reason
            )
        else:
            done = self.store.enqueue(
                task,
                now=now,
                source=source,
                expect_dispatch=expect_dispatch,
                front=source != "new",
                avoid=avoid,
                from_agent=from_agent,
                **history,
            )
        if not done:
            return Outcome(task.task_id, OutcomeStatus.ENDED)
        self.pump(task, now, exclude=exclude)
        if parked:
            return Outcome(task.task_id, OutcomeStatus.PARKED, reason=reason)
        return Outcome(task.task_id, OutcomeStatus.QUEUED)

    def pump(
        self,
        task: OrchestrationTask,
        now: float,
        fleet: Fleet | None = None,
        exclude: Collection[str] = (),
    ) -> int:
        """Let the agents with a free slot for this task's capabilities take from the
        backlog (each the best task it can take, which need not be this one), one at a time
        in the round-robin's order, until none is free or nothing waits. Returns how many
        were dispatched."""
        if fleet is None:
            fleet = self.fleet(now)
        dispatched = 0
        tried: set[str] = set(exclude)
        while True:
            chosen = self.choose(task, fleet, now, tried)
            if chosen is None:
                return dispatched
            fills = self.store.fill(chosen.agent_id, now=now, limit=1, trusted=True)
            if not fills:
                tried.add(chosen.agent_id)  # nothing it can take, or its slot went meanwhile
                continue
            self.publish_fills(chosen, fills)
            dispatched += len(fills)

    def fill(self, agent: RegisteredAgent, now: float) -> int:
        """Fill all of one agent's free slots from the backlog (registration, wake, circuit
        close, recovery). Returns how many were dispatched."""
        fills = self.store.fill(agent.agent_id, now=now)
        self.publish_fills(agent, fills)
        return len(fills)

    def publish_fills(self, agent: RegisteredAgent, fills: Collection[Dispatched]) -> None:
        for got in fills:
            self.publish(got.task, agent, got.dispatch)

    def dispatch_sweep(
        self, now: float, on_expired: Callable[[str, NoCapableAgent], None]
    ) -> list[Outcome]:
        """The periodic dispatch sweep (and what an agent's registration or wake triggers):
        release deferred tasks that are due, dead-letter tasks parked past
        ORCH_PENDING_TIMEOUT_S, and let every agent with a free slot take from the backlog."""
        outcomes: list[Outcome] = []
        for task_id, prefer in self.store.deferred_due(now):
            outcomes.append(self.release(task_id, prefer, now))
        for task_id, parked_at in self.store.parked():
            waited = now - parked_at
            if waited <= self.settings.pending_timeout_s:
                break  # oldest first
            try:
                task = self.store.load_spec(task_id)
            except UnknownTask:
                self.store.claim_parked(task_id)
                continue
            error = NoCapableAgent(task_id, task.required_capabilities, waited)
            if self.store.finish(
                task_id,
                state=TaskState.DEAD_LETTERED,
                agent_id=None,
                now=now,
                error=str(error),
                task_type=task.type,
            ):
                on_expired(task_id, error)
                outcomes.append(Outcome(task_id, OutcomeStatus.EXPIRED))
        sets = self.store.backlog_sets()
        if not sets:
            return outcomes
        fleet = self.fleet(now, fresh=True)
        for key in sets:
            probe = OrchestrationTask(type=key.split(",")[0], required_capabilities=key.split(","))
            if self.pump(probe, now, fleet):
                outcomes.append(Outcome(key, OutcomeStatus.ROUTED))
        return outcomes

    def release(self, task_id: str, prefer: str | None, now: float) -> Outcome:
        """A deferred task came due: to the agent it would rather go to when that one has a
        free slot, else into the backlog (ahead of its client's other tasks)."""
        try:
            task = self.store.load_spec(task_id)
        except UnknownTask:
            return Outcome(task_id, OutcomeStatus.ENDED)
        fleet = self.fleet(now)
        eligible = self.view(task, fleet, now).eligible
        agent = fleet.by_id().get(prefer) if prefer else None
        if agent is not None and agent in eligible:
            outcome = self.dispatch(task, agent, now, released=True)
            if outcome.status is not OutcomeStatus.FULL:
                return outcome
        return self.hold(task, now, parked=not eligible, source="due", fleet=fleet, released=True)

    def defer(
        self,
        task: OrchestrationTask,
        due: float,
        now: float,
        prefer: str | None = None,
        **history: Any,
    ) -> Outcome:
        """Hold the task in Redis until `due` (a countdown longer than the broker can hold a
        message unacknowledged without handing it out again)."""
        assert task.task_id is not None
        if not self.store.defer(task.task_id, due=due, now=now, prefer=prefer, **history):
            return Outcome(task.task_id, OutcomeStatus.ENDED)
        return Outcome(task.task_id, OutcomeStatus.DEFERRED, prefer)
