"""The slices of the state store its consumers use, as Protocols.

Each consumer types its store with its own slice, so mypy proves it uses nothing else.
StateStore implements them all (orchestrator.store checks that too).

So far: the executor (workers/execute.py). The router, the healer, the monitor and the CLI
still take StateStore whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from orchestrator.models import CircuitBreakerConfig

if TYPE_CHECKING:
    from orchestrator.store import Settlement
    from orchestrator.store.backlog import Dispatched
    from orchestrator.store.calls import Attempt


class TelemetrySink(Protocol):
    def add(self, fields: Mapping[str, int], now: float, cumulative: bool = True) -> None: ...


class ExecutorStore(Protocol):
    """What `orchestrator.execute` reads and writes: an attempt begun, a run settled or handed
    to recovery, the stored result of a task already ended, the freed slot filled."""

    @property
    def telemetry(self) -> TelemetrySink: ...

    def begin_attempt(
        self,
        task_id: str,
        *,
        agent_id: str,
        dispatch: int,
        now: float,
        pid: int,
        max_deliveries: int,
        force: bool = False,
    ) -> Attempt: ...

    def stored_result(self, task_id: str) -> str | None: ...

    def settle_run(self, settlement: Settlement) -> tuple[bool, list[Dispatched]]: ...

    def record_outcome(
        self,
        agent_id: str,
        *,
        ok: bool,
        latency_ms: float,
        circuit_cfg: CircuitBreakerConfig | None = None,
        now: float | None = None,
        task_type: str = "",
    ) -> str: ...

    def mark_recovering(
        self, task_id: str, *, agent_id: str, now: float, error: str, kind: str
    ) -> bool: ...

    def fill(
        self, agent_id: str, now: float, limit: int | None = None, trusted: bool = False
    ) -> list[Dispatched]: ...
