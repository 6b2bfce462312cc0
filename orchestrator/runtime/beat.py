"""Celery beat's scheduler: RedBeat's, riding out a Redis restart or a Sentinel failover.

RedBeat extends its lock at every tick through a plain Redis client, so one lost connection
(a restart, or the seconds a failover takes) raises out of the tick and stops beat. Here a
tick that cannot reach Redis is logged and tried again shortly; the lock (ORCH_BEAT_LOCK_TIMEOUT_S)
outlives a failover, so the same beat goes on holding it. A lock lost meanwhile to another beat
still stops this one, as RedBeat intends.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler

log = logging.getLogger(__name__)

#: Seconds between ticks while Redis does not answer.
RETRY_S = 1.0


class Scheduler(RedBeatScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            return float(super().tick(*args, **kwargs))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis unreachable (%s); trying again in %.0f s", exc, RETRY_S)
            return RETRY_S
