"""The poison half of the dead-letter store: messages a worker refused at its edge.

A refused message is no task (nothing accepted it), so it has no ledger entry: it is kept
here with its raw bytes (capped), the queue it came from and why it was refused, for an
operator to inspect (`orchestrator dlq list --kind poison`) and purge.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any

from orchestrator.keys import COUNTERS, EVENTS, POISON, POISON_MSG
from orchestrator.models import OrchestrationEvent, ProductionEventSeverity
from orchestrator.screen import excerpt
from orchestrator.store_base import StoreBase, _event_args

#: '/' is no character of a task id (models.TASK_ID_RE): the two kinds' ids never collide.
POISON_PREFIX = "poison/"


def is_poison_id(entry_id: str) -> bool:
    return entry_id.startswith(POISON_PREFIX)


class PoisonStore(StoreBase):
    def record_poison(
        self,
        queue: str,
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
                keys=[POISON, POISON_MSG, COUNTERS, EVENTS],
                args=[
                    poison_id,
                    repr(now),
                    json.dumps(detail),
                    keep,
                    self.events_max_len,
                    *_event_args(event),
                ],
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
