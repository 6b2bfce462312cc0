"""The healer: carries out recovery plans and takes work away from lost agents.

`recovery.plan_recovery` decides (pure); this applies the decision through the router and the
store. The Celery tasks in workers/recovery.py are thin wrappers around these methods.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable

from orchestrator.errors import RecoveryEscalated, UnknownTask
from orchestrator.models import (
    AgentStatus,
    ProductionEventSeverity,
    RecoveryPlan,
    RecoveryTier,
    RegisteredAgent,
    TaskState,
)
from orchestrator.recovery.floor import ejection_refusals
from orchestrator.recovery.plan import ErrorKind, plan_recovery
from orchestrator.routing.dispatch import PLACED, OutcomeStatus
from orchestrator.routing.router import Router
from orchestrator.routing.weights import effective_status
from orchestrator.store.ports import HealerStore

log = logging.getLogger(__name__)

FailTask = Callable[[str, Exception], None]


#: Failures that count toward quarantining the agent: the handler failed there. A permanent
#: error is the task's own, a poison message the message's, a lost agent is gone already.
AGENT_FAULTS = frozenset({ErrorKind.TRANSIENT, ErrorKind.TIMEOUT, ErrorKind.CRASH})
#: Agents whose queue is still theirs: a message missing from it is lost, not moved.
LIVE = frozenset({AgentStatus.ACTIVE, AgentStatus.SLEEPING, AgentStatus.QUARANTINED})


class Healer:
    def __init__(
        self,
        store: HealerStore,
        router: Router,
        fail_task: FailTask,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.settings = router.settings
        self.fail_task = fail_task
        self.rng = rng or random.Random()
        self._rescue_at = float("-inf")  # when rescue_vanished last scanned

    # --- one failed task -----------------------------------------------------------------

    def recover_task(
        self, task_id: str, kind: ErrorKind, agent_id: str | None, error: str, now: float
    ) -> RecoveryPlan | None:
        fields = self.store.task_fields(task_id)
        if not fields or TaskState(fields["state"]).terminal:
            return None
        spec = self.store.load_spec(task_id)
        fleet = self.router.fleet(now, fresh=True)
        attempts = int(fields.get("attempts", 0))
        recent = (
            self.store.note_failure(
                agent_id,
                attempt=f"{task_id}:{attempts}",
                now=now,
                window_s=self.settings.quarantine_window_s,
            )
            if agent_id and kind in AGENT_FAULTS
            else 0
        )
        plan_for = functools.partial(
            plan_recovery,
            task_id=task_id,
            error_kind=kind,
            attempts=attempts,
            max_retries=spec.max_retries,
            failed_agent=agent_id,
            failed_agents_for_task=self.store.failed_agents(task_id),
            agents=self.router.eligible(spec, fleet, now),
            required_capabilities=spec.required_capabilities,
            agent_recent_failures=recent,
            quarantine_threshold=self.settings.quarantine_failures,
            now=now,
            rng=self.rng,
            base_delay_s=self.settings.retry_base_delay_s,
            max_delay_s=self.settings.retry_max_delay_s,
            escalation_timeout_s=self.settings.recovery_escalation_timeout,
        )
        plan = plan_for()
        if (
            plan.tier is RecoveryTier.QUARANTINE
            and plan.failed_agent
            and self.ejection_refused(plan.failed_agent, now, True, plan.reason)
        ):
            # The floor keeps the agent: plan again as if it had not reached the threshold.
            plan = plan_for(quarantine_allowed=False)
        plan = plan.model_copy(
            update={"reason": f"{plan.reason} ({error})" if error else plan.reason}
        )
        self.store.save_plan(plan)
        self.store.event(
            "recovery.started",
            now=now,
            source="recovery",
            task_id=task_id,
            tier=plan.tier.value,
            agent_id=agent_id,
            target=plan.target_agent,
            kind=kind.value,
            delay_s=round(plan.delay_s, 3),
            reason=plan.reason,
        )
        self.apply(plan, now)
        return plan

    def apply(self, plan: RecoveryPlan, now: float) -> None:
        if plan.tier is RecoveryTier.ESCALATE:
            self.escalate(plan.task_id, plan.reason, now)
            return
        if plan.tier is RecoveryTier.QUARANTINE and plan.failed_agent:
            self.quarantine(plan.failed_agent, plan.reason, now)
            if plan.target_agent is None:
                # Every capable agent failed it: waiting would give it back to one of them.
                self.escalate(plan.task_id, plan.reason, now)
                return
        fleet = self.router.fleet(now, fresh=True)
        agents = fleet.by_id()
        target = plan.failed_agent if plan.tier is RecoveryTier.RETRY else plan.target_agent
        spec = self.store.load_spec(plan.task_id)
        if plan.delay_s >= self.settings.visibility_timeout_s / 2:
            # Longer than the broker can hold a message unacknowledged without handing it out
            # again: held in Redis until due, then to `target` or the backlog.
            self.router.defer(spec, now + plan.delay_s, now, target, tier=plan.tier.value)
            return
        if target in agents:
            outcome = self.router.dispatch(
                spec, agents[target], now, countdown=plan.delay_s, tier=plan.tier.value
            )
            if outcome.status is OutcomeStatus.ROUTED:
                return
        # The planned agent vanished meanwhile: route anywhere but the agents that failed it.
        failed = self.store.failed_agents(plan.task_id)
        self.router.reroute(
            plan.task_id, now, fleet=fleet, exclude=failed, avoid=failed, tier=plan.tier.value
        )

    def escalate(self, task_id: str, reason: str, now: float) -> None:
        try:
            spec = self.store.load_spec(task_id)
        except UnknownTask:
            return
        if self.store.finish(
            task_id,
            state=TaskState.DEAD_LETTERED,
            agent_id=None,
            now=now,
            error=reason,
            task_type=spec.type,
        ):
            self.store.event(
                "recovery.escalated",
                now=now,
                source="recovery",
                severity=ProductionEventSeverity.CRITICAL,
                task_id=task_id,
                reason=reason,
            )
            self.fail_task(task_id, RecoveryEscalated(f"task {task_id} dead-lettered: {reason}"))

    # --- agents --------------------------------------------------------------------------

    def quarantine(self, agent_id: str, reason: str, now: float) -> bool:
        """Quarantine the agent and move its queued tasks, unless the ejection floor needs it
        eligible (then it stays, announced as `agent.ejection_refused`)."""
        if self.ejection_refused(agent_id, now, True, reason):
            return False
        until = now + self.settings.quarantine_s
        if self.store.quarantine(agent_id, until=until, now=now, reason=reason):
            self.store.forget_failures(agent_id)
            self.move_queued(agent_id, now, only_queued=True)
        return True

    def ejection_refused(
        self, agent_id: str, now: float, quarantine: bool, reason: str = ""
    ) -> bool:
        """Would taking the agent out of routing (a quarantine, or else its circuit that
        opened) leave one of its capabilities below ORCH_MIN_HEALTHY_FRACTION of its live
        agents eligible, or with none? Then say so, once per capability left short: the
        agent stays eligible, as routing keeps it (recovery/floor.py)."""
        return bool(self._refusals(agent_id, now, quarantine, reason)[0])

    def keeps_open_circuit(self, agent_id: str, now: float) -> bool:
        """At `circuit.opened`: announce the capabilities the floor keeps the agent for, and
        say whether it keeps it for all of them. Then its queued tasks stay (routing would
        bring them back); otherwise they move, as an open circuit's do."""
        short, offered = self._refusals(agent_id, now, False, "")
        return bool(short) and short >= offered

    def _refusals(
        self, agent_id: str, now: float, quarantine: bool, reason: str
    ) -> tuple[set[str], set[str]]:
        """(the capabilities left short, all the agent offers), each refusal announced."""
        fleet = self.router.fleet(now, fresh=True)
        refusals = ejection_refusals(
            agent_id,
            fleet.agents,
            breakers=fleet.breakers,
            cfg=self.router.circuit_cfg,
            now=now,
            timeout_s=self.settings.agent_timeout_s,
            fraction=self.settings.min_healthy_fraction,
            quarantine=quarantine,
        )
        cause = "quarantine" if quarantine else "open circuit"
        for refusal in refusals:
            why = (
                f"{cause} of agent {agent_id} refused: it would leave {refusal.healthy} of "
                f"{refusal.total} live agents of {refusal.capability!r} eligible, fewer than "
                f"{refusal.floor} (ORCH_MIN_HEALTHY_FRACTION="
                f"{self.settings.min_healthy_fraction:g})"
            )
            log.warning("%s%s", why, f"; {reason}" if reason else "")
            self.store.event(
                "agent.ejection_refused",
                now=now,
                source="recovery",
                severity=ProductionEventSeverity.WARNING,
                agent_id=agent_id,
                capability=refusal.capability,
                cause=cause,
                reason=f"{why}; {reason}" if reason else why,
                healthy=refusal.healthy,
                total=refusal.total,
                floor=refusal.floor,
            )
        agent = fleet.by_id().get(agent_id)
        offered = set(agent.capabilities) if agent is not None else set()
        return {r.capability for r in refusals}, offered

    def move_queued(self, agent_id: str, now: float, only_queued: bool) -> int:
        """Re-route the agent's tasks elsewhere: those still waiting in its queue, and with
        only_queued=False those it was running too (it is gone)."""
        moved = 0
        fleet = self.router.fleet(now, fresh=True)
        for task_id in self.store.inflight(agent_id):
            state = self.store.task_fields(task_id).get("state")
            movable = (
                {TaskState.ROUTED.value}
                if only_queued
                else {TaskState.ROUTED.value, TaskState.RUNNING.value}
            )
            if state in movable:
                outcome = self.router.reroute(
                    task_id,
                    now,
                    fleet=fleet,
                    exclude={agent_id},
                    source="move" if only_queued else "lost",
                    moved_from=agent_id,
                )
                moved += outcome.status in PLACED
        return moved

    def agent_lost(self, agent_id: str, now: float, reason: str) -> int:
        """Mark the agent offline and move everything it held; empty its queue."""
        self.store.set_status(
            agent_id,
            status=AgentStatus.OFFLINE,
            now=now,
            source="recovery",
            event="agent.lost",
            severity=ProductionEventSeverity.ERROR,
            reason=reason,
        )
        moved = self.move_queued(agent_id, now, only_queued=False)
        fleet = self.store.load_agents()
        queue = next((a.queue for a in fleet if a.agent_id == agent_id), None)
        if queue is not None:
            self.store.purge_agent_queue(queue)
        log.warning("agent %s lost (%s): %d task(s) re-routed", agent_id, reason, moved)
        return moved

    def rescue_vanished(self, agent: RegisteredAgent, now: float) -> int:
        """Route again the agent's tasks `routed` for over ORCH_AGENT_TIMEOUT_S whose message
        is nowhere in Redis: not in its queue, not among the unacknowledged deliveries (a
        queue purged by hand, `celery purge`; or a message lost to a Redis restart); each
        only if still `routed` under the dispatch judged, so a copy that started meanwhile
        never runs twice, and a late copy is stale. Needs the broker on the state store's
        Redis. The scan reads the agent's in-flight tasks and, when one is old enough, its
        queue: it runs at most every half agent timeout, not at every monitor tick."""
        if not self.settings.broker_is_state_store:
            return 0
        routed_before = now - self.settings.agent_timeout_s
        rescued = 0
        lost = self.store.vanished(agent.agent_id, agent.queue, routed_before)
        for task_id, dispatch in lost.items():
            outcome = self.router.reroute(
                task_id, now, expect_dispatch=dispatch, reason="message lost"
            )
            if outcome.status in PLACED:
                rescued += 1
                log.warning("task %s: message lost; dispatched again", task_id)
        return rescued

    def rescue_all(self, now: float) -> int:
        """rescue_vanished for every live agent holding unended tasks, asleep or quarantined
        too (the whole fleet is read only here: the queue names are in the agents' records)."""
        timeout = self.settings.agent_timeout_s
        rescued = 0
        for agent in self.store.load_agents():
            if agent.in_flight and effective_status(agent, now, timeout) in LIVE:
                rescued += self.rescue_vanished(agent, now)
        return rescued

    def monitor(self, now: float) -> dict[str, int]:
        """The periodic sweep: lost agents, tasks stranded on offline agents, messages lost
        to a Redis restart, overdue plans."""
        lost = escalated = moved = rescued = 0
        rescue = now - self._rescue_at >= self.settings.agent_timeout_s / 2
        if rescue:
            self._rescue_at = now
        timeout = self.settings.agent_timeout_s
        for agent_id, (status, beat) in sorted(self.store.liveness().items()):
            stale = now - beat > timeout
            if status in (AgentStatus.ACTIVE, AgentStatus.SLEEPING) and stale:
                lost += 1
                moved += self.agent_lost(agent_id, now, f"no heartbeat for {now - beat:.1f}s")
            elif (
                status is AgentStatus.OFFLINE
                and (stale or not beat)
                and self.store.inflight(agent_id)
            ):
                # Deregistered (warm shutdown) or lost earlier: whatever it still holds once
                # its heartbeat is stale will not finish there.
                moved += self.move_queued(agent_id, now, only_queued=False)
        if rescue:
            rescued = self.rescue_all(now)
        for plan in self.store.overdue_plans(now):
            state = self.store.task_fields(plan.task_id).get("state")
            if state and not TaskState(state).terminal:
                escalated += 1
                self.escalate(
                    plan.task_id,
                    f"recovery unfinished after "
                    f"{self.settings.recovery_escalation_timeout:.0f}s "
                    f"({plan.tier.value}: {plan.reason})",
                    now,
                )
        return {"lost": lost, "moved": moved, "escalated": escalated, "rescued": rescued}
