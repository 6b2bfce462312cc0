"""SLO arithmetic: compliance, error budgets and multiwindow multi-burn-rate alerts, pure.

Every SLI is reduced to good and bad events so one budget formula serves them all:

* `success_rate`, `availability` (higher is better, the objective is a floor): bad events are
  failed tasks / unavailable samples, and the allowed bad ratio is `1 - objective`.
* `error_rate` (lower is better, the objective is a ceiling): bad events are failed tasks and
  the allowed bad ratio is the objective itself.
* `latency_p95_ms`, `latency_p99_ms` (ceilings): a bad event is a task slower than the
  objective, and the allowed bad ratio is 5 % (p95) or 1 % (p99): "p95 <= 1000 ms" says
  exactly "at most 5 % of tasks take longer than 1000 ms".

The edge counts good/total per window (and the observed percentile for latency) and calls
`evaluate_target`; nothing here reads Redis or the clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.models import SLI, TYPE_RE, AlertRule, ProductionEventSeverity, SLATarget
from orchestrator.monitoring.alerting import Fmt, load_items, merge_by_name

THIRTY_DAYS = 30 * 86_400.0
_LATENCY_ALLOWED = {"latency_p95_ms": 0.05, "latency_p99_ms": 0.01}
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")


class WindowCounts(BaseModel):
    """Events seen in one window; `value` is the observed percentile for latency SLIs."""

    model_config = ConfigDict(frozen=True)

    good: int = Field(ge=0)
    total: int = Field(ge=0)
    value: float | None = None

    @model_validator(mode="after")
    def _good_le_total(self) -> WindowCounts:
        if self.good > self.total:
            raise ValueError(f"good ({self.good}) cannot exceed total ({self.total})")
        return self

    @property
    def bad(self) -> int:
        return self.total - self.good


class BurnRatePolicy(BaseModel):
    """Alert when both windows burn faster than `threshold` (SRE workbook, chapter 5)."""

    model_config = ConfigDict(frozen=True)

    severity: Literal["page", "ticket"]
    threshold: float
    long_s: float
    short_s: float


# Thresholds for a 30-day SLO: 14.4 for 1 h spends 2 % of the budget, 6 for 6 h spends 5 %,
# 1 for 3 d spends 10 %. The short window (1/12 of the long) makes the alert stop soon after
# the burn does, instead of waiting for the long window to drain.
BURN_RATE_POLICIES: tuple[BurnRatePolicy, ...] = (
    BurnRatePolicy(severity="page", threshold=14.4, long_s=3600, short_s=300),
    BurnRatePolicy(severity="page", threshold=6.0, long_s=21_600, short_s=1800),
    BurnRatePolicy(severity="ticket", threshold=1.0, long_s=259_200, short_s=21_600),
)


class BurnAlert(BaseModel):
    model_config = ConfigDict(frozen=True)

    severity: Literal["page", "ticket"]
    threshold: float
    long_window: str
    short_window: str
    long_burn: float
    short_burn: float
    budget_consumed: float  # share of the whole budget the long window spent at this rate
    at: float = 0.0


class SLAReport(BaseModel):
    """One line of `orchestrator sla --json`, plus the burn-rate alerts behind it."""

    name: str
    sli: SLI
    objective: float
    value: float | None
    compliant: bool
    error_budget_remaining: float
    burn_rates: dict[str, float]
    alerts: list[BurnAlert] = Field(default_factory=list)


def is_compliant(target: SLATarget, value: float) -> bool:
    """Floors for success_rate/availability, ceilings for error rate and latency."""
    return value >= target.objective if target.higher_is_better else value <= target.objective


def allowed_bad_ratio(target: SLATarget) -> float:
    """The share of bad events the objective tolerates: the error budget as a ratio."""
    if target.sli in _LATENCY_ALLOWED:
        return _LATENCY_ALLOWED[target.sli]
    if target.sli == "error_rate":
        return target.objective
    return 1.0 - target.objective


def burn_rate(error_ratio: float, objective: float) -> float:
    """Workbook burn rate: error ratio / (1 - objective); 1.0 spends the budget exactly.

    For an error_rate SLI pass `1 - objective` (its budget is the ceiling itself), for a
    latency SLI the slow-task ratio and 0.95 or 0.99; `window_burn_rate` does this for you.
    """
    budget = 1.0 - objective
    if budget <= 0:
        raise ValueError(f"objective {objective} leaves no error budget")
    return error_ratio / budget


def error_budget_remaining(bad: float, total: float, allowed_ratio: float) -> float:
    """1.0 untouched, 0.0 exhausted, negative overspent; no traffic spends nothing."""
    if allowed_ratio <= 0:
        raise ValueError(f"allowed ratio {allowed_ratio} leaves no error budget")
    if total <= 0:
        return 1.0
    return 1.0 - (bad / total) / allowed_ratio


def budget_consumed(burn: float, window_s: float, slo_window_s: float = THIRTY_DAYS) -> float:
    """Share of the SLO-window budget spent by burning at `burn` for `window_s`."""
    return burn * window_s / slo_window_s


def window_label(seconds: float) -> str:
    """300 -> "5m", 3600 -> "1h", 259200 -> "3d": the largest unit that divides evenly."""
    s = int(seconds)
    if s != seconds or s <= 0:
        return f"{seconds:g}s"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def sli_value(target: SLATarget, counts: WindowCounts) -> float | None:
    """The SLI as reported: a ratio for rate SLIs, the observed percentile for latency."""
    if target.sli in _LATENCY_ALLOWED:
        return counts.value
    if counts.total == 0:
        return None
    if target.sli == "error_rate":
        return counts.bad / counts.total
    return counts.good / counts.total


def window_burn_rate(target: SLATarget, counts: WindowCounts) -> float:
    """Bad ratio over the allowed bad ratio; an idle window burns nothing."""
    if counts.total == 0:
        return 0.0
    return (counts.bad / counts.total) / allowed_bad_ratio(target)


def scaled_policies(slo_window_s: float) -> tuple[BurnRatePolicy, ...]:
    """Workbook thresholds rescaled so each still spends the same share of a shorter or
    longer SLO window's budget (a 7-day SLO pages at 14.4 * 7/30 over 1 h)."""
    if slo_window_s == THIRTY_DAYS:
        return BURN_RATE_POLICIES
    factor = slo_window_s / THIRTY_DAYS
    return tuple(
        p.model_copy(update={"threshold": p.threshold * factor}) for p in BURN_RATE_POLICIES
    )


