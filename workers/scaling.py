"""The scaling loops run by beat: thin wrappers around orchestrator.scaling.

`orchestrator.autoscale` turns the backlog into a desired agent count per capability (with
hysteresis and a cool-down) and runs ORCH_SCALE_COMMAND; `orchestrator.sleep_wake` puts idle
agents to sleep and wakes them. Both hold their singleton lock like the monitoring loops.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from orchestrator.app import app
from orchestrator.scaling.autoscale import run_autoscale
from orchestrator.scaling.sleepwake import run_sleep_wake
from workers._context import HOUSEKEEPING
from workers.monitoring import run_loop


@app.task(name="orchestrator.autoscale", **HOUSEKEEPING)
def autoscale(self: Task) -> dict[str, Any]:
    """Decide each capability's desired agent count; run ORCH_SCALE_COMMAND on a change."""
    return run_loop(self, run_autoscale)


@app.task(name="orchestrator.sleep_wake", **HOUSEKEEPING)
def sleep_wake(self: Task) -> dict[str, Any]:
    """Put idle agents to sleep, wake them on backlog, parked work or a window's end."""
    return run_loop(self, run_sleep_wake)
