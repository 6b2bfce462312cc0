"""Celery configuration: broker, serialisation, queues, priorities, beat, and the app's build.

Importing this builds nothing; `orchestrator.app` builds the module-level app from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr
from kombu import Queue

from orchestrator.config import Settings
from orchestrator.models import OrchestrationTask, RegisteredAgent
from orchestrator.monitoring.schedule import redbeat_config
from orchestrator.redis_urls import is_sentinel, redis_ssl_options
from orchestrator.routing.weights import to_broker_priority
from orchestrator.runtime import results
from orchestrator.runtime.canvas import canvas_options
from orchestrator.runtime.transport import (
    SENTINEL_TRANSPORT,
    TRANSPORT,
    Push,
    alias_sentinel_scheme,
    captured_pushes,
)
from orchestrator.security.signing import SIGNING_DIGEST

if TYPE_CHECKING:
    from orchestrator.routing.router import Preparer, Publisher

ROUTING_QUEUE = "orchestrator.routing"
RECOVERY_QUEUE = "orchestrator.recovery"
MONITORING_QUEUE = "orchestrator.monitoring"
DEFAULT_QUEUE = "celery"
SUBMIT = "orchestrator.submit"
EXECUTE = "orchestrator.execute"
CONTROL_QUEUES = (DEFAULT_QUEUE, ROUTING_QUEUE, RECOVERY_QUEUE, MONITORING_QUEUE)

TASK_MODULES = [
    "workers.routing",
    "workers.execute",
    "workers.recovery",
    "workers.monitoring",
    "workers.scaling",
]

BROKER_PRIORITY_STEPS = list(range(10))


#: Celery's and the orchestrator's own names: no handler type is run as a task of that name.
RESERVED_PREFIXES = ("orchestrator.", "celery.")


def handler_task_name(type: str) -> str | None:
    """The Celery task an agent runs a handler type as (the type's own name), or None where
    that name is Celery's or the orchestrator's own."""
    return None if type.startswith(RESERVED_PREFIXES) else type


def execute_name(task: OrchestrationTask, agent: RegisteredAgent) -> str:
    """The execute message's task name: the task's type where the agent runs a Celery task
    of that name (one per capability), so Flower, `celery events`, `celery inspect
    registered` and `celery control rate_limit` see the type; else `orchestrator.execute`."""
    if agent.handler_tasks and task.type in agent.capabilities:
        return handler_task_name(task.type) or EXECUTE
    return EXECUTE


def register_handler_tasks(celery_app: Celery, types: Iterable[str]) -> list[str]:
    """Register on an agent one task per handler type it runs, each `orchestrator.execute`
    itself under the type's name (same run, same gate and ledger steps); returns the names."""
    execute = celery_app.tasks[EXECUTE]
    cls = type(execute)
    names = []
    for handler_type in sorted(types):
        name = handler_task_name(handler_type)
        if name is None:
            continue
        if name not in celery_app.tasks:
            celery_app.task(name=name, base=cls, bind=True)(cls.__dict__["run"])
        names.append(name)
    return names


#: What repr of a payload value costs nothing to make and reads the same as Celery's saferepr.
_SCALARS = (str, int, float, bool, type(None))
#: Celery's defaults for a message's kwargsrepr (argsrepr_maxsize, task_repr_maxlevels).
_REPR_MAXSIZE, _REPR_MAXLEVELS = 1024, 3


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """The `kwargsrepr` header Celery would build for an execute message (what Flower shows
    as its kwargs): plain repr when the payload is flat and short (the same text), else
    Celery's saferepr, whose walk was a tenth of a message's cost."""
    payload = kwargs.get("payload")
    if isinstance(payload, dict) and all(isinstance(v, _SCALARS) for v in payload.values()):
        text = repr(kwargs)
        if len(text) <= _REPR_MAXSIZE:
            return text
    return saferepr(kwargs, _REPR_MAXSIZE, maxlevels=_REPR_MAXLEVELS)


def execute_publisher(celery_app: Celery) -> Publisher:
    """Publishes the task's execute message to the chosen agent's queue under the task's id,
    named by its type (execute_name; events show the type either way), carrying the links
    Celery's canvas hung on the submission."""

    def publish(
        task: OrchestrationTask, agent: RegisteredAgent, dispatch: int, countdown: float = 0.0
    ) -> AsyncResult:
        kwargs = {
            "type": task.type,
            "payload": task.payload,
            "max_retries": task.max_retries,
            "dispatch": dispatch,
        }
        return celery_app.send_task(
            execute_name(task, agent),
            task_id=task.task_id,
            kwargs=kwargs,
            argsrepr="()",
            kwargsrepr=kwargs_repr(kwargs),
            # The agent's queue is its own to declare (its consumer does): a message to it is
            # an LPUSH under the default exchange, and kombu's check of its declared cache
            # per message was a third of the publish.
            declare=[],
            queue=agent.queue,
            priority=to_broker_priority(task.priority),
            soft_time_limit=task.timeout_s,
            time_limit=task.timeout_s + 10,
            countdown=countdown or None,
            shadow=task.type,
            **canvas_options(task.canvas),
        )

    return publish


def execute_preparer(celery_app: Celery) -> Preparer:
    """Builds `orchestrator.execute` for the chosen agent without sending it: the result
    handle (send_task's own, already subscribed) and the Redis pushes that publish it, for
    StateStore.accept_and_route to make atomically with the routing (see transport.py)."""
    publish = execute_publisher(celery_app)

    def prepare(
        task: OrchestrationTask, agent: RegisteredAgent, dispatch: int
    ) -> tuple[AsyncResult, list[Push]]:
        with captured_pushes() as pushes:
            sent = publish(task, agent, dispatch)
        if len(pushes) != 1:
            raise RuntimeError(f"the message to {agent.queue} made {len(pushes)} pushes, not 1")
        return sent, pushes

    return prepare


def agent_queue(agent_id: str) -> str:
    return f"agent.{agent_id}"


def signing_config(settings: Settings) -> dict[str, Any]:
    """Celery's message signing (the `auth` serializer), when ORCH_SIGNING_* are set.

    Signed and verified: every task message (its body: task arguments, callbacks; not its
    headers: task name, id, ETA, expiry) and every remote-control request and reply
    (Celery's mailbox uses the task serializer and accept list). Not signed: results (JSON,
    in the result backend), events (JSON: Flower's and `celery events`' view), and
    everything in the state store and RedBeat's schedule (plain Redis data). A worker
    refuses a task message that is not signed by a certificate in its store at its gate
    (orchestrator.runtime.gate: content type not accepted, or a body that does not verify).
    """
    if not settings.signing_enabled:
        return {}
    return {
        "task_serializer": "auth",
        "accept_content": ["auth"],  # exactly this: Celery's setup_security insists
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "security_key": settings.signing_key,
        "security_certificate": settings.signing_cert,
        "security_cert_store": settings.signing_cert_store,
        "security_digest": SIGNING_DIGEST,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Everything Celery is told, in one place."""
    visibility = settings.visibility_timeout_s
    transport = {
        # Redis serves priority 0 first; SPEC priority 9 is published as 0 (routing/weights.py).
        "queue_order_strategy": "priority",
        "priority_steps": BROKER_PRIORITY_STEPS,
        # Messages a dead worker held come back after this. Lost agents are handled sooner
        # through the ledger; this bounds what a dead *control* worker held. Restored copies
        # of tasks still running are recognised by the ledger and skipped.
        "visibility_timeout": visibility,
        "unacked_restore_interval": max(1.0, min(10.0, visibility / 5)),
        "unacked_restore_throttle": 1,  # every sweep really scans: the interval is the period
    }
    broker, backend = settings.effective_broker_url, settings.effective_result_backend
    # A sentinel-form URL: kombu, Celery's result backend and Flower ask the sentinels for
    # this master (whoever it is now) each time they connect.
    sentinel = {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
    }
    return {
        "broker_url": broker,
        "result_backend": backend,
        # TLS as each rediss:// URL asks (see redis_urls.redis_ssl_options); kombu, Flower and
        # RedBeat read these dicts, not the URL, for a bare rediss:// URL.
        "broker_use_ssl": redis_ssl_options(broker),
        "redis_backend_use_ssl": redis_ssl_options(backend),
        "redbeat_redis_use_ssl": redis_ssl_options(settings.effective_state_url),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A sleep window recycles agents through the `pool_restart` remote control command
        # (orchestrator.scaling.sleepwake); Celery refuses it unless this is on.
        "worker_pool_restarts": True,
        "worker_send_task_events": True,
        # Workers' task events (received, started, succeeded...) are what Flower needs; a
        # `task-sent` event per publish would cost every producer one more round trip.
        "task_send_sent_event": False,
        "task_default_queue": DEFAULT_QUEUE,
        "task_queues": [Queue(name) for name in CONTROL_QUEUES],
        "task_routes": {
            "orchestrator.submit": {"queue": ROUTING_QUEUE},
            "orchestrator.route_parked": {"queue": ROUTING_QUEUE},
            "orchestrator.recover*": {"queue": RECOVERY_QUEUE},
            "orchestrator.monitor.*": {"queue": MONITORING_QUEUE},
            "orchestrator.optimize": {"queue": MONITORING_QUEUE},
            "orchestrator.autoscale": {"queue": MONITORING_QUEUE},
            "orchestrator.sleep_wake": {"queue": MONITORING_QUEUE},
        },
        # kombu's Redis transport, hardened for Redis restarts and with one client per channel
        # instead of one per publish and ack (see transport.py).
        "broker_transport": SENTINEL_TRANSPORT if is_sentinel(broker) else TRANSPORT,
        "broker_transport_options": transport | (sentinel if is_sentinel(broker) else {}),
        "result_backend_transport_options": {"visibility_timeout": visibility}
        | (sentinel if is_sentinel(backend) else {}),
        "broker_connection_retry_on_startup": True,
        "result_expires": 24 * 3600,
        # A result stored while Redis restarts or fails over waits for it (about 15 s at
        # most) instead of failing a task whose handler has already run.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_max_sleep_between_retries_ms": 1000,
        "worker_hijack_root_logger": True,
        "enable_utc": True,
        **redbeat_config(settings),
        **signing_config(settings),
    }


def create_app(settings: Settings, *, with_tasks: bool = True) -> Celery:
    """Build a Celery app. Clients pass with_tasks=False: they only send by name."""
    alias_sentinel_scheme()
    app = Celery("orchestrator", include=TASK_MODULES if with_tasks else [])
    results.install(app)  # one outcome under a task's id and its submission's message id
    app.conf.update(celery_config(settings))
    app.conf.orchestrator_settings = settings
    if settings.signing_enabled:
        # Registers the `auth` serializer with this role's key (kombu's registry: one per
        # process) and makes it kombu's default; JSON stays the only other decoder enabled.
        app.setup_security(allowed_serializers=["json"], digest=SIGNING_DIGEST)
    if with_tasks:
        from beat_schedule import build_beat_schedule

        app.conf.beat_schedule = build_beat_schedule(settings)
    return app


def app_settings(celery_app: Celery) -> Settings:
    value = celery_app.conf.get("orchestrator_settings")
    if not isinstance(value, Settings):
        raise RuntimeError("this Celery app was not built by runtime.celeryconf.create_app")
    return value
