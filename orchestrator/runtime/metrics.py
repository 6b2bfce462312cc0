"""A worker's own Prometheus metrics on ORCH_METRICS_PORT, counted in every pool child.

Under the prefork pool a task runs in a child process, so each child's counts must reach the
one HTTP endpoint the parent serves: prometheus_client's multiprocess mode does that with one
mmap'ed file per process in a folder of this worker's own (`PROMETHEUS_MULTIPROC_DIR`), made
empty at start and removed at shutdown. The folder must be named before prometheus_client is
first imported (it picks its value class at import), which is why nothing here imports it at
module level and why `MetricsStep` runs in the parent before the pool forks.

What a run counts is decided where it runs: `orchestrator.execute` notes its handler's
outcome on the request (`note_run`); every other task (control work) counts by its Celery
name and state. Task types are a bounded label: a type with no handler on this agent counts
as `unknown` (workers/execute.py).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import bootsteps, signals

from orchestrator.errors import ConfigError
from orchestrator.monitoring.stats import EXPORT_BOUNDS_MS
from orchestrator.runtime.agent import pid_alive
from orchestrator.runtime.celeryconf import EXECUTE, app_settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The exporter's buckets (1 ms to 1,000 s), so a worker's quantiles and the cluster's agree.
BUCKETS_S = tuple(b / 1000 for b in EXPORT_BOUNDS_MS)
#: Outcomes `note_run` accepts: the handler succeeded, failed for good, or failed and was
#: handed to recovery for another attempt (counted as failed and as retried).
OUTCOMES = ("ok", "fail", "retry")


@dataclass(frozen=True)
class RunNote:
    """What orchestrator.execute tells the metrics about one handler run."""

    type: str
    outcome: str
    run_s: float
    delegation_s: float | None


def note_run(
    request: Any, type: str, outcome: str, run_ms: float, delegation_ms: float | None
) -> None:
    """Record on the task's request how its handler ran; the postrun signal counts it."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES} (got {outcome!r})")
    delegation = None if delegation_ms is None else delegation_ms / 1000
    request.orchestrator_run = RunNote(type, outcome, run_ms / 1000, delegation)


