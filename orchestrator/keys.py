"""Every Redis key the orchestrator uses, in one place (Celery's and kombu's own aside).

Key layout (prefix `orch:`):
  agents              hash  agent_id -> RegisteredAgent JSON (identity, capabilities, status)
  heartbeats          hash  agent_id -> unix time of the last heartbeat
  agent_stats         hash  "<agent_id>|<ok|fail|lat|sr|inflight>" -> number
  wrr:<capabilities>  hash  agent_id -> smooth weighted round-robin `current`
  affinity:<key>      str   agent_id the affinity key sticks to
  task:<id>           hash  the ledger entry (spec JSON, state, agent, attempts, times, error)
  task:<id>:history   list  JSON entries, one per state change
  parked              zset  task_id -> parked-at time
  dlq                 zset  task_id -> dead-lettered-at time
  counters            hash  cumulative counters (submitted, routed, succeeded, ...)
  events              stream the event log of SPEC section 8
"""

from __future__ import annotations

PREFIX = "orch:"
AGENTS = PREFIX + "agents"
HEARTBEATS = PREFIX + "heartbeats"
AGENT_STATS = PREFIX + "agent_stats"
PARKED = PREFIX + "parked"
DLQ = PREFIX + "dlq"
COUNTERS = PREFIX + "counters"
EVENTS = PREFIX + "events"


def task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def history_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}:history"


def wrr_key(capability_key: str) -> str:
    return f"{PREFIX}wrr:{capability_key}"


def affinity_key(key: str) -> str:
    return f"{PREFIX}affinity:{key}"
