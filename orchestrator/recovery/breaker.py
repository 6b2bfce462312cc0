"""Per-agent circuit breaker: the pure state machine (closed / open / half-open).

Every router in every container shares one breaker per agent, so the state lives in a Redis
hash and the edge applies these rules atomically (a Lua script or WATCH/MULTI). The rules
here are the reference the edge is tested against, which is why they are deliberately
small: a few integer counters, one timestamp per state, and a window kept as a string of
`S`/`F` characters (what a Lua script can `string.sub` without a JSON library). No clock is
read here: `now` is always a parameter, in the same unit as the config's `*_s` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.models import CircuitBreakerConfig, CircuitBreakerState

SUCCESS = "S"
FAILURE = "F"


class BreakerTransition(StrEnum):
    """A change of state the edge must announce, once, on the events stream."""

    OPENED = "opened"
    HALF_OPENED = "half_opened"
    CLOSED = "closed"

    @property
    def event_type(self) -> str:
        """`circuit.opened`, `circuit.half_opened`, `circuit.closed` (the contract's events
        are the first and the last; half-opening is announced only if the edge chooses to)."""
        return f"circuit.{self.value}"


class BreakerState(BaseModel):
    """One agent's breaker as stored. A missing hash means a fresh, closed breaker.

    `opened_at` is when the breaker last opened; `half_opened_at` when the current round of
    trials began (it lets a round whose trials were lost, e.g. with a dead agent, be
    restarted instead of wedging the agent out forever). `outcomes` holds the most recent
    results while closed, oldest first, at most `window_size` of them.
    """

    model_config = ConfigDict(frozen=True)

    state: CircuitBreakerState = CircuitBreakerState.CLOSED
    consecutive_failures: int = Field(default=0, ge=0)
    opened_at: float | None = None
    half_opened_at: float | None = None
    half_open_calls: int = Field(default=0, ge=0)
    half_open_successes: int = Field(default=0, ge=0)
    outcomes: str = ""

    @field_validator("outcomes")
    @classmethod
    def _outcomes(cls, v: str) -> str:
        if v.strip(SUCCESS + FAILURE):
            raise ValueError(f"must contain only {SUCCESS!r} and {FAILURE!r} (got {v!r})")
        return v


CLOSED_BREAKER = BreakerState()
"""An agent with no stored breaker: fresh and closed (frozen, so one shared instance)."""


class BreakerStep(NamedTuple):
    """Result of recording an outcome: the new state and the transition, if any."""

    state: BreakerState
    transition: BreakerTransition | None


class Admission(NamedTuple):
    """Result of asking to route a task. `ok, new = admission[:2]` reads like a plain
    `(bool, BreakerState)`; the transition is there because open -> half-open happens on
    the admitting call, and the edge must announce it from that one call only."""

    admitted: bool
    state: BreakerState
    transition: BreakerTransition | None


CLOSED_STATE = BreakerState()


def _open(now: float) -> BreakerState:
    """A freshly opened breaker. The closed-state counters are dropped: nothing reads them
    until the breaker closes again, and closing starts from zero anyway."""
    return BreakerState(state=CircuitBreakerState.OPEN, opened_at=now)


def _timed_out(since: float | None, cfg: CircuitBreakerConfig, now: float) -> bool:
    return since is None or now >= since + cfg.recovery_timeout_s


def _successes_to_close(cfg: CircuitBreakerConfig) -> int:
    """Never ask for more successes than trials are admitted, or half-open could not close."""
    return min(cfg.success_threshold, cfg.half_open_max_calls)


def current_state(
    state: BreakerState, cfg: CircuitBreakerConfig | None, now: float
) -> CircuitBreakerState:
    """The one reading of a stored breaker, for routing and every display alike: an open
    breaker past its recovery timeout reads as half-open, because the next `admit` would let
    a trial through; with breakers off (`cfg` None) every breaker reads closed."""
    if cfg is None:
        return CircuitBreakerState.CLOSED
    if state.state is CircuitBreakerState.OPEN and _timed_out(state.opened_at, cfg, now):
        return CircuitBreakerState.HALF_OPEN
    return state.state


def admit(state: BreakerState, cfg: CircuitBreakerConfig, now: float) -> Admission:
    """Decide whether a task may be routed to this agent, consuming a trial slot if so.

    closed: always. open: refused until `recovery_timeout_s` after `opened_at`; the first
    call after that moves to half-open and is the first trial. half-open: admitted while
    `half_open_calls < half_open_max_calls`; when every slot is taken and no verdict has
    arrived within `recovery_timeout_s` of the round's start, the trials are presumed lost
    and a new round begins with this call (successes already seen are kept).
    """
    if state.state is CircuitBreakerState.CLOSED:
        return Admission(True, state, None)
    if state.state is CircuitBreakerState.OPEN:
        if not _timed_out(state.opened_at, cfg, now):
            return Admission(False, state, None)
        trial = state.model_copy(
            update={
                "state": CircuitBreakerState.HALF_OPEN,
                "half_opened_at": now,
                "half_open_calls": 1,
                "half_open_successes": 0,
            }
        )
        return Admission(True, trial, BreakerTransition.HALF_OPENED)
    if state.half_open_calls < cfg.half_open_max_calls:
        return Admission(
            True, state.model_copy(update={"half_open_calls": state.half_open_calls + 1}), None
        )
    if _timed_out(state.half_opened_at, cfg, now):
        restarted = state.model_copy(update={"half_opened_at": now, "half_open_calls": 1})
        return Admission(True, restarted, None)
    return Admission(False, state, None)


def would_admit(state: BreakerState, cfg: CircuitBreakerConfig, now: float) -> bool:
    """`admit` without taking a slot: for filtering candidates before one is chosen."""
    return admit(state, cfg, now).admitted


def record_success(state: BreakerState, cfg: CircuitBreakerConfig, now: float) -> BreakerStep:
    """closed: reset the consecutive count and add to the window. half-open: count the
    trial; `success_threshold` of them close the breaker with every counter reset.
    open: ignored, since such a result comes from a task admitted before the breaker
    opened and says nothing about whether the agent has recovered."""
    del now  # kept for a uniform signature with record_failure and admit
    if state.state is CircuitBreakerState.CLOSED:
        return BreakerStep(
            state.model_copy(
                update={
                    "consecutive_failures": 0,
                    "outcomes": _push(state.outcomes, SUCCESS, cfg.window_size),
                }
            ),
            None,
        )
    if state.state is CircuitBreakerState.HALF_OPEN:
        successes = state.half_open_successes + 1
        if successes >= _successes_to_close(cfg):
            return BreakerStep(CLOSED_STATE, BreakerTransition.CLOSED)
        return BreakerStep(state.model_copy(update={"half_open_successes": successes}), None)
    return BreakerStep(state, None)


def record_failure(state: BreakerState, cfg: CircuitBreakerConfig, now: float) -> BreakerStep:
    """closed: opens after `failure_threshold` consecutive failures, or when the window
    holds at least `minimum_calls` outcomes and its failure rate is at least
    `failure_rate_threshold` (a window shorter than `minimum_calls` never opens on rate).
    half-open: any failure reopens, restarting the recovery timeout from `now`.
    open: ignored (a late result; extending the timeout would punish the agent twice)."""
    if state.state is CircuitBreakerState.CLOSED:
        failures = state.consecutive_failures + 1
        outcomes = _push(state.outcomes, FAILURE, cfg.window_size)
        rate_trips = (
            len(outcomes) >= cfg.minimum_calls
            and outcomes.count(FAILURE) / len(outcomes) >= cfg.failure_rate_threshold
        )
        if failures >= cfg.failure_threshold or rate_trips:
            return BreakerStep(_open(now), BreakerTransition.OPENED)
        return BreakerStep(
            state.model_copy(update={"consecutive_failures": failures, "outcomes": outcomes}),
            None,
        )
    if state.state is CircuitBreakerState.HALF_OPEN:
        return BreakerStep(_open(now), BreakerTransition.OPENED)
    return BreakerStep(state, None)


def _push(outcomes: str, outcome: str, size: int) -> str:
    return (outcomes + outcome)[-size:]


# --- Redis hash mapping ----------------------------------------------------------------

_INT_FIELDS = ("consecutive_failures", "half_open_calls", "half_open_successes")
_TIME_FIELDS = ("opened_at", "half_opened_at")


def to_redis_hash(state: BreakerState) -> dict[str, str]:
    """Every field as a string; an unset timestamp is the empty string (Lua: `== ''`).
    Floats use `repr`, which round-trips exactly and which Lua's `tonumber` reads."""
    out = {
        "state": state.state.value,
        "outcomes": state.outcomes,
    }
    for name in _INT_FIELDS:
        out[name] = str(getattr(state, name))
    for name in _TIME_FIELDS:
        value = getattr(state, name)
        out[name] = "" if value is None else repr(float(value))
    return out


def from_redis_hash(d: Mapping[Any, Any]) -> BreakerState:
    """Inverse of `to_redis_hash`. Accepts bytes (a client without decode_responses) and a
    partial or empty hash: missing fields take their defaults, so an agent never seen
    before reads as closed."""
    raw = {_text(k): _text(v) for k, v in d.items()}
    fields: dict[str, object] = {}
    if raw.get("state"):
        fields["state"] = raw["state"]
    if "outcomes" in raw:
        fields["outcomes"] = raw["outcomes"]
    for name in _INT_FIELDS:
        if raw.get(name):
            fields[name] = int(raw[name])
    for name in _TIME_FIELDS:
        if raw.get(name):
            fields[name] = float(raw[name])
    return BreakerState.model_validate(fields)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
