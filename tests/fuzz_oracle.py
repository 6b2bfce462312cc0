"""The oracle of the submission fuzz: what the service must answer to generated kwargs.

The oracle (`judge`) predicts, from the task-spec contract and the README's task-spec paragraph
alone, what the service must answer; it never calls the code under test. Where the contract is
silent it follows the documented behaviour of the model (noted at each rule). It judges what the
worker receives: the kwargs after kombu's JSON round trip, since that is all a worker can see
(dict keys become strings, tuples lists; NaN and infinities travel as JSON extensions). The
strategies that generate the kwargs are in tests/fuzz_specs.py.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kombu.utils import json as kombu_json

#: The task spec's fields, as the contract names them (the oracle's own copy).
SPEC_FIELDS = (
    "task_id",
    "type",
    "payload",
    "required_capabilities",
    "priority",
    "timeout_s",
    "max_retries",
    "affinity_key",
    "client_id",
)
#: The one handler the fuzz agent runs (tests/handlers.py echo).
RUNNABLE = "echo"
#: A runnable spec's timeout is at least this, so a valid task has time to finish; shorter
#: (still valid) timeouts go only to specs that park.
MIN_RUN_TIMEOUT_S = 5.0
#: The largest message body the strategy builds (JSON, before base64): under the worker
#: gate's cap for ORCH_MAX_PAYLOAD_BYTES=4096 (2 x 4096 + 64 KiB of raw entry).
MAX_BODY_BYTES = 45_000
#: The deepest payload the strategy builds; the sender raises its recursion limit for it.
MAX_DEPTH = 2_000
#: README: a payload nests at most this many levels of objects and arrays ({} is one).
PAYLOAD_MAX_DEPTH = 100
#: The worker's gate refuses a message body nested deeper than this (orchestrator.security.screen):
#: past it, the worker itself could not hand the message on (pickle recursion).
EDGE_MAX_DEPTH = 200

TYPE_CHARS = string.ascii_lowercase + string.digits + "_.-"
TASK_ID_CHARS = string.ascii_letters + string.digits + "._:-"
CLIENT_ID_CHARS = TASK_ID_CHARS + "@"
#: Characters that break naive checks: a trailing newline passes `re.match("...$")`.
TRICKY_CHARS = (
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x7f",
    " ",
    ";",
    ":",
    "'",
    '"',
    "\\",
    "\u2028",  # line separator
    "\u200b",  # zero-width space
    "\ufeff",  # byte order mark
    "\u0435",  # Cyrillic e, looks like "e"
    "\u212a",  # Kelvin sign, lower-cases to "k"
    "\ufb01",  # "fi" ligature
    "\u00e9",
    "\U0001f600",
    "\ud800",  # lone surrogates: JSON carries them as \u escapes, UTF-8 cannot
    "\udfff",
)


# --- the oracle --------------------------------------------------------------------------


class Undeliverable(Exception):
    """The kwargs cannot reach a task as sent: kombu's JSON refuses to decode them, or the
    worker's gate refuses them (a body nested too deep, a keyword named `self`). The gate
    keeps them as poison and tells the sender why."""


@dataclass(frozen=True)
class Verdict:
    """What the service must answer for one submission as the worker receives it."""

    fields: dict[str, Any]  # the kwargs after the wire
    problems: frozenset[str]  # the offending fields, as the error message names them
    payload: dict[str, Any] | None = None  # a valid spec's payload (what echo returns)
    capabilities: tuple[str, ...] = ()  # a valid spec's required capabilities
    timeout_s: float = 300.0
    task_id: str | None = None  # a valid `task_id` (also of a rejected spec), else None

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def runnable(self) -> bool:
        """Valid and runnable by the fuzz agent: it must complete with the echoed payload."""
        return (
            self.valid
            and self.fields.get("type") == RUNNABLE
            and set(self.capabilities) <= {RUNNABLE}
            and self.timeout_s >= MIN_RUN_TIMEOUT_S
        )

    @property
    def parks(self) -> bool:
        """Valid, and needs a capability no agent has: it must be accepted and parked."""
        return self.valid and not set(self.capabilities) <= {RUNNABLE}


def nesting(value: Any) -> int:
    """Levels of objects and arrays ({} and [] are one; a scalar none), iteratively."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def wire(kwargs: Mapping[Any, Any]) -> dict[str, Any]:
    """The kwargs as a worker decodes them: kombu's JSON there and back. Raises
    Undeliverable for those the worker's gate must refuse."""
    text = kombu_json.dumps(kwargs)
    try:
        decoded = kombu_json.loads(text)
    except Exception as exc:  # an object shaped like kombu's {"__type__", "__value__"} tag
        raise Undeliverable(f"{type(exc).__name__}: {exc}") from None
    assert isinstance(decoded, dict)
    depth = nesting([[], decoded, {}])  # the message body: [args, kwargs, embed]
    if depth > EDGE_MAX_DEPTH:
        raise Undeliverable(f"body nested {depth} levels deep")
    if "self" in decoded:  # Celery calls every task as Task.__call__(self, *args, **kwargs)
        raise Undeliverable("a keyword argument named 'self'")
    return decoded


