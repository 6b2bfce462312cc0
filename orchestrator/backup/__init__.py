"""Backups of the orchestrator's Redis state: create, verify, restore, and the DR status."""
