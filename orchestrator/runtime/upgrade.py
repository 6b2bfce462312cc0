"""The control worker's start: keys of an older layout renamed before it takes any task.

`KeyMigration` (worker blueprint, after the Redis preflight) runs StateStore.migrate_keys()
once in every control worker (never in an agent), before the pool forks. It is idempotent,
so any number of control workers starting together agree; a failure is logged and the worker
starts anyway (the next start tries again).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from orchestrator.errors import OrchestratorError
from orchestrator.runtime.celeryconf import app_settings
from orchestrator.security.preflight import RedisPreflight
from orchestrator.store import StateStore

log = logging.getLogger(__name__)


class KeyMigration(bootsteps.Step):
    name = "orchestrator.key_migration"
    requires = {RedisPreflight}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = app_settings(worker.app)
        if settings.is_agent:
            return
        store = StateStore.from_settings(settings)
        try:
            store.migrate_keys()
        except OrchestratorError as exc:
            log.error("could not rename the keys of an older layout (next start retries): %s", exc)
        finally:
            store.r.close()
