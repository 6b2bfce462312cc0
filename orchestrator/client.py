"""OrchestratorClient: submit work and read its fate from Python, without a worker."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from celery import Celery
from celery.result import AsyncResult

from orchestrator.celeryconf import ROUTING_QUEUE, create_app
from orchestrator.config import Settings, load_settings
from orchestrator.models import TASK_ID_RE, RegisteredAgent, TaskRecord
from orchestrator.store import StateStore

SUBMIT = "orchestrator.submit"


class OrchestratorClient:
    """Sends `orchestrator.submit` by name and tracks the orchestration id to its result."""

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None) -> None:
        if settings is None:
            settings = load_settings(**({"redis_url": redis_url} if redis_url else {}))
        self.settings = settings
        self.app: Celery = create_app(settings, with_tasks=False)
        self.store = StateStore.from_url(
            settings.effective_state_url, ledger_ttl_s=settings.ledger_ttl_s
        )

    def submit(
        self, type: str, payload: dict[str, Any] | None = None, **fields: Any
    ) -> AsyncResult:
        """Submit one task. The returned result's id is the orchestration id: `task_id` if
        given, else the submit message's own id. `.get()` gives the handler's return value,
        or raises the final failure (InvalidTask for a rejected spec)."""
        kwargs: dict[str, Any] = {"type": type, "payload": payload or {}, **fields}
        sent = self.app.send_task(SUBMIT, kwargs=kwargs, task_id=str(uuid4()), queue=ROUTING_QUEUE)
        given = fields.get("task_id")
        if isinstance(given, str) and TASK_ID_RE.match(given) and given != sent.id:
            return self.app.AsyncResult(given)
        return sent  # already subscribed to its result: no second subscription

    def result(self, task_id: str) -> AsyncResult:
        return self.app.AsyncResult(task_id)

    def task(self, task_id: str) -> TaskRecord:
        return self.store.task_record(task_id)

    def agents(self) -> list[RegisteredAgent]:
        return self.store.load_agents()

    def close(self) -> None:
        self.store.r.close()
        self.app.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
