"""Log lines as JSON objects (ORCH_LOG_FORMAT=json): the formatter, and its wiring into each role.

In json mode every line a role writes is one JSON object, so a log collector reads fields
instead of parsing text: `ts` (ISO-8601, UTC), `level`, `logger`, `message`, then `task_id` and
`agent_id` where known, `exc_info` when there is an exception, and whatever a caller passed
as `extra=`. python-json-logger does the encoding; this module only says which fields and
where they come from. Text mode (the default) leaves every role's output as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

import celery.apps.worker
from celery import VERSION_BANNER, Celery, signals
from celery._state import get_current_task  # as Celery's own TaskFormatter finds the task
from celery.apps.beat import Beat
from celery.utils.imports import qualname
from celery.utils.log import get_multiprocessing_logger
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

#: The line format of the CLI roles' text logs (`orchestrator exporter`), as it always was.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"

#: Record attributes Celery sets that are not fields of ours: `data` is the context of its
#: task lines (arguments and return values, which the text lines do not show either), and
#: `task_id`/`task_name` are its TaskFormatter's (`???` outside a task).
CELERY_ATTRS = ("data", "task_id", "task_name")

AgentId = Callable[[], str | None]


def _no_agent() -> str | None:
    return None


def iso_utc(created: float) -> str:
    """A record's time as ISO-8601 in UTC, to the millisecond: `2026-01-31T12:00:00.123Z`."""
    stamp = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def record_task_id(record: logging.LogRecord) -> str | None:
    """The task a record is about: one named by the caller (`extra={"task_id": ...}`), the one
    a Celery task line describes (its `data`), else the task this process is running."""
    named = record.__dict__.get("task_id")
    if isinstance(named, str) and named and named != "???":
        return named
    data = record.__dict__.get("data")
    if isinstance(data, dict) and data.get("id"):
        return str(data["id"])
    task = get_current_task()
    request_id = getattr(getattr(task, "request", None), "id", None) if task else None
    return str(request_id) if request_id else None


class JsonLogFormatter(JsonFormatter):
    """python-json-logger's formatter with our field names, in reading order, and the task
    and agent a line belongs to, so one agent's or one task's lines can be picked out."""

    def __init__(self, agent_id: AgentId = _no_agent) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *CELERY_ATTRS],
        )
        self.agent_id = agent_id

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = iso_utc(record.created)
        context: dict[str, Any] = {}
        task_id = record_task_id(record)
        if task_id:
            context["task_id"] = task_id
        agent_id = self.agent_id()
        if agent_id:
            context["agent_id"] = agent_id
        # The message dict's fields (exc_info) come after the context, so they read in order.
        super().add_fields(log_data, record, {**context, **message_dict})


def json_handler(stream: IO[str] | None = None, agent_id: AgentId = _no_agent) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter(agent_id))
    return handler


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """The logging of a CLI role (`orchestrator exporter`, `orchestrator dev`): its text lines
    as before, or JSON lines on stderr, warnings included."""
    if log_format != "json":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    logging.basicConfig(level=level, handlers=[json_handler()], force=True)
    logging.captureWarnings(True)


def say_refusal(message: str, log_format: str) -> None:
    """The one line a worker or beat that refuses to start leaves (`hive-orchestrator: ...`),
    printed as it always was, or logged in json mode so that line is JSON too."""
    if log_format == "json":
        logging.getLogger("orchestrator").critical("hive-orchestrator: %s", message)
    else:
        print(f"hive-orchestrator: {message}", file=sys.stderr, flush=True)


class JsonBeat(Beat):
    """`celery beat` without its printed banner: beat prints it to stdout before logging is
    set up, so no signal can turn it into a log line; a `beat_init` receiver logs it instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "quiet": True})


def _say_as_json(formatter: JsonLogFormatter) -> Callable[..., None]:
    """A stand-in for `celery.apps.worker.safe_say`, which writes straight to the terminal
    from signal handlers (warm shutdown, Ctrl-C hints), where logging's locks could
    deadlock: the same words, as one JSON line, written the same lock-free way."""

    def say(msg: str, f: IO[str] | None = sys.__stderr__) -> None:
        record = logging.LogRecord(
            "celery.apps.worker", logging.INFO, __file__, 0, str(msg).strip(), None, None
        )
        stream = f if f is not None else sys.__stderr__
        if stream is None:
            return
        # As safe_say's: losing the words must never stop a shutdown.
        with contextlib.suppress(OSError, ValueError):
            os.write(stream.fileno(), (formatter.format(record) + "\n").encode())

    return say


def install_celery_json_logs(app: Celery, agent_id: AgentId = _no_agent) -> None:
    """Make a worker or beat of `app` write only JSON lines: Celery's own log lines (through
    its logging signals), its start-up banner, what it prints in signal handlers, stdout
    redirected into logging, and warnings, including those before logging is set up."""
    formatter = JsonLogFormatter(agent_id)

    def reformat(logger: logging.Logger, **_: Any) -> None:
        # Celery has just given `logger` its handlers (root: also billiard's pool logger).
        handlers = list(logger.handlers)
        pool_logger = get_multiprocessing_logger()
        if logger is logging.getLogger() and pool_logger is not None:
            handlers += pool_logger.handlers
        for handler in handlers:
            handler.setFormatter(formatter)

    def announce_worker(sender: str, instance: Any, **_: Any) -> None:
        # Sent just before the worker prints its banner unless quiet: say it as a log line.
        if instance.quiet:
            return
        instance.quiet = True
        worker_app = instance.app
        logging.getLogger("celery.apps.worker").info(
            "celery worker %s v%s starting",
            sender,
            VERSION_BANNER,
            extra={
                "node": sender,
                "broker": worker_app.connection().as_uri(),
                "results": worker_app.backend.as_uri(),
                "concurrency": instance.concurrency,
                "queues": sorted(worker_app.amqp.queues.consume_from or {}),
                "tasks": sorted(t for t in worker_app.tasks if not t.startswith("celery.")),
            },
        )

    def announce_beat(sender: Any, **_: Any) -> None:
        scheduler = sender.scheduler
        logging.getLogger("celery.apps.beat").info(
            "celery beat v%s starting",
            VERSION_BANNER,
            extra={
                "broker": sender.app.connection().as_uri(),
                "scheduler": qualname(scheduler),
                "max_interval_s": scheduler.max_interval,
            },
        )

    uid = "orchestrator.runtime.logs"
    signals.after_setup_logger.connect(reformat, weak=False, dispatch_uid=f"{uid}.root")
    signals.after_setup_task_logger.connect(reformat, weak=False, dispatch_uid=f"{uid}.task")
    signals.celeryd_after_setup.connect(announce_worker, weak=False, dispatch_uid=f"{uid}.worker")
    signals.beat_init.connect(announce_beat, weak=False, dispatch_uid=f"{uid}.beat")
    app.Beat = app.subclass_with_self(JsonBeat)
    celery.apps.worker.safe_say = _say_as_json(formatter)
    # Until Celery sets logging up (and replaces this handler), warnings such as its
    # "running as root" one go to stderr as JSON too.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(json_handler(sys.__stderr__, agent_id))
    logging.captureWarnings(True)
