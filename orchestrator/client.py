"""OrchestratorClient: submit work and read its fate from Python, without a worker."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.pools import ProducerPool

from orchestrator.config import Settings, load_settings
from orchestrator.errors import DuplicateTask, StoreUnavailable
from orchestrator.models import RegisteredAgent, TaskRecord
from orchestrator.routing.dispatch import Outcome, OutcomeStatus
from orchestrator.routing.router import Router
from orchestrator.runtime.celeryconf import (
    ROUTING_QUEUE,
    SUBMIT,
    create_app,
    execute_preparer,
    execute_publisher,
)
from orchestrator.store import StateStore, now_s


def broker_full(exc: BaseException) -> StoreUnavailable | None:
    """The broker's refusal of a publish for lack of memory (kombu reports Redis's `OOM
    command not allowed` as an OperationalError) as the StoreUnavailable a full state store
    gives; None for any other failure."""
    said = str(exc)
    if "maxmemory" not in said and not said.startswith("OOM"):
        return None
    return StoreUnavailable(
        "Redis broker is full: it refused the submission's message because its memory is at "
        "its limit (maxmemory); nothing was submitted: raise maxmemory (CONFIG SET maxmemory, "
        f"or redis.conf) or free memory, then retry. Redis said: {said}"
    )


def _raise_broker_full(exc: BaseException) -> None:
    """Raise the StoreUnavailable of a full broker for `exc`, if it is one (any other failure
    is the caller's to re-raise as it is, its cause kept)."""
    full = broker_full(exc)
    if full is not None:
        raise full from exc


class Submission(AsyncResult):
    """What OrchestratorClient.submit returns: the task's AsyncResult, its id the
    orchestration id (`get()`, `state`, `ready()` as for any), and what the submission did.

    `outcome` is routed, queued, parked, deferred or duplicate (None when a control worker
    routes it: route_locally=False); a parked task's `reason` says why no agent can take it
    (it waits up to ORCH_PENDING_TIMEOUT_S, then goes to the dead-letter store); `differs`
    names the fields in which a spec submitted under an id already accepted differs from the
    accepted one (nothing runs again either way)."""

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: str | None = None,
        app: Celery | None = None,
        parent: Any = None,
        *,
        outcome: OutcomeStatus | None = None,
        reason: str | None = None,
        differs: Sequence[str] = (),
        subscribed: AsyncResult | None = None,
    ) -> None:
        super().__init__(id, backend=backend, task_name=task_name, app=app, parent=parent)
        self.outcome = outcome
        self.reason = reason
        self.differs = tuple(differs)
        # The publish's own result object, already subscribed to the result: kept, so the
        # subscription lasts as long as this handle.
        self._subscribed = subscribed

    @property
    def parked(self) -> bool:
        """No agent can take the task now (`reason` says why); it waits for one."""
        return self.outcome is OutcomeStatus.PARKED

    @property
    def duplicate(self) -> bool:
        """An earlier submission was accepted under this id: this one ran nothing."""
        return self.outcome is OutcomeStatus.DUPLICATE


