"""The Celery runtime: configuration, agent bootsteps, the gate, handlers, the transport."""
