"""Celery's canvas across the orchestrator's two hops (submit, then execute on an agent).

Celery fires a message's links (`link`, the rest of a `chain`, a `chord`'s part) when its
task returns, and its `link_error`s when it fails. A submission is only *routed* when
`orchestrator.submit` returns, so the submit hop takes the links off its own request
(`canvas_of`), keeps them with the task in the ledger, and reports nothing itself; every
execute message of the task carries them (`canvas_options`), so Celery fires them on the
agent once the handler has run. A task that ends away from its handler (dead-lettered by
recovery, expired while parked, cancelled) fails its links the same way (`task_failer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.app.task import Context

from orchestrator.errors import UnknownTask
from orchestrator.models import Canvas, OrchestrationTask

#: Fails a task with an error: its result, and its links as Celery fails them.
FailTask = Callable[[str, BaseException], None]


def carries_links(request: Any) -> bool:
    """Whether a message's request has links to fire when its task ends (callbacks, the rest
    of a chain, errbacks, a chord)."""
    return bool(request.callbacks or request.errbacks or request.chain or request.chord)


def detach_links(request: Any) -> None:
    """Takes the links off a running task's request, so Celery fires none when it returns
    (they travel on with the task). Cheaper than raising Ignore, whose traceback Celery
    formats and hands to the pool's parent: a third of a by-name submission's work."""
    request.callbacks = request.errbacks = request.chain = request.chord = None


def canvas_of(request: Any) -> Canvas | None:
    """The links a submission's own message carries (None for a plain submission: the
    submit path's common case builds nothing)."""
    if not (carries_links(request) or request.group or request.parent_id):
        return None
    return Canvas(
        callbacks=_signatures(request.callbacks),
        errbacks=_signatures(request.errbacks),
        chain=_signatures(request.chain),
        chord=dict(request.chord) if request.chord else None,
        group_id=request.group or None,
        group_index=request.group_index,
        root_id=request.root_id or None,
        parent_id=request.parent_id or None,
    )


def _signatures(value: Any) -> list[dict[str, Any]] | None:
    return [dict(s) for s in value] if value else None


def canvas_options(canvas: Canvas | None) -> dict[str, Any]:
    """The send_task options that hand the links on to an execute message."""
    if canvas is None:
        return {}
    options = {
        "link": canvas.callbacks,
        "link_error": canvas.errbacks,
        "chain": canvas.chain,
        "chord": canvas.chord,
        "group_id": canvas.group_id,
        "group_index": canvas.group_index,
        "root_id": canvas.root_id,
        "parent_id": canvas.parent_id,
    }
    return {k: v for k, v in options.items() if v is not None}


def request_for(task_id: str, canvas: Canvas) -> Context:
    """A request as the execute message's would be, for failing the task's links where no
    execute request is at hand."""
    return Context(
        id=task_id,
        callbacks=canvas.callbacks,
        errbacks=canvas.errbacks,
        chain=canvas.chain,
        chord=canvas.chord,
        group=canvas.group_id,
        group_index=canvas.group_index,
        root_id=canvas.root_id,
        parent_id=canvas.parent_id,
        delivery_info={},
    )


def task_failer(celery_app: Celery, load_spec: Callable[[str], OrchestrationTask]) -> FailTask:
    """Fails a task away from its handler: the error becomes its result, its chain's later
    links fail with it, its errbacks fire and a chord it belongs to counts it (Celery's
    own mark_as_failure, given the links kept in the ledger)."""

    def fail(task_id: str, error: BaseException) -> None:
        try:
            canvas = load_spec(task_id).canvas
        except UnknownTask:
            canvas = None
        request = request_for(task_id, canvas) if canvas is not None else None
        celery_app.backend.mark_as_failure(task_id, error, request=request)

    return fail
