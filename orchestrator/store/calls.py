"""The values a store call takes or answers with as a whole, not as positional arguments.

Acceptance (accept, accept_and_route), Attempt (begin_attempt's answer) and Settlement
(settle_run, with Celery's result as a ResultWrite)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.models import CircuitBreakerConfig, OrchestrationTask, TaskState
from orchestrator.store.codes import AttemptCode


@dataclass(frozen=True)
class Acceptance:
    """One submission to record in the ledger (accept, accept_and_route): the task, the id of
    the message that submitted it, when, and with `outbox` (the submission's fields and its
    queue) its entry in the outbox too (see outbox_put)."""

    task: OrchestrationTask
    submit_id: str
    now: float
    outbox: tuple[Mapping[str, Any], str] | None = None


@dataclass(frozen=True)
class Attempt:
    """What begin_attempt decided for one delivered copy of a task."""

    code: AttemptCode | int  # >0: the attempt number, run it; else why not (AttemptCode)
    info: str  # the previous state; the live child's pid (RUNNING_HERE); deliveries (POISON)
    submitted_at: float | None = None  # given with a copy to run

    @property
    def run(self) -> bool:
        return self.code > 0

    @classmethod
    def of(cls, code: int, info: str, submitted_at: float | None = None) -> Attempt:
        """begin_attempt.lua's answer, its refusals as AttemptCode members."""
        return cls(code if code > 0 else AttemptCode(code), info, submitted_at)


@dataclass(frozen=True)
class ResultWrite:
    """Celery's result of a success, for settle_run to write as Celery's Redis backend does
    (SET with its expiry and PUBLISH to its waiters, under the task's id and each of its
    aliases), in the same step as the ledger's terminal state. `head` is the encoded meta
    without its `task_id` and closing brace (each id is put in as the backend's alias write
    does: last); `prefix` the backend's key prefix, `aliases` the set of the task's aliases."""

    prefix: str
    head: str
    expires: int
    aliases: str


@dataclass(frozen=True)
class Settlement:
    """The end of one handler run that ends its task (StateStore.settle_run): the task, the
    agent it ran on, the terminal state, when, how long it ran, its type and telemetry
    `counts`; the agent's breaker config (None: no breaker), the encoded result or the
    error; `stats_type`, the type the agent's per-type stats go under (default: task_type);
    `celery_result`, Celery's result to write with it (None: Celery writes its own)."""

    task_id: str
    agent_id: str
    state: TaskState
    now: float
    latency_ms: float
    task_type: str
    counts: Mapping[str, int]
    circuit_cfg: CircuitBreakerConfig | None = None
    result: str | None = None
    error: str | None = None
    stats_type: str | None = None
    celery_result: ResultWrite | None = None
