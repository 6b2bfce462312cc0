"""Telemetry arithmetic, pure: histogram buckets, quantiles, window sums, SLI counts, health.

Workers add counts to per-minute and per-hour Redis hashes (orchestrator.store.telemetry); the
loops read a window's hashes, sum them with `sum_fields`, and everything after that happens
here, on plain dicts, with no Redis and no clock.

Hash fields (task types are `[a-z0-9_.-]`, so `|` and `~` cannot clash with them):
  `<type>|ok`, `<type>|fail`   handler runs that succeeded / failed (a failed run handed to
                               recovery counts as failed even if a later attempt succeeds)
  `<type>|rec`                 of the failed runs, those handed to recovery (retried)
  `<type>|l|<i>`               run-time histogram: runs in bucket i of LATENCY_BOUNDS_MS
  `<type>|d|<i>`               submit-to-start histogram (first attempts only)
  `<type>|lsum`, `<type>|dsum` the two histograms' sums, in microseconds
  `~avail|<cap>|good|total`    agent availability samples; cap `*` is the whole fleet
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.models import ProductionMetrics, SLATarget, SystemHealth
from orchestrator.monitoring.slo import WindowCounts

# 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8 per decade, from 0.1 ms to 100,000 s: any value is
# within a third of its bucket's bounds, and 1-2.5-5 x 10^k are exact bounds, so the exporter
# can publish a coarse Prometheus histogram whose counts are exact.
_MANTISSAS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    *(round(m * 10.0**e, 6) for e in range(-1, 8) for m in _MANTISSAS),
    1e8,
)
OVERFLOW = len(LATENCY_BOUNDS_MS)  # the +Inf bucket's index
#: The coarse Prometheus buckets (1-2.5-5 x 10^k ms, 1 ms to 1,000 s) that the exporter and
#: every worker's own histograms use, so their quantiles are comparable.
EXPORT_BOUNDS_MS: tuple[float, ...] = tuple(
    b
    for b in LATENCY_BOUNDS_MS
    if 1 <= b <= 1e6 and round(b / 10 ** math.floor(math.log10(b)), 6) in (1.0, 2.5, 5.0)
)
AVAIL = "~avail"
ALL = "*"
ERROR_RATE_DEGRADED = 0.05

Histogram = dict[int, int]


def bucket_index(value_ms: float) -> int:
    """Index of the first bucket whose upper bound is >= value (OVERFLOW above the last)."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, max(value_ms, 0.0))


def _bounds(i: int) -> tuple[float, float]:
    lower = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0.0
    upper = LATENCY_BOUNDS_MS[i] if i < OVERFLOW else math.inf
    return lower, upper


def quantile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) with linear interpolation inside the bucket, as
    Prometheus' histogram_quantile does; the overflow bucket answers with the last finite
    bound. None for an empty histogram."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1] (got {q})")
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i in sorted(hist):
        count = hist[i]
        if count <= 0:
            continue
        if seen + count >= rank:
            lower, upper = _bounds(i)
            if math.isinf(upper):
                return LATENCY_BOUNDS_MS[-1]
            return lower + (upper - lower) * max(rank - seen, 0.0) / count
        seen += count
    return LATENCY_BOUNDS_MS[-1]  # pragma: no cover - rank <= total always stops above


def count_above(hist: Mapping[int, int], threshold_ms: float) -> float:
    """Estimated number of samples slower than the threshold (interpolating the bucket that
    straddles it): the bad events of a latency SLI."""
    above = 0.0
    for i, count in hist.items():
        lower, upper = _bounds(i)
        if lower >= threshold_ms:
            above += count
        elif upper > threshold_ms:
            above += count * (upper - threshold_ms) / (upper - lower)
    return above


def merge(into: dict[int, int], hist: Mapping[int, int]) -> None:
    for i, n in hist.items():
        into[i] = into.get(i, 0) + n


def sum_fields(hashes: Iterable[Mapping[str, str | int]]) -> dict[str, int]:
    """Add up telemetry hashes field by field (a window is the sum of its buckets)."""
    total: dict[str, int] = {}
    for h in hashes:
        for k, v in h.items():
            total[k] = total.get(k, 0) + int(v)
    return total


@dataclass
class TypeStats:
    """One task type's runs in a window."""

    ok: int = 0
    fail: int = 0
    rec: int = 0
    lsum: int = 0
    dsum: int = 0
    latency: Histogram = field(default_factory=dict)
    delegation: Histogram = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return self.ok + self.fail

    def add(self, other: TypeStats) -> None:
        self.ok += other.ok
        self.fail += other.fail
        self.rec += other.rec
        self.lsum += other.lsum
        self.dsum += other.dsum
        merge(self.latency, other.latency)
        merge(self.delegation, other.delegation)


@dataclass
class WindowStats:
    """A window's telemetry, parsed: per task type, and the availability samples."""

    types: dict[str, TypeStats] = field(default_factory=dict)
    availability: dict[str, tuple[int, int]] = field(default_factory=dict)  # cap -> good, total

    def of(self, task_type: str | None = None) -> TypeStats:
        """One type's figures, or all types merged when task_type is None."""
        if task_type is not None:
            return self.types.get(task_type, TypeStats())
        merged = TypeStats()
        for stats in self.types.values():
            merged.add(stats)
        return merged


