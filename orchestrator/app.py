"""The module-level Celery app `app`: `celery -A orchestrator.app worker|beat|flower`.

A worker is a control worker; with ORCH_AGENT_CAPABILITIES set it is an agent (see
orchestrator.runtime.agent). This module puts the runtime together: the app of
runtime.celeryconf with the worker's bootsteps, the gate first; a control worker also runs
the event consumer (runtime.event_processing). Invalid ORCH_* settings stop the process here, naming
the variable. With ORCH_LOG_FORMAT=json every line a worker or beat writes is a JSON object
(runtime.logs).
"""

from __future__ import annotations

import sys

from celery import Celery

from orchestrator.config import Settings, load_settings
from orchestrator.errors import ConfigError
from orchestrator.runtime.agent import AgentInit, AgentPresence, logged_agent_id
from orchestrator.runtime.celeryconf import create_app
from orchestrator.runtime.event_processing import EventProcessing
from orchestrator.runtime.gate import GateStep
from orchestrator.runtime.logs import install_celery_json_logs
from orchestrator.runtime.metrics import MetricsStep
from orchestrator.runtime.upgrade import KeyMigration
from orchestrator.security.preflight import RedisPreflight


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        # Stop with the message, not a traceback from deep inside Celery's loader.
        print(f"hive-orchestrator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def install_worker_steps(celery_app: Celery) -> None:
    celery_app.steps["worker"].add(GateStep)
    celery_app.steps["worker"].add(RedisPreflight)
    celery_app.steps["worker"].add(KeyMigration)
    celery_app.steps["worker"].add(AgentInit)
    celery_app.steps["worker"].add(MetricsStep)
    celery_app.steps["consumer"].add(AgentPresence)
    celery_app.steps["consumer"].add(EventProcessing)


settings = _load()
app = create_app(settings)
install_worker_steps(app)
if settings.log_format == "json":
    install_celery_json_logs(app, agent_id=lambda: logged_agent_id(settings))
