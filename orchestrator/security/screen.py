"""What a worker lets through from its queues: pure checks of a delivered message.

Anyone who can write to the broker can push anything into a queue's Redis list. A stock
Celery worker dies on the first entry that is not a kombu envelope (celery#4308, kombu#2421),
and runs whatever a well-formed message names. These checks run where kombu decodes
(orchestrator.runtime.transport), in two steps: `check_envelope` on the raw entry (can kombu even
build a message from it?) and `check_task_message` on the decoded body (is this a task this
queue runs, called the way it takes?). Each returns None, or the reason the entry is refused;
the refused entry is taken off the queue and kept in the poison store (orchestrator.runtime.gate).
"""

from __future__ import annotations

import binascii
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orchestrator.models import (
    MAX_PAYLOAD_DEPTH,
    TASK_ID_RE,
    ExecuteRequest,
    describe_errors,
    nesting_depth,
)

AGENT_QUEUE_PREFIX = "agent."
EXECUTE = "orchestrator.execute"
EXCERPT_BYTES = 80
#: A worker hands each message to its pool by pickling it, and pickle recurses: ~500 levels
#: killed the worker. Room for the deepest payload the spec allows, and its envelope.
MAX_MESSAGE_DEPTH = 2 * MAX_PAYLOAD_DEPTH


def excerpt(raw: bytes, limit: int = EXCERPT_BYTES) -> str:
    """The first bytes of an entry, printable (non-UTF-8 bytes escaped), for events and lists."""
    head = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    return text + ("..." if len(raw) > limit else "")


def _is_str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def check_envelope(payload: Any) -> str | None:
    """Whether kombu's Redis transport can build (and acknowledge) a message from `payload`,
    the JSON-decoded list entry. kombu indexes these fields without checking them, so a
    missing one is an exception in the worker's event loop."""
    if not isinstance(payload, dict):
        return f"not a kombu envelope: a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "not a kombu envelope: no properties object"
    if not isinstance(properties.get("delivery_tag"), str):
        return "not a kombu envelope: properties.delivery_tag missing"
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        return "not a kombu envelope: properties.delivery_info missing"
    for name in ("exchange", "routing_key"):
        if not isinstance(info.get(name), str):
            return f"not a kombu envelope: properties.delivery_info.{name} missing"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "not a kombu envelope: headers is not an object"
    for name in ("content-type", "content-encoding"):
        if not _is_str_or_none(payload.get(name)):
            return f"not a kombu envelope: {name} is not a string"
    body = payload.get("body")
    if not _is_str_or_none(body):
        return "not a kombu envelope: body is not a string"
    encoding = properties.get("body_encoding")
    if body and encoding == "base64":
        try:
            binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            return "body is not valid base64"
    elif body and encoding is not None:
        return f"unknown body encoding {encoding!r}"
    return None


@dataclass(frozen=True)
class TaskPolicy:
    """What the consuming worker runs: its registered tasks with their signatures.

    The tasks that run a handler (`handler_tasks`: `orchestrator.execute`, always, and the
    task an agent's worker registers per handler type it runs, named by the type) are taken
    from an agent's queue (`agent.<id>`) only, and nothing else is: no producer of ours sends
    them elsewhere, or anything else there.
    """

    signatures: Mapping[str, inspect.Signature]
    max_payload_bytes: int = 1_048_576
    handler_tasks: frozenset[str] = frozenset({EXECUTE})
    _names: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", frozenset(self.signatures))
        object.__setattr__(self, "handler_tasks", frozenset(self.handler_tasks) | {EXECUTE})

    def allows(self, queue: str, name: str) -> str | None:
        if name not in self._names:
            return f"unknown task {name!r}"
        on_agent_queue = queue.startswith(AGENT_QUEUE_PREFIX)
        runs_handler = name in self.handler_tasks
        if on_agent_queue and not runs_handler:
            return (
                f"task {name!r} is not run from an agent's queue (only {EXECUTE} and the "
                "tasks named by handler types)"
            )
        if not on_agent_queue and runs_handler:
            return f"task {name!r} is only run from an agent's queue, not {queue!r}"
        return None


