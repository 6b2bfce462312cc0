"""The monitoring loops' bodies: read Redis, call the pure core, write back, publish.

Each `run_*` takes a LoopContext and `now` and returns a small summary (logged by the task);
workers/monitoring.py wraps them in Celery tasks with a singleton lock, and the CLI reuses
the read-only halves (`sla_reports`, `security_report`). Anomaly and regression detection
live in orchestrator.monitoring.anomaly_loop; backups in orchestrator.backup.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrator.backup.archive import create_backup, verify_backup
from orchestrator.config import Settings
from orchestrator.errors import ConfigError
from orchestrator.models import (
    AgentStatus,
    AlertRule,
    AlertState,
    ProductionAlert,
    ProductionEventSeverity,
    SLATarget,
)
from orchestrator.monitoring import alertmanager
from orchestrator.monitoring.alerting import (
    Transition,
    builtin_rules,
    detect_format,
    evaluate_rules,
    load_rules,
    merge_rules,
)
from orchestrator.monitoring.slo import (
    BURN_WINDOWS_S,
    SLAReport,
    builtin_targets,
    burn_alert_rules,
    evaluate_target,
    load_targets,
    merge_targets,
    window_burn_rate,
    window_label,
)
from orchestrator.monitoring.snapshot import gather
from orchestrator.monitoring.stats import (
    WindowStats,
    assess_health,
    availability_fields,
    flag_clients,
    window_counts,
)
from orchestrator.routing.scores import Score, optimize_scores, parse_stats
from orchestrator.routing.weights import effective_status
from orchestrator.security.fitness import KINDS as CONFIG_KINDS
from orchestrator.security.fitness import config_findings
from orchestrator.security.policy import (
    REJECTED_SUBMISSIONS,
    AuditFacts,
    WorkerFacts,
    audit,
    consumer_findings,
    counter_findings,
    diff_findings,
    finding_id,
    ordered,
    without_credentials,
)
from orchestrator.store import StateStore
from orchestrator.store.codes import RejectionKind
from orchestrator.store.connect import redis_client, state_client
from orchestrator.store.fitness import read_configs
from orchestrator.store.keys import ALERTS, METRICS_HISTORY, SLA_HISTORY, SLO_ALERTS
from orchestrator.store.monitoring import MonitoringStore
from orchestrator.store.ports import LoopsStore

log = logging.getLogger(__name__)
SOURCE = "monitor"
_AVAILABLE = (AgentStatus.ACTIVE, AgentStatus.SLEEPING)


@dataclass
class LoopContext:
    settings: Settings
    store: LoopsStore
    mon: MonitoringStore
    # A Celery app to ask the workers through remote control (the security loop's consumer
    # and worker audit); None skips those checks (the CLI and the exporter need none).
    app: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopContext:
        store = StateStore.from_settings(settings)
        return cls(settings, store, MonitoringStore.of(store.r, settings))


def _read(path: str, variable: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc.strerror or exc}") from None


def alert_rules(settings: Settings) -> list[AlertRule]:
    """Built-in rules merged with ORCH_ALERT_RULES_FILE (ConfigError naming it when bad)."""
    rules = builtin_rules(
        settings.backup_interval_hours,
        settings.effective_backup_rpo_s,
        settings.profile_defaults.latency_p95_ms,
    )
    path = settings.alert_rules_file
    if not path:
        return rules
    text = _read(path, "ORCH_ALERT_RULES_FILE")
    custom = load_rules(text, detect_format(path), source=f"ORCH_ALERT_RULES_FILE ({path})")
    return merge_rules(rules, custom)


def sla_targets(settings: Settings) -> list[SLATarget]:
    """Built-in targets (the profile's) merged with ORCH_SLA_TARGETS_FILE."""
    builtin = builtin_targets(settings.profile_defaults.latency_p95_ms)
    path = settings.sla_targets_file
    if not path:
        return builtin
    text = _read(path, "ORCH_SLA_TARGETS_FILE")
    custom = load_targets(text, detect_format(path), source=f"ORCH_SLA_TARGETS_FILE ({path})")
    return merge_targets(builtin, custom)


# --- alerts ------------------------------------------------------------------------------


def _publish(ctx: LoopContext, transitions: Sequence[Transition], now: float) -> None:
    for t in transitions:
        if t.event_type is None:
            continue
        a = t.alert
        severity = a.severity if t.to_state is AlertState.FIRING else ProductionEventSeverity.INFO
        ctx.store.event(
            t.event_type,
            now=now,
            source=SOURCE,
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
    mon: MonitoringStore, targets: Sequence[SLATarget], now: float
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
                now=now,
                source=SOURCE,
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

#: Seconds the audit waits for Flower's answer.
FLOWER_PROBE_TIMEOUT_S = 3.0
#: Finding kinds that need remote control's answers (kept as they were when it is not asked).
_WORKER_KINDS = ("unregistered_consumer", "foreign_consumer", "worker_unsafe_content")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect (to a login page) is an answer, not an open API


def probe_flower(url: str, timeout: float = FLOWER_PROBE_TIMEOUT_S) -> int | None:
    """The status of `GET <url>/api/workers` asked without credentials (those in the URL are
    dropped; redirects are not followed); None when Flower could not be reached."""
    parts = urlsplit(without_credentials(url))
    target = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/api/workers", query=""))
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(target, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError) as exc:
        log.warning("security: Flower at %s did not answer: %s", target, exc)
        return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def inspect_workers(app: Any, timeout: float) -> dict[str, WorkerFacts] | None:
    """Every worker that answers remote control within `timeout`: the queues it consumes and
    the content types it accepts (None when remote control could not be asked)."""
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
        nodes = sorted(replies)
        confs: dict[str, Any] = {}
        if nodes:  # the same workers again, and no longer than it takes them to answer
            asked = app.control.inspect(destination=nodes, timeout=timeout, limit=len(nodes))
            confs = asked.conf(with_defaults=False) or {}
    except Exception as exc:  # the broker is unreachable: this check did not run
        log.warning("security: remote control did not answer: %s", exc)
        return None
    workers = {}
    for node, queues in replies.items():
        conf = confs.get(node)
        accepted: list[str] | None = None
        if isinstance(conf, dict) and ("accept_content" in conf or "result_accept_content" in conf):
            accepted = _strings(conf.get("accept_content")) + _strings(
                conf.get("result_accept_content")
            )
        names = [str(q.get("name")) for q in queues or [] if isinstance(q, dict)]
        workers[str(node)] = WorkerFacts(queues=names, accept_content=accepted)
    return workers


def audit_facts(ctx: LoopContext) -> AuditFacts:
    """What the audit checks besides the settings: this deployment's Celery configuration,
    every worker remote control reaches (with ctx.app), Flower (with ORCH_FLOWER_URL)."""
    s = ctx.settings
    if ctx.app is not None:
        conf: Any = ctx.app.conf
    else:
        from orchestrator.runtime.celeryconf import celery_config

        conf = celery_config(s)
    accepted = _strings(conf.get("accept_content")) + _strings(conf.get("result_accept_content"))
    return AuditFacts(
        app_accept_content=accepted,
        remote_control=bool(conf.get("worker_enable_remote_control", True)),
        workers=(
            None if ctx.app is None else inspect_workers(ctx.app, s.security_inspect_timeout_s)
        ),
        flower_status=probe_flower(s.flower_url) if s.flower_url else None,
    )


def security_report(ctx: LoopContext, now: float) -> dict[str, Any]:
    """The threat counters over the window (live), the clients above the rejection threshold
    (live), and the findings as the security loop last saw them."""
    s = ctx.settings
    refusals = ctx.mon.refusals(s.security_window_s, now)
    counts = refusals[RejectionKind.THRESHOLD]
    flagged = flag_clients(counts, s.security_rejection_threshold)
    findings = ctx.mon.findings()
    totals = ctx.store.counters()
    blocked = ctx.store.blocked_clients(now)

    def since(client: str) -> float | None:
        found = findings.get(finding_id(REJECTED_SUBMISSIONS, client))
        return found.since if found is not None else None

    return {
        "window_s": s.security_window_s,
        "threshold": s.security_rejection_threshold,
        "rejected_total": totals.get("rejected", 0),
        "rejections": dict(sorted(counts.items())),
        "rate_limited": dict(sorted(refusals[RejectionKind.RATE_LIMITED].items())),
        "blocked": dict(sorted(blocked.items())),
        "counters": {
            "rejected_total": totals.get("rejected", 0),
            "rate_limited_total": totals.get("rate_limited", 0),
            "blocked_total": totals.get("blocked", 0),
            "poison_total": totals.get("poison", 0),
            "rejected": sum(counts.values()),
            "rate_limited": sum(refusals[RejectionKind.RATE_LIMITED].values()),
            "refused_while_blocked": sum(refusals[RejectionKind.BLOCKED].values()),
            "poison": ctx.mon.poison_refused(s.security_window_s, now),
            "clients_flagged": len(flagged),
            "clients_blocked": len(blocked),
        },
        "threats": [
            {"client_id": c, "rejections": n, "since": since(c)} for c, n in flagged.items()
        ],
        "findings": [
            f.model_dump(mode="json", include={"id", "severity", "summary", "since", "kind"})
            for f in ordered(findings.values())
        ],
        "checked_at": ctx.mon.security_checked().get("ts"),
    }


def run_security(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Find what is wrong now (security.policy), keep the findings in Redis, announce each new one
    as one `security.threat` event, and (ORCH_SECURITY_AUTO_BLOCK) block each client newly
    flagged for rejected submissions for ORCH_SECURITY_BLOCK_S."""
    s = ctx.settings
    window = s.security_window_s
    refusals = ctx.mon.refusals(window, now)
    previous = ctx.mon.findings()
    flagged = flag_clients(refusals[RejectionKind.THRESHOLD], s.security_rejection_threshold)
    if s.security_auto_block:
        for client in flagged:
            if finding_id(REJECTED_SUBMISSIONS, client) not in previous:
                ctx.store.block_client(client, now + s.security_block_s, now)
    blocked = ctx.store.blocked_clients(now)
    current = counter_findings(
        refusals[RejectionKind.THRESHOLD],
        threshold=s.security_rejection_threshold,
        rate_limited=refusals[RejectionKind.RATE_LIMITED],
        blocked=blocked,
        blocked_refusals=refusals[RejectionKind.BLOCKED],
        poison_refused=ctx.mon.poison_refused(window, now),
        window_s=window,
        severities=s.profile_defaults.finding_severities,
    )
    facts = audit_facts(ctx)
    unchecked: list[str] = []
    if facts.workers is None:
        unchecked += _WORKER_KINDS
    else:
        agents = {a.agent_id: a.hostname for a in ctx.store.load_agents()}
        current += consumer_findings({n: w.queues for n, w in facts.workers.items()}, agents)
    if s.flower_url and facts.flower_status is None:
        unchecked.append("flower_open")
    current += audit(s, facts)
    # Each Redis's own configuration: evicting when full, no AOF (security.fitness).
    urls = {
        "broker": s.effective_broker_url,
        "results": s.effective_result_backend,
        "state": s.effective_state_url,
    }
    configs = read_configs(
        urls.values(),
        lambda url: redis_client(url, sentinel_master=s.redis_sentinel_master, socket_timeout=3),
        {s.effective_state_url: ctx.store.r},
    )
    if len(configs) < len(set(urls.values())):
        unchecked += CONFIG_KINDS
    current += config_findings(urls, configs, s.allow_evicting_redis)
    standing, new = diff_findings(previous, current, now, unchecked)
    for f in new:
        ctx.store.event(
            "security.threat",
            now=now,
            source=SOURCE,
            severity=f.severity,
            kind=f.kind,
            finding=f.id,
            summary=f.summary,
            **f.data,
        )
    checked = {
        "ts": now,
        "workers": None if facts.workers is None else sorted(facts.workers),
        "flower_status": facts.flower_status,
    }
    ctx.mon.save_findings(standing, checked)
    return {
        "clients": len(refusals[RejectionKind.THRESHOLD]),
        "threats": sorted(flagged),
        "findings": sorted(standing),
        "new": [f.id for f in new],
        "blocked": sorted(blocked),
    }


# --- performance optimization ------------------------------------------------------------


def run_optimize(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Turn every agent's per-capability record into the performance scores routing weighs
    by (routing/scores.py: bounded, 1.0 for new agents, decaying back to 1.0 without data)."""
    pairs = [(a.agent_id, cap) for a in ctx.store.load_agents() for cap in a.capabilities]
    values, seen = ctx.mon.scores()
    previous = {
        key: Score(values[f"{key[0]}|{key[1]}"], seen.get(f"{key[0]}|{key[1]}", 0))
        for key in pairs
        if f"{key[0]}|{key[1]}" in values
    }
    scores = optimize_scores(pairs, parse_stats(ctx.mon.agent_stats()), previous)
    ctx.mon.save_scores(
        {f"{a}|{c}": s.value for (a, c), s in scores.items()},
        {f"{a}|{c}": s.seen for (a, c), s in scores.items()},
    )
    return {"pairs": len(scores), "lowest": min((s.value for s in scores.values()), default=1.0)}


# --- backups -----------------------------------------------------------------------------


def run_backup(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Write a backup into ORCH_BACKUP_DIR, keep ORCH_BACKUP_RETENTION of them, announce it."""
    s = ctx.settings
    raw = state_client(s)  # DUMP payloads are bytes
    try:
        info = create_backup(raw, s.backup_dir, s.backup_retention, now)
    finally:
        raw.close()
    verify_backup(info.path)  # read back before it counts: a bad disk must not look like a backup
    ctx.mon.set_last_backup(info.as_dict() | {"verified_at": now})
    ctx.store.event("backup.completed", now=now, source=SOURCE, **info.as_dict())
    return info.manifest()
