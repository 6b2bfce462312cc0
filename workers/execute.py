"""`orchestrator.execute`: runs a handler on an agent and records the outcome in the ledger.

The ledger decides whether a delivered copy runs at all: a task that already ended, a stale
copy from an older dispatch, or a restored copy of a task still running in a live child of
this agent is acknowledged without running. A failure hands the task to recovery (the result
stays pending until recovery's verdict), except PermanentError, which fails it at once. When
Redis itself is unreachable the message is left unacknowledged, to come back once it is.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.signals import task_internal_error
from kombu.exceptions import OperationalError

from orchestrator.app import app
from orchestrator.config import Settings
from orchestrator.errors import PermanentError, StoreUnavailable, TransientError
from orchestrator.models import CircuitBreakerConfig, RegisteredAgent, TaskState
from orchestrator.monitoring.stats import run_fields
from orchestrator.recovery.plan import ErrorKind
from orchestrator.runtime.agent import RunningMarker, current_agent_id, pid_alive
from orchestrator.runtime.canvas import carries_links
from orchestrator.runtime.celeryconf import EXECUTE, agent_queue, execute_publisher
from orchestrator.runtime.handlers import get_handler
from orchestrator.runtime.metrics import note_run
from orchestrator.runtime.results import success_write
from orchestrator.store import Dispatched, ResultWrite, Settlement, now_s
from orchestrator.store.codes import AttemptCode
from orchestrator.store.ports import ExecutorStore
from orchestrator.store.telemetry import delegation_ms
from workers._context import settings_of, store_of

RECOVER = "orchestrator.recover"
#: The telemetry and metrics type of a task no handler here runs: a client may name any type
#: (with `required_capabilities` routing it), and a label per made-up name would be unbounded.
UNKNOWN_TYPE = "unknown"
log = logging.getLogger(__name__)
#: How long a finished run keeps trying to record its outcome while Redis is away (a restart,
#: a Sentinel failover): giving up means the message comes back and the handler runs again.
SETTLE_PATIENCE_S = 30.0
#: The same while Redis answers but is full (maxmemory, noeviction): it frees when an operator
#: or expiring keys make room, and a success given up on would be acknowledged and stay
#: `running` in the ledger for ever (Celery's own result write is refused too), so the run
#: waits much longer for room than for a Redis to come back.
FULL_PATIENCE_S = 600.0


def _settle(task: Task, store: ExecutorStore, settlement: Settlement) -> None:
    """store.settle_run, tried again (0.1 s, doubling to 1 s) for up to SETTLE_PATIENCE_S
    (FULL_PATIENCE_S while Redis is full); then the tasks the freed slot took from the backlog
    are published to this agent's queue."""
    started, delay = time.monotonic(), 0.1
    while True:
        try:
            _done, fills = store.settle_run(settlement)
            break
        except (StoreUnavailable, OperationalError) as exc:
            patience = FULL_PATIENCE_S if "maxmemory" in str(exc) else SETTLE_PATIENCE_S
            if time.monotonic() + delay > started + patience:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)
    try:
        _publish_fills(task, fills)
    except (StoreUnavailable, OperationalError) as exc:
        # Each is `routed` here with no message: the recovery monitor's scan for vanished
        # messages routes it again.
        log.warning("%d task(s) taken from the backlog not published: %s", len(fills), exc)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _publish_fills(task: Task, fills: list[Dispatched]) -> None:
    """Publish to this agent's own queue the backlog tasks its freed slots took."""
    if not fills:
        return
    agent_id = current_agent_id()
    publish = execute_publisher(task.app)
    me = RegisteredAgent(
        agent_id=agent_id,
        capabilities=settings_of(task.app).agent_capabilities,
        queue=agent_queue(agent_id),
        handler_tasks=True,
    )
    for got in fills:
        publish(got.task, me, got.dispatch)


def _hand_to_recovery(
    task: Task, store: ExecutorStore, task_id: str, agent_id: str, kind: ErrorKind, error: str
) -> None:
    now = now_s()
    store.mark_recovering(task_id, agent_id=agent_id, now=now, error=error, kind=kind.value)
    task.app.send_task(
        RECOVER,
        kwargs={"task_id": task_id, "kind": kind.value, "agent_id": agent_id, "error": error},
    )
    # The failed task no longer holds its slot here: the backlog may fill it.
    _publish_fills(task, store.fill(agent_id, now=now))


@dataclass(frozen=True)
class _Success:
    latency_ms: float
    encoded: str  # the return value as JSON, kept in the ledger
    counts: dict[str, int]  # its telemetry
    type: str


