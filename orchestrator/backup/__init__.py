"""Backups of the orchestrator's Redis state: create, list, verify."""
