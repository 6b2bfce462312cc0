"""The alert state machine: rules over a metrics snapshot, Prometheus semantics, pure.

Everything here is a function of its arguments (`now` included), so the beat task only reads
the previous alerts and the metrics from Redis, calls `evaluate_rules`, writes the result back
and publishes the returned transitions. The rules file loader is shared with `slo.py`.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import ConfigError
from orchestrator.models import (
    AlertRule,
    AlertState,
    ProductionAlert,
    ProductionMetrics,
)

Fmt = Literal["yaml", "json"]
M = TypeVar("M", bound=BaseModel)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

# Metrics the edge supplies beside the ProductionMetrics snapshot (backup and security loops).
EXTRA_METRICS = frozenset({"backup_age_s", "security_threats"})
KNOWN_METRICS = (
    frozenset(
        name
        for name, field in ProductionMetrics.model_fields.items()
        if field.annotation in (int, float) and name != "ts"
    )
    | EXTRA_METRICS
)

# Alertmanager rejects label names outside this pattern; better to fail at start-up.
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}\Z")
_RESERVED_LABELS = frozenset({"alertname", "severity"})


def compare(value: float, op: str, threshold: float) -> bool:
    """Apply a rule's comparison; an unknown op is a programming error, not a false."""
    try:
        return _OPS[op](value, threshold)
    except KeyError:
        raise ValueError(f"unknown op {op!r} (one of {' '.join(_OPS)})") from None


def _condition(rule: AlertRule, value: float | None) -> bool:
    # A missing or NaN metric is "not true": NaN != x would otherwise be True and page.
    if value is None or math.isnan(value):
        return False
    return compare(value, rule.op, rule.threshold)


def _labels(rule: AlertRule) -> dict[str, str]:
    return {**rule.labels, "alertname": rule.name, "severity": rule.severity.value}


def evaluate_rule(
    rule: AlertRule, previous: ProductionAlert | None, value: float | None, now: float
) -> ProductionAlert | None:
    """Advance one alert by one evaluation, as Prometheus does.

    `since` is when the alert entered its current state; `active_since` when the condition
    became true for this episode (Prometheus' activeAt, sent as startsAt); `last_true` drives
    keep_firing_for. None means "no alert": a pending alert whose condition cleared never
    happened, and a resolved alert is reported once and then forgotten.
    """
    true = _condition(rule, value)

    def alert(
        state: AlertState,
        since: float,
        active_since: float,
        last_true: float,
        acknowledged: bool = False,
        resolved_at: float | None = None,
    ) -> ProductionAlert:
        return ProductionAlert(
            name=rule.name,
            state=state,
            severity=rule.severity,
            value=value,
            since=since,
            active_since=active_since,
            last_true=last_true,
            resolved_at=resolved_at,
            acknowledged=acknowledged,
            labels=_labels(rule),
            annotations=dict(rule.annotations),
        )

    if previous is None or previous.state is AlertState.RESOLVED:
        if not true:
            return None
        state = AlertState.FIRING if rule.for_s <= 0 else AlertState.PENDING
        return alert(state, since=now, active_since=now, last_true=now)
    active = previous.active_since if previous.active_since is not None else previous.since
    ack = previous.acknowledged
    if previous.state is AlertState.PENDING:
        if not true:
            return None
        if now - active >= rule.for_s:
            return alert(AlertState.FIRING, now, active, last_true=now, acknowledged=ack)
        return alert(AlertState.PENDING, previous.since, active, last_true=now, acknowledged=ack)
    # firing
    if true:
        return alert(AlertState.FIRING, previous.since, active, last_true=now, acknowledged=ack)
    last_true = previous.last_true if previous.last_true is not None else previous.since
    if now - last_true < rule.keep_firing_for_s:
        return alert(AlertState.FIRING, previous.since, active, last_true, acknowledged=ack)
    return alert(AlertState.RESOLVED, now, active, last_true, acknowledged=ack, resolved_at=now)


@dataclass(frozen=True)
class Transition:
    """One state change of one alert; `alert` is the new record (the old one when dropped)."""

    name: str
    from_state: AlertState | None
    to_state: AlertState | None
    alert: ProductionAlert

    @property
    def event_type(self) -> str | None:
        """The event to publish for this edge, or None for bookkeeping-only changes."""
        if self.to_state is AlertState.FIRING:
            return "alert.firing"
        if self.to_state is AlertState.RESOLVED:
            return "alert.resolved"
        return None


