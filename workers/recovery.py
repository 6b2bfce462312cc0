"""Recovery tasks on `orchestrator.recovery` (thin: decode, call the healer)."""

from __future__ import annotations

from celery import Celery, Task

from orchestrator.app import app
from orchestrator.recovery.healer import Healer
from orchestrator.recovery.plan import ErrorKind
from orchestrator.runtime.canvas import task_failer
from orchestrator.store import now_s
from workers._context import HOUSEKEEPING, store_of
from workers.routing import router_for

_healers: dict[int, Healer] = {}


def healer_for(task: Task) -> Healer:
    celery_app: Celery = task.app
    key = id(celery_app)
    if key not in _healers:
        store = store_of(celery_app)
        _healers[key] = Healer(
            store, router_for(celery_app), task_failer(celery_app, store.load_spec)
        )
    return _healers[key]


@app.task(name="orchestrator.recover", **HOUSEKEEPING)
def recover(
    self: Task, task_id: str, kind: str = "crash", agent_id: str | None = None, error: str = ""
) -> str | None:
    """Plan and apply recovery for one failed attempt (or a manual trigger)."""
    plan = healer_for(self).recover_task(task_id, ErrorKind(kind), agent_id, error, now_s())
    return plan.tier.value if plan else None


@app.task(name="orchestrator.recover_agent", **HOUSEKEEPING)
def recover_agent(
    self: Task, agent_id: str, reason: str = "manual", only_queued: bool = False
) -> int:
    """Move an agent's work elsewhere: its queued tasks (warm shutdown), or everything it
    held (lost, or `orchestrator recover --agent`)."""
    healer = healer_for(self)
    if only_queued:
        return healer.move_queued(agent_id, now_s(), only_queued=True)
    return healer.agent_lost(agent_id, now_s(), reason)


@app.task(name="orchestrator.recovery.monitor", **HOUSEKEEPING)
def monitor(self: Task) -> dict[str, int]:
    """Periodic: lost agents, stranded tasks, recovery plans past their escalation timeout."""
    healer = healer_for(self)
    interval = healer.settings.recovery_monitor_interval_s
    with healer.store.singleton("recovery-monitor", ttl_s=max(interval * 5, 30)) as held:
        if not held:
            return {"skipped": 1}
        now = now_s()
        report = healer.monitor(now)
        due = healer.store.outbox_due(now - healer.settings.outbox_resend_s, now)
        for _task_id, message in due:
            # Under the original message id, so an accepted task resumes (a new one would be
            # a duplicate to the ledger).
            self.app.send_task(
                "orchestrator.submit",
                kwargs=message["kwargs"],
                task_id=message["submit_id"],
                queue=message["queue"],
            )
        report["resent"] = len(due)
        return report
