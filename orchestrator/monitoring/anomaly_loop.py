"""The anomaly and regression loop: one detector step per series per completed minute.

Series: throughput, error rate and p95 run time, overall and per task type (a task type is
its capability unless the task named others), and queue depth, overall and per capability.
Each is fed one point per *complete* minute of telemetry, whatever the beat interval: the
loop remembers the last minute it consumed, so ticks more frequent than a minute cost one
Redis read and feed nothing twice, and a loop that was down catches up (at most an hour).
Queue depth is a gauge read at the tick, so only the newest minute gets it.

Regression: per task type, the per-minute median run times of the last six hours, judged by
regression.judge_regression (recent 15 minutes against the rest: large AND significant to
enter, a 5 % shift to stay).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import ValidationError

from orchestrator.models import ProductionEventSeverity
from orchestrator.monitoring.anomaly import DetectorState, new_state, step
from orchestrator.monitoring.loops import SOURCE, LoopContext
from orchestrator.monitoring.regression import judge_regression, minute_median
from orchestrator.monitoring.snapshot import gather
from orchestrator.monitoring.stats import WindowStats, quantile
from orchestrator.store.keys import REGRESSIONS
from orchestrator.store.monitoring import TelemetrySeries
from orchestrator.store.telemetry import MINUTE_WINDOW_MAX_S

log = logging.getLogger(__name__)

MAX_CATCH_UP_MINUTES = 60
IDLE_PRUNE_MINUTES = 360

# Per metric: which way is bad, and the smallest change worth a page (in the metric's unit).
DETECTOR_PARAMS: dict[str, dict[str, Any]] = {
    "throughput": {"direction": "both", "min_scale": 0.05},
    "error_rate": {"direction": "up", "min_scale": 0.02},
    "latency_p95_ms": {"direction": "up", "min_scale": 5.0, "rel_floor": 0.05},
    "queue_depth": {"direction": "up", "min_scale": 2.0},
}


def minute_points(
    stats: WindowStats, types: set[str], depths: dict[str, float] | None
) -> dict[str, float]:
    """The series' values for one minute; NaN marks a gap (no run: no rate, no p95)."""
    points: dict[str, float] = {}
    for kind in (None, *sorted(types)):
        runs = stats.of(kind)
        suffix = "" if kind is None else f":{kind}"
        n = runs.runs
        points["throughput" + suffix] = n / 60.0
        points["error_rate" + suffix] = runs.fail / n if n else math.nan
        p95 = quantile(runs.latency, 0.95)
        points["latency_p95_ms" + suffix] = p95 if p95 is not None else math.nan
    for name, depth in (depths or {}).items():
        points["queue_depth" + ("" if name == "*" else f":{name}")] = depth
    return points


def _state(entry: dict[str, Any] | None, series: str) -> DetectorState:
    """The series' stored state, or a fresh one: for a new series, and for a state an older
    detector wrote (it does not validate), which would otherwise stop the loop for good."""
    if entry and "state" in entry:
        try:
            return DetectorState.model_validate(entry["state"])
        except ValidationError:
            log.warning("anomaly: series %s: stored detector state is outdated; restarting", series)
    return new_state(**DETECTOR_PARAMS[series.split(":", 1)[0]])


def feed(
    ctx: LoopContext, series: TelemetrySeries, slots: list[int], depths: dict[str, float]
) -> list[dict[str, Any]]:
    """Step every series through the given minutes; emit anomaly.detected at each onset.
    A metric family's sensitivity is the one `orchestrator anomaly tune --labels` stored for
    it, ORCH_ANOMALY_DETECTION_SENSITIVITY otherwise."""
    default = ctx.settings.anomaly_detection_sensitivity
    tuned = ctx.mon.anomaly_sensitivities()
    stored = ctx.mon.detector_states()
    types = {t for bucket in series.buckets.get("m", {}).values() for t in _types(bucket)}
    detections = []
    for slot in slots:
        newest = slot == slots[-1]
        points = minute_points(series.minute(slot), types, depths if newest else None)
        for name, value in points.items():
            sensitivity = tuned.get(name.split(":", 1)[0], default)
            state, found = step(_state(stored.get(name), name), value, slot * 60 + 60, sensitivity)
            stored[name] = {"slot": slot, "state": state.model_dump(mode="json")}
            if found is None:
                continue
            data = found.model_dump(mode="json") | {"series": name}
            detections.append(data)
            ctx.store.event(
                "anomaly.detected",
                now=series.now,
                source=SOURCE,
                severity=ProductionEventSeverity.WARNING,
                **data,
            )
    last = slots[-1]
    kept = {
        n: e for n, e in stored.items() if last - int(e.get("slot", last)) <= IDLE_PRUNE_MINUTES
    }
    ctx.mon.save_detector_states(kept)
    return detections


def _types(bucket: dict[str, int]) -> set[str]:
    return {f.split("|", 1)[0] for f in bucket if not f.startswith("~")}


def regression_medians(
    series: TelemetrySeries, task_type: str, current_slot: int
) -> list[float | None]:
    """Per-minute median run times of the six hours before current_slot, oldest first
    (None: a minute with too few runs)."""
    first = current_slot - MINUTE_WINDOW_MAX_S // 60
    return [
        minute_median(series.minute(slot).of(task_type).latency)
        for slot in range(first, current_slot)
    ]


def find_regressions(ctx: LoopContext, series: TelemetrySeries) -> dict[str, Any]:
    """Flag task types whose recent run time regressed; emit regression.detected once."""
    current = int(series.now // 60)
    types = {t for bucket in series.buckets.get("m", {}).values() for t in _types(bucket)}
    previous = ctx.mon.regressions()
    found: dict[str, Any] = {}
    for kind in sorted(types):
        medians = regression_medians(series, kind, current)
        regression = judge_regression(medians, regressed=kind in previous)
        if regression is None:
            continue
        found[kind] = previous.get(kind) or {
            "since": series.now,
            **regression.model_dump(mode="json"),
        }
        if kind not in previous:
            ctx.store.event(
                "regression.detected",
                now=series.now,
                source=SOURCE,
                severity=ProductionEventSeverity.WARNING,
                type=kind,
                **regression.model_dump(mode="json"),
            )
    ctx.mon.save_json_hash(REGRESSIONS, found)
    return found


def run_anomaly(ctx: LoopContext, now: float) -> dict[str, Any]:
    last_complete = int(now // 60) - 1
    previous = ctx.mon.anomaly_slot()
    if previous is None:
        slots = [last_complete]
    else:
        first = max(previous + 1, last_complete - MAX_CATCH_UP_MINUTES + 1)
        slots = list(range(first, last_complete + 1))
    if not slots:
        return {"fed": 0}
    series = ctx.mon.series([MINUTE_WINDOW_MAX_S], now)
    snap = gather(ctx.store, ctx.mon, ctx.settings, now)
    depths: dict[str, float] = {"*": float(snap.metrics.queue_depth)}
    depths.update({cap: float(n) for cap, n in snap.capability_depths().items()})
    detections = feed(ctx, series, slots, depths)
    regressions = find_regressions(ctx, series)
    ctx.mon.set_anomaly_slot(last_complete)
    return {
        "fed": len(slots),
        "anomalies": [d["series"] for d in detections],
        "regressions": sorted(regressions),
    }
