"""Pushes alerts to an Alertmanager's API v2 (`POST /api/v2/alerts`) with the standard library.

The body is built by the pure `alerting.alertmanager_payload`; this module only delivers it.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from orchestrator.models import ProductionAlert
from orchestrator.monitoring.alerting import alertmanager_payload

TIMEOUT_S = 5.0


class AlertmanagerError(Exception):
    """Alertmanager did not accept the alerts (unreachable, or an error status)."""


def alerts_url(base: str) -> str:
    return base.rstrip("/") + "/api/v2/alerts"


def generator_url(settings_exporter_port: int) -> str:
    """Where a human finds the figures behind an alert: the exporter of this host."""
    return f"http://{socket.gethostname()}:{settings_exporter_port}/metrics"


def post_alerts(base_url: str, body: list[dict[str, Any]], timeout_s: float = TIMEOUT_S) -> None:
    if not body:
        return
    request = urllib.request.Request(
        alerts_url(base_url),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            reply.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise AlertmanagerError(f"{alerts_url(base_url)} answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AlertmanagerError(f"{alerts_url(base_url)} unreachable: {exc}") from exc


def push(
    base_url: str,
    alerts: Iterable[ProductionAlert],
    now: float,
    generator: str,
    eval_interval_s: float,
) -> int:
    """Send every firing and just-resolved alert; returns how many were sent."""
    body = alertmanager_payload(alerts, now, generator, eval_interval_s=eval_interval_s)
    post_alerts(base_url, body)
    return len(body)
