"""Celery beat's schedule, built only from the Settings it is given.

`build_beat_schedule(settings)` is the whole schedule; `create_app` sets it from the Settings
the app was built with. The monitoring entries come from orchestrator.monitoring.schedule.LOOPS
(intervals, feature flags, time limits); beat runs under RedBeat
(orchestrator.monitoring.schedule.redbeat_config), so several beat processes may run and only
the lock holder ticks. Importing this module reads no environment: the module-level
`beat_schedule` is the schedule for the environment's settings, built when first read.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import Settings, load_settings
from orchestrator.monitoring.schedule import beat_entry, loop_entries


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    every = settings.recovery_monitor_interval_s
    return {
        "route-parked": beat_entry("orchestrator.route_parked", settings.parked_sweep_interval_s),
        "recovery-monitor": {
            "task": "orchestrator.recovery.monitor",
            "schedule": every,
            "options": {"expires": every},
        },
        **loop_entries(settings),
    }


def __getattr__(name: str) -> Any:
    if name == "beat_schedule":
        return build_beat_schedule(load_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