def parse_fields(fields: Mapping[str, int]) -> WindowStats:
    """Turn summed hash fields into WindowStats; unknown fields are ignored (forward-safe)."""
    out = WindowStats()
    avail: dict[str, list[int]] = {}
    for name, count in fields.items():
        parts = name.split("|")
        if parts[0] == AVAIL:
            if len(parts) == 3 and parts[2] in ("good", "total"):
                slot = avail.setdefault(parts[1], [0, 0])
                slot[0 if parts[2] == "good" else 1] += count
            continue
        stats = out.types.setdefault(parts[0], TypeStats())
        if len(parts) == 2 and parts[1] in ("ok", "fail", "rec", "lsum", "dsum"):
            setattr(stats, parts[1], getattr(stats, parts[1]) + count)
        elif len(parts) == 3 and parts[1] in ("l", "d") and parts[2].isdigit():
            hist = stats.latency if parts[1] == "l" else stats.delegation
            i = int(parts[2])
            hist[i] = hist.get(i, 0) + count
    out.availability = {cap: (g, t) for cap, (g, t) in avail.items()}
    return out


def run_fields(
    task_type: str,
    outcome: str,
    latency_ms: float | None,
    delegation_ms: float | None,
    recovering: bool = False,
) -> dict[str, int]:
    """The increments one handler run adds to a bucket (outcome: "ok" or "fail")."""
    if outcome not in ("ok", "fail"):
        raise ValueError(f"outcome must be ok or fail (got {outcome!r})")
    fields = {f"{task_type}|{outcome}": 1}
    if recovering:
        fields[f"{task_type}|rec"] = 1
    if latency_ms is not None:
        fields[f"{task_type}|l|{bucket_index(latency_ms)}"] = 1
        fields[f"{task_type}|lsum"] = round(latency_ms * 1000)  # microseconds: HINCRBY is integer
    if delegation_ms is not None:
        fields[f"{task_type}|d|{bucket_index(delegation_ms)}"] = 1
        fields[f"{task_type}|dsum"] = round(delegation_ms * 1000)
    return fields


def availability_fields(samples: Iterable[tuple[Iterable[str], bool]]) -> dict[str, int]:
    """One availability sample per agent (its capabilities, whether it is available), for
    the fleet (`*`) and per capability."""
    fields: dict[str, int] = {}
    for caps, up in samples:
        for cap in (ALL, *caps):
            for kind in ("total", "good") if up else ("total",):
                key = f"{AVAIL}|{cap}|{kind}"
                fields[key] = fields.get(key, 0) + 1
    return fields


# --- SLIs --------------------------------------------------------------------------------

_QUANTILE = {"latency_p95_ms": 0.95, "latency_p99_ms": 0.99}


def window_counts(target: SLATarget, stats: WindowStats) -> WindowCounts:
    """Good and total events of a target's SLI in one window (see slo.py for the meaning).

    success_rate / error_rate: handler runs; latency: runs, bad = slower than the objective,
    value = the observed percentile; availability: agent samples (per capability when the
    target names a task_type, which is then read as a capability name).
    """
    if target.sli == "availability":
        good, total = stats.availability.get(target.task_type or ALL, (0, 0))
        return WindowCounts(good=min(good, total), total=total)
    runs = stats.of(target.task_type)
    if target.sli in _QUANTILE:
        total = sum(runs.latency.values())
        bad = min(total, round(count_above(runs.latency, target.objective)))
        value = quantile(runs.latency, _QUANTILE[target.sli])
        return WindowCounts(good=total - bad, total=total, value=value)
    return WindowCounts(good=runs.ok, total=runs.runs)


# --- the snapshot's derived figures ------------------------------------------------------


@dataclass(frozen=True)
class RunFigures:
    succeeded: int
    failed: int
    retried: int
    error_rate: float
    throughput_per_s: float
    p50: float
    p95: float
    p99: float
    delegation_p95: float


def run_figures(runs: TypeStats, span_s: float) -> RunFigures:
    """Rates and percentiles of one window (0.0 where there is no data, for alert rules)."""
    total = runs.runs
    return RunFigures(
        succeeded=runs.ok,
        failed=runs.fail,
        retried=runs.rec,
        error_rate=runs.fail / total if total else 0.0,
        throughput_per_s=total / span_s if span_s > 0 else 0.0,
        p50=quantile(runs.latency, 0.5) or 0.0,
        p95=quantile(runs.latency, 0.95) or 0.0,
        p99=quantile(runs.latency, 0.99) or 0.0,
        delegation_p95=quantile(runs.delegation, 0.95) or 0.0,
    )


def assess_health(metrics: ProductionMetrics, firing_severities: Iterable[str]) -> SystemHealth:
    """critical: no active agent, or a critical alert firing; degraded: any other alert
    firing, errors above 5 %, parked tasks or an open circuit; healthy otherwise."""
    severities = set(firing_severities)
    if metrics.agents_active == 0 or "critical" in severities:
        return SystemHealth.CRITICAL
    if (
        severities
        or metrics.error_rate > ERROR_RATE_DEGRADED
        or metrics.parked_tasks > 0
        or metrics.circuits_open > 0
    ):
        return SystemHealth.DEGRADED
    return SystemHealth.HEALTHY


def flag_clients(counts: Mapping[str, int], threshold: int) -> dict[str, int]:
    """Clients whose rejected submissions in the window reached the threshold."""
    return {client: n for client, n in sorted(counts.items()) if n >= threshold}


REJECTIONS_TTL_S = 26 * 3600
_CLIENT_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}\Z")


def client_label(value: Any) -> str:
    """A rejected submission's client_id as a bounded label (it may be the invalid field)."""
    if value is None:
        return "anonymous"
    if isinstance(value, str) and _CLIENT_RE.match(value):
        return value
    return "invalid"
