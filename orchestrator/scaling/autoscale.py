"""The autoscaling loop (orchestrator.autoscale). Placeholder: being built."""

from __future__ import annotations

from typing import Any

from orchestrator.monitoring.loops import LoopContext


def run_autoscale(ctx: LoopContext, now: float) -> dict[str, Any]:
    return {}
