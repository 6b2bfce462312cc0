"""Agent workers: Celery bootsteps that turn a worker with capabilities into an agent.

`AgentInit` (worker blueprint) runs before the pool forks: it imports the handler modules, so
the pool's children inherit them, refuses to start when a declared capability has no handler,
and makes the worker consume `agent.<agent_id>`. `AgentPresence` (consumer blueprint)
registers the agent once the broker connection is up, heartbeats on the worker's own timer
(consuming its queue exactly while its stored status is not `sleeping`), and deregisters on
warm shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from celery import Celery, bootsteps

from orchestrator.config import AGENT_ID_RE, AGENT_ID_RULE, Settings
from orchestrator.errors import ConfigError
from orchestrator.models import AgentStatus, RegisteredAgent
from orchestrator.runtime.celeryconf import agent_queue, app_settings, register_handler_tasks
from orchestrator.runtime.handlers import import_handlers, missing_handlers
from orchestrator.runtime.logs import say_refusal
from orchestrator.store import StateStore, now_s

log = logging.getLogger(__name__)


class _Process:
    """What this process knows about itself; inherited by the pool's children on fork."""

    agent_id: str | None = None
    settings: Settings | None = None
    _store: StateStore | None = None
    _store_pid: int = 0


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine has that pid (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunningMarker:
    """Which task each pool child of this agent is running, in small files on local disk.

    When a copy of a task arrives that the ledger says a child of this agent is running, the
    copy is skipped only if that child is alive *and* still marked as running this task: a
    child that died (worker lost) or that finished without reaching Redis leaves the task to
    run again. A file survives the child being killed, which is why it is checked with the pid.
    A child keeps its own file open and rewrites it in place (two system calls per task, where
    creating and removing the file took about 0.1 ms).
    """

    _open: ClassVar[dict[Path, int]] = {}  # this process's marker files, by path

    def __init__(self, agent_id: str) -> None:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in agent_id)
        self.folder = Path(tempfile.gettempdir()) / f"hive-orchestrator-{safe}"

    def _path(self, pid: int) -> Path:
        return self.folder / str(pid)

    def mark(self, pid: int, task_id: str) -> None:
        path = self._path(pid)
        fd = self._open.get(path)
        if fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = self._open[path] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, 0)
        os.pwrite(fd, task_id.encode(), 0)

    def clear(self, pid: int) -> None:
        path = self._path(pid)
        fd = self._open.get(path)
        if fd is not None:
            os.ftruncate(fd, 0)
        else:
            path.unlink(missing_ok=True)  # never marked here: a file of an earlier same pid

    def holds(self, pid: int, task_id: str) -> bool:
        try:
            return self._path(pid).read_text(encoding="utf-8") == task_id
        except OSError:
            return False


def current_agent_id() -> str:
    if _Process.agent_id is None:
        raise ConfigError("this worker is not an agent: set ORCH_AGENT_CAPABILITIES")
    return _Process.agent_id


def logged_agent_id(settings: Settings) -> str | None:
    """The agent id this process's log lines carry: the one AgentInit settled (so the pool's
    children have it too), or before that an agent's ORCH_AGENT_ID; None in a control worker
    or beat, which are no agent."""
    if _Process.agent_id is not None:
        return _Process.agent_id
    return settings.agent_id if settings.is_agent else None


def process_store(settings: Settings) -> StateStore:
    """One StateStore per process (a forked child must not share its parent's sockets)."""
    if _Process._store is None or _Process._store_pid != os.getpid():
        _Process._store = StateStore.from_settings(settings)
        _Process._store_pid = os.getpid()
    return _Process._store


def _settings_of(app: Celery) -> Settings:
    return app_settings(app)


class AgentInit(bootsteps.Step):
    name = "orchestrator.agent_init"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = _settings_of(worker.app)
        if not settings.is_agent:
            return
        try:
            import_handlers(settings.handlers)
            missing = missing_handlers(settings.agent_capabilities)
            if missing:
                raise ConfigError(
                    f"capabilities {missing} have no handler: add a module defining "
                    f"@capability({missing[0]!r}) to ORCH_HANDLERS "
                    f"(now {','.join(settings.handlers) or 'empty'})"
                )
        except ConfigError as exc:
            say_refusal(f"agent refused to start: {exc}", settings.log_format)
            raise SystemExit(2) from None
        agent_id = settings.agent_id or worker.hostname
        if not AGENT_ID_RE.match(agent_id):  # ORCH_AGENT_ID was checked when it was read
            say_refusal(
                f"agent refused to start: its id, the worker's node name {agent_id!r} (-n), "
                f"must be {AGENT_ID_RULE} as ORCH_AGENT_ID must: choose another -n or set "
                "ORCH_AGENT_ID",
                settings.log_format,
            )
            raise SystemExit(2)
        _Process.agent_id = agent_id
        _Process.settings = settings
        # One Celery task per capability, named by it (before the consumer builds its task
        # strategies and the pool forks): Flower, `celery inspect registered` and
        # `celery control rate_limit TYPE` see the types.
        register_handler_tasks(worker.app, settings.agent_capabilities)
        queue = agent_queue(agent_id)
        queues = worker.app.amqp.queues
        # No -Q given (Celery leaves _consume_from unset): an agent consumes only its own
        # queue, never the control queues. With -Q, its queue is added to the chosen ones.
        if queues._consume_from is None:
            queues.select([queue])
        else:
            queues.select_add(queue)


