"""The sleep/wake loop (orchestrator.sleep_wake). Placeholder: being built."""

from __future__ import annotations

from typing import Any

from orchestrator.monitoring.loops import LoopContext


def run_sleep_wake(ctx: LoopContext, now: float) -> dict[str, Any]:
    return {}
