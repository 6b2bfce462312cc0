"""Monitoring tasks run by beat: thin wrappers around monitoring.loops.

Each task obeys its feature flag, holds its singleton lock for the run (a run that finds the
lock held skips itself: the previous one is still going), records itself in the run log
(`orchestrator.store.keys.MONITOR_RUNS`, what tests count ticks with), and returns the loop's
summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task

from orchestrator.app import app
from orchestrator.monitoring.anomaly_loop import run_anomaly
from orchestrator.monitoring.loops import (
    LoopContext,
    run_alerts,
    run_backup,
    run_optimize,
    run_security,
    run_sla,
)
from orchestrator.monitoring.schedule import LOOPS_BY_TASK
from orchestrator.store import now_s
from orchestrator.store.monitoring import MonitoringStore
from workers._context import HOUSEKEEPING, settings_of, store_of

log = logging.getLogger(__name__)

LoopBody = Callable[[LoopContext, float], dict[str, Any]]


def _context(task: Task) -> LoopContext:
    store, settings = store_of(task.app), settings_of(task.app)
    return LoopContext(settings, store, MonitoringStore.of(store.r, settings), app=task.app)


def run_loop(task: Task, body: LoopBody) -> dict[str, Any]:
    loop = LOOPS_BY_TASK[task.name]
    ctx = _context(task)
    if not loop.enabled(ctx.settings):
        return {"skipped": "disabled by its feature flag"}
    ttl = loop.ttl_s(ctx.settings)
    with ctx.store.singleton(f"monitor:{loop.name}", ttl) as held:
        now = now_s()
        ctx.mon.record_run(loop.name, now, task.request.id, ran=held)
        if not held:
            log.info("%s skipped: the previous run still holds its lock", loop.entry)
            return {"skipped": "previous run still going"}
        ctx.mon.monitoring_since(now)
        return body(ctx, now)


@app.task(name="orchestrator.monitor.alerts", **HOUSEKEEPING)
def alerts(self: Task) -> dict[str, Any]:
    """Evaluate the alert rules over a fresh metrics snapshot; push to Alertmanager."""
    return run_loop(self, run_alerts)


@app.task(name="orchestrator.monitor.sla", **HOUSEKEEPING)
def sla(self: Task) -> dict[str, Any]:
    """SLIs, error budgets and burn-rate alerts of every SLA target."""
    return run_loop(self, run_sla)


@app.task(name="orchestrator.monitor.security", **HOUSEKEEPING)
def security(self: Task) -> dict[str, Any]:
    """Threat counters, consumers of agent queues, the configuration audit: findings."""
    return run_loop(self, run_security)


@app.task(name="orchestrator.monitor.backup", **HOUSEKEEPING)
def backup(self: Task) -> dict[str, Any]:
    """A checksummed snapshot of the orchestrator's keys into ORCH_BACKUP_DIR."""
    return run_loop(self, run_backup)


@app.task(name="orchestrator.monitor.anomaly", **HOUSEKEEPING)
def anomaly(self: Task) -> dict[str, Any]:
    """Anomaly detectors per series and per-task-type regression detection."""
    return run_loop(self, run_anomaly)


@app.task(name="orchestrator.optimize", **HOUSEKEEPING)
def optimize(self: Task) -> dict[str, Any]:
    """Record the agents' performance scores (see loops.run_optimize)."""
    return run_loop(self, run_optimize)
