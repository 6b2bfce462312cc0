"""What `orchestrator cancel` does to a task in each ledger state, as pure decisions.

A waiting task (accepted, queued, deferred, parked, or between recovery steps) is only ended
in the ledger: that takes it out of the backlog or the deferred set and passes its
concurrency key's permit on, and a copy of it published later is skipped when it arrives,
because the ledger says it ended. A running task is ended the same way and its handler is
stopped too (a revoke that terminates it). A routed task is not revoked: its copy in the
agent's queue is skipped by the ledger, whereas a revoked copy would make the worker store
`REVOKED` over the `Cancelled` failure. Only a routed task that started running between the
read and the end needs stopping: `revoke_needed` tells from the ledger's fields read before
and after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Ledger states a cancel ends without anything to stop.
NOTHING_RUNS = frozenset({"accepted", "queued", "parked", "routed", "recovering"})
#: Ledger states whose handler is running somewhere: ended, then revoked.
RUNNING = frozenset({"running"})
#: The states a task cannot leave (nothing to cancel).
ENDED = frozenset({"succeeded", "failed", "dead_lettered"})
#: Ledger fields only a delivered copy starting to run changes (begin_attempt.lua).
START_FIELDS = ("started_at", "deliveries")


@dataclass(frozen=True)
class CancelPlan:
    """The decision for one task: end it (and stop its handler), or refuse and say why."""

    task_id: str
    state: str | None  # as shown: `deferred` for a queued task held until due; None: unknown
    end: bool
    revoke: bool
    problem: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.end else 1


def shown_state(fields: Mapping[str, str]) -> str | None:
    """The ledger state as an operator knows it: a queued task with a due time is deferred."""
    state = fields.get("state")
    if state == "queued" and fields.get("due"):
        return "deferred"
    return state


def plan_cancel(task_id: str, fields: Mapping[str, str]) -> CancelPlan:
    """The plan for a task whose ledger entry is `fields` (empty: no entry)."""
    if not fields or "state" not in fields:
        return CancelPlan(
            task_id,
            None,
            end=False,
            revoke=False,
            problem=f"no task {task_id!r} in the ledger (expired, or never accepted)",
        )
    state = fields["state"]
    shown = shown_state(fields)
    if state in ENDED:
        return CancelPlan(
            task_id,
            shown,
            end=False,
            revoke=False,
            problem=f"task {task_id} has already ended ({state}): nothing to cancel",
        )
    if state in RUNNING:
        return CancelPlan(task_id, shown, end=True, revoke=True)
    if state in NOTHING_RUNS:
        return CancelPlan(task_id, shown, end=True, revoke=False)
    return CancelPlan(
        task_id,
        shown,
        end=False,
        revoke=False,
        problem=f"task {task_id} is in a state cancel does not know ({state}): nothing done",
    )


def revoke_needed(plan: CancelPlan, before: Mapping[str, str], after: Mapping[str, str]) -> bool:
    """Whether the handler must be stopped once the task has been ended: it was running, or
    a copy started running between the read that made the plan (`before`) and the end
    (`after`: the ledger read once the task ended, when nothing can start it any more)."""
    if plan.revoke:
        return True
    return any(before.get(name) != after.get(name) for name in START_FIELDS)
