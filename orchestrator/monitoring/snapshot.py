"""The metrics snapshot (`ProductionMetrics`), gathered cheaply from Redis.

Read-only: `orchestrator status`, the exporter and the alert loop all call `gather`; only the
alert loop stores the result in the bounded history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.backup.status import backup_age_s, rpo_met
from orchestrator.config import Settings
from orchestrator.models import (
    AgentStatus,
    AlertState,
    CircuitBreakerState,
    ProductionAlert,
    ProductionMetrics,
    RegisteredAgent,
)
from orchestrator.monitoring.stats import WindowStats, assess_health, run_figures
from orchestrator.routing.weights import effective_status
from orchestrator.store.monitoring import MonitoringStore
from orchestrator.store.ports import LoopsStore


@dataclass
class Snapshot:
    """The metrics plus what they were computed from (the loops reuse it)."""

    metrics: ProductionMetrics
    agents: list[RegisteredAgent] = field(default_factory=list)
    depths: dict[str, int] = field(default_factory=dict)  # agent queue -> depth
    alerts: list[ProductionAlert] = field(default_factory=list)
    window: WindowStats | None = None  # the metrics window's telemetry, parsed

    def capability_depths(self) -> dict[str, int]:
        """Tasks waiting for the agents offering each capability (an agent with several
        capabilities counts toward each)."""
        out: dict[str, int] = {}
        for agent in self.agents:
            for cap in agent.capabilities:
                out[cap] = out.get(cap, 0) + self.depths.get(agent.queue, 0)
        return out


def _since(mon: MonitoringStore, last_backup: dict[str, str]) -> float | None:
    """When monitoring began: read only while there is no backup (backup_age_s needs it then)."""
    return None if last_backup.get("created_at") else mon.monitoring_began()


def gather(store: LoopsStore, mon: MonitoringStore, settings: Settings, now: float) -> Snapshot:
    agents = store.load_fleet(settings.circuit_rule(), now).agents
    for agent in agents:
        agent.status = effective_status(agent, now, settings.agent_timeout_s)
    statuses = [a.status for a in agents]
    depths = mon.queue_depths([a.queue for a in agents])
    parked, dead = mon.backlog()
    last_backup = mon.last_backup()
    stats, span = mon.window(settings.metrics_window_s, now)
    runs = run_figures(stats.of(None), span)
    alerts = mon.all_alerts()
    firing = [a for a in alerts if a.state is AlertState.FIRING]
    episodes = mon.detector_states()
    metrics = ProductionMetrics(
        ts=now,
        agents_total=len(agents),
        agents_active=statuses.count(AgentStatus.ACTIVE),
        agents_sleeping=statuses.count(AgentStatus.SLEEPING),
        agents_quarantined=statuses.count(AgentStatus.QUARANTINED),
        agents_offline=statuses.count(AgentStatus.OFFLINE),
        queue_depth=sum(depths.values()),
        parked_tasks=parked,
        dead_letters=dead,
        tasks_succeeded=runs.succeeded,
        tasks_failed=runs.failed,
        tasks_retried=runs.retried,
        error_rate=runs.error_rate,
        throughput_per_s=runs.throughput_per_s,
        latency_p50_ms=runs.p50,
        latency_p95_ms=runs.p95,
        latency_p99_ms=runs.p99,
        delegation_p95_ms=runs.delegation_p95,
        circuits_open=sum(1 for a in agents if a.circuit is CircuitBreakerState.OPEN),
        alerts_firing=len(firing),
        backup_age_s=backup_age_s(last_backup, _since(mon, last_backup), now),
        backup_rpo_met=int(rpo_met(last_backup, settings.effective_backup_rpo_s, now)),
        security_threats=len(mon.threats()),
        anomalies_active=sum(1 for s in episodes.values() if s.get("state", {}).get("in_episode")),
        regressions_active=len(mon.regressions()),
    )
    metrics.health = assess_health(metrics, (a.severity.value for a in firing))
    return Snapshot(metrics=metrics, agents=agents, depths=depths, alerts=alerts, window=stats)
