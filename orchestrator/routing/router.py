"""The router: validate, record, pick an agent, and hand the task to a publisher.

It sits between the pure decisions (`routing`) and the Celery edge: publishing is a callable
passed in, so the same router serves `orchestrator.submit`, the parked-task sweep, and the
recovery tasks that re-route work away from failed or lost agents.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

from orchestrator.config import Settings
from orchestrator.errors import ClientBlocked, InvalidTask, RateLimited, UnknownTask
from orchestrator.models import (
    AgentStatus,
    CircuitBreakerConfig,
    CircuitBreakerState,
    OrchestrationStrategy,
    OrchestrationTask,
    RegisteredAgent,
    TaskState,
    parse_task,
)
from orchestrator.monitoring.stats import client_label
from orchestrator.recovery.breaker import CLOSED_BREAKER, would_admit
from orchestrator.recovery.floor import readmitted
from orchestrator.routing.dispatch import Dispatching, Outcome, OutcomeStatus
from orchestrator.routing.explain import spec_differences
from orchestrator.routing.stand_in import stand_in_for
from orchestrator.routing.weights import (
    integer_weights,
    is_eligible,
    pick_least_loaded,
    pick_power_of_two,
)
from orchestrator.store import Acceptance, Fleet, WrrPeers
from orchestrator.store.codes import AcceptStatus, AdmitVerdict, RejectionReason
from orchestrator.store.ports import RouterStore

AFFINITY_TTL_S = 24 * 3600
FLEET_CACHE_S = 0.2  # how often a router asks whether the fleet changed (one GET)
FLEET_MAX_AGE_S = 5.0  # a view is read again after this long even when nothing said it changed


class Publisher(Protocol):
    """Publishes the task to the agent; returns the broker's handle of the message (for
    Celery, the AsyncResult send_task made: already subscribed to the result)."""

    def __call__(
        self, task: OrchestrationTask, agent: RegisteredAgent, dispatch: int, countdown: float = 0.0
    ) -> Any: ...


class Preparer(Protocol):
    """Builds the message for the agent without sending it: (the Publisher's handle, the
    (list key, payload) pushes that publish it)."""

    def __call__(
        self, task: OrchestrationTask, agent: RegisteredAgent, dispatch: int
    ) -> tuple[Any, list[tuple[str, str]]]: ...


@dataclass
class RouteView:
    """One capability set's routing inputs under one view of the fleet: the eligible agents
    and their integer weights, built once per view instead of once per task (at 1,000 agents
    that is most of a decision's cost)."""

    eligible: list[RegisteredAgent]
    weights: dict[str, int]
    by_id: dict[str, RegisteredAgent]
    slots: dict[str, int]  # each agent's concurrency + ORCH_AGENT_PREFETCH
    _peers: WrrPeers | None = None

    @property
    def peers(self) -> WrrPeers:
        """The round-robin's peers, prepared with their slots (a full one is skipped)."""
        if self._peers is None:
            self._peers = WrrPeers.of(self.weights, self.slots)
        return self._peers

    @cached_property
    def stand_in(self) -> RegisteredAgent | None:
        """An agent whose id stands for the pick's in a message built before the pick
        (store.accept_and_place), or None where one cannot: an eligible agent's breaker not
        closed, an id JSON would escape, queues not named `<prefix><agent id>` alike. Its
        queue is the shared prefix and its id; it runs handler tasks by type when all do."""
        return stand_in_for(self.eligible)


def view_expiry(
    fleet: Fleet,
    read_at: float,
    timeout_s: float,
    circuit_cfg: CircuitBreakerConfig | None,
    max_age_s: float = FLEET_MAX_AGE_S,
) -> float:
    """When a view of the fleet read at `read_at` stops telling the truth by the clock alone:
    the first live agent's heartbeat going stale, the first open breaker due for its trial
    (or half-open round due to restart), or `max_age_s`. Every other change routers must see
    (registration, status, breaker transitions, scores) moves the fleet version instead."""
    times = [read_at + max_age_s]
    for agent in fleet.agents:
        if agent.status is AgentStatus.ACTIVE and agent.last_heartbeat + timeout_s > read_at:
            times.append(agent.last_heartbeat + timeout_s)
    if circuit_cfg is not None:
        for breaker in fleet.breakers.values():
            since = (
                breaker.opened_at
                if breaker.state is CircuitBreakerState.OPEN
                else breaker.half_opened_at
            )
            if since is not None and since + circuit_cfg.recovery_timeout_s > read_at:
                times.append(since + circuit_cfg.recovery_timeout_s)
    return min(times)


class Router(Dispatching):
    def __init__(
        self,
        store: RouterStore,
        settings: Settings,
        publish: Publisher,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.publish = publish
        self.rng = rng or random.Random()
        self.strategy = OrchestrationStrategy(settings.load_balancing_algorithm)
        self.circuit_cfg = settings.circuit_rule()
        self._fleet: Fleet | None = None
        self._checked_at = 0.0  # when the fleet version was last compared
        self._expires_at = 0.0  # view_expiry of the current view
        self._views: dict[str, RouteView] = {}  # per capability key, for the current view
        # Ejected agents the floor takes back, per capability key, for one view of the fleet.
        self._readmitted: tuple[Fleet | None, dict[str, dict[str, RegisteredAgent]]] = (None, {})
        self.keep_outbox = False

    def fleet(self, now: float, fresh: bool = False) -> Fleet:
        """The router's view of the fleet. Submissions share it while it is current: every
        FLEET_CACHE_S the router compares the fleet version (one GET) and reads the whole
        fleet again only when it moved (a registration, a status or breaker change, new
        scores) or the view expired by the clock (view_expiry: a heartbeat going stale, a
        breaker due for its trial, FLEET_MAX_AGE_S). So a decision costs the same at 1,000
        agents as at 10. Sweeps and recovery ask for a fresh read. The round-robin state and
        half-open trial slots are taken atomically in Redis either way, so a shared view never
        skews the sequence."""
        # Only the round-robin may share a view: least-loaded and power-of-two read in-flight
        # counts that a cached view would leave stale, herding a burst onto one agent.
        cacheable = self.strategy is OrchestrationStrategy.WEIGHTED_ROUND_ROBIN
        current = self._fleet is not None and cacheable and not fresh and now < self._expires_at
        if current and not 0 <= now - self._checked_at <= FLEET_CACHE_S:
            assert self._fleet is not None
            current = self.store.fleet_version() == self._fleet.version
            self._checked_at = now
        if not current or self._fleet is None:
            # With ORCH_CIRCUIT_BREAKER_ENABLED=false a breaker state stored while it was on
            # (or by a router that has it on) reads closed: it excludes and penalises nobody.
            fleet = self.store.load_fleet(self.circuit_cfg, now)
            self._fleet, self._views = fleet, {}
            self._checked_at = now
            self._expires_at = view_expiry(
                fleet, now, self.settings.agent_timeout_s, self.circuit_cfg
            )
        return self._fleet

    def submit(self, fields: dict[str, Any], submit_id: str, now: float) -> Outcome:
        """Accept (or reject) one submission and route it. Raises InvalidTask on bad input."""
        return self.submit_valid(self.validate(fields, submit_id, now), submit_id, now)

    def validate(
        self, fields: dict[str, Any], submit_id: str, now: float, limit: bool = True
    ) -> OrchestrationTask:
        """The task spec with its orchestration id, or InvalidTask (recorded and announced).

        With a per-client limit on (ORCH_CLIENT_RATE_LIMIT, ORCH_SECURITY_AUTO_BLOCK) and
        `limit`, the client is admitted first, in one round trip, before its spec is even
        parsed: RateLimited or ClientBlocked (recorded and announced as rejections). With
        both off this costs nothing. A producer that hands its submission to a control
        worker passes limit=False: the worker admits it, so it is counted once."""
        if limit and self.settings.client_limits_on:
            self._admit(fields.get("client_id"), submit_id, now)
        try:
            task = parse_task(fields, self.settings.max_payload_bytes)
        except InvalidTask as exc:
            client = fields.get("client_id")
            self.store.record_rejection(
                exc.problems,
                submit_id=submit_id,
                now=now,
                client_id=client if isinstance(client, str) else None,
            )
            raise
        if task.task_id is None:
            task = task.model_copy(update={"task_id": submit_id})
        return task

    def _admit(self, client_id: Any, submit_id: str, now: float) -> None:
        s = self.settings
        client = client_label(client_id)
        verdict, value = self.store.admit_client(
            client,
            now=now,
            rate=s.client_rate_limit,
            burst=s.client_burst,
            check_block=s.security_auto_block,
        )
        error: RateLimited | ClientBlocked
        if verdict is AdmitVerdict.OK:
            return
        if verdict is AdmitVerdict.BLOCKED:
            error = ClientBlocked(client, value, value - now)
            reason = RejectionReason.BLOCKED
        else:
            error = RateLimited(client, s.client_rate_limit, value)
            reason = RejectionReason.RATE_LIMITED
        self.store.record_rejection(
            [str(error)], submit_id=submit_id, now=now, client_id=client, reason=reason
        )
        raise error

    def submit_valid(
        self,
        task: OrchestrationTask,
        submit_id: str,
        now: float,
        outbox: tuple[Mapping[str, Any], str] | None = None,
    ) -> Outcome:
        """Record a valid task in the ledger and route it; a second submission of an id that
        was already accepted (not a redelivery of the same message) runs nothing again, and
        places the recorded task if no submission has yet.
        `outbox` (fields, queue) keeps the submission in the outbox from the moment it is
        recorded until it is published (OrchestratorClient)."""
        assert task.task_id is not None
        status, state = self.store.accept(Acceptance(task, submit_id, now, outbox))
        if status is AcceptStatus.DUPLICATE and TaskState(state) is TaskState.ACCEPTED:
            # An earlier submission of this id was recorded but never placed (Redis failed over
            # between the two steps and its client, told so, submitted again): this one places
            # the recorded task. Two routers placing it at once is safe: the dispatch number
            # makes the older message stale.
            accepted = self.store.load_spec(task.task_id)
            differs = spec_differences(accepted, task)
            self.store.count_duplicate(differing=bool(differs))
            return replace(self.route(accepted, now), differs=differs)
        if status is AcceptStatus.DUPLICATE:
            self.store.outbox_drop(task.task_id)
            return self.duplicate(task)
        if status is AcceptStatus.RESUME and TaskState(state) not in (
            TaskState.ACCEPTED,
            TaskState.ROUTED,
        ):
            self.store.count_duplicate()
            self.store.outbox_drop(task.task_id)
            return Outcome(task.task_id, OutcomeStatus.DUPLICATE)
        return self.route(task, now)

    def submit_atomic(
        self,
        task: OrchestrationTask,
        submit_id: str,
        now: float,
        prepare: Preparer,
        outbox: tuple[Mapping[str, Any], str] | None = None,
    ) -> Outcome:
        """submit_valid in one atomic step when the broker and the state store are one Redis
        (OrchestratorClient, and a control worker's `orchestrator.submit`): choose the agent
        first, then accept, route and publish at once, so there is no moment a crash could
        strand the task and it needs no outbox. A duplicate still advances the round-robin by
        one. With no agent to take it, or for a submission that is not new, it is
        submit_valid's way."""
        assert task.task_id is not None
        if task.concurrency_key is not None:
            return self.submit_valid(task, submit_id, now, outbox)  # through the key's limit
        fleet = self.fleet(now)
        view = self.view(task, fleet, now)
        stand_in = self._stand_in(task, view)
        if stand_in is not None:
            return self._place(task, submit_id, now, prepare, view, stand_in, outbox)
        chosen = self.choose(task, fleet, now)
        if chosen is None:
            return self.submit_valid(task, submit_id, now, outbox)
        sent, pushes = prepare(task, chosen, 1)
        status, _state = self.store.accept_and_route(
            Acceptance(task, submit_id, now),
            agent_id=chosen.agent_id,
            pushes=pushes,
            slots=self.slots_of(chosen),
        )
        if status is AcceptStatus.QUEUED:
            # Another router took the agent's last slot since the pick: it waits, and any
            # other agent free now takes it.
            self.pump(task, now)
            return Outcome(task.task_id, OutcomeStatus.QUEUED, sent=sent)
        if status is not AcceptStatus.ROUTED:
            return self.submit_valid(task, submit_id, now, outbox)  # counted as a duplicate
        return Outcome(task.task_id, OutcomeStatus.ROUTED, chosen.agent_id, sent)

    def _stand_in(self, task: OrchestrationTask, view: RouteView) -> RegisteredAgent | None:
        """The agent a message is built for when the pick is made in the same atomic step as
        the acceptance (store.accept_and_place), or None where the pick cannot be made there:
        another strategy, an affinity key, a breaker not closed (its trial slots are admitted
        apart), or agents whose ids or queues the step could not put in."""
        if (
            self.strategy is not OrchestrationStrategy.WEIGHTED_ROUND_ROBIN
            or task.affinity_key
            or not view.eligible
        ):
            return None
        return view.stand_in

    def _place(
        self,
        task: OrchestrationTask,
        submit_id: str,
        now: float,
        prepare: Preparer,
        view: RouteView,
        stand_in: RegisteredAgent,
        outbox: tuple[Mapping[str, Any], str] | None,
    ) -> Outcome:
        """submit_atomic with the pick in the same step (among `view`'s peers): one round
        trip for a new task, routed or (every eligible agent full) queued."""
        assert task.task_id is not None
        sent, pushes = prepare(task, stand_in, 1)
        status, placed = self.store.accept_and_place(
            Acceptance(task, submit_id, now),
            peers=view.peers,
            stand_in=stand_in,
            pushes=pushes,
        )
        if status is AcceptStatus.ROUTED:
            return Outcome(task.task_id, OutcomeStatus.ROUTED, placed, sent)
        if status is AcceptStatus.QUEUED:
            if placed:  # the pick stopped taking work since the view was read: others may
                self.pump(task, now)
            return Outcome(task.task_id, OutcomeStatus.QUEUED, sent=sent)
        return self.submit_valid(task, submit_id, now, outbox)  # counted as a duplicate

    def slots_of(self, agent: RegisteredAgent) -> int:
        """How many unended tasks the agent may hold: its concurrency + ORCH_AGENT_PREFETCH."""
        return max(1, agent.concurrency) + self.settings.agent_prefetch

    def eligible(
        self, task: OrchestrationTask, fleet: Fleet, now: float, exclude: Collection[str] = ()
    ) -> list[RegisteredAgent]:
        def admits(agent: RegisteredAgent) -> bool:
            if self.circuit_cfg is None:
                return True
            return would_admit(
                fleet.breakers.get(agent.agent_id, CLOSED_BREAKER), self.circuit_cfg, now
            )

        required = task.required_capabilities
        timeout = self.settings.agent_timeout_s
        # Below the ejection floor routing takes ejected agents back (recovery/floor.py),
        # worked out once per view of the fleet and capability set.
        if self._readmitted[0] is not fleet:
            self._readmitted = (fleet, {})
        back = self._readmitted[1].get(task.capability_key)
        if back is None:
            back = self._readmitted[1][task.capability_key] = readmitted(
                fleet.agents,
                required,
                breakers=fleet.breakers,
                cfg=self.circuit_cfg,
                now=now,
                timeout_s=timeout,
                fraction=self.settings.min_healthy_fraction,
            )
        return [
            back.get(a.agent_id, a)
            for a in fleet.agents
            if a.agent_id not in exclude
            and (a.agent_id in back or is_eligible(a, required, now, timeout, admits(a)))
        ]

    def view(
        self, task: OrchestrationTask, fleet: Fleet, now: float, exclude: Collection[str] = ()
    ) -> RouteView:
        """The eligible agents and weights for this task's capabilities: built once per view
        of the fleet (the router's own, with nothing excluded), otherwise now."""
        shared = not exclude and fleet is self._fleet
        key = task.capability_key
        if shared and key in self._views:
            return self._views[key]
        eligible = self.eligible(task, fleet, now, exclude)
        weights = integer_weights(
            eligible, task.required_capabilities, self.settings.intelligent_routing_enabled
        )
        view = RouteView(
            eligible,
            weights,
            {a.agent_id: a for a in eligible},
            {a.agent_id: self.slots_of(a) for a in eligible},
        )
        if shared:
            self._views[key] = view
        return view

    def choose(
        self, task: OrchestrationTask, fleet: Fleet, now: float, exclude: Collection[str] = ()
    ) -> RegisteredAgent | None:
        """The agent for this task, or None. A half-open agent is chosen only if it still has
        a trial slot when asked atomically; otherwise the choice is made again without it."""
        skipped = set(exclude)
        while True:
            chosen = self._pick(task, self.view(task, fleet, now, skipped))
            if chosen is None or self.circuit_cfg is None:
                return chosen
            if chosen.circuit is CircuitBreakerState.CLOSED or self.store.admit_circuit(
                chosen.agent_id, self.circuit_cfg, now
            ):
                return chosen
            skipped.add(chosen.agent_id)

    def _pick(self, task: OrchestrationTask, view: RouteView) -> RegisteredAgent | None:
        """The algorithm's pick; with an affinity key, the key's agent while it is eligible.

        Least-loaded and power-of-two pick here (reading state changes nothing); the
        round-robin pick is left to the store, so a task that follows its key's agent does
        not advance the shared sequence. With a key, the read and the write of its agent are
        one Lua step: two routers racing on a new key agree on one agent."""
        if not view.eligible:
            return None
        own: str | None = None
        if self.strategy is not OrchestrationStrategy.WEIGHTED_ROUND_ROBIN:
            # Their fleet is read fresh per decision: choose among agents with a free slot,
            # the load counted against each one's slots (a 4-process agent takes 4x the work).
            free = [a for a in view.eligible if a.in_flight < view.slots[a.agent_id]]
            if not free:
                return None
            if self.strategy is OrchestrationStrategy.LEAST_LOADED:
                capacity = {
                    a.agent_id: view.weights[a.agent_id] * view.slots[a.agent_id] for a in free
                }
                own = pick_least_loaded(free, capacity).agent_id
            else:
                own = pick_power_of_two(free, self.rng, view.slots).agent_id
        if task.affinity_key:
            return view.by_id[
                self.store.affinity_pick(
                    task.affinity_key,
                    capability_key=task.capability_key,
                    weights=view.peers,
                    fallback=own,
                    ttl_s=AFFINITY_TTL_S,
                )
            ]
        if own is None:
            own = self.store.wrr_pick(task.capability_key, view.peers, task.task_id)
            if own is None:
                return None  # every eligible agent is full: the task waits in the backlog
        return view.by_id[own]

    def dispatch(
        self,
        task: OrchestrationTask,
        agent: RegisteredAgent,
        now: float,
        countdown: float = 0.0,
        expect_dispatch: int | None = None,
        lost_from: str | None = None,
        **history: Any,
    ) -> Outcome:
        """Record the assignment (a new dispatch number) and publish: routed; `full` when the
        agent has no free slot (nothing changed); or ended (also when, with
        `expect_dispatch`, the task is no longer `routed` under that dispatch).

        A router inside OrchestratorClient (keep_outbox) leaves the submission in the outbox
        until the publish succeeded: if it fails, nothing else would ever publish it."""
        assert task.task_id is not None
        dispatch = self.store.mark_routed(
            task,
            agent_id=agent.agent_id,
            now=now,
            drop_outbox=not self.keep_outbox,
            expect_dispatch=expect_dispatch,
            slots=self.slots_of(agent),
            lost_from=lost_from,
            **history,
        )
        if dispatch < 0:
            return Outcome(task.task_id, OutcomeStatus.FULL, agent.agent_id)
        if dispatch == 0:
            return Outcome(task.task_id, OutcomeStatus.ENDED)
        sent = self.publish(task, agent, dispatch, countdown)
        if self.keep_outbox:
            self.store.outbox_drop(task.task_id)
        return Outcome(task.task_id, OutcomeStatus.ROUTED, agent.agent_id, sent)

    def route(
        self,
        task: OrchestrationTask,
        now: float,
        *,
        fleet: Fleet | None = None,
        exclude: Collection[str] = (),
        expect_dispatch: int | None = None,
        source: str = "new",
        avoid: Collection[str] = (),
        **history: Any,
    ) -> Outcome:
        """Hand the task to an agent with a free slot, or put it in the backlog: `queued`
        while some capable agent exists, `parked` when none does. A task with a concurrency
        key always goes through the backlog, where its key's limit is kept. `source` says
        where the task comes from (enqueue: new, move, lost, restore)."""
        assert task.task_id is not None
        if fleet is None:
            fleet = self.fleet(now)
        if task.concurrency_key is None:
            view = self.view(task, fleet, now, exclude)
            chosen = self.choose(task, fleet, now, exclude)
            if chosen is None and expect_dispatch is not None and not view.eligible:
                # Parking is not conditional: try later.
                return Outcome(task.task_id, OutcomeStatus.ENDED)
            if chosen is not None:
                outcome = self.dispatch(
                    task,
                    chosen,
                    now,
                    expect_dispatch=expect_dispatch,
                    lost_from=history.get("moved_from") if source == "lost" else None,
                    **history,
                )
                if outcome.status is not OutcomeStatus.FULL:
                    return outcome
        else:
            view = self.view(task, fleet, now, exclude)
        return self.hold(
            task,
            now,
            parked=not view.eligible,
            source=source,
            expect_dispatch=expect_dispatch,
            exclude=exclude,
            avoid=avoid,
            fleet=fleet,
            **history,
        )  # (hold passes `moved_from` on: a lost agent's running task moves only off it)

    def reroute(
        self,
        task_id: str,
        now: float,
        *,
        fleet: Fleet | None = None,
        exclude: Collection[str] = (),
        expect_dispatch: int | None = None,
        source: str = "move",
        avoid: Collection[str] = (),
        **history: Any,
    ) -> Outcome:
        """Route an accepted task again (same id, new dispatch), away from `exclude` now and
        from `avoid` (the agents it failed on) in the backlog too; with `expect_dispatch`,
        only if it is still `routed` under that dispatch."""
        try:
            task = self.store.load_spec(task_id)
        except UnknownTask:
            return Outcome(task_id, OutcomeStatus.ENDED)
        return self.route(
            task,
            now,
            fleet=fleet,
            exclude=exclude,
            expect_dispatch=expect_dispatch,
            source=source,
            avoid=avoid,
            **history,
        )
