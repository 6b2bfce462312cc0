"""What a consuming process lets through its kombu transport, and captured publishes.

The installed Gate (orchestrator.runtime.gate in every worker of this project) screens each
message the transport (runtime/transport.py) delivers and keeps what it refuses; inside
`captured_pushes()` a publish is handed back as (list key, payload) instead of pushed, so a
Lua step can push it atomically with the state change it belongs to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from orchestrator.security.screen import excerpt

log = logging.getLogger(__name__)

Push = tuple[str, str]  # (Redis list key, payload)
_captured: ContextVar[list[Push] | None] = ContextVar("orchestrator_captured", default=None)


class Gate(Protocol):
    """What a consuming process lets through, and what it does with what it refuses."""

    #: Entries longer than this are refused before they are decoded (None: no limit).
    max_entry_bytes: int | None

    def screen(self, queue: str, message: Any) -> str | None:
        """None to deliver the kombu message, else the reason to refuse it."""

    def refuse(self, queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
        """Keep (or report) a refused entry; `task_id` is the id its sender waits on (the id
        header, or a protocol-1 body's `id`), so the sender can be told. Must not raise."""


class LoggingGate:
    """The gate of a process that installed none: envelopes are checked, refusals logged."""

    max_entry_bytes: int | None = None

    def screen(self, queue: str, message: Any) -> str | None:
        return None

    def refuse(self, queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
        log.error("refused an entry of queue %s (%s): %s", queue, reason, excerpt(raw))


_gate: Gate = LoggingGate()


def install_gate(gate: Gate) -> None:
    """Screen every message this process consumes through `gate` (one per process)."""
    global _gate
    _gate = gate


def refuse(queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
    try:
        _gate.refuse(queue, raw, reason, task_id)
    except Exception as exc:  # keeping it failed: report it, never stop consuming
        log.error("refused an entry of queue %s (%s) and could not keep it: %s", queue, reason, exc)


def gate() -> Gate:
    """The gate this process installed (a LoggingGate until one is)."""
    return _gate


@contextmanager
def captured_pushes() -> Iterator[list[Push]]:
    """Collect the pushes of the messages published in this block instead of making them."""
    pushes: list[Push] = []
    token = _captured.set(pushes)
    try:
        yield pushes
    finally:
        _captured.reset(token)


def captured() -> list[Push] | None:
    """The pushes being collected by an enclosing captured_pushes(), if any."""
    return _captured.get()
