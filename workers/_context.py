"""What the task modules share: the settings, the state store, a housekeeping task's options."""

from __future__ import annotations

from typing import Any

from celery import Celery

from orchestrator.config import Settings
from orchestrator.runtime.agent import process_store
from orchestrator.runtime.celeryconf import app_settings
from orchestrator.store import StateStore


def settings_of(app: Celery) -> Settings:
    return app_settings(app)


def store_of(app: Celery) -> StateStore:
    return process_store(app_settings(app))


#: The options of a housekeeping task (the beat loops, the recovery monitor, the sweeps, the
#: recovery of a failed task or a lost agent): no result, and no task events, so Flower,
#: `celery events` and Flower's event counters show the users' work only (the loops record
#: their runs themselves: keys.MONITOR_RUNS).
HOUSEKEEPING: dict[str, Any] = {"bind": True, "ignore_result": True, "send_events": False}
