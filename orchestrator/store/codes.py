"""The codes and statuses the Lua steps (lua/*.lua) and the store's callers exchange.

Each enum's values are the very strings or integers a script returns or a key is named by, so
a value read back from Redis converts with `Enum(value)`, and a caller compares members, never
bare literals. (A breaker's transitions are recovery.breaker.BreakerTransition; an agent's
status models.AgentStatus; a task's state models.TaskState.)
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class AttemptCode(IntEnum):
    """What begin_attempt.lua answers instead of an attempt number (a positive code: run it)."""

    ENDED = -1  # the task already ended: do not run (hand back its stored result)
    STALE = -2  # a copy from an older dispatch: do not run
    POISON = -3  # delivered more than ORCH_MAX_DELIVERIES times: recovery takes it
    RUNNING_HERE = -4  # a child of this agent was running it: check that child, then force
    UNKNOWN = -5  # no ledger entry (expired, or never accepted)


class AcceptStatus(StrEnum):
    """What accept.lua (and accept_and_route.lua, which composes it) answers."""

    NEW = "new"  # accepted now (accept only)
    RESUME = "resume"  # the same submit message again, before it finished routing
    DUPLICATE = "duplicate"  # another submission of an id already accepted
    ROUTED = "routed"  # accepted, routed and published (accept_and_route only)
    QUEUED = "queued"  # accepted; the agent's last slot went meanwhile: in the backlog


class AdmitVerdict(StrEnum):
    """What admit_client.lua answers for one submission."""

    OK = "ok"
    BLOCKED = "blocked"  # the client is blocked (until the value returned)
    LIMITED = "limited"  # its token bucket is empty (a token in the value returned, seconds)


class RejectionReason(StrEnum):
    """Why a submission was refused (record_rejection; the `task.rejected` event's reason and
    the counter it adds to besides `rejected`)."""

    INVALID = "invalid"  # a bad spec
    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"


class RejectionKind(StrEnum):
    """The per-minute refusal counts kept per client (keys.rejections_key's `kind`)."""

    THRESHOLD = "m"  # every refusal the security loop's rejection threshold counts
    RATE_LIMITED = "rl"  # refused by the rate limit
    BLOCKED = "blk"  # refused while blocked (counted apart, so a block runs its course)


#: The kinds a refusal of each reason counts under.
REJECTION_COUNTS: dict[RejectionReason, tuple[RejectionKind, ...]] = {
    RejectionReason.INVALID: (RejectionKind.THRESHOLD,),
    RejectionReason.RATE_LIMITED: (RejectionKind.THRESHOLD, RejectionKind.RATE_LIMITED),
    RejectionReason.BLOCKED: (RejectionKind.BLOCKED,),
}
