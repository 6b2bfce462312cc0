"""CLI verbs of the monitoring loops (status, alerts, sla, anomaly, security, backup, exporter)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Attach this module's commands to the `orchestrator` group."""
