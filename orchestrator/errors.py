"""The one exception tree of the orchestrator; it imports nothing from the package."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(OrchestratorError):
    """A setting or a declared capability is unusable; the process must not start.
    `problems` holds one `ORCH_X: what is wrong` line per setting at fault (the message
    itself when it was not given them)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class InvalidTask(OrchestratorError):
    """A submitted task spec breaks the contract; nothing was routed.

    `problems` holds one `field: reason` line per offending field, so a client can show
    every mistake at once instead of fixing them one round trip at a time.
    """

    PREFIX = "invalid task: "

    def __init__(self, problems: Sequence[str] | str) -> None:
        if isinstance(problems, str):
            # Celery's JSON result backend rebuilds the error from its args, i.e. from the
            # whole message: take the prefix off again so it is not doubled.
            problems = [problems.removeprefix(self.PREFIX)]
        self.problems = list(problems)
        super().__init__(self.PREFIX + "; ".join(self.problems))

    def __reduce__(self):  # keep the message intact through pickling/JSON round trips
        return (self.__class__, (self.problems,))


class NoCapableAgent(OrchestratorError):
    """No eligible agent took the task before its pending timeout."""

    def __init__(self, task_id: str, capabilities: Sequence[str], waited_s: float) -> None:
        self.task_id = task_id
        self.capabilities = list(capabilities)
        self.waited_s = waited_s
        super().__init__(
            f"task {task_id}: no agent with capabilities {sorted(self.capabilities)} became "
            f"eligible within {waited_s:.0f}s; start one (orchestrator agent --capabilities ...) "
            "and replay it from the dead-letter store"
        )

    def __reduce__(self):
        return (self.__class__, (self.task_id, self.capabilities, self.waited_s))


#: A refusal's only arg is its message: Celery's JSON result backend stores an error's args,
#: and a client that cannot import this module rebuilds a plain exception from them (it then
#: reads the message); one that can rebuilds the error from that message, fields and all.
_RATE_LIMITED = re.compile(
    r"client '(?P<client>[^']*)' is over its rate limit of (?P<limit>\S+) submissions/s "
    r"\(ORCH_CLIENT_RATE_LIMIT\): retry in (?P<retry>\S+)s"
)
_BLOCKED = re.compile(
    r"client '(?P<client>[^']*)' is blocked until (?P<until>\S+) \((?P<left>\d+)s left\).*",
    re.S,
)
_REFUSED = re.compile(
    r"message refused by a worker of queue '(?P<queue>[^']*)': (?P<reason>.*); nothing ran "
    r"\(see `orchestrator dlq list --kind poison`\)",
    re.S,
)


class RateLimited(OrchestratorError):
    """A client sent submissions faster than ORCH_CLIENT_RATE_LIMIT allows; nothing was routed.
    (`RateLimited(message)` rebuilds one from its message, as Celery does.)"""

    def __init__(
        self, client_id: str, limit_per_s: float | None = None, retry_after_s: float | None = None
    ) -> None:
        if limit_per_s is None and (m := _RATE_LIMITED.fullmatch(client_id)):
            client_id, limit_per_s, retry_after_s = (
                m["client"],
                float(m["limit"]),
                float(m["retry"]),
            )
        self.client_id = client_id
        self.limit_per_s = float(limit_per_s or 0.0)
        self.retry_after_s = float(retry_after_s or 0.0)
        super().__init__(
            f"client {self.client_id!r} is over its rate limit of {self.limit_per_s:g} "
            f"submissions/s (ORCH_CLIENT_RATE_LIMIT): retry in {self.retry_after_s:.3f}s"
        )


