"""The task half of the state store: the ledger, the outbox, parking and attempts."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orchestrator.errors import UnknownTask
from orchestrator.models import (
    OrchestrationEvent,
    OrchestrationTask,
    ProductionEventSeverity,
    TaskRecord,
    TaskState,
)
from orchestrator.monitoring.stats import REJECTIONS_TTL_S, client_label
from orchestrator.store.backlog import BacklogStore
from orchestrator.store.base import _event_args, _history
from orchestrator.store.calls import Acceptance, Attempt
from orchestrator.store.codes import (
    REJECTION_COUNTS,
    AcceptStatus,
    RejectionReason,
)
from orchestrator.store.keys import (
    AGENT_STATS,
    COUNTERS,
    DLQ,
    INFLIGHT_PREFIX,
    OUTBOX,
    OUTBOX_MSG,
    PARKED,
    RECOVERY,
    RECOVERY_DEADLINES,
    events_key,
    history_key,
    inflight_key,
    rejections_key,
    task_key,
)
from orchestrator.store.scripts import (
    ACCEPT_SIG,
    BEGIN_ATTEMPT_SIG,
    FINISH_SIG,
    ROUTE_SIG,
    TRANSITION_SIG,
)


def _outbox_message(kwargs: Mapping[str, Any], submit_id: str, queue: str) -> str:
    """An outbox entry: what the recovery monitor sends to `orchestrator.submit` again."""
    return json.dumps({"kwargs": dict(kwargs), "queue": queue, "submit_id": submit_id})


class LedgerStore(BacklogStore):
    """Tasks: the ledger, the submission outbox, refusals, parking, attempts and terminal
    states (the dead-letter store is DeadLetterStore's, recovery plans RecoveryStore's)."""

    # --- the ledger ----------------------------------------------------------------------

    def accept(self, acceptance: Acceptance) -> tuple[AcceptStatus, str]:
        """Record a new task and announce it, in one round trip; tell a fresh acceptance from
        a redelivery of the same submit message or a duplicate submission. With its `outbox`
        a new task also enters the outbox in the same step."""
        keys, args = self._accept_step(acceptance)
        with self._translate():
            status, state = self.replicated(
                lambda client: self._accept(keys=keys, args=args, client=client)
            )
        return AcceptStatus(str(status)), str(state)

    def _accept_step(self, acceptance: Acceptance) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of scripts.ACCEPT."""
        task, submit_id, now = acceptance.task, acceptance.submit_id, acceptance.now
        outbox = acceptance.outbox
        assert task.task_id is not None
        event = OrchestrationEvent(
            type="task.submitted",
            ts=now,
            source="router",
            data={
                "task_id": task.task_id,
                "type": task.type,
                "client_id": task.client_id,
                "priority": task.priority,
            },
        )
        keys = ACCEPT_SIG.key_list(
            ledger=task_key(task.task_id),
            history=history_key(task.task_id),
            counters=COUNTERS,
            events=events_key(event.type),
            outbox=OUTBOX,
            outbox_msg=OUTBOX_MSG,
        )
        args = ACCEPT_SIG.arg_list(
            submit_id=submit_id,
            now=repr(now),
            spec=task.model_dump_json(),
            type=task.type,
            entry=_history("accepted", now, client_id=task.client_id),
            ttl=self.ledger_ttl_s,
            maxlen=self.events_max_len,
            task_id=task.task_id,
            outbox_message=(
                "" if outbox is None else _outbox_message(outbox[0], submit_id, outbox[1])
            ),
            event=_event_args(event),
        )
        return keys, args

    # --- the submission outbox ------------------------------------------------------------

    def outbox_put(
        self, task_id: str, *, submit_id: str, kwargs: dict[str, Any], queue: str, now: float
    ) -> None:
        """Keep a client's submission until it is routed or parked (OrchestratorClient)."""
        message = _outbox_message(kwargs, submit_id, queue)

        def put(client: Any) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(OUTBOX_MSG, task_id, message)
            pipe.zadd(OUTBOX, {task_id: now})
            pipe.execute()

        with self._translate():
            self.replicated(put)

    def outbox_drop(self, task_id: str, pipe: Any = None) -> None:
        # Alone, not in MULTI: a full Redis (maxmemory) refuses every command queued in a
        # MULTI, but never these two, which only free memory.
        target = pipe if pipe is not None else self.r.pipeline(transaction=False)
        with self._translate():
            target.zrem(OUTBOX, task_id)
            target.hdel(OUTBOX_MSG, task_id)
            if pipe is None:
                target.execute()

    def outbox_due(
        self, older_than: float, now: float, limit: int = 500
    ) -> list[tuple[str, dict[str, Any]]]:
        """Submissions neither routed nor parked within the resend delay: the client died
        between recording and routing, or (through `orchestrator.submit`) a router was killed
        holding the message, which kombu's BRPOP hands over before recording it as
        unacknowledged. Each is stamped `now` and returned, to be sent again by name under
        its original message id (so an accepted one resumes instead of repeating)."""
        with self._translate():
            ids = self.r.zrangebyscore(OUTBOX, "-inf", older_than, start=0, num=limit)
            if not ids:
                return []
            raws = self.r.hmget(OUTBOX_MSG, ids)
            self.r.zadd(OUTBOX, dict.fromkeys(ids, now), xx=True)
        return [(i, json.loads(raw)) for i, raw in zip(ids, raws, strict=True) if raw]

    def record_rejection(
        self,
        problems: Sequence[str],
        *,
        submit_id: str,
        now: float,
        client_id: str | None,
        reason: RejectionReason = RejectionReason.INVALID,
    ) -> None:
        """Count a refused submission and announce it (`task.rejected`). `reason`: invalid
        (a bad spec), rate_limited or blocked (see admit_client). Invalid and rate-limited
        ones count toward the security loop's rejection threshold; refusals of a blocked
        client are counted apart, so a block runs its course instead of renewing the finding
        that caused it (codes.REJECTION_COUNTS)."""
        label = client_label(client_id)
        minute = int(now // 60)
        reason = RejectionReason(reason)
        kinds = REJECTION_COUNTS[reason]
        with self._translate():
            pipe = self.r.pipeline(transaction=True)  # all counted, or (Redis full) none
            pipe.hincrby(COUNTERS, "rejected", 1)
            if reason is not RejectionReason.INVALID:
                pipe.hincrby(COUNTERS, reason.value, 1)
            # Per client and minute, for the security loop (both submission paths count).
            for kind in kinds:
                minute_key = rejections_key(minute, kind)
                pipe.hincrby(minute_key, label, 1)
                pipe.expire(minute_key, REJECTIONS_TTL_S)
            self.event(
                "task.rejected",
                now=now,
                source="router",
                pipe=pipe,
                severity=ProductionEventSeverity.WARNING,
                submit_id=submit_id,
                problems=list(problems),
                client_id=client_id,
                reason=reason.value,
            )
            pipe.execute()

    def count_duplicate(self, differing: bool = False) -> None:
        """Count a submission that runs nothing again (a duplicate; a redelivery past routing);
        `differing`: a duplicate whose spec differs from the accepted one (counted apart too,
        as `duplicates_differing`: a submitter by name is told nothing else)."""
        with self._translate():
            if not differing:
                self.r.hincrby(COUNTERS, "duplicates_ignored", 1)
                return
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(COUNTERS, "duplicates_ignored", 1)
            pipe.hincrby(COUNTERS, "duplicates_differing", 1)
            pipe.execute()

    def task_exists(self, task_id: str) -> bool:
        with self._translate():
            return bool(self.r.exists(task_key(task_id)))

    def task_fields(self, task_id: str) -> dict[str, str]:
        with self._translate():
            return dict(self.r.hgetall(task_key(task_id)))

    def load_spec(self, task_id: str) -> OrchestrationTask:
        with self._translate():
            raw = self.r.hget(task_key(task_id), "spec")
        if raw is None:
            raise UnknownTask(f"no task {task_id!r} in the ledger (expired, or never accepted)")
        return OrchestrationTask.model_validate_json(raw)

    def _move(
        self,
        task_id: str,
        new: TaskState,
        allowed: Sequence[TaskState],
        now: float,
        history: dict[str, Any] | None = None,
        **fields: Any,
    ) -> tuple[int, str]:
        args = TRANSITION_SIG.arg_list(
            state=new.value,
            entry=_history(new.value, now, **(history or {})),
            allowed=[s.value for s in allowed],
            fields=[item for pair in fields.items() if pair[1] is not None for item in pair],
        )
        keys = TRANSITION_SIG.key_list(ledger=task_key(task_id), history=history_key(task_id))
        with self._translate():
            done, previous = self._transition(keys=keys, args=args)
        return int(done), str(previous)

    def _waiting_args(self, task: OrchestrationTask, now: float) -> list[Any]:
        """The backlog context, set, priority and client of a task that may have to wait."""
        client = self.dispatch_config.client(task)
        return [*self.backlog_context(now), task.capability_key, task.priority, client]

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
    ) -> int:
        """Assign the task to an agent (one round trip); returns the new dispatch number, 0
        when the task had already ended (or, with `expect_dispatch`, is no longer `routed`
        under that dispatch), -1 when the agent has no free slot of its `slots`. A `running`
        task moves only off `lost_from`, the agent found gone, while it still runs there."""
        keys, args = self._route_step(
            task,
            agent_id=agent_id,
            now=now,
            drop_outbox=drop_outbox,
            expect_dispatch=expect_dispatch,
            slots=slots,
            lost_from=lost_from,
            **history,
        )
        with self._translate():
            dispatch, _previous = self._route(keys=keys, args=args)
        return max(-1, int(dispatch))

    def _route_step(
        self,
        task: OrchestrationTask,
        *,
        agent_id: str,
        now: float,
        drop_outbox: bool,
        expect_dispatch: int | None = None,
        slots: int | None = None,
        lost_from: str | None = None,
        **history: Any,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of scripts.ROUTE."""
        assert task.task_id is not None
        event = OrchestrationEvent(
            type="task.routed",
            ts=now,
            source="router",
            data={"task_id": task.task_id, "agent_id": agent_id, "type": task.type},
        )
        keys = ROUTE_SIG.key_list(
            ledger=task_key(task.task_id),
            history=history_key(task.task_id),
            counters=COUNTERS,
            stats=AGENT_STATS,
            parked=PARKED,
            events=events_key(event.type),
            outbox=OUTBOX,
            outbox_msg=OUTBOX_MSG,
        )
        args = ROUTE_SIG.arg_list(
            agent=agent_id,
            now=repr(now),
            entry=_history("routed", now, agent=agent_id, **history),
            inflight_prefix=INFLIGHT_PREFIX,
            task_id=task.task_id,
            maxlen=self.events_max_len,
            drop_outbox="1" if drop_outbox else "0",
            expect_dispatch="" if expect_dispatch is None else expect_dispatch,
            slots="" if slots is None else slots,
            lost_from=lost_from or "",
            event=_event_args(event),
        )
        return keys, args

    def park(
        self,
        task: OrchestrationTask,
        *,
        now: float,
        source: str = "new",
        avoid: Collection[str] = (),
        from_agent: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Put a task no capable agent exists for into the backlog as `parked` (its wait is
        bounded by ORCH_PENDING_TIMEOUT_S), announced as `task.parked`; it leaves the outbox
        in the same step. `reason` (why no agent can take it) goes in the event and in the
        history entry, where `orchestrator task` reads it."""
        assert task.task_id is not None
        event: dict[str, Any] = {
            "task_id": task.task_id,
            "type": task.type,
            "required_capabilities": task.required_capabilities,
        }
        if reason is not None:
            event["reason"] = reason
        return self.enqueue(
            task,
            now=now,
            parked=True,
            source=source,
            event=("task.parked", event),
            avoid=avoid,
            from_agent=from_agent,
            reason=reason,
        )

    def parked(self, limit: int = 1000) -> list[tuple[str, float]]:
        with self._translate():
            return [
                (str(m), float(s)) for m, s in self.r.zrange(PARKED, 0, limit - 1, withscores=True)
            ]

    def claim_parked(self, task_id: str) -> bool:
        """Take a parked task out of the parked set; only one router wins it."""
        with self._translate():
            return bool(self.r.zrem(PARKED, task_id))

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
    ) -> Attempt:
        with self._translate():
            code, info, *rest = self._begin(
                keys=BEGIN_ATTEMPT_SIG.key_list(
                    ledger=task_key(task_id), history=history_key(task_id)
                ),
                args=BEGIN_ATTEMPT_SIG.arg_list(
                    agent=agent_id,
                    now=repr(now),
                    entry=_history("running", now, agent=agent_id),
                    dispatch=dispatch,
                    pid=pid,
                    max_deliveries=max_deliveries,
                    force="1" if force else "0",
                ),
            )
        submitted = rest[0] if rest and rest[0] else None
        return Attempt.of(int(code), str(info), None if submitted is None else float(submitted))

    def mark_recovering(
        self, task_id: str, *, agent_id: str, now: float, error: str, kind: str
    ) -> bool:
        """The run failed and recovery takes the task over: it no longer holds a slot of the
        agent's (the caller fills the slot from the backlog)."""
        done, _ = self._move(
            task_id,
            TaskState.RECOVERING,
            [TaskState.RUNNING, TaskState.ROUTED],
            now,
            history={"agent": agent_id, "error": error, "kind": kind},
            error=error,
        )
        if done == 1:
            self._inflight_remove(agent_id, task_id)
        return done == 1

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
    ) -> bool:
        """Record a terminal state once (one round trip); False when the task had already
        ended.

        The handler's encoded result is kept in the ledger so a redelivered copy of a task
        that already succeeded can hand it back without running the handler again."""
        with self._translate():
            owner = agent_id or self.r.hget(task_key(task_id), "agent")
            keys, args = self._finish_step(
                task_id,
                state=state,
                agent_id=agent_id,
                owner=owner,
                now=now,
                error=error,
                latency_ms=latency_ms,
                task_type=task_type,
                result=result,
            )
            done, _ = self._finish(keys=keys, args=args)
        return int(done) == 1

    def _finish_step(
        self,
        task_id: str,
        *,
        state: TaskState,
        agent_id: str | None,
        owner: str | None,
        now: float,
        error: str | None,
        latency_ms: float | None,
        task_type: str | None,
        result: str | None,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of scripts.FINISH."""
        fields: list[Any] = ["finished_at", repr(now)]
        for name, value in (
            ("error", error),
            ("result", result),
            ("latency_ms", None if latency_ms is None else repr(latency_ms)),
        ):
            if value is not None:
                fields += [name, value]
        event = OrchestrationEvent(
            type=f"task.{state.value}",
            ts=now,
            severity=(
                ProductionEventSeverity.INFO
                if state is TaskState.SUCCEEDED
                else ProductionEventSeverity.ERROR
            ),
            source=agent_id or "recovery",
            data={
                "task_id": task_id,
                "agent_id": owner,
                "error": error,
                "latency_ms": latency_ms,
                "type": task_type,
            },
        )
        keys = FINISH_SIG.key_list(
            ledger=task_key(task_id),
            history=history_key(task_id),
            counters=COUNTERS,
            plans=RECOVERY,
            deadlines=RECOVERY_DEADLINES,
            parked=PARKED,
            outbox=OUTBOX,
            outbox_msg=OUTBOX_MSG,
            dead_letters=DLQ,
            events=events_key(event.type),
        )
        args = FINISH_SIG.arg_list(
            state=state.value,
            entry=_history(state.value, now, agent=agent_id, error=error),
            now=repr(now),
            ttl=self.ledger_ttl_s,
            task_id=task_id,
            inflight=inflight_key(owner) if owner else "",
            maxlen=self.events_max_len,
            fields=fields,
            event=_event_args(event),
        )
        return keys, args

    def stored_result(self, task_id: str) -> str | None:
        with self._translate():
            value = self.r.hget(task_key(task_id), "result")
        return str(value) if value is not None else None

    def task_record(self, task_id: str) -> TaskRecord:
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(task_key(task_id))
            pipe.lrange(history_key(task_id), 0, -1)
            fields, history = pipe.execute()
        if not fields:
            raise UnknownTask(f"no task {task_id!r} in the ledger (expired, or never accepted)")
        spec = json.loads(fields.get("spec", "{}"))

        def num(name: str) -> float | None:
            return float(fields[name]) if name in fields else None

        return TaskRecord(
            task_id=task_id,
            type=fields.get("type", spec.get("type", "")),
            state=TaskState(fields["state"]),
            agent_id=fields.get("agent"),
            attempts=int(fields.get("attempts", 0)),
            priority=spec.get("priority", 5),
            required_capabilities=spec.get("required_capabilities", []),
            client_id=spec.get("client_id", "anonymous"),
            submitted_at=num("submitted_at"),
            routed_at=num("routed_at"),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            error=fields.get("error"),
            history=[json.loads(h) for h in history],
        )

    def failed_agents(self, task_id: str) -> set[str]:
        """Agents on which this task already failed (its `recovering` history entries)."""
        with self._translate():
            entries = self.r.lrange(history_key(task_id), 0, -1)
        failed = set()
        for raw in entries:
            entry = json.loads(raw)
            if entry.get("state") == TaskState.RECOVERING.value and entry.get("agent"):
                failed.add(entry["agent"])
        return failed

    def counters(self) -> dict[str, int]:
        with self._translate():
            return {k: int(v) for k, v in self.r.hgetall(COUNTERS).items()}
