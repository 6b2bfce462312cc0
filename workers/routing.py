"""Routing tasks: `orchestrator.submit` and the parked-task sweep (thin: decode, route, publish)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from orchestrator.app import app
from orchestrator.errors import (
    ClientBlocked,
    DuplicateTask,
    InvalidTask,
    NoCapableAgent,
    RateLimited,
    StoreUnavailable,
)
from orchestrator.models import TASK_ID_RE
from orchestrator.routing.router import Outcome, Preparer, Router
from orchestrator.runtime.canvas import canvas_of, detach_links, task_failer
from orchestrator.runtime.celeryconf import SUBMIT, execute_preparer, execute_publisher
from orchestrator.runtime.gate import HELD_ETA
from orchestrator.runtime.results import add_alias
from orchestrator.store import now_s
from workers._context import HOUSEKEEPING, settings_of, store_of

log = logging.getLogger(__name__)
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
    task: Task,
    request: Any,
    router: Router,
    fields: dict[str, Any],
    submit_id: str,
    due: float | None = None,
) -> Outcome:
    """Validate, then record, route and publish: in one atomic Lua step when the broker is
    the state store's Redis (as OrchestratorClient does; two round trips and a publish fewer
    than recording and routing apart), else apart (a redelivery resumes from the ledger).
    With `due` (an ETA the gate took from the broker) the task is recorded and held until
    then. The links Celery's canvas hung on the message go with the task (runtime.canvas);
    a `task_id` other than the message's id is made an alias of it first, so the message's
    id resolves to the task's outcome too."""
    now = now_s()
    valid = router.validate(fields, submit_id, now)
    task_id = valid.task_id
    assert task_id is not None
    canvas = canvas_of(request)
    if canvas is not None:
        valid = valid.model_copy(update={"canvas": canvas})
    if task_id != submit_id:
        add_alias(task.backend, task_id, submit_id)
    if due is not None:
        return router.submit_later(valid, submit_id, now, due)
    if not router.settings.broker_is_state_store:
        return router.submit_valid(valid, submit_id, now)
    key = id(task.app)
    if key not in _preparers:
        _preparers[key] = execute_preparer(task.app)
    return router.submit_atomic(valid, submit_id, now, _preparers[key])


def _with_previous(args: tuple[Any, ...], fields: dict[str, Any]) -> dict[str, Any]:
    """The fields with the positional argument Celery's canvas prepends (the previous link's
    result in a chain, the header's results for a chord callback) as payload["previous"].
    More than one positional argument, or one beside a payload that is not an object, is
    refused (InvalidTask, naming it)."""
    if not args:
        return fields
    if len(args) > 1:
        raise InvalidTask(
            [
                f"args: orchestrator.submit takes the task's fields as keyword arguments and at "
                f"most one positional argument, the previous result in a chain (got {len(args)})"
            ]
        )
    payload = fields.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        return fields  # the spec's own check names the payload
    return {**fields, "payload": {**payload, "previous": args[0]}}