class ClientBlocked(OrchestratorError):
    """The security loop flagged the client and ORCH_SECURITY_AUTO_BLOCK refuses its
    submissions until `until` (unix time); nothing was routed. (`ClientBlocked(message)`
    rebuilds one from its message, as Celery does.)"""

    def __init__(
        self, client_id: str, until: float | None = None, seconds_left: float | None = None
    ) -> None:
        if until is None and (m := _BLOCKED.fullmatch(client_id)):
            ends = datetime.strptime(m["until"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            client_id, until, seconds_left = m["client"], ends.timestamp(), float(m["left"])
        self.client_id = client_id
        self.until = float(until or 0.0)
        self.seconds_left = max(0.0, float(seconds_left or 0.0))
        ends_at = datetime.fromtimestamp(self.until, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        super().__init__(
            f"client {self.client_id!r} is blocked until {ends_at} ({self.seconds_left:.0f}s "
            "left): the security loop flagged it for rejected submissions; an operator lifts it "
            f"with `orchestrator security unblock {self.client_id}`"
        )


class StoreUnavailable(OrchestratorError):
    """Redis (the state store) did not answer; check ORCH_REDIS_URL / ORCH_STATE_URL. Also
    raised when it answers but cannot take writes for now (at its memory limit, maxmemory; a
    read-only replica; busy with a script)."""


class StoreError(OrchestratorError):
    """Redis (the state store) answered but refused one of the orchestrator's steps (a key of
    the wrong type, a Lua script's error, a permission the Redis user lacks). The message names
    the step, what Redis said and what to do; the step's Lua script, if it was one, changed
    nothing after the failing command, but what it had written before it stays."""


_CANCELLED = re.compile(r"task (?P<task>\S+) was cancelled while (?P<state>[a-z_]+)\b.*", re.S)


class Cancelled(OrchestratorError):
    """The task was cancelled by an operator (`orchestrator cancel`) before it ended.
    (`Cancelled(message)` rebuilds one from its message, as Celery's JSON backend does.)"""

    def __init__(self, task_id: str, state: str | None = None) -> None:
        if state is None and (m := _CANCELLED.fullmatch(task_id)):
            task_id, state = m["task"], m["state"]
        self.task_id = task_id
        self.state = state or "unknown"
        super().__init__(
            f"task {task_id} was cancelled while {self.state} (orchestrator cancel); "
            "submit a new task to run it"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id, self.state))


class UnknownTask(OrchestratorError):
    """No ledger entry exists for the id asked about."""


class DuplicateTask(UserWarning):
    """A warning, not an error: a submission under an id already accepted came with another
    spec. Nothing runs again and the id's result stays the first submission's, as for any
    duplicate (so a retry of the same spec stays quiet and idempotent); `differs` names the
    fields that differ."""

    def __init__(self, task_id: str, differs: Sequence[str]) -> None:
        self.task_id = task_id
        self.differs = tuple(differs)
        super().__init__(
            f"duplicate id with a different payload: task {task_id} was accepted before with "
            f"another {', '.join(self.differs)}; nothing runs again and its result is the first "
            "submission's (submit under a new task_id to run this one)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id, self.differs))


class MessageRefused(OrchestratorError):
    """A worker refused a message at its edge (not JSON, a content type it does not accept, an
    unknown task, arguments that do not fit): nothing ran. The message is kept in the
    dead-letter store as kind poison (`orchestrator dlq list --kind poison`).
    (`MessageRefused(message)` rebuilds one from its message, as Celery does.)"""

    def __init__(self, queue: str, reason: str | None = None) -> None:
        if reason is None:
            m = _REFUSED.fullmatch(queue)
            queue, reason = (m["queue"], m["reason"]) if m else ("?", queue)
        self.queue = queue
        self.reason = reason
        super().__init__(
            f"message refused by a worker of queue {queue!r}: {reason}; nothing ran "
            "(see `orchestrator dlq list --kind poison`)"
        )


class TransientError(OrchestratorError):
    """Raised by a handler: the failure may pass; retry (backoff, same or another agent)."""


class PermanentError(OrchestratorError):
    """Raised by a handler: retrying cannot help; fail the task now with this reason."""


class RecoveryEscalated(OrchestratorError):
    """The final failure of a task that recovery gave up on (retries spent, or no agent left
    to try): it is in the dead-letter store (`orchestrator dlq list`), and this is its result."""
