"""A control worker handler of a task lifecycle event (ORCH_HANDLERS=tests.task_handlers).

Apart from tests/handlers.py on purpose: a handler of one of the task stream's types makes the
control workers' group read orchestrator:events:tasks, which the other tests' workers must not
(tests/integration/test_task_events.py checks both ways)."""

from __future__ import annotations

import os
from typing import Any

import redis

from orchestrator import on_event
from orchestrator.models import OrchestrationEvent


@on_event("task.succeeded")
def note_succeeded(event: OrchestrationEvent, ctx: Any) -> None:
    """Lists the tasks announced succeeded, with the id of the entry announcing each."""
    with redis.Redis.from_url(os.environ["ORCH_REDIS_URL"], decode_responses=True) as client:
        client.rpush("test:event:succeeded", f"{event.data.get('task_id')} {event.id}")