def _submit(task: Task, request: Any, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """One submission by name (the message `request` carries, with its positional `args`
    and keyword `fields`): validated, recorded and routed; raises Reject (requeue) while the
    state store is unreachable, and a refusal (REFUSALS) as it is."""
    router = router_for(task.app)
    submit_id = request.id
    try:
        try:
            fields = _with_previous(args, fields)
        except InvalidTask as error:
            client = fields.get("client_id")
            router.store.record_rejection(
                error.problems,
                submit_id=submit_id,
                now=now_s(),
                client_id=client if isinstance(client, str) else None,
            )
            raise
        held = getattr(request, HELD_ETA, None)
        due = float(held) if isinstance(held, int | float) else None
        outcome = _route(task, request, router, fields, submit_id, due)
        if outcome.differs:  # a submitter by name has no one else to tell it
            log.warning("%s", DuplicateTask(outcome.task_id, outcome.differs))
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
            task.backend.mark_as_failure(given, exc)
        raise
    # Routed (or parked, queued, a duplicate): Celery must not fire the message's links now
    # (nor count a chord's part); the execute message carries them to the handler's end.
    detach_links(request)


def _unexpired(expires: Any) -> bool:
    """Whether a message's `expires` header leaves it to run now (none, or later)."""
    if not expires:
        return True
    try:
        return datetime.fromisoformat(str(expires)).timestamp() > time.time()
    except ValueError:
        return False  # Celery says what is wrong with it


def submit_strategy(task: Task, app: Celery, consumer: Any, **options: Any) -> Any:
    """How a control worker takes `orchestrator.submit` messages: routed in the consumer
    itself as they arrive, then acknowledged, without a pool process, a task request or a
    trace (the Celery task's own path, now only for messages with an ETA the broker holds, a
    revoked id, an expiry passed, or protocol 1): a by-name submission then costs about what one
    from OrchestratorClient does. A refusal is stored under the message's id (its link_error
    fires, a chord counts it) as Celery stores a failure; an unreachable store requeues it."""
    from celery.app.task import Context
    from celery.worker.strategy import default

    celery_way = default(task, app, consumer, **options)
    revoked = consumer.controller.state.revoked
    errors = consumer.connection_errors

    def on_message(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
    ) -> Any:
        headers = message.headers
        if (
            body is not None
            or not isinstance(headers, dict)
            or headers.get("eta")
            or not _unexpired(headers.get("expires"))
            or headers.get("id") in revoked
        ):
            return celery_way(message, body, ack, reject, callbacks, **kw)
        try:
            args, fields, embed = message.payload
        except Exception:  # not a protocol 2 body after all: Celery says what is wrong
            return celery_way(message, body, ack, reject, callbacks, **kw)
        request = Context(
            headers,
            args=args,
            kwargs=fields,
            delivery_info=dict(message.delivery_info or {}),
            hostname=consumer.hostname,
            is_eager=False,
            **(embed or {}),
        )
        try:
            _submit(task, request, tuple(args), dict(fields))
        except Reject as exc:
            log.warning("submission %s requeued: %s", request.id, exc.reason)
            reject(log, errors, True)
            return None
        except Exception as exc:  # a refusal, or a fault: the message's failure, as Celery's
            if not isinstance(exc, REFUSALS):
                log.exception("submission %s failed", request.id)
            try:
                task.backend.mark_as_failure(request.id, exc, request=request)
            except Exception:  # nothing escapes into the consumer: it would stop consuming
                log.exception("submission %s: its failure could not be stored", request.id)
        ack(log, errors)
        return None

    return on_message


@app.task(
    name=SUBMIT,
    bind=True,
    ignore_result=True,
    store_errors_even_if_ignored=True,
    throws=REFUSALS,
    send_events=False,
    Strategy=f"{__name__}:submit_strategy",
)
def submit(self: Task, *args: Any, **fields: Any) -> None:
    """Validate, record and route one task; its id becomes the orchestration id.

    It reports nothing itself (no result, no task events, and once the task is routed its
    message's links are taken off, so Celery fires none): the task's story is its execute
    message's, told under the task's id and type when the handler has run; only a refusal
    is this message's result. A positional argument (a chain's previous result) becomes
    payload["previous"]. A control worker runs most submissions in its consumer instead
    (submit_strategy)."""
    _submit(self, self.request, args, fields)


@app.task(name="orchestrator.route_parked", **HOUSEKEEPING)
def route_parked(self: Task) -> int:
    """Route parked tasks that now have a capable agent; dead-letter those parked too long
    (their links fail with them)."""
    router = router_for(self.app)
    fail = task_failer(self.app, router.store.load_spec)

    def expired(task_id: str, error: NoCapableAgent) -> None:
        fail(task_id, error)

    return len(router.dispatch_sweep(now_s(), expired))