class OrchestratorClient:
    """Submits tasks (routing them itself) and tracks each orchestration id to its result."""

    def __init__(
        self,
        redis_url: str | None = None,
        settings: Settings | None = None,
        route_locally: bool = True,
    ) -> None:
        if settings is None:
            settings = load_settings(**({"redis_url": redis_url} if redis_url else {}))
        self.settings = settings
        self.app: Celery = create_app(settings, with_tasks=False)
        # Pools of this client's own: kombu's default ones are shared by every app of the same
        # broker URL in the process, so closing them would break another client.
        limit = self.app.conf.broker_pool_limit
        self._connections = self.app.connection_for_write().Pool(limit=limit)
        self._producers = ProducerPool(self._connections, limit=limit)
        self.app._pool = self._connections
        self.app.amqp._producer_pool = self._producers
        self.store = StateStore.from_settings(settings)
        self.router = Router(self.store, settings, execute_publisher(self.app))
        self.router.keep_outbox = True  # dropped only once the publish succeeded
        self._prepare = execute_preparer(self.app)
        self.route_locally = route_locally
        # A submit message expires when the ledger would forget its task (ORCH_LEDGER_TTL_S
        # after acceptance, which comes after sending): until then a replayed copy is a
        # duplicate to the ledger, after it a worker drops it as expired (unless the replay
        # also removed the `expires` header: headers are not signed).
        self.submit_expires_s = float(settings.ledger_ttl_s)

    def submit(self, type: str, payload: dict[str, Any] | None = None, **fields: Any) -> Submission:
        """Submit one task and route it from here: validate, record, pick the agent and
        publish `orchestrator.execute` to its queue, with no hop through a control worker.
        The returned Submission is the task's AsyncResult, its id the orchestration id
        (`task_id` if given): `.get()` gives the handler's return value or raises the final
        failure; `.parked` and `.reason` say when no agent can take it, and why. A second
        submission under an id already accepted runs nothing again; when its spec differs,
        it warns (DuplicateTask, naming the fields in `.differs`). A spec that breaks a rule
        raises InvalidTask here, naming every offending field; a client over its per-client
        limits gets RateLimited or ClientBlocked here (ORCH_CLIENT_RATE_LIMIT,
        ORCH_SECURITY_AUTO_BLOCK).

        With route_locally=False the task goes to `orchestrator.submit` on a control worker
        instead (one hop more; for producers that should not do the routing work). That
        message carries the orchestration id in its kwargs (`task_id`) and expires after
        ORCH_LEDGER_TTL_S, so a replayed copy is caught (see __init__).

        When the broker is the state store's Redis (the default), recording, routing and
        publishing are one atomic step in Redis: a crash leaves all or nothing. Otherwise, and
        on the way to being parked, the submission stays in an outbox in Redis until it is
        routed or parked: if this process, or the control worker holding its message, dies in
        between, the recovery monitor sends it to `orchestrator.submit` by name again under
        the same message id."""
        kwargs: dict[str, Any] = {"type": type, "payload": payload or {}, **fields}
        submit_id = str(uuid4())
        now = time.time()
        # Handed to a control worker, the submission is admitted there (counted once).
        task = self.router.validate(kwargs, submit_id, now, limit=self.route_locally)
        assert task.task_id is not None
        # The orchestration id travels in the body, which signing covers (headers are not
        # signed): a copy of the submit message replayed under an edited id header is still
        # the same task to the ledger, and runs nothing again.
        kwargs["task_id"] = task.task_id
        if self.route_locally:
            outbox = (kwargs, ROUTING_QUEUE)
            try:
                outcome = (
                    self.router.submit_atomic(task, submit_id, now, self._prepare, outbox)
                    if self.settings.broker_is_state_store
                    else self.router.submit_valid(task, submit_id, now, outbox)
                )
            except OperationalError as exc:  # the publish to the broker's Redis
                _raise_broker_full(exc)
                raise
            return self._submission(outcome)
        self.store.outbox_put(
            task.task_id, submit_id=submit_id, kwargs=kwargs, queue=ROUTING_QUEUE, now=now
        )
        try:
            sent = self.app.send_task(
                SUBMIT,
                kwargs=kwargs,
                task_id=submit_id,
                queue=ROUTING_QUEUE,
                expires=self.submit_expires_s,
            )
        except Exception as exc:
            self.store.outbox_drop(task.task_id)
            _raise_broker_full(exc)
            raise
        # The submit message's own result object is already subscribed: kept when it carries
        # the orchestration id.
        return Submission(
            task.task_id, app=self.app, subscribed=sent if sent.id == task.task_id else None
        )

    def _submission(self, outcome: Outcome) -> Submission:
        """The handle of a submission routed here; a duplicate whose spec differs warns."""
        if outcome.differs:
            warnings.warn(DuplicateTask(outcome.task_id, outcome.differs), stacklevel=3)
        return Submission(
            outcome.task_id,
            app=self.app,
            outcome=outcome.status,
            reason=outcome.reason,
            differs=outcome.differs,
            subscribed=outcome.sent,
        )

    def result(self, task_id: str) -> AsyncResult:
        return self.app.AsyncResult(task_id)

    def task(self, task_id: str) -> TaskRecord:
        return self.store.task_record(task_id)

    def agents(self) -> list[RegisteredAgent]:
        """Every registered agent, its circuit read as routing reads it now."""
        return self.store.load_fleet(self.settings.circuit_rule(), now_s()).agents

    def close(self) -> None:
        """Close every connection this client opened: the state store's, the publisher's and
        the result backend's (its pub/sub one too). Celery's own `app.close()` only forgets
        the pools and leaves their sockets to the garbage collector."""
        self.store.r.close()
        backend = self.app._backend  # None unless a result was asked for
        if backend is not None:
            consumer = getattr(backend, "result_consumer", None)
            if consumer is not None:
                # Forget the results still waited on (a get() that timed out leaves its result
                # registered) and the subscriptions: a result object finalised later, at
                # interpreter exit too, then has nothing to unsubscribe, where it would open a
                # connection again to do so (a traceback, when Python is shutting down).
                for waiting in getattr(backend, "_pending_results", ()):
                    waiting.clear()
                getattr(consumer, "subscribed_to", set()).clear()
                consumer.stop()
            client = getattr(backend, "client", None)
            if client is not None:
                client.connection_pool.disconnect()
        self._producers.force_close_all()
        self._connections.force_close_all()
        self.app.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