def evaluate_burn_alerts(
    burn_by_window: Mapping[float, float],
    policies: Sequence[BurnRatePolicy] = BURN_RATE_POLICIES,
    *,
    slo_window_s: float = THIRTY_DAYS,
    now: float = 0.0,
) -> list[BurnAlert]:
    """Alerts whose long AND short windows both burn strictly above the threshold.

    The long window alone would keep paging for an hour after a fix; the short window alone
    would page on a blip. A window without data cannot fire: no evidence is not a burn.
    """
    alerts = []
    for p in policies:
        long_burn = burn_by_window.get(p.long_s)
        short_burn = burn_by_window.get(p.short_s)
        if long_burn is None or short_burn is None:
            continue
        if long_burn > p.threshold and short_burn > p.threshold:
            alerts.append(
                BurnAlert(
                    severity=p.severity,
                    threshold=p.threshold,
                    long_window=window_label(p.long_s),
                    short_window=window_label(p.short_s),
                    long_burn=long_burn,
                    short_burn=short_burn,
                    budget_consumed=budget_consumed(long_burn, p.long_s, slo_window_s),
                    at=now,
                )
            )
    return alerts


def evaluate_target(
    target: SLATarget, windows: Mapping[float, WindowCounts], now: float
) -> SLAReport:
    """Judge one target from per-window counts (keys are window lengths in seconds).

    Compliance and the remaining budget come from the target's own window (or the longest
    window given, when the edge could not count that far back); every window contributes a
    burn rate, and the workbook policies, rescaled to the target's window, decide the alerts.
    A target with no traffic is compliant with an untouched budget.
    """
    burns = {w: window_burn_rate(target, c) for w, c in windows.items()}
    slo_counts = windows.get(target.window_s)
    if slo_counts is None and windows:
        slo_counts = windows[max(windows)]
    value: float | None = None
    compliant, remaining = True, 1.0
    if slo_counts is not None and slo_counts.total > 0:
        allowed = allowed_bad_ratio(target)
        value = sli_value(target, slo_counts)
        remaining = error_budget_remaining(slo_counts.bad, slo_counts.total, allowed)
        if value is not None:
            compliant = is_compliant(target, value)
        else:  # a latency window without a percentile: judge by the slow-task ratio
            compliant = slo_counts.bad / slo_counts.total <= allowed
    return SLAReport(
        name=target.name,
        sli=target.sli,
        objective=target.objective,
        value=value,
        compliant=compliant,
        error_budget_remaining=remaining,
        burn_rates={window_label(w): b for w, b in sorted(burns.items())},
        alerts=evaluate_burn_alerts(
            burns, scaled_policies(target.window_s), slo_window_s=target.window_s, now=now
        ),
    )


