"""The `orchestrator` command: its verbs, `orchestrator dev` and the Prometheus exporter."""
