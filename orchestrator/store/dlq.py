"""The dead-letter store, both its kinds (`orchestrator dlq`).

`task`: tasks recovery gave up on or parked past their timeout; their ledger entries stay
in the ledger, the store indexes them and can park one again (replay). `poison`: messages a
worker refused at its edge. A refused message is no task (nothing accepted it), so it has no
ledger entry: it is kept here with its raw bytes (capped), the queue it came from and why it
was refused, for an operator to inspect and purge.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any

from orchestrator.errors import UnknownTask
from orchestrator.models import (
    OrchestrationEvent,
    OrchestrationTask,
    ProductionEventSeverity,
    TaskState,
)
from orchestrator.security.screen import excerpt
from orchestrator.store.base import _event_args
from orchestrator.store.keys import (
    COUNTERS,
    DLQ,
    POISON,
    POISON_MSG,
    events_key,
    history_key,
    task_key,
)
from orchestrator.store.ledger import LedgerStore
from orchestrator.store.scripts import POISON_RECORD_SIG

#: '/' is no character of a task id (models.TASK_ID_RE): the two kinds' ids never collide.
POISON_PREFIX = "poison/"


def is_poison_id(entry_id: str) -> bool:
    return entry_id.startswith(POISON_PREFIX)


class DeadLetterStore(LedgerStore):
    def record_poison(
        self,
        queue: str,
        *,
        raw: bytes,
        reason: str,
        now: float,
        source: str,
        keep: int = 10_000,
        raw_max_bytes: int = 65_536,
    ) -> str:
        """Keep a refused message, count it and announce it as `security.threat`, in one
        round trip. Returns its poison id."""
        poison_id = f"{POISON_PREFIX}{int(now * 1000)}-{uuid.uuid4().hex[:8]}"
        summary = {
            "id": poison_id,
            "queue": queue,
            "reason": reason,
            "size": len(raw),
            "excerpt": excerpt(raw),
            "ts": now,
        }
        detail = {
            **summary,
            "raw": base64.b64encode(raw[:raw_max_bytes]).decode("ascii"),
            "truncated": len(raw) > raw_max_bytes,
            "source": source,
        }
        event = OrchestrationEvent(
            type="security.threat",
            ts=now,
            severity=ProductionEventSeverity.WARNING,
            source=source,
            data={"kind": "poison", **summary},
        )
        with self._translate():
            self._poison(
                keys=POISON_RECORD_SIG.key_list(
                    poison=POISON,
                    details=POISON_MSG,
                    counters=COUNTERS,
                    events=events_key(event.type),
                ),
                args=POISON_RECORD_SIG.arg_list(
                    id=poison_id,
                    ts=repr(now),
                    detail=json.dumps(detail),
                    keep=keep,
                    maxlen=self.events_max_len,
                    event=_event_args(event),
                ),
            )
        return poison_id

    def poison_messages(self, limit: int = 100) -> list[dict[str, Any]]:
        """Refused messages, newest first, without their raw bytes."""
        with self._translate():
            ids = [str(m) for m in self.r.zrevrange(POISON, 0, limit - 1)]
            raws = self.r.hmget(POISON_MSG, ids) if ids else []
        rows = []
        for raw in raws:
            if raw:
                entry = json.loads(raw)
                entry.pop("raw", None)
                rows.append(entry)
        return rows

    def poison_message(self, poison_id: str) -> dict[str, Any] | None:
        """One refused message with its raw bytes (base64, as kept)."""
        with self._translate():
            raw = self.r.hget(POISON_MSG, poison_id)
        return json.loads(raw) if raw else None

    def purge_poison(self, poison_ids: Sequence[str] | None = None) -> int:
        with self._translate():
            if poison_ids is None:
                poison_ids = [str(m) for m in self.r.zrange(POISON, 0, -1)]
            if not poison_ids:
                return 0
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(POISON, *poison_ids)
            pipe.hdel(POISON_MSG, *poison_ids)
            removed, _ = pipe.execute()
        return int(removed)

    # --- dead letters --------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[tuple[str, float]]:
        with self._translate():
            return [
                (str(m), float(s)) for m, s in self.r.zrevrange(DLQ, 0, limit - 1, withscores=True)
            ]

    def reopen_dead_letter(self, task_id: str, now: float) -> OrchestrationTask:
        """Park a dead-lettered task again with a fresh attempt count, for the next sweep to
        route; its history (and its dispatch counter, so old copies stay stale) is kept."""
        spec = self.load_spec(task_id)
        done, state = self._move(
            task_id,
            TaskState.ACCEPTED,
            [TaskState.DEAD_LETTERED],
            now,
            history={"replayed": True},
            attempts=0,
            deliveries=0,
        )
        if done != 1:
            raise UnknownTask(f"task {task_id!r} is {state or 'unknown'}, not dead-lettered")
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(DLQ, task_id)
            pipe.hdel(task_key(task_id), "finished_at", "result", "error")
            pipe.persist(task_key(task_id))
            pipe.persist(history_key(task_id))
            self.event("task.replayed", now=now, source="cli", pipe=pipe, task_id=task_id)
            pipe.execute()
        self.park(spec, now=now)
        return spec

    def purge_dead_letters(self, task_ids: Sequence[str] | None = None) -> int:
        with self._translate():
            if task_ids is None:
                task_ids = [str(m) for m in self.r.zrange(DLQ, 0, -1)]
            if not task_ids:
                return 0
            return int(self.r.zrem(DLQ, *task_ids))
