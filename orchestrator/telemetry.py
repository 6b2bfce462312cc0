"""Worker-side telemetry: Celery signal handlers that count and time handler runs in Redis.

Every worker imports workers.monitoring, which calls `install()`: an agent's pool children
then record each `orchestrator.execute` run (outcome, run time, submit-to-start time) and a
control worker each rejected `orchestrator.submit` (per client, for the security loop). The
outcome is read back from the ledger after the run, because the task's Celery state does not
tell a handler failure handed to recovery (the task raises Ignore) from a duplicate copy
that ran nothing.

Counts go to a per-minute and a per-hour hash (see orchestrator.keys and stats.py) and to
one cumulative hash for the exporter. Two round trips per run: read the ledger, then add.
A telemetry failure is logged and never fails the task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import signals

from orchestrator.keys import TELEMETRY_TOTAL, task_key, telemetry_key
from orchestrator.stats import run_fields

log = logging.getLogger(__name__)

EXECUTE = "orchestrator.execute"
MINUTE_TTL_S = 7 * 3600  # minute buckets serve windows up to MINUTE_WINDOW_MAX_S
HOUR_TTL_S = 32 * 86400  # hour buckets serve windows up to 31 days
MINUTE_WINDOW_MAX_S = 6 * 3600
CLOCK_SLACK_S = 0.001
_LEDGER_FIELDS = ("state", "started_at", "finished_at", "latency_ms", "submitted_at", "attempts")
_MAX_PENDING = 10_000


def _num(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def classify_run(
    ledger: Mapping[str, str | None], t0: float, celery_state: str
) -> tuple[str, bool] | None:
    """What one delivered copy of `orchestrator.execute` did, judged from the ledger after it
    returned: ("ok", False), ("fail", False), ("fail", True) for a failure handed to
    recovery, or None when this copy ran no handler (duplicate, stale or restored copy).

    `t0` is the wall time just before the task body ran: an attempt this copy began has
    `started_at` at or after it, and an outcome it recorded has `finished_at` at or after it.
    """
    started = _num(ledger.get("started_at"))
    if started is None or started < t0 - CLOCK_SLACK_S:
        return None
    finished = _num(ledger.get("finished_at"))
    ended_here = finished is not None and finished >= t0 - CLOCK_SLACK_S
    state = ledger.get("state")
    if ended_here and state == "succeeded":
        return "ok", False
    if ended_here and state in ("failed", "dead_lettered"):
        return "fail", False
    if celery_state in ("IGNORED", "FAILURE", "RETRY"):
        return "fail", True  # handed to recovery (which may already have moved it on)
    return None


def run_measures(
    ledger: Mapping[str, str | None], t0: float, measured_ms: float
) -> tuple[float, float | None]:
    """Run time (the handler's own, from the ledger, when this copy recorded it) and
    submit-to-start time (first attempts only)."""
    finished = _num(ledger.get("finished_at"))
    recorded = _num(ledger.get("latency_ms"))
    latency = (
        recorded
        if recorded is not None and finished is not None and finished >= t0 - CLOCK_SLACK_S
        else measured_ms
    )
    delegation = None
    started, submitted = _num(ledger.get("started_at")), _num(ledger.get("submitted_at"))
    if ledger.get("attempts") == "1" and started is not None and submitted is not None:
        delegation = max(0.0, (started - submitted) * 1000.0)
    return latency, delegation


class TelemetryWriter:
    """Adds counts to the minute, hour and cumulative telemetry hashes."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def add(self, fields: Mapping[str, int], now: float, cumulative: bool = True) -> None:
        if not fields:
            return
        pipe = self.r.pipeline(transaction=False)
        for key, ttl in (
            (telemetry_key("m", int(now // 60)), MINUTE_TTL_S),
            (telemetry_key("h", int(now // 3600)), HOUR_TTL_S),
        ):
            for name, n in fields.items():
                pipe.hincrby(key, name, n)
            pipe.expire(key, ttl)
        if cumulative:
            for name, n in fields.items():
                pipe.hincrby(TELEMETRY_TOTAL, name, n)
        pipe.execute()

    def record_execute(
        self,
        task_id: str,
        task_type: str | None,
        t0: float,
        measured_ms: float,
        celery_state: str,
        now: float,
    ) -> dict[str, int] | None:
        values = self.r.hmget(task_key(task_id), [*_LEDGER_FIELDS, "type"])
        ledger = {
            k: (str(v) if v is not None else None)
            for k, v in zip(_LEDGER_FIELDS, values, strict=False)
        }
        kind = task_type or (str(values[-1]) if values[-1] is not None else None)
        verdict = classify_run(ledger, t0, celery_state)
        if verdict is None or not kind:
            return None
        outcome, recovering = verdict
        latency, delegation = run_measures(ledger, t0, measured_ms)
        fields = run_fields(kind, outcome, latency, delegation, recovering)
        self.add(fields, now)
        return fields


# --- Celery signal handlers ----------------------------------------------------------------

_starts: dict[str, tuple[float, float]] = {}
_writers: dict[int, TelemetryWriter] = {}
_installed = threading.Lock()
_done = False


def _writer(task: Any) -> TelemetryWriter:
    # One writer per process, on the process's own store connection (pool children fork).
    from orchestrator.agent import process_store
    from orchestrator.celeryconf import app_settings

    store = process_store(app_settings(task.app))
    key = id(store)
    if key not in _writers:
        _writers.clear()
        _writers[key] = TelemetryWriter(store.r)
    return _writers[key]


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is not None and task.name == EXECUTE and task_id:
        if len(_starts) > _MAX_PENDING:  # postrun never came for some (killed mid-run)
            _starts.clear()
        _starts[task_id] = (time.time(), time.perf_counter())


def _on_postrun(
    task_id: str | None = None,
    task: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    if task is None or not task_id:
        return
    try:
        if task.name == EXECUTE:
            start = _starts.pop(task_id, None)
            if start is None:
                return
            measured = (time.perf_counter() - start[1]) * 1000.0
            task_type = (kwargs or {}).get("type")
            _writer(task).record_execute(
                task_id,
                task_type if isinstance(task_type, str) else None,
                start[0],
                measured,
                state or "",
                time.time(),
            )
    except Exception as exc:  # telemetry must never fail a task
        log.warning("telemetry for %s %s not recorded: %s", task.name, task_id, exc)


def install() -> None:
    """Connect the signal handlers once per process (idempotent)."""
    global _done
    with _installed:
        if _done:
            return
        signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="orch.telemetry.pre")
        signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="orch.telemetry.post")
        _done = True
