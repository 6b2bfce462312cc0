"""The state store: every read and write of orchestrator state in Redis.

One class, StateStore, made of the agent half (store_agents) and the task half
(store_ledger) over a shared base (store_base). Key names come from orchestrator.keys and
the atomic steps from orchestrator.scripts, so a reader finds every key in one place and every
multi-key change in another.
"""

from __future__ import annotations

from orchestrator.store_agents import AgentStore, Fleet
from orchestrator.store_base import now_s
from orchestrator.store_ledger import Attempt, LedgerStore


class StateStore(AgentStore, LedgerStore):
    """All reads and writes of orchestrator state. One instance per process."""


__all__ = ["Attempt", "Fleet", "StateStore", "now_s"]