def builtin_targets(latency_p95_ms: float = 5000) -> list[SLATarget]:
    """The targets every deployment gets; the latency objective is the profile's
    (orchestrator.profiles: 5 s in production)."""
    return [
        SLATarget(name="task-success", sli="success_rate", objective=0.99),
        SLATarget(name="task-latency-p95", sli="latency_p95_ms", objective=latency_p95_ms),
        SLATarget(name="agent-availability", sli="availability", objective=0.999),
    ]


BUILTIN_TARGETS: list[SLATarget] = builtin_targets()


def _check_target(target: SLATarget) -> list[str]:
    problems = []
    if not _NAME.match(target.name):
        problems.append(f"name: must match {_NAME.pattern} (got {target.name!r})")
    obj = target.objective
    if target.sli in _LATENCY_ALLOWED:
        if not (math.isfinite(obj) and obj > 0):
            problems.append(f"objective: a latency ceiling must be > 0 ms (got {obj})")
    elif not 0 < obj < 1:
        problems.append(f"objective: a {target.sli} objective must lie in (0, 1) (got {obj})")
    if target.task_type is not None and not TYPE_RE.match(target.task_type):
        problems.append(f"task_type: must be 1-64 chars of [a-z0-9_.-] (got {target.task_type!r})")
    return problems


def load_targets(text: str, fmt: Fmt, *, source: str = "SLA targets file") -> list[SLATarget]:
    """Load an ORCH_SLA_TARGETS_FILE body (top-level key `targets`); ConfigError when invalid."""
    return load_items(text, fmt, "targets", SLATarget, _check_target, source)


def merge_targets(builtin: Iterable[SLATarget], custom: Iterable[SLATarget]) -> list[SLATarget]:
    return merge_by_name(builtin, custom)


BURN_WINDOWS_S: tuple[float, ...] = tuple(
    sorted({w for p in BURN_RATE_POLICIES for w in (p.long_s, p.short_s)})
)


def burn_alert_rules(
    target: SLATarget, burn_by_window: Mapping[float, float]
) -> tuple[list[AlertRule], dict[str, float]]:
    """The multiwindow burn-rate policies of one target as alert rules, with their values.

    Each rule's metric is `min(long burn, short burn)`, which exceeds the threshold exactly
    when both windows do, so the alert state machine (pending, firing, resolved, pushes to
    Alertmanager) serves SLO alerts as it serves every other rule. Pages are critical,
    tickets warnings; a policy with a window lacking data gets no value and cannot fire.
    """
    rules: list[AlertRule] = []
    values: dict[str, float] = {}
    for p in scaled_policies(target.window_s):
        long_w, short_w = window_label(p.long_s), window_label(p.short_s)
        name = f"SLOBurnRate:{target.name}:{long_w}:{short_w}"
        rules.append(
            AlertRule(
                name=name,
                metric=name,
                op=">",
                threshold=p.threshold,
                severity=(
                    ProductionEventSeverity.CRITICAL
                    if p.severity == "page"
                    else ProductionEventSeverity.WARNING
                ),
                labels={
                    "slo": target.name,
                    "sli": target.sli,
                    "long_window": long_w,
                    "short_window": short_w,
                    "action": p.severity,
                },
                annotations={
                    "summary": f"SLO {target.name} burns its error budget faster than "
                    f"{p.threshold:g}x over {long_w} and {short_w}"
                },
            )
        )
        long_burn, short_burn = burn_by_window.get(p.long_s), burn_by_window.get(p.short_s)
        if long_burn is not None and short_burn is not None:
            values[name] = min(long_burn, short_burn)
    return rules, values
