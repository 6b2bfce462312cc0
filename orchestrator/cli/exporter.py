"""`orchestrator exporter`: cluster-level Prometheus metrics, read from Redis at each scrape.

A custom collector, so every scrape reflects Redis at that moment and the exporter keeps no
state: any number of exporters may run. Names start with `orchestrator_`; times are in
seconds, as Prometheus expects (the snapshot's `*_ms` figures are divided by 1000).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from orchestrator.models import AgentStatus, SystemHealth
from orchestrator.models import ProductionEventSeverity as Severity
from orchestrator.monitoring.backlog_view import capability_backlog, slots_free
from orchestrator.monitoring.loops import LoopContext
from orchestrator.monitoring.snapshot import Snapshot, gather
from orchestrator.monitoring.stats import (
    EXPORT_BOUNDS_MS,
    LATENCY_BOUNDS_MS,
    OVERFLOW,
    TypeStats,
    parse_fields,
)
from orchestrator.scaling.autoscale import scale_report
from orchestrator.store import now_s
from orchestrator.store.keys import SLA_HISTORY

log = logging.getLogger(__name__)

_GAUGES = (
    # snapshot field, metric name, help, scale
    ("queue_depth", "queue_depth", "Tasks waiting in agent queues (all priorities, unacked)", 1),
    ("parked_tasks", "parked_tasks", "Tasks parked until a capable agent appears", 1),
    ("dead_letters", "dead_letters", "Tasks in the dead-letter store", 1),
    ("error_rate", "error_rate", "Failed share of handler runs in the metrics window", 1),
    ("throughput_per_s", "throughput_per_second", "Handler runs per second (window)", 1),
    ("circuits_open", "circuits_open", "Agents whose circuit breaker is open", 1),
    ("alerts_firing", "alerts_firing", "Alerts firing", 1),
    ("security_threats", "security_threats", "Security findings of severity error/critical", 1),
    ("anomalies_active", "anomalies_active", "Metric series in an anomalous episode", 1),
    ("regressions_active", "regressions_active", "Task types with a latency regression", 1),
    (
        "backup_age_s",
        "backup_age_seconds",
        "Seconds since the newest backup (with none yet, since monitoring began)",
        1,
    ),
    ("backup_rpo_met", "backup_rpo_met", "1 while the newest good backup is within the RPO", 1),
)


class FamilySpec(NamedTuple):
    """One family the exporter serves."""

    kind: str  # gauge, counter or histogram
    help: str
    labels: tuple[str, ...] = ()


#: Every family the exporter serves, by name: `collect` fills them at each scrape, `describe`
#: lists them without samples (prometheus_client's collector protocol).
FAMILIES: dict[str, FamilySpec] = {
    "orchestrator_up": FamilySpec("gauge", "1 when Redis answered this scrape"),
    "orchestrator_agents": FamilySpec(
        "gauge", "Registered agents by effective status", ("status",)
    ),
    **{f"orchestrator_{name}": FamilySpec("gauge", doc) for _, name, doc, _ in _GAUGES},
    "orchestrator_health": FamilySpec("gauge", "1 for the current health", ("state",)),
    "orchestrator_agent_queue_depth": FamilySpec("gauge", "Tasks waiting per agent", ("agent",)),
    "orchestrator_agent_performance_score": FamilySpec(
        "gauge", "Routing performance score", ("agent",)
    ),
    "orchestrator_alert": FamilySpec(
        "gauge", "1 per pending or firing alert", ("alertname", "severity", "state")
    ),
    "orchestrator_security_findings": FamilySpec(
        "gauge", "Standing security findings by severity", ("severity",)
    ),
    "orchestrator_capability_agents": FamilySpec(
        "gauge", "Live agents offering the capability (awake or asleep)", ("capability",)
    ),
    "orchestrator_capability_backlog": FamilySpec(
        "gauge",
        "Tasks waiting for the capability (every priority, unacknowledged, parked)",
        ("capability",),
    ),
    "orchestrator_desired_agents": FamilySpec(
        "gauge", "Agents the capability should have (the autoscaling decision)", ("capability",)
    ),
    "orchestrator_backlog_tasks": FamilySpec(
        "gauge",
        "Tasks waiting in the backlog for a free slot, by capability and priority (a task "
        "needing several capabilities counts toward each)",
        ("capability", "priority"),
    ),
    "orchestrator_backlog_oldest_seconds": FamilySpec(
        "gauge",
        "How long the oldest task waiting in the backlog for the capability has waited",
        ("capability",),
    ),
    "orchestrator_agent_slots_free": FamilySpec(
        "gauge",
        "Slots a live agent has free: concurrency + ORCH_AGENT_PREFETCH minus its unended tasks",
        ("agent",),
    ),
    "orchestrator_tasks": FamilySpec(
        "counter", "Task lifecycle events since the start", ("event",)
    ),
    "orchestrator_task_runs": FamilySpec(
        "counter", "Handler runs by type and outcome", ("type", "outcome")
    ),
    "orchestrator_task_run_seconds": FamilySpec("histogram", "Handler run time", ("type",)),
    "orchestrator_task_delegation_seconds": FamilySpec(
        "histogram", "Submit-to-start time", ("type",)
    ),
    "orchestrator_sla_compliant": FamilySpec(
        "gauge", "1 when the SLA target was met at the last evaluation", ("slo",)
    ),
    "orchestrator_sla_error_budget_remaining": FamilySpec(
        "gauge", "Share of the error budget left", ("slo",)
    ),
}
_KINDS: dict[str, Any] = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
}


def family(name: str) -> Any:
    """A new, empty family of FAMILIES (a KeyError names one served but not declared)."""
    spec = FAMILIES[name]
    return _KINDS[spec.kind](name, spec.help, labels=list(spec.labels))


def _histogram(name: str, per_type: dict[str, TypeStats], delegation: bool) -> Metric:
    histogram = family(name)
    for kind, stats in sorted(per_type.items()):
        hist = stats.delegation if delegation else stats.latency
        if not hist:
            continue
        buckets: list[tuple[str, float]] = []
        for bound in EXPORT_BOUNDS_MS:
            cumulative = sum(
                n for i, n in hist.items() if i < OVERFLOW and LATENCY_BOUNDS_MS[i] <= bound
            )
            buckets.append((f"{bound / 1000:g}", float(cumulative)))
        buckets.append(("+Inf", float(sum(hist.values()))))
        total_us = stats.dsum if delegation else stats.lsum
        histogram.add_metric([kind], buckets, sum_value=total_us / 1e6)
    return histogram


class OrchestratorCollector:
    """Reads the snapshot, counters and cumulative telemetry at every scrape."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx

    def describe(self) -> Iterator[Metric]:
        for name in FAMILIES:
            yield family(name)

    def collect(self) -> Iterator[Metric]:
        up = family("orchestrator_up")
        try:
            metrics = list(self._collect())
        except Exception as exc:  # a scrape must answer even when Redis does not
            log.warning("scrape failed: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from metrics

    def _collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        now = now_s()
        snap = gather(ctx.store, ctx.mon, ctx.settings, now)
        m = snap.metrics
        agents = family("orchestrator_agents")
        for status in AgentStatus:
            agents.add_metric([status.value], float(sum(a.status is status for a in snap.agents)))
        yield agents
        for field_name, name, _doc, scale in _GAUGES:
            gauge = family(f"orchestrator_{name}")
            gauge.add_metric([], float(getattr(m, field_name)) * scale)
            yield gauge
        health = family("orchestrator_health")
        for state in SystemHealth:
            health.add_metric([state.value], 1.0 if m.health is state else 0.0)
        yield health
        depth = family("orchestrator_agent_queue_depth")
        score = family("orchestrator_agent_performance_score")
        for a in snap.agents:
            depth.add_metric([a.agent_id], float(snap.depths.get(a.queue, 0)))
            score.add_metric([a.agent_id], a.performance_score)
        yield depth
        yield score
        alerts = family("orchestrator_alert")
        for alert in snap.alerts:
            alerts.add_metric([alert.name, alert.severity.value, alert.state.value], 1.0)
        yield alerts
        yield from self._security()
        yield from self._scaling(snap, now)
        yield from self._backlog(snap, now)
        yield from self._counters()
        yield from self._sla()

    def _security(self) -> Iterator[Metric]:
        findings = family("orchestrator_security_findings")
        by_severity = Counter(f.severity.value for f in self.ctx.mon.findings().values())
        for severity in Severity:
            findings.add_metric([severity.value], float(by_severity.get(severity.value, 0)))
        yield findings

    def _scaling(self, snap: Snapshot, now: float) -> Iterator[Metric]:
        """The autoscaling signal per capability: the loop's decision (scaling/autoscale.py),
        the very count `orchestrator scale` shows and ORCH_SCALE_COMMAND was given."""
        rows = scale_report(self.ctx, now, snap.agents, snap.depths, snap.window)
        families = {
            "current": family("orchestrator_capability_agents"),
            "backlog": family("orchestrator_capability_backlog"),
            "desired": family("orchestrator_desired_agents"),
        }
        for row in rows:
            for attr, gauge in families.items():
                gauge.add_metric([row["capability"]], float(row[attr]))
        yield from families.values()

    def _backlog(self, snap: Snapshot, now: float) -> Iterator[Metric]:
        """What waits in the backlog per capability and priority, its oldest wait, and each
        live agent's free slots: one backlog read per scrape (store.backlog reads each
        waiting list's length and head, not the tasks)."""
        tasks, oldest = capability_backlog(self.ctx.store.backlog(now))
        waiting = family("orchestrator_backlog_tasks")
        for (capability, priority), n in sorted(tasks.items()):
            waiting.add_metric([capability, str(priority)], float(n))
        yield waiting
        age = family("orchestrator_backlog_oldest_seconds")
        for capability, seconds in sorted(oldest.items()):
            age.add_metric([capability], seconds)
        yield age
        free = family("orchestrator_agent_slots_free")
        for agent, n in sorted(slots_free(snap.agents, self.ctx.settings.agent_prefetch).items()):
            free.add_metric([agent], float(n))
        yield free

    def _counters(self) -> Iterator[Metric]:
        events = family("orchestrator_tasks")
        for name, value in sorted(self.ctx.store.counters().items()):
            events.add_metric([name], float(value))
        yield events
        totals = parse_fields(self.ctx.mon.totals())
        runs = family("orchestrator_task_runs")
        for kind, stats in sorted(totals.types.items()):
            runs.add_metric([kind, "succeeded"], float(stats.ok))
            runs.add_metric([kind, "failed"], float(stats.fail))
            runs.add_metric([kind, "recovered"], float(stats.rec))
        yield runs
        yield _histogram("orchestrator_task_run_seconds", totals.types, False)
        yield _histogram("orchestrator_task_delegation_seconds", totals.types, True)

    def _sla(self) -> Iterator[Metric]:
        latest = self.ctx.mon.history(SLA_HISTORY, 1)
        compliant = family("orchestrator_sla_compliant")
        budget = family("orchestrator_sla_error_budget_remaining")
        targets: dict[str, Any] = latest[-1]["targets"] if latest else {}
        for name, point in sorted(targets.items()):
            compliant.add_metric([name], 1.0 if point.get("compliant") else 0.0)
            budget.add_metric([name], float(point.get("budget", 1.0)))
        yield compliant
        yield budget


def serve(ctx: LoopContext, address: str, port: int, ready: threading.Event | None = None) -> None:
    """Serve /metrics until SIGINT or SIGTERM, then shut the server down cleanly."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(ctx))
    server, thread = start_http_server(port, addr=address, registry=registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("exporter serving http://%s:%d/metrics", address, server.server_port)
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
