"""Celery beat's scheduler: RedBeat's, riding out a Redis restart, a failover or a full Redis.

RedBeat extends its lock at every tick through a plain Redis client, so one lost connection
(a restart, or the seconds a failover takes) raises out of the tick and stops beat. Here a
tick that cannot reach Redis is logged and tried again shortly; the lock (ORCH_BEAT_LOCK_TIMEOUT_S)
outlives a failover, so the same beat goes on holding it. A lock lost meanwhile to another beat
still stops this one, as RedBeat intends.

A Redis at its memory limit (maxmemory, noeviction) refuses every command RedBeat queues in
a MULTI, reads included (its schedule is read in one), and every publish: such a tick is
logged (once while it lasts) and tried again shortly too. Extending the lock is a script of
commands that never need memory, so the lock stays this beat's meanwhile, and the schedule
runs on by itself once memory frees.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler

log = logging.getLogger(__name__)

#: Seconds between ticks while Redis does not answer, or answers that it is full.
RETRY_S = 1.0


def is_full(exc: BaseException) -> bool:
    """Redis's `OOM command not allowed` (also as the EXECABORT of a MULTI it refused)."""
    said = str(exc)  # redis-py's OutOfMemoryError says "... used memory > 'maxmemory'"
    return "maxmemory" in said or said.startswith("OOM")


class Scheduler(RedBeatScheduler):
    _full: str | None = None  # what Redis said while it is full, to log an episode once

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            interval = float(super().tick(*args, **kwargs))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis unreachable (%s); trying again in %.0f s", exc, RETRY_S)
            return RETRY_S
        except redis.ResponseError as exc:
            if not is_full(exc):
                raise
            if self._full is None:
                log.warning(
                    "beat: Redis is full (maxmemory): no task is sent until it has room; "
                    "trying every %.0f s (%s)",
                    RETRY_S,
                    exc,
                )
            self._full = str(exc)
            return RETRY_S
        if self._full is not None:
            log.warning("beat: Redis has room again; the schedule runs on")
            self._full = None
        return interval
