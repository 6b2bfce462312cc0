"""`orchestrator.execute`: runs a handler on an agent and records the outcome in the ledger."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from orchestrator.agent import current_agent_id
from orchestrator.app import app
from orchestrator.errors import PermanentError, TransientError
from orchestrator.handlers import get_handler
from orchestrator.models import TaskState
from orchestrator.store import now_s
from workers._context import store_of

RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@app.task(name="orchestrator.execute", bind=True, throws=(PermanentError, TransientError))
def execute(self: Task, type: str, payload: dict[str, Any], max_retries: int = 3) -> Any:
    store = store_of(self.app)
    agent_id = current_agent_id()
    task_id = self.request.id
    attempt = store.begin_attempt(task_id, agent_id, now_s())
    if attempt < 0:
        # Already ended (a redelivered copy): hand back the recorded result, run nothing.
        stored = store.stored_result(task_id)
        if stored is None:
            raise Ignore()
        return json.loads(stored)
    handler = get_handler(type)
    started = time.perf_counter()
    try:
        if handler is None:
            raise PermanentError(f"agent {agent_id} has no handler for task type {type!r}")
        result = handler(payload)
        encoded = json.dumps(result)
    except (TransientError, SoftTimeLimitExceeded) as exc:
        latency = (time.perf_counter() - started) * 1000
        if self.request.retries < max_retries:
            store.record_outcome(agent_id, ok=False, latency_ms=latency, settle=False)
            store.requeue_for_retry(task_id, agent_id, now_s(), _reason(exc))
            countdown = min(RETRY_CAP_S, RETRY_BASE_S * 2**self.request.retries)
            raise self.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
        store.record_outcome(agent_id, ok=False, latency_ms=latency)
        store.finish(
            task_id,
            TaskState.FAILED,
            agent_id,
            now_s(),
            error=f"{_reason(exc)} (after {self.request.retries} retries)",
            latency_ms=latency,
            task_type=type,
        )
        raise
    except Exception as exc:
        latency = (time.perf_counter() - started) * 1000
        store.record_outcome(agent_id, ok=False, latency_ms=latency)
        store.finish(
            task_id,
            TaskState.FAILED,
            agent_id,
            now_s(),
            error=_reason(exc),
            latency_ms=latency,
            task_type=type,
        )
        raise
    latency = (time.perf_counter() - started) * 1000
    store.record_outcome(agent_id, ok=True, latency_ms=latency)
    store.finish(
        task_id,
        TaskState.SUCCEEDED,
        agent_id,
        now_s(),
        latency_ms=latency,
        task_type=type,
        result=encoded,
    )
    return result