def field_label(name: str) -> str:
    """How an error message names a field: as is when it is an identifier, else quoted
    (an empty, spaced or control-character name must stay visible and on one line)."""
    return name if name.isidentifier() else repr(name)


def _chars_of(value: Any, alphabet: str, low: int, high: int) -> bool:
    return isinstance(value, str) and low <= len(value) <= high and set(value) <= set(alphabet)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: str) -> bool:
    """Valid Unicode: no lone surrogate (JSON carries one as a \\u escape; UTF-8 cannot)."""
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def _is_json_value(value: Any) -> bool:
    """JSON's own types only, finite numbers only, valid Unicode text only (iterative:
    payloads may be deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return False
        elif isinstance(item, dict):
            if not all(isinstance(k, str) and _is_text(k) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif not (item is None or isinstance(item, int)):  # bool is an int
            return False
    return True


def encoded_size(payload: Any) -> int:
    """The payload's size as it travels: compact JSON, non-ASCII as \\u escapes (kombu's
    encoding), in bytes."""
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode())


def judge(kwargs: Mapping[Any, Any], max_payload_bytes: int) -> Verdict:
    """The answer the task-spec contract requires for these submit kwargs. Raises Undeliverable
    for those no task can be given (see `wire`)."""
    fields = wire(kwargs)
    bad: set[str] = {k for k in fields if k not in SPEC_FIELDS}  # unknown fields

    task_id = fields.get("task_id")
    # SPEC: 1-128 chars of [A-Za-z0-9._:-]; absent (or null: not given) means the submit id.
    if task_id is not None and not _chars_of(task_id, TASK_ID_CHARS, 1, 128):
        bad.add("task_id")

    # SPEC: required; 1-64 chars of [a-z0-9_.-].
    type_ = fields.get("type")
    if not _chars_of(type_, TYPE_CHARS, 1, 64):
        bad.add("type")

    # SPEC: a JSON object whose encoded size is at most ORCH_MAX_PAYLOAD_BYTES (default {}).
    # A null payload means the default (the model's documented leniency for `None`). README:
    # at most PAYLOAD_MAX_DEPTH levels deep, and its text valid Unicode.
    payload = fields.get("payload")
    if payload is None:
        payload = {}
    if not (
        isinstance(payload, dict)
        and nesting(payload) <= PAYLOAD_MAX_DEPTH
        and _is_json_value(payload)
        and encoded_size(payload) <= max_payload_bytes
    ):
        bad.add("payload")

    # SPEC: a list of capability names (the names agents declare: type's alphabet), at most
    # 16 entries; absent, null or empty means [type].
    caps = fields.get("required_capabilities")
    if caps is None or caps == []:
        caps = [type_]
    elif not (
        isinstance(caps, list)
        and len(caps) <= 16
        and all(_chars_of(c, TYPE_CHARS, 1, 64) for c in caps)
    ):
        bad.add("required_capabilities")

    # SPEC: integers 0-9 and 0-20 (a bool or a float is no integer; null is no integer).
    for name, default, high in (("priority", 5, 9), ("max_retries", 3, 20)):
        value = fields.get(name, default)
        if not (_is_int(value) and 0 <= value <= high):
            bad.add(name)

    # SPEC: a number with 0 < t <= 86400 (NaN is not in any range; a bool is no number).
    timeout = fields.get("timeout_s", 300.0)
    if not (
        isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout <= 86400
    ):
        bad.add("timeout_s")

    # SPEC: "optional string"; the model bounds it to 1-256 characters of valid Unicode.
    affinity = fields.get("affinity_key")
    if affinity is not None and not (
        isinstance(affinity, str) and 1 <= len(affinity) <= 256 and _is_text(affinity)
    ):
        bad.add("affinity_key")

    # SPEC: "optional string naming the submitting service"; the model's (and the README's
    # security counters') rule is 1-128 chars of [A-Za-z0-9._:@-].
    client = fields.get("client_id")
    if client is not None and not _chars_of(client, CLIENT_ID_CHARS, 1, 128):
        bad.add("client_id")

    given = task_id if "task_id" not in bad else None
    if bad:
        return Verdict(fields, frozenset(field_label(n) for n in bad), task_id=given)
    assert isinstance(payload, dict) and isinstance(caps, list)
    return Verdict(
        fields,
        frozenset(),
        payload=payload,
        capabilities=tuple(sorted(set(caps))),
        timeout_s=float(timeout),
        task_id=given,
    )