def depth_bound(encoded: bytes | str | None) -> int | None:
    """An upper bound on how deep a JSON text nests (its opening brackets), at C speed: a
    body with no more of them than the limit needs no walk."""
    if isinstance(encoded, bytes):
        return encoded.count(b"[") + encoded.count(b"{")
    if isinstance(encoded, str):
        return encoded.count("[") + encoded.count("{")
    return None


def check_task_message(
    queue: str,
    headers: Mapping[str, Any] | None,
    body: Any,
    policy: TaskPolicy,
    body_depth_bound: int | None = None,
) -> str | None:
    """Whether a decoded task message (Celery protocol 2) is one this queue runs: a
    registered task, allowed on this queue, whose arguments bind to its signature; for a
    task that runs a handler, arguments that keep to the execute contract. `body_depth_bound`
    (depth_bound of the encoded body) spares the walk over a body that cannot be deep."""
    if not headers or not isinstance(headers.get("task"), str):
        return "not a Celery task message: no task header (protocol 1 is not accepted)"
    name = headers["task"]
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return f"task {name!r}: no id header"
    refused = policy.allows(queue, name)
    if refused:
        return refused
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return f"task {name!r}: body is not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return f"task {name!r}: body is not [args, kwargs, embed]"
    if embed is not None and not isinstance(embed, dict):
        return f"task {name!r}: body is not [args, kwargs, embed]"
    parts: list[tuple[str, Any]] = [("headers", headers)]
    if body_depth_bound is None or body_depth_bound > MAX_MESSAGE_DEPTH:
        parts.append(("body", body))
    for part, value in parts:
        if nesting_depth(value, MAX_MESSAGE_DEPTH) > MAX_MESSAGE_DEPTH:
            return f"task {name!r}: {part} nested deeper than {MAX_MESSAGE_DEPTH} levels"
    if name in policy.handler_tasks:  # the hot path: its model is stricter than its signature
        return _check_execute(name, task_id, args, kwargs, policy.max_payload_bytes)
    if not all(isinstance(k, str) for k in kwargs):
        return f"task {name!r}: keyword argument names must be strings"
    if "self" in kwargs:  # it would bind to **fields, but Celery calls Task.__call__(self, ...)
        return f"task {name!r}: no task takes a keyword argument 'self' (Celery's call does)"
    try:
        policy.signatures[name].bind(*args, **kwargs)
    except TypeError as exc:
        return f"task {name!r}: arguments do not match its signature ({exc})"
    return None


def _check_execute(
    name: str, task_id: str, args: Any, kwargs: dict[str, Any], max_payload_bytes: int
) -> str | None:
    if not TASK_ID_RE.match(task_id):
        return f"task {name!r}: id {task_id[:64]!r} is not a valid task id"
    if args:
        return f"task {name!r}: takes keyword arguments only"
    try:
        ExecuteRequest.model_validate(kwargs, context={"max_payload_bytes": max_payload_bytes})
    except ValidationError as exc:
        problems = describe_errors(exc, tuple(ExecuteRequest.model_fields))
        return f"task {name!r}: " + "; ".join(problems)
    if name != EXECUTE and kwargs.get("type") != name:
        return f"task {name!r}: runs type {name!r} only (got type {kwargs.get('type')!r})"
    return None


def sender_task_id(headers: Any, content_type: Any, body: bytes | str | None) -> str | None:
    """The id a refused message's sender waits on, so the refusal can be its result: the id
    header, or else the `id` of a JSON object body (Celery protocol 1 sends the task's fields,
    id included, as the body). `body` is the message's body as kombu decoded the envelope
    (base64 and compression undone). Only JSON is read here: another serializer (pickle) is
    never run on a refused message."""
    task_id = headers.get("id") if isinstance(headers, Mapping) else None
    if isinstance(task_id, str):
        return task_id
    if content_type != "application/json" or not body:
        return None
    try:
        fields = json.loads(body)
    except (ValueError, TypeError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    task_id = fields.get("id") if isinstance(fields, dict) else None
    return task_id if isinstance(task_id, str) and TASK_ID_RE.match(task_id) else None