#: Successes of this process whose result Celery has not stored yet (see ExecuteTask).
_unstored: dict[str, _Success] = {}


def _record_success(
    task: Task, task_id: str, done: _Success, write: ResultWrite | None = None
) -> None:
    settings, store = settings_of(task.app), store_of(task.app)
    _settle(
        task,
        store,
        Settlement(
            task_id=task_id,
            agent_id=current_agent_id(),
            state=TaskState.SUCCEEDED,
            now=now_s(),
            latency_ms=done.latency_ms,
            task_type=done.type,
            counts=done.counts,
            circuit_cfg=settings.circuit_config() if settings.circuit_breaker_enabled else None,
            result=done.encoded,
            celery_result=write,
        ),
    )


class ExecuteTask(Task):
    """Runs a handler: `orchestrator.execute`, and on an agent the task per handler type
    named by it (runtime.celeryconf.register_handler_tasks), the same run under each name.

    Records a success in the ledger with its result in one step, or, for a request with
    links or results kept in another Redis, after Celery stored the result (see _execute).

    A success the ledger cannot record (Redis away or full beyond _settle's patience) is
    not acknowledged: the message is requeued, and comes back. When Redis is full as Celery
    stores the result (its write refused), the worker's internal-error path would acknowledge
    the message with the task `running` for ever: `_store_when_room` waits for room instead,
    then stores the result and records the success."""

    runs_handler = True  # the gate lets it (and only it) through an agent's queue

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        done = _unstored.pop(task_id, None)
        if done is None:
            return  # a copy that ran nothing (already ended): nothing to record
        try:
            _record_success(self, task_id, done)
        except (StoreUnavailable, OperationalError) as exc:
            raise Reject(f"the ledger could not record the success: {exc}", requeue=True) from exc


@task_internal_error.connect
def _store_when_room(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
) -> None:
    if not getattr(sender, "runs_handler", False) or task_id is None:
        return
    done = _unstored.pop(task_id, None)
    if done is None or "maxmemory" not in str(exception):
        return
    started, delay = time.monotonic(), 0.1
    while True:
        try:
            sender.backend.mark_as_done(task_id, json.loads(done.encoded))
            break
        except redis.RedisError as exc:
            if time.monotonic() + delay > started + FULL_PATIENCE_S:
                log.error("task %s: its result could not be stored: %s", task_id, exc)
                return
            time.sleep(delay)
            delay = min(1.0, delay * 2)
    try:
        _record_success(sender, task_id, done)
    except (StoreUnavailable, OperationalError) as exc:
        log.error("task %s succeeded but the ledger could not record it: %s", task_id, exc)


@app.task(name=EXECUTE, bind=True, base=ExecuteTask, throws=(PermanentError,))
def execute(
    self: Task, type: str, payload: dict[str, Any], max_retries: int = 3, dispatch: int = 0
) -> Any:
    """Run one delivered copy of a task on this agent, under dispatch number `dispatch`.

    `max_retries` is accepted and ignored: how often a failed task is tried again is
    recovery's decision, made from the spec in the ledger (Healer.recover_task), never from
    the message. Every execute message carries it all the same (runtime.celeryconf's
    execute_publisher puts it in the kwargs; messages already queued, restored from a backup or
    sent by a worker of an earlier version have it), and Celery refuses a message with a
    keyword its task does not take, so the parameter stays for those messages."""
    agent_id = current_agent_id()
    marker = RunningMarker(agent_id)
    try:
        return _execute(
            self,
            settings=settings_of(self.app),
            store=store_of(self.app),
            agent_id=agent_id,
            marker=marker,
            type=type,
            payload=payload,
            dispatch=dispatch,
        )
    except (StoreUnavailable, OperationalError) as exc:
        # Without Redis nothing can be recorded; leave the message unacknowledged so it is
        # delivered again (kombu restores it) instead of acknowledging a task left running.
        raise Reject(f"state store unreachable: {exc}", requeue=True) from exc
    finally:
        marker.clear(os.getpid())


