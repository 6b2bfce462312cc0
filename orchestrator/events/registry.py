"""The event handler registry (`@on_event`) and what one delivery of an event comes to (pure).

A control worker's consumer (events/consumer.py) reads each entry of the event streams it
reads (orchestrator:events, and orchestrator:events:tasks when a handler here takes a task
lifecycle type), runs every handler registered for its type, and acknowledges the entry once
each handler has run or been given up on. What a handler's marker says (`mark_of`), whether
it runs now (`before_run`) and what the delivery ends in (`settle`) are decided here, over
plain values, so the rules are tables in tests/unit/test_events.py and the consumer only does
the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from orchestrator.errors import ConfigError
from orchestrator.models import OrchestrationEvent

#: A handler takes the event and the consumer's EventContext (settings, store, healer, app).
EventHandler = Callable[[OrchestrationEvent, Any], object]
H = TypeVar("H", bound=EventHandler)

#: What an event type may look like: the built-in dotted names (`task.failed`), and a team's own.
EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}\Z")

#: The shortest time an entry stays pending before another consumer may claim it, whatever
#: ORCH_AGENT_TIMEOUT_S says: a claim sooner than this would race live handlers.
MIN_CLAIM_IDLE_S = 2.0

#: A marker's value while one delivery runs the handler ("run:<token>"), and its end states.
RUNNING_PREFIX = "run:"
DONE = "done"
FAILED = "failed"


def handler_name(fn: Callable[..., object]) -> str:
    """The handler's identity in its idempotency markers: stable across processes."""
    return f"{fn.__module__}.{fn.__qualname__}"


class EventRegistry:
    """Which handlers run for which event type, in registration order."""

    def __init__(self) -> None:
        self._by_type: dict[str, dict[str, EventHandler]] = {}

    def on_event(self, *types: str) -> Callable[[H], H]:
        """Register the decorated function for events of each of `types`.

        Control workers import ORCH_HANDLERS modules at start (with event processing on),
        so a module listed there registers its handlers in every control worker.
        """
        if not types:
            raise ConfigError(
                "@on_event needs at least one event type, e.g. @on_event('agent.lost')"
            )
        bad = [t for t in types if not isinstance(t, str) or not EVENT_TYPE_RE.match(t)]
        if bad:
            raise ConfigError(
                f"@on_event: {bad[0]!r} is not an event type (1-128 chars of [A-Za-z0-9_.:-], "
                "as in 'agent.lost')"
            )

        def register(fn: H) -> H:
            name = handler_name(fn)
            for event_type in types:
                mine = self._by_type.setdefault(event_type, {})
                existing = mine.get(name)
                if existing is not None and existing is not fn:
                    raise ConfigError(
                        f"two handlers named {name} for {event_type!r}: give one another name "
                        "(the name keys its idempotency markers)"
                    )
                mine[name] = fn
            return fn

        return register

    def handlers_for(self, event_type: str) -> list[tuple[str, EventHandler]]:
        return list(self._by_type.get(event_type, {}).items())

    def types(self) -> dict[str, list[str]]:
        """Event type -> the names of its handlers (for the start-up log)."""
        return {t: list(h) for t, h in sorted(self._by_type.items()) if h}


#: The registry of this process: `orchestrator.on_event` registers here.
REGISTRY = EventRegistry()
on_event = REGISTRY.on_event


class Mark(StrEnum):
    """What a handler's marker says about one event."""

    FREE = "free"  # no marker: nobody ran it, or a run died and its lease lapsed
    RUNNING = "running"  # a delivery holds the lease and is running it now
    DONE = "done"  # it ran to the end on some delivery
    FAILED = "failed"  # it raised on the last delivery allowed, and was given up on


def running_mark(token: str) -> str:
    return RUNNING_PREFIX + token


def mark_of(value: str | None) -> Mark:
    """Read a marker. A value this code never writes counts as done: a stray key must not
    hold an entry pending for ever."""
    if value is None:
        return Mark.FREE
    if value.startswith(RUNNING_PREFIX):
        return Mark.RUNNING
    if value == FAILED:
        return Mark.FAILED
    return Mark.DONE


class Outcome(StrEnum):
    """What became of one handler on one delivery."""

    RAN = "ran"
    RAISED = "raised"
    SKIPPED = "skipped"  # done, or given up on, by an earlier delivery
    BUSY = "busy"  # another delivery is running it


def before_run(mark: Mark) -> Outcome | None:
    """None when this delivery should run the handler (it took a free marker); otherwise
    what the delivery records for it without running it."""
    if mark is Mark.FREE:
        return None
    if mark is Mark.RUNNING:
        return Outcome.BUSY
    return Outcome.SKIPPED


@dataclass(frozen=True)
class Verdict:
    """How one delivery ends: acknowledged or left pending, and which handlers failed."""

    ack: bool
    give_up: tuple[str, ...] = ()  # raised on the last delivery allowed: recorded as failed
    retry: tuple[str, ...] = ()  # raised; run again when the entry is delivered again


def settle(outcomes: Mapping[str, Outcome], deliveries: int, max_deliveries: int) -> Verdict:
    """The end of one delivery of an entry whose handlers came out as `outcomes`.

    The entry is acknowledged when nothing is left to do: every handler ran, was done before,
    or raised on the `max_deliveries`-th delivery (or a later one) and is given up on. A
    handler that raised earlier leaves the entry pending, so another delivery runs it again
    (after the claim time: the back-off). A handler another delivery is running leaves it
    pending too: that delivery acknowledges it, or, if it dies, a later claim runs it.
    """
    raised = tuple(name for name, o in outcomes.items() if o is Outcome.RAISED)
    last = deliveries >= max_deliveries
    give_up = raised if last else ()
    retry = () if last else raised
    busy = any(o is Outcome.BUSY for o in outcomes.values())
    return Verdict(ack=not busy and not retry, give_up=give_up, retry=retry)


def claim_idle_s(agent_timeout_s: float) -> float:
    """How long an entry stays pending before a live consumer claims it: as long as an agent
    may be silent before it is given up for lost (ORCH_AGENT_TIMEOUT_S), and no less than
    MIN_CLAIM_IDLE_S. A handler's lease lasts as long, so a claim finds a dead consumer's
    lease lapsed and a live one's held."""
    return max(MIN_CLAIM_IDLE_S, agent_timeout_s)
