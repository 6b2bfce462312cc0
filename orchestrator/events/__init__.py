"""Event processing: handlers of the orchestrator's event streams, run by control workers."""
