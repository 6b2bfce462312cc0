"""What recovery reads and writes: recovery plans, and the tasks a lost agent held."""

from __future__ import annotations

import json

from orchestrator.models import RecoveryPlan
from orchestrator.store.base import StoreBase
from orchestrator.store.keys import (
    KOMBU_UNACKED,
    KOMBU_UNACKED_INDEX,
    RECOVERY,
    RECOVERY_DEADLINES,
    failures_key,
    inflight_key,
    queue_lists,
    task_key,
)
from orchestrator.store.scripts import VANISHED_SIG


class RecoveryStore(StoreBase):
    """Recovery plans due for a check (the healer's), and a lost agent's in-flight tasks and
    broker lists."""

    def save_plan(self, plan: RecoveryPlan) -> None:
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(RECOVERY, plan.task_id, plan.model_dump_json())
            pipe.zadd(RECOVERY_DEADLINES, {plan.task_id: plan.deadline})
            pipe.execute()

    def note_failure(self, agent_id: str, *, attempt: str, now: float, window_s: float) -> int:
        """Record one failed attempt of the agent (idempotent per `attempt`, so a redelivered
        recovery counts once) and return its failures within the last `window_s`."""
        key = failures_key(agent_id)
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.zadd(key, {attempt: now}, nx=True)
            pipe.zremrangebyscore(key, "-inf", f"({now - window_s!r}")
            pipe.expire(key, max(1, int(window_s) + 1))
            pipe.zcard(key)
            return int(pipe.execute()[-1])

    def forget_failures(self, agent_id: str) -> None:
        """A quarantined agent starts its next spell with a clean record."""
        with self._translate():
            self.r.delete(failures_key(agent_id))

    def overdue_plans(self, now: float, limit: int = 500) -> list[RecoveryPlan]:
        with self._translate():
            ids = self.r.zrangebyscore(RECOVERY_DEADLINES, "-inf", now, start=0, num=limit)
            raws = self.r.hmget(RECOVERY, ids) if ids else []
        plans = []
        for task_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                with self._translate():
                    self.r.zrem(RECOVERY_DEADLINES, task_id)
                continue
            plans.append(RecoveryPlan.model_validate_json(raw))
        return plans

    def vanished(self, agent_id: str, queue: str, routed_before: float) -> dict[str, int]:
        """The agent's tasks `routed` before `routed_before` whose message is in neither its
        queue nor kombu's unacknowledged deliveries (scripts.VANISHED), with their dispatch.
        Only meaningful when the broker is the state store's Redis."""
        with self._translate():
            flat = self._vanished(
                keys=VANISHED_SIG.key_list(
                    inflight=inflight_key(agent_id),
                    unacked=KOMBU_UNACKED,
                    lists=queue_lists(queue),
                ),
                args=VANISHED_SIG.arg_list(
                    ledger_prefix=task_key(""), routed_before=repr(routed_before)
                ),
            )
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def inflight(self, agent_id: str) -> list[str]:
        with self._translate():
            return sorted(self.r.smembers(inflight_key(agent_id)))

    def purge_agent_queue(self, queue: str) -> int:
        """Empty a lost agent's broker lists and its unacked entries, once every task in them
        has been re-routed under a new dispatch (the copies left there are stale)."""
        removed = 0
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for name in queue_lists(queue):
                pipe.llen(name)
            removed = sum(int(n) for n in pipe.execute())
            self.r.delete(*queue_lists(queue))
            stale = []
            for tag, raw in self.r.hscan_iter(KOMBU_UNACKED, count=500):
                try:
                    _payload, _exchange, routing_key = json.loads(raw)
                except (ValueError, TypeError):
                    continue
                if routing_key == queue:
                    stale.append(tag)
            if stale:
                pipe = self.r.pipeline(transaction=True)
                pipe.hdel(KOMBU_UNACKED, *stale)
                pipe.zrem(KOMBU_UNACKED_INDEX, *stale)
                pipe.execute()
        return removed + len(stale)
