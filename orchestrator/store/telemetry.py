"""Telemetry counts: how handler runs are added to the per-minute and per-hour buckets.

An agent counts each handler run where it ends it (workers.execute): a success or a final
failure in the same round trip as the ledger's terminal state (StateStore.settle_run), so a
run is counted exactly when it ended the task; a failure handed to recovery right after
recovery takes it over. A copy that runs no handler (a duplicate, stale or restored copy)
counts nothing. The monitoring loops add their availability samples through TelemetryWriter.

Counts go to a per-minute and a per-hour hash (see store.keys and monitoring/stats.py) and, for
handler runs, to one cumulative hash for the exporter, by one Lua step (scripts.TELEMETRY_ADD).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from orchestrator.store import scripts
from orchestrator.store.keys import TELEMETRY_TOTAL, telemetry_key

MINUTE_TTL_S = 7 * 3600  # minute buckets serve windows up to MINUTE_WINDOW_MAX_S
HOUR_TTL_S = 32 * 86400  # hour buckets serve windows up to 31 days
MINUTE_WINDOW_MAX_S = 6 * 3600


def delegation_ms(attempt: int, submitted_at: float | None, started_at: float) -> float | None:
    """Submit-to-start time of a run: first attempts only (a retry's start says nothing about
    how fast the task was handed out)."""
    if attempt != 1 or submitted_at is None:
        return None
    return max(0.0, (started_at - submitted_at) * 1000.0)


def telemetry_step(
    fields: Mapping[str, int], now: float, cumulative: bool = True
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of scripts.TELEMETRY_ADD for these counts at `now`."""
    keys = scripts.TELEMETRY_ADD_SIG.key_list(
        minute=telemetry_key("m", int(now // 60)),
        hour=telemetry_key("h", int(now // 3600)),
        total=TELEMETRY_TOTAL if cumulative else None,
    )
    counts: list[Any] = []
    for name, n in fields.items():
        counts += [name, n]
    args = scripts.TELEMETRY_ADD_SIG.arg_list(
        minute_ttl=MINUTE_TTL_S, hour_ttl=HOUR_TTL_S, counts=counts
    )
    return keys, args


class TelemetryWriter:
    """Adds counts to the minute, hour and (optionally) cumulative telemetry hashes."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._add = client.register_script(scripts.TELEMETRY_ADD)

    def add(self, fields: Mapping[str, int], now: float, cumulative: bool = True) -> None:
        if not fields:
            return
        keys, args = telemetry_step(fields, now, cumulative)
        self._add(keys=keys, args=args)
