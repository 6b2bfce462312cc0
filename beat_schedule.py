"""Celery beat's schedule, built from Settings (SPEC section 9).

The monitoring entries come from orchestrator.monitoring.schedule.LOOPS (intervals, feature
flags, time limits); beat runs under RedBeat (orchestrator.monitoring.schedule.redbeat_config),
so several beat processes may run and only the lock holder ticks.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import Settings, load_settings
from orchestrator.monitoring.schedule import beat_entry, loop_entries


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "route-parked": beat_entry("orchestrator.route_parked", settings.parked_sweep_interval_s),
        **loop_entries(settings),
    }


beat_schedule = build_beat_schedule(load_settings())
