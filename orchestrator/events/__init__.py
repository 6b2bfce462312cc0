"""Event processing: handlers of the orchestrator:events stream, run by control workers."""