class AgentPresence(bootsteps.StartStopStep):
    name = "orchestrator.agent_presence"
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.settings = _settings_of(consumer.app)
        self.enabled = self.settings.is_agent
        self.timer_ref: Any = None

    def _agent(self, consumer: Any) -> RegisteredAgent:
        agent_id = current_agent_id()
        now = now_s()
        return RegisteredAgent(
            agent_id=agent_id,
            capabilities=self.settings.agent_capabilities,
            status=AgentStatus.ACTIVE,
            queue=agent_queue(agent_id),
            hostname=socket.gethostname(),
            node=str(getattr(consumer, "hostname", "") or ""),
            pid=os.getpid(),
            concurrency=int(getattr(consumer.controller, "concurrency", 1) or 1),
            registered_at=now,
            last_heartbeat=now,
            handler_tasks=True,
        )

    def start(self, consumer: Any) -> None:
        store = process_store(self.settings)
        agent = self._agent(consumer)
        store.register_agent(agent, agent.registered_at, source=agent.agent_id)
        log.info(
            "agent %s registered: capabilities %s, queue %s",
            agent.agent_id,
            agent.capabilities,
            agent.queue,
        )
        self.timer_ref = consumer.timer.call_repeatedly(
            self.settings.agent_heartbeat_interval_s,
            self._heartbeat,
            (consumer,),
            priority=10,
        )
        # Parked tasks waiting for a capability like ours are routed now, not at the next sweep.
        consumer.app.send_task("orchestrator.route_parked")

    def _heartbeat(self, consumer: Any) -> None:
        agent_id = current_agent_id()
        try:
            status = process_store(self.settings).heartbeat(agent_id, now_s())
            if status in ("", AgentStatus.OFFLINE.value):
                # Given up for lost (a long stall, a partition): it is back, so say so. Its
                # old tasks were re-routed; stale copies in its queue are skipped by dispatch.
                log.warning(
                    "agent %s was marked %s; registering again", agent_id, status or "unknown"
                )
                agent = self._agent(consumer)
                process_store(self.settings).register_agent(
                    agent, agent.registered_at, source=agent_id
                )
                status = AgentStatus.ACTIVE.value
            self._consume(consumer, agent_id, status != AgentStatus.SLEEPING.value)
        except Exception as exc:  # a missed beat must not kill the worker's event loop
            log.warning("agent %s heartbeat failed: %s", agent_id, exc)

    @staticmethod
    def _consume(consumer: Any, agent_id: str, on: bool) -> None:
        """Consume the agent's queue exactly while it is not asleep. The sleep/wake loop tells
        the worker at once (Celery's cancel_consumer / add_consumer); this catches a command
        the worker missed (it was restarting its connection, say) at the next beat."""
        queue = agent_queue(agent_id)
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None:
            return
        consuming = task_consumer.consuming_from(queue)
        if on and not consuming:
            log.info("agent %s is awake: consuming %s again", agent_id, queue)
            consumer.add_task_queue(queue)
        elif not on and consuming:
            log.info("agent %s is asleep: no longer consuming %s", agent_id, queue)
            consumer.cancel_task_queue(queue)

    def stop(self, consumer: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)
        try:
            agent_id = current_agent_id()
            process_store(self.settings).deregister_agent(agent_id, now_s(), source=agent_id)
            # Tasks still waiting in our queue go elsewhere now; the ones we are finishing
            # stay ours (a warm shutdown completes them).
            consumer.app.send_task(
                "orchestrator.recover_agent",
                kwargs={"agent_id": agent_id, "reason": "deregistered", "only_queued": True},
            )
            log.info("agent %s deregistered", agent_id)
        except Exception as exc:
            log.warning("agent deregistration failed: %s", exc)
