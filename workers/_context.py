"""Per-process helpers the task modules share: the settings and the state store."""

from __future__ import annotations

from celery import Celery

from orchestrator.config import Settings
from orchestrator.runtime.agent import process_store
from orchestrator.runtime.celeryconf import app_settings
from orchestrator.store import StateStore


def settings_of(app: Celery) -> Settings:
    return app_settings(app)


def store_of(app: Celery) -> StateStore:
    return process_store(app_settings(app))
