"""The module-level Celery app `app`: `celery -A orchestrator.app worker|beat|flower`.

A worker is a control worker; with ORCH_AGENT_CAPABILITIES set it is an agent (see
orchestrator.agent). Invalid ORCH_* settings stop the process here, naming the variable.
"""

from __future__ import annotations

import sys

from orchestrator.celeryconf import create_app
from orchestrator.config import Settings, load_settings
from orchestrator.errors import ConfigError


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        # Stop with the message, not a traceback from deep inside Celery's loader.
        print(f"hive-orchestrator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load()
app = create_app(settings)
