"""Hive Orchestrator: capability-weighted task routing for agent fleets on Celery and Redis."""

from orchestrator.handlers import capability

__all__ = ["capability"]
__version__ = "0.1.0"