def evaluate_rules(
    rules: Sequence[AlertRule],
    previous: Mapping[str, ProductionAlert],
    metrics: Mapping[str, Any],
    now: float,
) -> tuple[dict[str, ProductionAlert], list[Transition]]:
    """Evaluate every rule; return the alerts to store and the transitions to publish.

    Resolved alerts stay in the result for exactly one evaluation (the edge pushes their
    endsAt to Alertmanager) and are dropped on the next. A firing alert whose rule was
    removed from the configuration is resolved rather than silently forgotten.
    """
    current: dict[str, ProductionAlert] = {}
    transitions: list[Transition] = []
    by_name = {rule.name: rule for rule in rules}
    for name, rule in by_name.items():
        prev = previous.get(name)
        raw = metrics.get(rule.metric)
        # A snapshot dump also holds non-numbers (`health`); those read as "missing".
        value = float(raw) if isinstance(raw, int | float) else None
        new = evaluate_rule(rule, prev, value, now)
        if new is not None:
            current[name] = new
        _note(transitions, name, prev, new)
    for name, prev in previous.items():
        if name in by_name:
            continue
        new = None
        if prev.state is AlertState.FIRING:
            new = prev.model_copy(
                update={"state": AlertState.RESOLVED, "since": now, "resolved_at": now}
            )
            current[name] = new
        _note(transitions, name, prev, new)
    return current, transitions


def _note(
    out: list[Transition], name: str, prev: ProductionAlert | None, new: ProductionAlert | None
) -> None:
    before = prev.state if prev is not None else None
    after = new.state if new is not None else None
    if before != after:
        alert = new if new is not None else prev
        assert alert is not None
        out.append(Transition(name=name, from_state=before, to_state=after, alert=alert))


def builtin_rules(
    backup_interval_hours: float = 6.0,
    backup_rpo_s: float | None = None,
    latency_p95_ms: float = 5000,
) -> list[AlertRule]:
    """The rules every deployment gets; BackupStale fires when the newest good backup is older
    than the RPO (ORCH_BACKUP_RPO_S, default two backup intervals), HighLatencyP95 over the
    profile's latency objective (orchestrator.profiles: 5 s in production)."""
    backup_s = backup_rpo_s or 2 * backup_interval_hours * 3600
    slow = f"p95 run time over {latency_p95_ms / 1000:g} s"
    rows: list[tuple[str, str, str, float, float, str, str]] = [
        # name, metric, op, threshold, for_s, severity, summary
        ("NoActiveAgents", "agents_active", "<", 1, 0, "critical", "No agent is alive"),
        ("ParkedTasks", "parked_tasks", ">", 0, 60, "error", "Tasks wait for a capable agent"),
        ("HighErrorRate", "error_rate", ">", 0.05, 120, "warning", "Over 5% of tasks fail"),
        ("HighLatencyP95", "latency_p95_ms", ">", latency_p95_ms, 300, "warning", slow),
        ("QueueBacklog", "queue_depth", ">", 1000, 300, "warning", "Over 1000 tasks queued"),
        ("CircuitsOpen", "circuits_open", ">", 0, 0, "warning", "An agent's circuit is open"),
        (
            "BackupStale",
            "backup_age_s",
            ">",
            backup_s,
            0,
            "warning",
            "No good backup within the RPO",
        ),
        ("SecurityThreat", "security_threats", ">", 0, 0, "critical", "A threat was reported"),
        ("AnomalyDetected", "anomalies_active", ">", 0, 0, "warning", "A metric left its range"),
        ("PerformanceRegression", "regressions_active", ">", 0, 0, "warning", "A task got slower"),
    ]
    return [
        AlertRule.model_validate(
            {
                "name": name,
                "metric": metric,
                "op": op,
                "threshold": threshold,
                "for_s": for_s,
                "severity": severity,
                "annotations": {"summary": summary},
            }
        )
        for name, metric, op, threshold, for_s, severity, summary in rows
    ]


BUILTIN_RULES: list[AlertRule] = builtin_rules()


# --- configuration files ---------------------------------------------------------------


def detect_format(path: str) -> Fmt:
    """JSON for *.json, YAML otherwise (YAML is a superset, so that is the safe guess)."""
    return "json" if path.lower().endswith(".json") else "yaml"


def _parse(text: str, fmt: Fmt, source: str) -> Any:
    try:
        if fmt == "json":
            return json.loads(text) if text.strip() else None
        if fmt == "yaml":
            return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: not valid {fmt.upper()}: {exc}") from None
    raise ConfigError(f"{source}: unknown format {fmt!r} (yaml or json)")


