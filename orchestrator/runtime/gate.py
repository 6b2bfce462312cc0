"""A worker's gate: what it consumes is screened, and what it refuses is kept as poison.

Installed by a worker bootstep into the hardened transport (orchestrator.runtime.transport), before
the worker consumes anything. Task queues (`celery`, `orchestrator.*`, `agent.<id>`, any `-Q`)
get the whole screen of orchestrator.security.screen; Celery's own remote-control and event queues
get the envelope check only. A refused message is recorded in the dead-letter store as kind
`poison` with its raw bytes (capped), counted, and announced as `security.threat`.
"""

from __future__ import annotations

import inspect
import logging
import socket
from datetime import datetime
from typing import Any

from celery import Celery, bootsteps, states
from kombu.exceptions import ContentDisallowed
from kombu.serialization import prepare_accept_content

from orchestrator.config import Settings
from orchestrator.errors import MessageRefused
from orchestrator.models import TASK_ID_RE
from orchestrator.runtime.agent import process_store
from orchestrator.runtime.celeryconf import EXECUTE, SUBMIT, app_settings
from orchestrator.runtime.transport import install_gate
from orchestrator.security.screen import TaskPolicy, check_task_message, depth_bound, excerpt
from orchestrator.store import StateStore, now_s

log = logging.getLogger(__name__)

#: The content type of Celery's message signing (`auth` serializer): a body that fails to
#: decode under it is unsigned, tampered with, or signed by a key this worker does not trust.
SIGNED_CONTENT_TYPE = "application/data"

#: Room for the envelope, headers and base64 around the largest payload a task may carry.
ENVELOPE_ALLOWANCE_BYTES = 65_536


def is_task_queue(queue: str) -> bool:
    """Celery's remote-control (`*.pidbox`) and event (`celeryev.*`) queues carry no tasks."""
    return not (queue.endswith(".pidbox") or queue.startswith("celeryev."))


#: The header a submission's own ETA moves to when the orchestrator holds it instead of the
#: broker (workers/routing.py reads it as `request.orch_eta`).
HELD_ETA = "orch_eta"


def hold_long_eta(headers: Any, now: float, visibility_timeout_s: float) -> bool:
    """A submission (`orchestrator.submit`) whose countdown or ETA is further off than half
    the visibility timeout is not left to the broker: kombu would hand the unacknowledged
    message out again every visibility timeout, and each copy would fire at the ETA. Its ETA
    moves to the `orch_eta` header, so the worker runs the submission now, and the submission
    holds the task in Redis until then (scripts.DEFER). Shorter ones stay the broker's (one
    copy: it comes back only after the whole timeout). True when it moved."""
    if not isinstance(headers, dict) or headers.get("task") != SUBMIT:
        return False
    eta = headers.get("eta")
    if not eta:
        return False
    try:
        due = datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return False  # Celery refuses it as it would
    if due - now < visibility_timeout_s / 2:
        return False
    headers[HELD_ETA] = due
    headers["eta"] = None
    return True


def max_entry_bytes(settings: Settings) -> int:
    # A payload may be ORCH_MAX_PAYLOAD_BYTES of JSON; base64 makes it 4/3 as long.
    return settings.max_payload_bytes * 2 + ENVELOPE_ALLOWANCE_BYTES


class WorkerGate:
    def __init__(self, app: Celery, settings: Settings, store: StateStore, source: str) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.source = source
        self.max_entry_bytes: int | None = max_entry_bytes(settings)
        self._accept: set[str] | None = None
        self._policy: TaskPolicy | None = None

    def policy(self) -> TaskPolicy:
        # Built at the first message: by then every task module is imported, and the
        # signing serializer (when configured) is registered.
        if self._policy is None:
            tasks = self.app.tasks.items()
            signatures = {name: inspect.signature(task.run) for name, task in tasks}
            # orchestrator.execute, and the task an agent registers per handler type it runs.
            handlers = {name for name, task in tasks if getattr(task, "runs_handler", False)}
            self._policy = TaskPolicy(
                signatures, self.settings.max_payload_bytes, frozenset({EXECUTE, *handlers})
            )
            self._accept = prepare_accept_content(self.app.conf.accept_content)
        return self._policy

    def screen(self, queue: str, message: Any) -> str | None:
        if not is_task_queue(queue):
            return None
        policy = self.policy()
        if message.errors:  # kombu could not decompress it
            _type, exc, _tb = message.errors[0]
            compression = (message.headers or {}).get("compression")
            return f"body does not decompress as {compression!r} ({type(exc).__name__}: {exc})"
        content_type = message.content_type
        message.accept = self._accept
        try:
            body = message.decode()  # memoised: Celery's own decode reuses it
        except ContentDisallowed:
            accepted = ", ".join(sorted(self._accept or ()))
            return f"content type {content_type!r} is not accepted (accepted: {accepted})"
        except Exception as exc:
            if content_type == SIGNED_CONTENT_TYPE:  # Celery's `auth` serializer
                return f"signed body does not verify ({type(exc).__name__}: {exc})"
            return f"body does not decode as {content_type!r} ({type(exc).__name__}: {exc})"
        bound = depth_bound(message.body)
        reason = check_task_message(queue, message.headers, body, policy, bound)
        if reason is None:
            hold_long_eta(message.headers, now_s(), self.settings.visibility_timeout_s)
        return reason

    def refuse(self, queue: str, raw: bytes, reason: str, task_id: str | None = None) -> None:
        poison_id = self.store.record_poison(
            queue,
            raw=raw,
            reason=reason,
            now=now_s(),
            source=self.source,
            keep=self.settings.poison_keep,
            raw_max_bytes=self.settings.poison_raw_max_bytes,
        )
        log.warning(
            "refused a message from queue %s: %s (%d bytes: %s); kept as %s",
            queue,
            reason,
            len(raw),
            excerpt(raw),
            poison_id,
        )
        if task_id is not None:
            self._answer(queue, task_id, reason)

    def _answer(self, queue: str, task_id: str, reason: str) -> None:
        """Tell the sender of a refused task message why, as Celery does for an unknown task:
        the refusal becomes the result of its id. Only for an id with no result yet and no
        orchestration task behind it, so a forged message cannot overwrite a real task's
        outcome."""
        if not TASK_ID_RE.match(task_id):  # (Celery's uuids match it too)
            return
        try:
            if self.store.task_exists(task_id):
                return
            backend = self.app.backend
            if backend.get_task_meta(task_id).get("status") != states.PENDING:
                return
            backend.mark_as_failure(task_id, MessageRefused(queue, reason))
        except Exception as exc:  # the refusal is kept either way
            log.warning("could not store the refusal of %s as its result: %s", task_id, exc)


class GateStep(bootsteps.Step):
    """Installs the worker's gate before the worker consumes (worker blueprint)."""

    name = "orchestrator.gate"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = app_settings(worker.app)
        source = getattr(worker, "hostname", None) or socket.gethostname()
        install_gate(WorkerGate(worker.app, settings, process_store(settings), source))
