"""Routing tasks: `orchestrator.submit` and the parked-task sweep (thin: decode, route, publish)."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from orchestrator.app import app
from orchestrator.errors import (
    ClientBlocked,
    InvalidTask,
    NoCapableAgent,
    RateLimited,
    StoreUnavailable,
)
from orchestrator.models import TASK_ID_RE
from orchestrator.routing.router import Outcome, Preparer, Router
from orchestrator.runtime.celeryconf import execute_preparer, execute_publisher
from orchestrator.runtime.gate import HELD_ETA
from orchestrator.store import now_s
from workers._context import HOUSEKEEPING, settings_of, store_of

_routers: dict[int, Router] = {}
_preparers: dict[int, Preparer] = {}
#: A submission refused before anything was accepted: the result of its ids, not a crash.
REFUSALS = (InvalidTask, RateLimited, ClientBlocked)


def router_for(task_app: Celery) -> Router:
    key = id(task_app)
    if key not in _routers:
        _routers[key] = Router(
            store_of(task_app), settings_of(task_app), execute_publisher(task_app)
        )
    return _routers[key]


def _route(
    task_app: Celery,
    router: Router,
    fields: dict[str, Any],
    submit_id: str,
    due: float | None = None,
) -> Outcome:
    """Validate, then record, route and publish: in one atomic Lua step when the broker is
    the state store's Redis (as OrchestratorClient does; two round trips and a publish fewer
    than recording and routing apart), else apart (a redelivery resumes from the ledger).
    With `due` (an ETA the gate took from the broker) the task is recorded and held until
    then."""
    now = now_s()
    task = router.validate(fields, submit_id, now)
    if due is not None:
        return router.submit_later(task, submit_id, now, due)
    if not router.settings.broker_is_state_store:
        return router.submit_valid(task, submit_id, now)
    key = id(task_app)
    if key not in _preparers:
        _preparers[key] = execute_preparer(task_app)
    return router.submit_atomic(task, submit_id, now, _preparers[key])


@app.task(
    name="orchestrator.submit",
    bind=True,
    ignore_result=True,
    store_errors_even_if_ignored=True,
    throws=REFUSALS,
)
def submit(self: Task, *args: Any, **fields: Any) -> str:
    """Validate, record and route one task; its id becomes the orchestration id."""
    router = router_for(self.app)
    submit_id = self.request.id
    try:
        if args:
            error = InvalidTask(
                "args: orchestrator.submit takes keyword arguments only "
                "(send kwargs={'type': ..., 'payload': {...}})"
            )
            client = fields.get("client_id")
            router.store.record_rejection(
                error.problems,
                submit_id=submit_id,
                now=now_s(),
                client_id=client if isinstance(client, str) else None,
            )
            raise error
        held = getattr(self.request, HELD_ETA, None)
        due = float(held) if isinstance(held, int | float) else None
        outcome = _route(self.app, router, fields, submit_id, due)
    except (StoreUnavailable, OperationalError) as exc:
        # Redis went away mid-way (a restart, a failover): delivered again, the submission
        # resumes where the ledger says it stopped, instead of failing.
        raise Reject(f"state store unreachable: {exc}", requeue=True) from exc
    except REFUSALS as exc:
        given = fields.get("task_id")
        if (
            isinstance(given, str)
            and TASK_ID_RE.match(given)
            and given != submit_id
            and not router.store.task_exists(given)
        ):
            # A client tracking its own id must see the refusal there too.
            self.backend.mark_as_failure(given, exc)
        raise
    return outcome.status.value


@app.task(name="orchestrator.route_parked", **HOUSEKEEPING)
def route_parked(self: Task) -> int:
    """Route parked tasks that now have a capable agent; dead-letter those parked too long."""

    def expired(task_id: str, error: NoCapableAgent) -> None:
        self.backend.mark_as_failure(task_id, error)

    return len(router_for(self.app).dispatch_sweep(now_s(), expired))