def _describe(prefix: str, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field")
        elif err["type"] == "missing":
            problems.append(f"{where}: is required")
        else:
            problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return problems


def load_items(
    text: str,
    fmt: Fmt,
    key: str,
    model: type[M],
    check: Callable[[M], list[str]],
    source: str,
) -> list[M]:
    """Parse `{key: [item, ...]}` into models, reporting every problem as `key[i].field: why`.

    An empty file means "no custom items". All problems are collected so an operator fixes
    the file in one pass; `check` adds the cross-field rules the model cannot express.
    """
    data = _parse(text, fmt, source)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with the key {key!r}")
    extra = sorted(str(k) for k in data if k != key)
    problems = [f"{k}: unknown top-level key (only {key!r})" for k in extra]
    raw = data.get(key)
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        problems.append(f"{key}: must be a list (got {type(raw).__name__})")
        raw = []
    items: list[M] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        prefix = f"{key}[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{prefix}: must be a mapping (got {type(entry).__name__})")
            continue
        try:
            item = model.model_validate(entry)
        except ValidationError as exc:
            problems.extend(_describe(prefix, exc))
            continue
        problems.extend(f"{prefix}.{p}" for p in check(item))
        name = str(getattr(item, "name", ""))
        if name in seen:
            problems.append(f"{prefix}.name: duplicate name {name!r}")
        seen.add(name)
        items.append(item)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return items


def merge_by_name(builtin: Iterable[M], custom: Iterable[M]) -> list[M]:
    """Custom items replace built-ins of the same name, in place; new ones are appended."""
    merged: dict[str, M] = {str(getattr(item, "name")): item for item in builtin}  # noqa: B009
    for item in custom:
        merged[str(getattr(item, "name"))] = item  # noqa: B009
    return list(merged.values())


def _check_rule(known_metrics: frozenset[str] | None) -> Callable[[AlertRule], list[str]]:
    def check(rule: AlertRule) -> list[str]:
        problems = []
        if not _RULE_NAME.match(rule.name):
            problems.append(f"name: must match {_RULE_NAME.pattern} (got {rule.name!r})")
        if known_metrics is not None and rule.metric not in known_metrics:
            problems.append(
                f"metric: unknown metric {rule.metric!r}"
                f" (known: {', '.join(sorted(known_metrics))})"
            )
        if not math.isfinite(rule.threshold):
            problems.append(f"threshold: must be a finite number (got {rule.threshold})")
        for label in rule.labels:
            if not _LABEL_NAME.match(label):
                problems.append(f"labels.{label}: label names must match {_LABEL_NAME.pattern}")
            elif label in _RESERVED_LABELS:
                problems.append(f"labels.{label}: reserved (set from the rule's name/severity)")
        return problems

    return check


def load_rules(
    text: str,
    fmt: Fmt,
    *,
    source: str = "alert rules file",
    known_metrics: frozenset[str] | None = KNOWN_METRICS,
) -> list[AlertRule]:
    """Load an ORCH_ALERT_RULES_FILE body (the alert rules file); raise ConfigError when invalid.

    Metric names are checked against the snapshot vocabulary by default, because a typo
    would otherwise make a rule that can never fire; pass known_metrics=None to allow any.
    """
    return load_items(text, fmt, "rules", AlertRule, _check_rule(known_metrics), source)


def merge_rules(builtin: Iterable[AlertRule], custom: Iterable[AlertRule]) -> list[AlertRule]:
    return merge_by_name(builtin, custom)


# --- Alertmanager ------------------------------------------------------------------------


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_alertmanager(
    alert: ProductionAlert, now: float, generator_url: str, *, eval_interval_s: float = 30.0
) -> dict[str, Any]:
    """One item of the `POST /api/v2/alerts` body.

    Firing alerts carry endsAt = now + 4 evaluation intervals, as Prometheus does: the alert
    survives three missed pushes, then resolves by itself if the orchestrator stops, and this
    does not depend on Alertmanager's resolve_timeout. Resolved alerts carry their resolution
    time, which Alertmanager sees in the past and closes the alert. Pending alerts are
    never sent.
    """
    if alert.state is AlertState.PENDING:
        raise ValueError(f"alert {alert.name!r} is pending; only firing/resolved are pushed")
    starts = alert.active_since if alert.active_since is not None else alert.since
    if alert.state is AlertState.FIRING:
        ends = now + 4 * eval_interval_s
    else:
        ends = alert.resolved_at if alert.resolved_at is not None else now
    return {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
        "generatorURL": generator_url,
    }


def alertmanager_payload(
    alerts: Iterable[ProductionAlert],
    now: float,
    generator_url: str,
    *,
    eval_interval_s: float = 30.0,
) -> list[dict[str, Any]]:
    """The whole body for one evaluation: every firing and just-resolved alert, re-sent."""
    return [
        to_alertmanager(a, now, generator_url, eval_interval_s=eval_interval_s)
        for a in alerts
        if a.state is not AlertState.PENDING
    ]
