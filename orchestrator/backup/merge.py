"""How a backup's keys go back into Redis, decided per key: restore, merge, keep, or skip.

Into an empty Redis every key of the snapshot comes back as it was. Into a live Redis nothing
accepted since the snapshot may be lost, so the live state wins wherever both have it:

- a key only the snapshot has comes back (`restore`), with its remaining TTL;
- a collection of independent entries (parked tasks, dead letters, poison messages, recovery
  plans) that both have is merged entry by entry, the live entry winning (`merge`); in those
  keyed by task id only the tasks the restore brought back are added;
- any other key both have stays as it is live (`keep`): the ledger entry of a task the live
  Redis knows, the agents (they re-register by their own heartbeat), counters, the event
  streams, telemetry and the loops' state;
- what describes work in flight or waiting right now is never restored (`skip`): in-flight
  sets, locks, the client outbox, the backlog's lists and indexes, concurrency-key permits,
  fair-share state and the deferred set. What the snapshot had in flight is parked again
  instead (`park_again`); what it had waiting (queued, parked, deferred) waits again where it
  was, its ledger entry as it was (`WAITING`: rebuilt from the entry's own fields).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from orchestrator.models import TaskState
from orchestrator.store.keys import (
    AGENT_STATS,
    AGENT_STATUS,
    AGENTS,
    CIRCUIT_PREFIX,
    DEFERRED,
    DLQ,
    EVENTS_WANT,
    HEARTBEATS,
    HISTORY_PREFIX,
    INFLIGHT_PREFIX,
    OUTBOX,
    OUTBOX_MSG,
    PARKED,
    POISON,
    POISON_MSG,
    PREFIX,
    QUARANTINED_UNTIL,
    RECOVERY,
    RECOVERY_DEADLINES,
    TASK_PREFIX,
)


class Action(StrEnum):
    RESTORE = "restore"
    MERGE = "merge"
    KEEP = "keep"
    SKIP = "skip"


#: Collections whose entries are independent of each other (zset members, hash fields).
MERGED = frozenset({PARKED, DLQ, POISON, POISON_MSG, RECOVERY, RECOVERY_DEADLINES})
AGENT_KEYS = frozenset({AGENTS, HEARTBEATS, AGENT_STATS, AGENT_STATUS, QUARANTINED_UNTIL})
NEVER = (
    INFLIGHT_PREFIX,
    PREFIX + "lock:",
    PREFIX + "bl:",
    PREFIX + "ck:",
    PREFIX + "fair:",
    EVENTS_WANT,
)
NEVER_KEYS = frozenset({OUTBOX, OUTBOX_MSG, DEFERRED})
#: Ledger states of a task that had not ended: parked again so it runs (once).
UNFINISHED = frozenset(
    {TaskState.ACCEPTED, TaskState.ROUTED, TaskState.RUNNING, TaskState.RECOVERING}
)
#: Ledger states of a task waiting in the backlog (or the deferred set): put back there.
WAITING = frozenset({TaskState.QUEUED, TaskState.PARKED})


def kind_of(key: str) -> str:
    """The kind a key is counted under in a restore's report."""
    if key.startswith(HISTORY_PREFIX):
        return "task history"
    if key.startswith(TASK_PREFIX):
        return "tasks"
    if key in AGENT_KEYS:
        return "agents"
    if key.startswith(CIRCUIT_PREFIX):
        return "breakers"
    if key.startswith(PREFIX + "wrr:"):
        return "round-robin"
    names = {PARKED: "parked", DLQ: "dead letters", POISON: "poison", POISON_MSG: "poison"}
    names |= {RECOVERY: "recovery plans", RECOVERY_DEADLINES: "recovery plans"}
    if key in names:
        return names[key]
    if key.startswith(PREFIX + "tm:"):
        return "telemetry"
    if not key.startswith(PREFIX):
        return "events"
    return "other"


def action_for(key: str, live: bool) -> Action:
    """What happens to a snapshot key, given whether the live Redis has that key."""
    if key in NEVER_KEYS or key.startswith(NEVER):
        return Action.SKIP
    if not live:
        return Action.RESTORE
    return Action.MERGE if key in MERGED else Action.KEEP


#: The merged collections keyed by task id (the others, poison messages, by their own ids).
BY_TASK = frozenset({PARKED, DLQ, RECOVERY, RECOVERY_DEADLINES})


def by_task(key: str) -> bool:
    return key in BY_TASK


def unfinished(state: str | None) -> bool:
    return state in UNFINISHED


def waiting(state: str | None) -> bool:
    return state in WAITING


def tally(rows: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{kind: {action: count}} from (kind, action) pairs, for the report."""
    out: dict[str, dict[str, int]] = {}
    for kind, action in rows:
        out.setdefault(kind, {})
        out[kind][action] = out[kind].get(action, 0) + 1
    return dict(sorted(out.items()))
