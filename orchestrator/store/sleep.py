"""Sleeping agents' state: the status change with its checkpoint, idle marks, recycle marks.

A status change is conditional (WATCH): an agent falls asleep only from `active` and wakes
only from `sleeping`, so the loop, an operator's `orchestrator agent sleep|wake` and a
restarting agent (which registers as active) never undo each other's newer change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from orchestrator.models import AgentStatus, RegisteredAgent
from orchestrator.store.base import StoreBase
from orchestrator.store.keys import AGENT_STATUS, FLEET_VERSION, IDLE_SINCE, RECYCLED, SLEEP


def checkpoint(agent: RegisteredAgent, now: float, reason: str) -> dict[str, Any]:
    """What is written when an agent falls asleep: why, when, and its figures then."""
    return {
        "slept_at": now,
        "reason": reason,
        "tasks_succeeded": agent.tasks_succeeded,
        "tasks_failed": agent.tasks_failed,
        "latency_ms": agent.latency_ms,
        "performance_score": agent.performance_score,
        "capability_scores": agent.capability_scores,
    }


class SleepStore(StoreBase):
    """Sleep and wake as conditional status changes, and the loop's own marks."""

    def _change(
        self,
        agent_id: str,
        *,
        frm: AgentStatus,
        to: AgentStatus,
        now: float,
        source: str,
        event: str,
        reason: str,
        mark: dict[str, Any] | None,
    ) -> bool:
        with self._translate(), self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(AGENT_STATUS)
                    if pipe.hget(AGENT_STATUS, agent_id) != frm.value:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(AGENT_STATUS, agent_id, to.value)
                    pipe.incr(FLEET_VERSION)
                    pipe.hdel(IDLE_SINCE, agent_id)
                    if mark is not None:
                        pipe.hset(SLEEP, agent_id, json.dumps(mark))
                    else:
                        pipe.hdel(SLEEP, agent_id)
                    self.event(
                        event, now=now, source=source, pipe=pipe, agent_id=agent_id, reason=reason
                    )
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def anyone_sleeping(self) -> bool:
        """Whether any agent's stored status is `sleeping`."""
        with self._translate():
            return AgentStatus.SLEEPING.value in self.r.hvals(AGENT_STATUS)

    def fall_asleep(self, agent: RegisteredAgent, *, now: float, reason: str, source: str) -> bool:
        """active -> sleeping, with its checkpoint and `agent.sleeping`; False if not active."""
        return self._change(
            agent.agent_id,
            frm=AgentStatus.ACTIVE,
            to=AgentStatus.SLEEPING,
            now=now,
            source=source,
            event="agent.sleeping",
            reason=reason,
            mark=checkpoint(agent, now, reason),
        )

    def wake_up(self, agent_id: str, *, now: float, reason: str, source: str) -> bool:
        """sleeping -> active, with `agent.woken`; False if it was not asleep."""
        return self._change(
            agent_id,
            frm=AgentStatus.SLEEPING,
            to=AgentStatus.ACTIVE,
            now=now,
            source=source,
            event="agent.woken",
            reason=reason,
            mark=None,
        )

    def sleep_checkpoints(self) -> dict[str, dict[str, Any]]:
        with self._translate():
            raw = self.r.hgetall(SLEEP)
        out = {}
        for agent_id, value in raw.items():
            try:
                out[str(agent_id)] = dict(json.loads(value))
            except (ValueError, TypeError):
                continue
        return out

    def mark_idle(self, idle: Mapping[str, bool], now: float) -> dict[str, float]:
        """Record which agents are idle now; returns since when each idle one has been (an
        agent seen busy loses its mark, one no longer listed is forgotten)."""
        with self._translate():
            marks = {str(k): float(v) for k, v in self.r.hgetall(IDLE_SINCE).items()}
            pipe = self.r.pipeline(transaction=False)
            out = {}
            for agent_id, is_idle in idle.items():
                if not is_idle:
                    if agent_id in marks:
                        pipe.hdel(IDLE_SINCE, agent_id)
                    continue
                out[agent_id] = marks.get(agent_id, now)
                if agent_id not in marks:
                    pipe.hset(IDLE_SINCE, agent_id, repr(now))
            gone = [a for a in marks if a not in idle]
            if gone:
                pipe.hdel(IDLE_SINCE, *gone)
            pipe.execute()
        return out

    def recycled_marks(self) -> dict[str, str]:
        with self._translate():
            return {str(k): str(v) for k, v in self.r.hgetall(RECYCLED).items()}

    def mark_recycled(self, agent_ids: Iterable[str], window: str) -> None:
        ids = list(agent_ids)
        if ids:
            with self._translate():
                self.r.hset(RECYCLED, mapping=dict.fromkeys(ids, window))
