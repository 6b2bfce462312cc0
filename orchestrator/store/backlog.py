"""The dispatch half of the store: the backlog, deferred tasks and filling free slots.

Every change is one Lua step composed with lua/backlog.lua (scripts.ENQUEUE, DEFER, FILL,
and the settle and accept-and-route steps), so a task is in exactly one place at any moment:
an agent's queue (routed), the backlog (queued or parked), or the deferred set.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import Settings
from orchestrator.models import OrchestrationTask
from orchestrator.store.base import StoreBase, _history
from orchestrator.store.keys import (
    BL_COUNT,
    BL_PRIOS,
    BL_SETS,
    CK_HOLDERS,
    CK_LIMITS,
    CK_WAITING,
    DEFERRED,
    EVENTS_WANT,
    PARKED,
    SLOT_KEYS,
    backlog_clients,
    backlog_queue,
    task_key,
)
from orchestrator.store.scripts import DEFER_SIG, ENQUEUE_SIG, FILL_SIG

#: A client's run-time estimate before any of its tasks settled from the backlog (seconds).
DEFAULT_ESTIMATE_S = 1.0
#: The label every task waits under with ORCH_FAIR_SHARE=off: one list per priority, oldest
#: first.
NO_FAIR_SHARE = "*"


@dataclass(frozen=True)
class DispatchConfig:
    """What the dispatching steps need of the settings."""

    prefetch: int = 1
    fair_share: bool = True
    weights: dict[str, float] = field(default_factory=dict)
    agent_timeout_s: float = 15.0
    concurrency_default_limit: int = 1

    @classmethod
    def of(cls, settings: Settings) -> DispatchConfig:
        return cls(
            prefetch=settings.agent_prefetch,
            fair_share=settings.fair_share == "client",
            weights=dict(settings.client_weights),
            agent_timeout_s=settings.agent_timeout_s,
            concurrency_default_limit=settings.concurrency_default_limit,
        )

    def client(self, task: OrchestrationTask) -> str:
        return task.client_id if self.fair_share else NO_FAIR_SHARE

    def limit(self, task: OrchestrationTask) -> int:
        return task.concurrency_limit or self.concurrency_default_limit


@dataclass(frozen=True)
class Dispatched:
    """A waiting task a fill handed to an agent: to be published under `dispatch`."""

    task: OrchestrationTask
    dispatch: int


@dataclass(frozen=True)
class BacklogGroup:
    """What waits for one capability set (orchestrator backlog)."""

    capability_key: str
    waiting: int
    oldest_s: float
    by_priority: dict[int, int]
    by_client: dict[str, int]


def parse_fills(flat: Sequence[Any]) -> list[Dispatched]:
    return [
        Dispatched(OrchestrationTask.model_validate_json(flat[i + 2]), int(flat[i + 1]))
        for i in range(0, len(flat) - 2, 3)
    ]


class BacklogStore(StoreBase):
    """The backlog: enqueue, defer, fill an agent's free slots, and read it."""

    dispatch_config: DispatchConfig = DispatchConfig()

    def backlog_context(self, now: float) -> list[Any]:
        """backlog.context's six items."""
        cfg = self.dispatch_config
        return [
            repr(now),
            json.dumps(cfg.weights) if cfg.weights else "{}",
            DEFAULT_ESTIMATE_S,
            cfg.prefetch,
            cfg.agent_timeout_s,
            self.events_max_len,
        ]

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
    ) -> bool:
        """Put the task in the backlog (scripts.ENQUEUE); a `running` task (source lost) only
        while it still runs on `from_agent`, the agent found gone; `source`: new, move (off a live
        agent), lost (off a lost agent: a running task too), due (a deferred task), restore.
        No agent in `avoid` takes it from the backlog. False when the task was not in a state
        to move."""
        assert task.task_id is not None
        cfg = self.dispatch_config
        state = "parked" if parked else "queued"
        args = ENQUEUE_SIG.arg_list(
            cx=self.backlog_context(now),
            task_id=task.task_id,
            state=state,
            capability_set=task.capability_key,
            priority=task.priority,
            client=cfg.client(task),
            concurrency_key=task.concurrency_key or "",
            limit=cfg.limit(task),
            source=source,
            expect_dispatch="" if expect_dispatch is None else expect_dispatch,
            front="1" if front else "0",
            entry=_history(state, now, **history),
            event_type=event[0] if event else "",
            event_data=json.dumps(event[1], default=str) if event else "",
            avoid=",".join(sorted(avoid)),
            lost_from=from_agent or "",
        )
        with self._translate():
            done, _previous = self._enqueue(keys=SLOT_KEYS, args=args)
        return int(done) == 1

    def defer(
        self, task_id: str, *, due: float, now: float, prefer: str | None = None, **history: Any
    ) -> bool:
        """Hold the task in Redis until `due` (scripts.DEFER): released by the dispatch sweep."""
        with self._translate():
            done, _previous = self._defer(
                keys=SLOT_KEYS,
                args=DEFER_SIG.arg_list(
                    task_id=task_id,
                    due=repr(due),
                    now=repr(now),
                    entry=_history("queued", now, due=due, **history),
                    prefer=prefer or "",
                ),
            )
        return int(done) == 1

    def deferred_due(self, now: float, limit: int = 500) -> list[tuple[str, str | None]]:
        """Deferred tasks due by `now`, with the agent each would rather go to."""
        with self._translate():
            ids = self.r.zrangebyscore(DEFERRED, "-inf", now, start=0, num=limit)
            if not ids:
                return []
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(task_key(task_id), "prefer")
            prefers = pipe.execute()
        return list(zip(ids, prefers, strict=True))

    def fill(
        self, agent_id: str, *, now: float, limit: int | None = None, trusted: bool = False
    ) -> list[Dispatched]:
        """Dispatch waiting tasks to the agent while it has free slots (scripts.FILL);
        `trusted`: the caller judged its circuit (a router's choice) and the step need not."""
        with self._translate():
            flat = self._fill(
                keys=SLOT_KEYS,
                args=FILL_SIG.arg_list(
                    cx=self.backlog_context(now),
                    agent=agent_id,
                    limit="" if limit is None else limit,
                    trusted="1" if trusted else "0",
                ),
            )
        return parse_fills(flat)

    def backlog_sets(self) -> list[str]:
        with self._translate():
            return sorted(self.r.smembers(BL_SETS))

    def backlog_count(self) -> dict[str, int]:
        """Tasks waiting per capability set (keyed tasks waiting for a permit not counted:
        see concurrency_waiting)."""
        with self._translate():
            return {k: int(v) for k, v in self.r.hgetall(BL_COUNT).items() if int(v) > 0}

    def backlog(self, now: float, sample: int = 10_000) -> list[BacklogGroup]:
        """Per capability set: waiting count, oldest wait, counts by priority and client.
        Reads each (set, priority, client) list's length and its head's age: O(lists)."""
        groups = []
        with self._translate():
            for key in self.backlog_sets():
                by_priority: dict[int, int] = {}
                by_client: dict[str, int] = {}
                heads: list[str] = []
                prios = [int(p) for p in self.r.zrange(BL_PRIOS + key, 0, -1)]
                for p in prios:
                    for client in self.r.zrange(backlog_clients(key, p), 0, -1):
                        q = backlog_queue(key, p, client)
                        n = int(self.r.llen(q))
                        by_priority[p] = by_priority.get(p, 0) + n
                        by_client[client] = by_client.get(client, 0) + n
                        head = self.r.lindex(q, 0)
                        if head:
                            heads.append(head)
                oldest = now
                if heads:
                    pipe = self.r.pipeline(transaction=False)
                    for head in heads:
                        pipe.hget(task_key(head), "queued_at")
                    for value in pipe.execute():
                        if value:
                            oldest = min(oldest, float(value))
                groups.append(
                    BacklogGroup(
                        key,
                        sum(by_priority.values()),
                        max(0.0, now - oldest),
                        dict(sorted(by_priority.items(), reverse=True)),
                        by_client,
                    )
                )
        return groups

    def concurrency_keys(self) -> dict[str, tuple[int, int, int]]:
        """Concurrency key -> (limit, holders, waiting)."""
        with self._translate():
            limits = self.r.hgetall(CK_LIMITS)
            pipe = self.r.pipeline(transaction=False)
            for key in limits:
                pipe.scard(CK_HOLDERS + key)
                pipe.llen(CK_WAITING + key)
            counts = pipe.execute()
        return {
            key: (int(limit), int(counts[2 * i]), int(counts[2 * i + 1]))
            for i, (key, limit) in enumerate(limits.items())
        }

    def wait_again(self, task: OrchestrationTask, now: float) -> None:
        """A restored task that was waiting goes back where it waited: its backlog list (or
        its key's waiting list), or the deferred set when it had a due time; its ledger entry
        (state, time queued, place in the order) stays as it was."""
        assert task.task_id is not None
        fields = self.r.hmget(task_key(task.task_id), "state", "due", "bl")
        state, due, slot = fields
        if due and not slot:
            with self._translate():
                self.r.zadd(DEFERRED, {task.task_id: float(due)})
            return
        self.enqueue(task, now=now, parked=state == "parked", source="restore", front=False)

    def want_events(self, consumer: str, types: Collection[str], on: bool = True) -> None:
        """Say that `consumer` handles these on-demand event types (keys.ON_DEMAND_EVENTS), or
        no longer does: the dispatch steps emit them only while some consumer does."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for event_type in types:
                if on:
                    pipe.sadd(EVENTS_WANT + event_type, consumer)
                else:
                    pipe.srem(EVENTS_WANT + event_type, consumer)
            pipe.execute()

    def deferred_count(self) -> int:
        with self._translate():
            return int(self.r.zcard(DEFERRED))

    def parked_count(self) -> int:
        with self._translate():
            return int(self.r.zcard(PARKED))
