"""The monitoring loops' bodies: read Redis, call the pure core, write back, publish.

Each `run_*` takes a LoopContext and `now` and returns a small summary (logged by the task);
workers/monitoring.py wraps them in Celery tasks with a singleton lock, and the CLI reuses
the read-only halves (`sla_reports`, `security_report`). Anomaly and regression detection
live in orchestrator.anomaly_loop; backups in orchestrator.backup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from orchestrator import alertmanager
from orchestrator.alerting import (
    Transition,
    builtin_rules,
    detect_format,
    evaluate_rules,
    load_rules,
    merge_rules,
)
from orchestrator.backup import create_backup
from orchestrator.config import Settings
from orchestrator.errors import ConfigError
from orchestrator.keys import ALERTS, METRICS_HISTORY, SECURITY_THREATS, SLA_HISTORY, SLO_ALERTS
from orchestrator.metrics import gather
from orchestrator.models import (
    AgentStatus,
    AlertRule,
    AlertState,
    ProductionAlert,
    ProductionEventSeverity,
    SLATarget,
)
from orchestrator.monitor_store import MonitorStore
from orchestrator.routing import effective_status
from orchestrator.slo import (
    BUILTIN_TARGETS,
    BURN_WINDOWS_S,
    SLAReport,
    burn_alert_rules,
    evaluate_target,
    load_targets,
    merge_targets,
    window_burn_rate,
    window_label,
)
from orchestrator.stats import (
    WindowStats,
    assess_health,
    availability_fields,
    flag_clients,
    window_counts,
)
from orchestrator.store import StateStore

log = logging.getLogger(__name__)
SOURCE = "monitor"
_AVAILABLE = (AgentStatus.ACTIVE, AgentStatus.SLEEPING)


@dataclass
class LoopContext:
    settings: Settings
    store: StateStore
    mon: MonitorStore

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopContext:
        store = StateStore.from_url(
            settings.effective_state_url,
            ledger_ttl_s=settings.ledger_ttl_s,
            events_max_len=settings.events_max_len,
        )
        return cls(settings, store, MonitorStore(store.r))


def _read(path: str, variable: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc.strerror or exc}") from None


def alert_rules(settings: Settings) -> list[AlertRule]:
    """Built-in rules merged with ORCH_ALERT_RULES_FILE (ConfigError naming it when bad)."""
    rules = builtin_rules(settings.backup_interval_hours)
    path = settings.alert_rules_file
    if not path:
        return rules
    text = _read(path, "ORCH_ALERT_RULES_FILE")
    custom = load_rules(text, detect_format(path), source=f"ORCH_ALERT_RULES_FILE ({path})")
    return merge_rules(rules, custom)


def sla_targets(settings: Settings) -> list[SLATarget]:
    """Built-in targets merged with ORCH_SLA_TARGETS_FILE."""
    path = settings.sla_targets_file
    if not path:
        return list(BUILTIN_TARGETS)
    text = _read(path, "ORCH_SLA_TARGETS_FILE")
    custom = load_targets(text, detect_format(path), source=f"ORCH_SLA_TARGETS_FILE ({path})")
    return merge_targets(BUILTIN_TARGETS, custom)


# --- alerts ------------------------------------------------------------------------------


def _publish(ctx: LoopContext, transitions: Sequence[Transition], now: float) -> None:
    for t in transitions:
        if t.event_type is None:
            continue
        a = t.alert
        severity = a.severity if t.to_state is AlertState.FIRING else ProductionEventSeverity.INFO
        ctx.store.event(
            t.event_type,
            now,
            SOURCE,
            severity=severity,
            name=a.name,
            alert_severity=a.severity.value,
            value=a.value,
            labels=a.labels,
            annotations=a.annotations,
            active_since=a.active_since,
        )


def _deliver(ctx: LoopContext, alerts: Iterable[ProductionAlert], now: float, every: float) -> int:
    """Push to Alertmanager (when configured); resolved alerts it did not take are kept and
    sent again next time, firing ones are re-sent every evaluation anyway."""
    url = ctx.settings.alertmanager_url
    if not url:
        return 0
    mine = [a for a in alerts if a.state is not AlertState.PENDING]
    names = {a.name for a in mine}
    retry = [a for n, a in ctx.mon.unsent().items() if n not in names]
    batch = [*mine, *retry]
    generator = alertmanager.generator_url(ctx.settings.exporter_port)
    try:
        sent = alertmanager.push(url, batch, now, generator, eval_interval_s=every)
    except alertmanager.AlertmanagerError as exc:
        log.warning("alerts not delivered to Alertmanager: %s", exc)
        ctx.mon.keep_unsent(batch)
        return 0
    ctx.mon.drop_unsent(a.name for a in batch)
    return sent


def _with_acks(ctx: LoopContext, alerts: dict[str, ProductionAlert]) -> dict[str, ProductionAlert]:
    """An ack holds for the episode it was given in (matched by active_since)."""
    acks = ctx.mon.acks()
    out = {}
    for name, a in alerts.items():
        acked = name in acks and a.active_since == acks[name]
        out[name] = a.model_copy(update={"acknowledged": acked}) if acked != a.acknowledged else a
    return out


def run_alerts(ctx: LoopContext, now: float) -> dict[str, Any]:
    settings = ctx.settings
    snap = gather(ctx.store, ctx.mon, settings, now)
    previous = ctx.mon.alerts(ALERTS)
    current, transitions = evaluate_rules(
        alert_rules(settings), previous, snap.metrics.model_dump(mode="json"), now
    )
    current = _with_acks(ctx, current)
    ctx.mon.save_alerts(current, ALERTS)
    _publish(ctx, transitions, now)
    slo = ctx.mon.alerts(SLO_ALERTS)
    live = set(current) | set(slo)
    ctx.mon.forget_acks(n for n in ctx.mon.acks() if n not in live)
    sent = _deliver(ctx, current.values(), now, settings.alert_evaluation_interval)
    firing = [a for a in [*current.values(), *slo.values()] if a.state is AlertState.FIRING]
    metrics = snap.metrics
    metrics.alerts_firing = len(firing)
    metrics.health = assess_health(metrics, (a.severity.value for a in firing))
    ctx.mon.push_history(
        METRICS_HISTORY, metrics.model_dump(mode="json"), settings.metrics_history_len
    )
    return {
        "firing": sorted(a.name for a in firing),
        "transitions": [f"{t.name}:{t.to_state}" for t in transitions],
        "sent": sent,
        "health": metrics.health.value,
    }


# --- SLA ---------------------------------------------------------------------------------


@dataclass
class SLAEvaluation:
    target: SLATarget
    report: SLAReport
    burns: dict[float, float]


def evaluate_sla(
    mon: MonitorStore, targets: Sequence[SLATarget], now: float
) -> list[SLAEvaluation]:
    """Every target over its own window and the five burn-rate windows, from telemetry."""
    windows = set(BURN_WINDOWS_S) | {t.window_s for t in targets}
    series = mon.series(windows, now)
    parsed: dict[float, WindowStats] = {w: series.window(w)[0] for w in windows}
    out = []
    for target in targets:
        mine = {*BURN_WINDOWS_S, target.window_s}
        counts = {w: window_counts(target, parsed[w]) for w in mine}
        report = evaluate_target(target, counts, now)
        burns = {w: window_burn_rate(target, counts[w]) for w in BURN_WINDOWS_S}
        # The report shows the five policy windows (the target's own window is its budget).
        report.burn_rates = {window_label(w): b for w, b in burns.items()}
        out.append(SLAEvaluation(target, report, burns))
    return out


def sla_reports(ctx: LoopContext, now: float) -> list[SLAReport]:
    return [e.report for e in evaluate_sla(ctx.mon, sla_targets(ctx.settings), now)]


def sample_availability(ctx: LoopContext, now: float) -> int:
    """One availability sample per registered agent (the `availability` SLI's events)."""
    agents = ctx.store.load_agents()
    timeout = ctx.settings.agent_timeout_s
    samples = [(a.capabilities, effective_status(a, now, timeout) in _AVAILABLE) for a in agents]
    ctx.mon.telemetry.add(availability_fields(samples), now, cumulative=False)
    return len(samples)


def run_sla(ctx: LoopContext, now: float) -> dict[str, Any]:
    settings = ctx.settings
    targets = sla_targets(settings)
    sample_availability(ctx, now)
    evaluations = evaluate_sla(ctx.mon, targets, now)
    was = ctx.mon.compliance()
    for e in evaluations:
        r = e.report
        if not r.compliant and was.get(r.name, True):
            ctx.store.event(
                "sla.breached",
                now,
                SOURCE,
                severity=ProductionEventSeverity.ERROR,
                name=r.name,
                sli=r.sli,
                objective=r.objective,
                value=r.value,
                error_budget_remaining=r.error_budget_remaining,
            )
    ctx.mon.save_compliance({e.report.name: e.report.compliant for e in evaluations})
    rules: list[AlertRule] = []
    values: dict[str, float] = {}
    for e in evaluations:
        more, vals = burn_alert_rules(e.target, e.burns)
        rules += more
        values.update(vals)
    current, transitions = evaluate_rules(rules, ctx.mon.alerts(SLO_ALERTS), values, now)
    current = _with_acks(ctx, current)
    ctx.mon.save_alerts(current, SLO_ALERTS)
    _publish(ctx, transitions, now)
    _deliver(ctx, current.values(), now, settings.sla_monitoring_interval)
    point = {
        e.report.name: {
            "value": e.report.value,
            "budget": e.report.error_budget_remaining,
            "compliant": e.report.compliant,
        }
        for e in evaluations
    }
    ctx.mon.push_history(SLA_HISTORY, {"ts": now, "targets": point}, settings.metrics_history_len)
    return {
        "non_compliant": sorted(e.report.name for e in evaluations if not e.report.compliant),
        "burn_alerts": sorted(n for n, a in current.items() if a.state is AlertState.FIRING),
    }


# --- security ----------------------------------------------------------------------------


def security_report(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Rejected submissions per client over the window, and who is above the threshold."""
    s = ctx.settings
    counts = ctx.mon.rejections(s.security_window_s, now)
    flagged = flag_clients(counts, s.security_rejection_threshold)
    known = ctx.mon.threats()
    return {
        "window_s": s.security_window_s,
        "threshold": s.security_rejection_threshold,
        "rejected_total": ctx.store.counters().get("rejected", 0),
        "rejections": dict(sorted(counts.items())),
        "threats": [
            {"client_id": c, "rejections": n, "since": known.get(c, {}).get("since")}
            for c, n in flagged.items()
        ],
    }


def run_security(ctx: LoopContext, now: float) -> dict[str, Any]:
    s = ctx.settings
    counts = ctx.mon.rejections(s.security_window_s, now)
    flagged = flag_clients(counts, s.security_rejection_threshold)
    previous = ctx.mon.threats()
    threats = {}
    for client, n in flagged.items():
        since = previous.get(client, {}).get("since", now)
        threats[client] = {"since": since, "rejections": n}
        if client not in previous:
            ctx.store.event(
                "security.threat",
                now,
                SOURCE,
                severity=ProductionEventSeverity.CRITICAL,
                kind="rejected_submissions",
                client_id=client,
                rejections=n,
                window_s=s.security_window_s,
                threshold=s.security_rejection_threshold,
            )
    ctx.mon.save_json_hash(SECURITY_THREATS, threats)
    return {"clients": len(counts), "threats": sorted(threats)}


# --- performance optimization ------------------------------------------------------------


def run_optimize(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Record every agent's performance score (perf:scores, the exporter's gauge).

    Routing computes scores live from the agents' stats on every decision, so there is
    nothing to push back into it; this loop keeps the periodic record for dashboards and is
    where allocation changes (e.g. rebalancing queued work) would go.
    """
    scores = {a.agent_id: a.performance_score for a in ctx.store.load_agents()}
    ctx.mon.save_scores(scores)
    return {"agents": len(scores)}


# --- backups -----------------------------------------------------------------------------


def run_backup(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Write a backup into ORCH_BACKUP_DIR, keep ORCH_BACKUP_RETENTION of them, announce it."""
    s = ctx.settings
    raw = redis.Redis.from_url(s.effective_state_url)  # DUMP payloads are bytes
    try:
        info = create_backup(raw, s.backup_dir, s.backup_retention, now)
    finally:
        raw.close()
    ctx.mon.set_last_backup(info.as_dict())
    ctx.store.event("backup.completed", now, SOURCE, **info.as_dict())
    return info.public()
