"""Celery beat's schedule, built from Settings (SPEC section 9)."""

from __future__ import annotations

from typing import Any

from orchestrator.config import Settings, load_settings


def _entry(task: str, every_s: float) -> dict[str, Any]:
    # A tick that has not started by its next one is stale: let it expire instead of piling up.
    return {"task": task, "schedule": every_s, "options": {"expires": every_s}}


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "route-parked": _entry("orchestrator.route_parked", settings.parked_sweep_interval_s),
    }


beat_schedule = build_beat_schedule(load_settings())
