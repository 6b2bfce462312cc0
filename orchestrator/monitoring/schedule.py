"""The periodic loops: their beat entries, intervals, feature flags, locks, and RedBeat's settings.

One table (`LOOPS`) serves beat (beat_schedule.py builds the schedule from it) and the tasks
(workers/monitoring.py takes each loop's lock TTL and flag from it), so the two cannot drift.

Feature flags (`ORCH_*_ENABLED` settings) and what they gate here:

* `ORCH_EVENT_PROCESSING_ENABLED` gates the two loops that turn raw signals into derived
  events: `security-monitoring` (`security.threat`) and `anomaly-detection`
  (`anomaly.detected`, `regression.detected`), and, outside this table, the control
  workers' event consumer (orchestrator.runtime.event_processing), which reacts to events. Alerts,
  SLA and backups are the floor of operability and always run.
* `ORCH_INTELLIGENT_ROUTING_ENABLED` gates `performance-optimization`: with plain round-robin
  every weight is 1, so the performance scores it computes would weigh nothing.
* `ORCH_AUTO_RECOVERY_ENABLED` and `ORCH_CIRCUIT_BREAKER_ENABLED` gate the recovery and breaker
  paths (orchestrator.recovery / breaker), not a monitoring loop.

A disabled loop is left out of the schedule, and its task also checks the flag when it runs,
so a message sent by hand (or by a beat started before the flag changed) obeys it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Settings
from orchestrator.redis_urls import is_sentinel, parse_sentinel

LOCK_TTL_MIN_S = 10.0
#: The autoscaling loop may run ORCH_SCALE_COMMAND (`docker compose up --scale` can take a
#: minute): its runs may last this long, and the ticks meanwhile skip themselves.
AUTOSCALE_TTL_S = 90.0
LOCK_TTL_MAX_S = 3600.0
REDBEAT_KEY_PREFIX = "redbeat:"


def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Loop:
    """One periodic task: its beat entry, its task name, its interval and its flag."""

    entry: str
    task: str
    interval: Callable[[Settings], float]
    enabled: Callable[[Settings], bool] = _always
    min_ttl_s: float = 0.0  # a run may need longer than two intervals (a command it runs)

    @property
    def name(self) -> str:
        """The short name used for its lock and run log (`alerts`, `optimize`, ...)."""
        return self.task.rsplit(".", 1)[-1]

    def ttl_s(self, settings: Settings) -> float:
        """Its lock TTL and time limit (see lock_ttl_s), at least `min_ttl_s`."""
        return max(lock_ttl_s(self.interval(settings)), self.min_ttl_s)


LOOPS: tuple[Loop, ...] = (
    Loop("alert-evaluation", "orchestrator.monitor.alerts", lambda s: s.alert_evaluation_interval),
    Loop("sla-monitoring", "orchestrator.monitor.sla", lambda s: s.sla_monitoring_interval),
    Loop(
        "security-monitoring",
        "orchestrator.monitor.security",
        lambda s: s.security_monitoring_interval,
        lambda s: s.event_processing_enabled,
    ),
    Loop(
        "backup-management",
        "orchestrator.monitor.backup",
        lambda s: s.backup_interval_hours * 3600.0,
    ),
    Loop(
        "anomaly-detection",
        "orchestrator.monitor.anomaly",
        lambda s: s.anomaly_detection_interval,
        lambda s: s.event_processing_enabled,
    ),
    Loop(
        "performance-optimization",
        "orchestrator.optimize",
        lambda s: s.performance_optimization_interval,
        lambda s: s.intelligent_routing_enabled,
    ),
    # Scaling (orchestrator.scaling): the autoscaling signal with its hysteresis and
    # ORCH_SCALE_COMMAND; agents' sleep/wake (with sleeping off it still wakes an agent put
    # to sleep by hand when work needs it).
    Loop(
        "autoscaling",
        "orchestrator.autoscale",
        lambda s: s.scale_interval_s,
        min_ttl_s=AUTOSCALE_TTL_S,
    ),
    Loop("sleep-wake", "orchestrator.sleep_wake", lambda s: s.scale_interval_s),
)
LOOPS_BY_TASK = {loop.task: loop for loop in LOOPS}


def lock_ttl_s(interval_s: float) -> float:
    """How long a run may hold its singleton lock: two intervals, within [10 s, 1 h].

    A run still going at the next tick makes that tick skip itself; the TTL only matters when
    the holder died without releasing, and then bounds how many ticks are lost. The task's
    time limit equals it, so a live run never outlasts its lock.
    """
    return min(max(2.0 * interval_s, LOCK_TTL_MIN_S), LOCK_TTL_MAX_S)


def beat_entry(task: str, interval_s: float, time_limit_s: float | None = None) -> dict[str, Any]:
    """A schedule entry whose message expires before the next one is sent, so a backlog
    (no control worker for a while) never turns into a burst of stale runs."""
    options: dict[str, Any] = {"expires": interval_s}
    if time_limit_s is not None:
        options["soft_time_limit"] = max(time_limit_s - 1.0, 1.0)
        options["time_limit"] = time_limit_s
    return {"task": task, "schedule": interval_s, "options": options}


def loop_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat entries of the monitoring loops whose feature flag is on."""
    entries = {}
    for loop in LOOPS:
        if loop.enabled(settings):
            entries[loop.entry] = beat_entry(
                loop.task, loop.interval(settings), loop.ttl_s(settings)
            )
    return entries


def redbeat_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for beat high availability (merged into celeryconf.celery_config).

    RedBeat keeps the schedule in Redis behind a lock: any number of `celery beat` processes
    may run, one ticks, the others wait for the lock, and a dead holder's lock lapses after
    ORCH_BEAT_LOCK_TIMEOUT_S. The holder extends it every tick, and ticks are at most
    ORCH_BEAT_MAX_INTERVAL_S apart. RedBeat's options are set explicitly so it neither falls
    back to the broker's transport options nor warns about it. Its keys live in the state
    store, or in the broker's Redis where the state store is a Redis Cluster (RedBeat has no
    cluster client).
    """
    url = settings.effective_broker_url if settings.state_cluster else settings.effective_state_url
    options: dict[str, Any] = {}
    if is_sentinel(url):  # RedBeat's own form: a redis-sentinel:// URL and the sentinels apart
        address = parse_sentinel(url)
        url = "redis-sentinel://"
        options = {
            "sentinels": list(address.sentinels),
            "service_name": settings.redis_sentinel_master,
            "db": address.db,
            "password": address.password,
            "socket_timeout": 5.0,
            "sentinel_kwargs": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
        }
        if address.username:
            options["username"] = address.username
    return {
        "beat_scheduler": "orchestrator.runtime.beat:Scheduler",  # RedBeat, riding out failovers
        "beat_max_loop_interval": settings.beat_max_interval_s,
        "redbeat_redis_url": url,
        "redbeat_redis_options": options,
        "redbeat_key_prefix": REDBEAT_KEY_PREFIX,
        "redbeat_lock_timeout": int(settings.beat_lock_timeout_s),
    }
