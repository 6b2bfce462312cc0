"""The one exception tree of the orchestrator; it imports nothing from the package."""

from __future__ import annotations

from collections.abc import Sequence


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(OrchestratorError):
    """A setting or a declared capability is unusable; the process must not start."""


class InvalidTask(OrchestratorError):
    """A submitted task spec breaks the contract; nothing was routed.

    `problems` holds one `field: reason` line per offending field, so a client can show
    every mistake at once instead of fixing them one round trip at a time.
    """

    def __init__(self, problems: Sequence[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("invalid task: " + "; ".join(self.problems))

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


class StoreUnavailable(OrchestratorError):
    """Redis (the state store) did not answer; check ORCH_REDIS_URL / ORCH_STATE_URL."""


class UnknownTask(OrchestratorError):
    """No ledger entry exists for the id asked about."""


class HandlerMissing(OrchestratorError):
    """An agent received a task type it has no handler for."""


class MessageRefused(OrchestratorError):
    """A worker refused a message at its edge (not JSON, a content type it does not accept, an
    unknown task, arguments that do not fit): nothing ran. The message is kept in the
    dead-letter store as kind poison (`orchestrator dlq list --kind poison`)."""

    def __init__(self, queue: str, reason: str) -> None:
        self.queue = queue
        self.reason = reason
        super().__init__(
            f"message refused by a worker of queue {queue!r}: {reason}; nothing ran "
            "(see `orchestrator dlq list --kind poison`)"
        )

    def __reduce__(self):
        return (self.__class__, (self.queue, self.reason))


class TransientError(OrchestratorError):
    """Raised by a handler: the failure may pass; retry (backoff, same or another agent)."""


class PermanentError(OrchestratorError):
    """Raised by a handler: retrying cannot help; fail the task now with this reason."""
