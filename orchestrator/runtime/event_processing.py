"""Event processing in control workers: the bootstep that runs the event consumer's thread.

`EventProcessing` (consumer blueprint) is part of every control worker unless
ORCH_EVENT_PROCESSING_ENABLED=false; agents never run it. When built it imports the built-in
handlers and the ORCH_HANDLERS modules (their `@on_event` registrations), refusing to start
when one cannot be imported, as an agent does. It starts the consumer once the broker
connection is up (Celery starts it again after a reconnect), and stops it on warm shutdown,
where the consumer leaves the group unless entries are still pending with it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import bootsteps

from orchestrator.errors import ConfigError
from orchestrator.events.consumer import EventConsumer, EventContext
from orchestrator.events.registry import claim_idle_s
from orchestrator.recovery.healer import Healer
from orchestrator.routing.router import Router
from orchestrator.runtime.canvas import task_failer
from orchestrator.runtime.celeryconf import app_settings, execute_publisher
from orchestrator.runtime.handlers import import_handlers
from orchestrator.runtime.logs import say_refusal
from orchestrator.store import StateStore

log = logging.getLogger(__name__)

BUILTIN_HANDLERS = "orchestrator.events.builtin"


class EventProcessing(bootsteps.StartStopStep):
    name = "orchestrator.event_processing"
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.settings = app_settings(consumer.app)
        self.enabled = not self.settings.is_agent and self.settings.event_processing_enabled
        self.events: EventConsumer | None = None
        if self.settings.is_agent:
            return
        if not self.enabled:
            log.info("event processing is off (ORCH_EVENT_PROCESSING_ENABLED=false)")
            return
        try:
            import_handlers([BUILTIN_HANDLERS, *self.settings.handlers])
        except ConfigError as exc:
            say_refusal(f"control worker refused to start: {exc}", self.settings.log_format)
            raise SystemExit(2) from None

    def _consumer(self, consumer: Any) -> EventConsumer:
        if self.events is None:
            # A store of its own: the consumer's blocking reads hold a connection of its pool.
            store = StateStore.from_settings(self.settings)
            router = Router(store, self.settings, execute_publisher(consumer.app))
            healer = Healer(store, router, task_failer(consumer.app, store.load_spec))
            self.events = EventConsumer(
                store,
                EventContext(self.settings, store, healer, consumer.app),
                f"{consumer.hostname}:{os.getpid()}",
                claim_idle_s=claim_idle_s(self.settings.agent_timeout_s),
                max_deliveries=self.settings.max_deliveries,
            )
        return self.events

    def start(self, consumer: Any) -> None:
        self._consumer(consumer).start()

    def stop(self, consumer: Any) -> None:
        if self.events is not None:
            self.events.stop()

    def terminate(self, consumer: Any) -> None:
        if self.events is not None:
            self.events.stop(timeout=1.0)

    def shutdown(self, consumer: Any) -> None:
        if self.events is not None:
            self.events.stop()
            self.events.leave()
