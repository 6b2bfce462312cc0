"""Redis I/O of the autoscaling loop: its decisions and its runs of ORCH_SCALE_COMMAND.

The last decision per capability and the last command run (keys.SCALE_DECISIONS,
keys.SCALE_EXECUTED): hashes with one small JSON entry per capability. The loop rewrites the
decisions whole at every run and drops the execution records of capabilities no longer seen,
so both stay as small as the set of capabilities. The decisions themselves are made in
orchestrator.scaling.decide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from pydantic import ValidationError

from orchestrator.scaling.decide import ScaleDecision, ScaleExecution
from orchestrator.store.keys import SCALE_DECISIONS, SCALE_EXECUTED

log = logging.getLogger(__name__)


class ScaleStore:
    """The autoscaling loop's state. Cheap to make: it keeps only the client."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def decisions(self) -> dict[str, ScaleDecision]:
        """The last decision per capability; an entry that no longer parses (written by
        another version) is skipped, so the next decision starts afresh for it."""
        out = {}
        for cap, raw in self.r.hgetall(SCALE_DECISIONS).items():
            try:
                out[str(cap)] = ScaleDecision.model_validate_json(raw)
            except ValidationError:
                log.warning("autoscale: ignoring an unreadable decision for %s", cap)
        return out

    def save_decisions(self, decisions: Iterable[ScaleDecision]) -> None:
        """Replace every decision at once (capabilities gone from the fleet drop out)."""
        decisions = list(decisions)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(SCALE_DECISIONS)
        if decisions:
            pipe.hset(
                SCALE_DECISIONS, mapping={d.capability: d.model_dump_json() for d in decisions}
            )
        pipe.execute()

    def executions(self) -> dict[str, ScaleExecution]:
        """The last command run per capability (or per `decide.POOL`)."""
        out = {}
        for key, raw in self.r.hgetall(SCALE_EXECUTED).items():
            try:
                out[str(key)] = ScaleExecution.model_validate_json(raw)
            except ValidationError:
                log.warning("autoscale: ignoring an unreadable command record for %s", key)
        return out

    def save_execution(self, key: str, execution: ScaleExecution) -> None:
        self.r.hset(SCALE_EXECUTED, key, execution.model_dump_json())

    def keep_executions(self, keys: Iterable[str]) -> None:
        """Drop the records of every key not in `keys`."""
        keep = set(keys)
        gone = [k for k in self.r.hkeys(SCALE_EXECUTED) if k not in keep]
        if gone:
            self.r.hdel(SCALE_EXECUTED, *gone)