class WorkerMetrics:
    """The families one worker serves, each an attribute (the docs' metrics reference reads
    them there); created in the parent, inherited by each child."""

    def __init__(self, agent: str, role: str, types: Iterable[str] = ()) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str) -> Any:
            return Counter(f"orchestrator_worker_{name}", doc, ["type"], registry=None)

        def histogram(name: str, doc: str) -> Any:
            return Histogram(
                f"orchestrator_worker_{name}", doc, ["type"], buckets=BUCKETS_S, registry=None
            )

        self.executed = counter("tasks_executed", "Task runs this worker finished, by type")
        self.failed = counter("tasks_failed", "Task runs that failed, by type")
        self.retried = counter("tasks_retried", "Failed runs handed on for another attempt")
        self.run = histogram("task_run_seconds", "Run time of a task (handler or control)")
        self.delegation = histogram(
            "task_delegation_seconds", "Submit-to-start time of the handler runs here"
        )
        self.in_flight = Gauge(
            "orchestrator_worker_tasks_in_flight",
            "Tasks running in this worker's pool now",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.info = Gauge(
            "orchestrator_worker_info",
            "1 per worker: its agent id (or node name) and role",
            ["agent", "role"],
            multiprocess_mode="max",
            registry=None,
        )
        self.info.labels(agent, role).set(1)
        # Every type this worker can run starts at zero, so a rate() over it is 0, not absent.
        for type in types:
            for family in (self.executed, self.failed, self.retried, self.run):
                family.labels(type)
        self._started: dict[str, float] = {}

    def started(self, task_id: str) -> None:
        self.in_flight.inc()
        self._started[task_id] = time.perf_counter()

    def finished(self, task_id: str, task: Any, state: str | None) -> None:
        began = self._started.pop(task_id, None)
        self.in_flight.dec()
        note = getattr(task.request, "orchestrator_run", None)
        if isinstance(note, RunNote):
            self._count(note.type, note.outcome, note.run_s)
            if note.delegation_s is not None:
                self.delegation.labels(note.type).observe(note.delegation_s)
        elif not getattr(task, "runs_handler", False) and began is not None:
            # Control work counts by its Celery name; an execute copy that ran no handler
            # (already ended, a stale dispatch) counts nothing.
            outcome = {"FAILURE": "fail", "RETRY": "retry"}.get(state or "", "ok")
            self._count(task.name, outcome, time.perf_counter() - began)

    def _count(self, type: str, outcome: str, run_s: float) -> None:
        self.executed.labels(type).inc()
        if outcome != "ok":
            self.failed.labels(type).inc()
        if outcome == "retry":
            self.retried.labels(type).inc()
        self.run.labels(type).observe(run_s)


class _Active:
    """This process's metrics, once MetricsStep made them (None: metrics are off)."""

    metrics: WorkerMetrics | None = None


def _on_prerun(task_id: str = "", **_: Any) -> None:
    if _Active.metrics is not None:
        _Active.metrics.started(task_id)


def _on_postrun(task_id: str = "", task: Any = None, state: str | None = None, **_: Any) -> None:
    if _Active.metrics is not None and task is not None:
        _Active.metrics.finished(task_id, task, state)


def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    if _Active.metrics is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


class _LiveCollector:
    """MultiProcessCollector over the folder, first dropping the live gauges of children
    that died without saying so (SIGKILL, OOM): their in-flight count would stay for ever."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        self.path = path
        self._inner = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Any:
        from prometheus_client import multiprocess

        for name in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            pid = name.rsplit("_", 1)[-1].removesuffix(".db")
            if pid.isdigit() and not pid_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), self.path)
        return self._inner.collect()


def _fresh_folder(node: str) -> str:
    """An empty folder for this worker's files; folders of dead workers are removed."""
    root = os.path.join(tempfile.gettempdir(), "hive-orchestrator-metrics")
    os.makedirs(root, exist_ok=True)
    for old in glob.glob(os.path.join(root, "*-*")):
        pid = os.path.basename(old).rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    safe = "".join(c if c.isalnum() or c in "._" else "_" for c in node)
    path = os.path.join(root, f"{safe}-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


class MetricsStep(bootsteps.StartStopStep):
    """Serves /metrics from the worker's parent process while the worker runs."""

    name = "orchestrator.metrics"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = app_settings(worker.app)
        self.port, self.address = settings.metrics_port, settings.metrics_address
        self.server: Any = None
        self.folder = ""
        if not self.port:
            return
        imported_before = "prometheus_client" in sys.modules
        self.folder = _fresh_folder(worker.hostname)
        os.environ[MULTIPROC_ENV] = self.folder
        if imported_before:  # it chose its in-memory value class: choose again, now
            from prometheus_client import values

            values.ValueClass = values.get_value_class()
        agent = settings.agent_id or worker.hostname
        if settings.is_agent:
            role, types = "agent", sorted(settings.agent_capabilities)
        else:  # a control worker's work, by Celery name
            role = "control"
            types = sorted(
                name
                for name in worker.app.tasks
                if name.startswith("orchestrator.") and name != EXECUTE
            )
        _Active.metrics = WorkerMetrics(agent, role, types)
        # Only now: with receivers connected Celery sends these signals for every task, a cost
        # a worker without metrics must not pay (the pool's children inherit the connection).
        signals.task_prerun.connect(_on_prerun, weak=False)
        signals.task_postrun.connect(_on_postrun, weak=False)
        signals.worker_process_shutdown.connect(_on_child_exit, weak=False)

    def include_if(self, worker: Any) -> bool:
        return bool(app_settings(worker.app).metrics_port)

    def start(self, worker: Any) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_LiveCollector(self.folder))
        try:
            self.server, _thread = start_http_server(self.port, self.address, registry)
        except OSError as exc:
            raise ConfigError(
                f"ORCH_METRICS_PORT: cannot serve on {self.address}:{self.port}: {exc}"
            ) from exc
        log.info("worker metrics on http://%s:%d/metrics", self.address, self.port)

    def stop(self, worker: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