def _execute(
    task: Task,
    *,
    settings: Settings,
    store: ExecutorStore,
    agent_id: str,
    marker: RunningMarker,
    type: str,
    payload: dict[str, Any],
    dispatch: int,
) -> Any:
    task_id = task.request.id
    pid = os.getpid()
    begin = partial(
        store.begin_attempt,
        task_id,
        agent_id=agent_id,
        dispatch=dispatch,
        pid=pid,
        max_deliveries=settings.max_deliveries,
    )
    started_at = now_s()
    attempt = begin(now=started_at)
    if attempt.code == AttemptCode.RUNNING_HERE:
        holder = int(attempt.info)
        if holder != pid and pid_alive(holder) and marker.holds(holder, task_id):
            raise Ignore()  # a restored copy of a task a live child of ours is running
        started_at = now_s()
        attempt = begin(now=started_at, force=True)
    if attempt.code == AttemptCode.ENDED:
        stored = store.stored_result(task_id)
        if stored is None or carries_links(task.request):
            raise Ignore()  # (the run that ended it fired its links: a copy fires none)
        return json.loads(stored)  # the same value again: the backend's result is unchanged
    if attempt.code == AttemptCode.POISON:
        error = f"delivered {attempt.info} times without finishing (the worker died each time)"
        _hand_to_recovery(task, store, task_id, agent_id, ErrorKind.POISON, error)
        raise Ignore()
    if not attempt.run:
        raise Ignore()
    marker.mark(pid, task_id)

    circuit = settings.circuit_config() if settings.circuit_breaker_enabled else None
    handler = get_handler(type)
    known_type = type if handler is not None else UNKNOWN_TYPE
    delegation = delegation_ms(attempt.code, attempt.submitted_at, started_at)

    def counts(outcome: str, latency: float, recovering: bool = False) -> dict[str, int]:
        """The run's telemetry; each outcome path calls this once, so it also notes the run
        for this worker's own metrics (runtime/metrics.py)."""
        note_run(task.request, known_type, "retry" if recovering else outcome, latency, delegation)
        return run_fields(known_type, outcome, latency, delegation, recovering)

    def fail(exc: BaseException, latency: float, cfg: CircuitBreakerConfig | None) -> None:
        _settle(
            task,
            store,
            Settlement(
                task_id=task_id,
                agent_id=agent_id,
                state=TaskState.FAILED,
                now=now_s(),
                latency_ms=latency,
                task_type=type,
                counts=counts("fail", latency),
                circuit_cfg=cfg,
                error=_reason(exc),
                stats_type=known_type,
            ),
        )

    started = time.perf_counter()
    try:
        if handler is None:
            raise PermanentError(f"agent {agent_id} has no handler for task type {type!r}")
        result = handler(payload)
        encoded = json.dumps(result)
    except PermanentError as exc:
        fail(exc, (time.perf_counter() - started) * 1000, None)  # not the agent's fault
        raise
    except (StoreUnavailable, OperationalError):
        raise  # the handler's own Redis or broker calls failed: the same outage, retried
    except Exception as exc:
        latency = (time.perf_counter() - started) * 1000
        kind = (
            ErrorKind.TIMEOUT
            if isinstance(exc, SoftTimeLimitExceeded)
            else ErrorKind.TRANSIENT
            if isinstance(exc, TransientError)
            else ErrorKind.CRASH
        )
        if not settings.auto_recovery_enabled:
            fail(exc, latency, circuit)
            raise
        store.record_outcome(
            agent_id,
            ok=False,
            latency_ms=latency,
            circuit_cfg=circuit,
            now=now_s(),
            task_type=known_type,
        )
        _hand_to_recovery(task, store, task_id, agent_id, kind, _reason(exc))
        try:
            store.telemetry.add(counts("fail", latency, recovering=True), now_s())
        except redis.RedisError as count_exc:  # telemetry never fails a task
            log.warning("telemetry of task %s not recorded: %s", task_id, count_exc)
        raise Ignore() from exc
    latency = (time.perf_counter() - started) * 1000
    done = _Success(latency, encoded, counts("ok", latency), type)
    write = _result_write(task, settings, result)
    if write is not None:
        # The result and the ledger's success in one step: a client woken by its result
        # reads the task as succeeded. Celery stores nothing more (and fires nothing: this
        # request carries no links).
        _record_success(task, task_id, done, write)
        task.request.ignore_result = True
        return result
    # Otherwise the ledger records the success in on_success, once Celery has stored the
    # result (and fired the links): an agent killed in between leaves the task `running`, to
    # be run again, never `succeeded` with no result for AsyncResult.get() to find.
    if len(_unstored) > 1000:  # left by results Celery failed to encode: never to be stored
        _unstored.clear()
    _unstored[task_id] = done
    return result


def _result_write(task: Task, settings: Settings, result: Any) -> ResultWrite | None:
    """Celery's result of this success for the settle step to write, where it can: results
    in the state store's Redis, and a request with no links (Celery fires those as it stores
    the result, and a chord counts its part there)."""
    if settings.effective_result_backend != settings.effective_state_url:
        return None
    if carries_links(task.request):
        return None
    return success_write(task.backend, task.request.id, result, task.request)
