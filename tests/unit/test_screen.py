"""The edge's checks as tables: what a worker lets through from its queues, and why not."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from orchestrator.security.screen import TaskPolicy, check_envelope, check_task_message, excerpt

GOOD: dict[str, Any] = {
    "body": "W1tdLCB7fSwge31d",
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": {"task": "orchestrator.execute", "id": "t-1"},
    "properties": {
        "delivery_tag": "d-1",
        "body_encoding": "base64",
        "delivery_info": {"exchange": "", "routing_key": "agent.a"},
    },
}


def _without(path: str) -> dict[str, Any]:
    copy: dict[str, Any] = {**GOOD, "properties": {**GOOD["properties"]}}
    copy["properties"]["delivery_info"] = {**GOOD["properties"]["delivery_info"]}
    *parents, last = path.split(".")
    node = copy
    for part in parents:
        node = node[part]
    del node[last]
    return copy


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (GOOD, None),
        ({**GOOD, "body": ""}, None),  # an empty body is Celery's to judge
        ({**GOOD, "headers": None}, None),
        ([1, 2], "a JSON list, not an object"),
        ("text", "a JSON str, not an object"),
        (None, "a JSON NoneType, not an object"),
        ({"body": "x"}, "no properties object"),
        ({**GOOD, "properties": []}, "no properties object"),
        (_without("properties.delivery_tag"), "properties.delivery_tag missing"),
        (_without("properties.delivery_info"), "properties.delivery_info missing"),
        (_without("properties.delivery_info.exchange"), "delivery_info.exchange missing"),
        (_without("properties.delivery_info.routing_key"), "delivery_info.routing_key missing"),
        ({**GOOD, "headers": [1]}, "headers is not an object"),
        ({**GOOD, "content-type": 7}, "content-type is not a string"),
        ({**GOOD, "content-encoding": {}}, "content-encoding is not a string"),
        ({**GOOD, "body": 12}, "body is not a string"),
        ({**GOOD, "body": "%%%"}, "body is not valid base64"),
        ({**GOOD, "body": "W1t"}, "body is not valid base64"),  # bad padding
        ({**GOOD, "body": "é"}, "body is not valid base64"),
        ({**GOOD, "properties": {**GOOD["properties"], "body_encoding": "rot13"}}, "rot13"),
    ],
)
def test_check_envelope(payload: Any, reason: str | None) -> None:
    got = check_envelope(payload)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def _execute(type: str, payload: dict[str, Any], max_retries: int = 3, dispatch: int = 0) -> None:
    """orchestrator.execute's signature (bound: no `self`)."""


def _submit(*args: Any, **fields: Any) -> None:
    """orchestrator.submit's signature."""


def _recover(task_id: str, kind: str, agent_id: str | None = None, error: str = "") -> None:
    """orchestrator.recover's signature."""


POLICY = TaskPolicy(
    {
        "orchestrator.execute": inspect.signature(_execute),
        "orchestrator.submit": inspect.signature(_submit),
        "orchestrator.recover": inspect.signature(_recover),
    },
    max_payload_bytes=1024,
)
EXECUTE_KW = {"type": "echo", "payload": {"x": 1}, "max_retries": 3, "dispatch": 1}
H_EXECUTE = {"task": "orchestrator.execute", "id": "task-1"}
H_SUBMIT = {"task": "orchestrator.submit", "id": "3f2c"}


@pytest.mark.parametrize(
    ("queue", "headers", "body", "reason"),
    [
        ("agent.a", H_EXECUTE, [[], EXECUTE_KW, {}], None),
        ("agent.a", H_EXECUTE, ([], EXECUTE_KW, None), None),
        ("celery", H_SUBMIT, [[], {"type": "echo"}, {}], None),
        ("orchestrator.routing", H_SUBMIT, [[1, 2], {"anything": 1}, {}], None),  # its own rules
        (
            "orchestrator.recovery",
            {"task": "orchestrator.recover", "id": "r"},
            [["t", "crash"], {}, {}],
            None,
        ),
        ("agent.a", None, [[], {}, {}], "no task header"),
        ("agent.a", {"id": "x"}, [[], {}, {}], "no task header"),
        ("agent.a", {"task": "orchestrator.execute"}, [[], EXECUTE_KW, {}], "no id header"),
        ("celery", {"task": "evil", "id": "1"}, [[], {}, {}], "unknown task 'evil'"),
        ("agent.a", H_SUBMIT, [[], {"type": "echo"}, {}], "not run from an agent's queue"),
        ("celery", H_EXECUTE, [[], EXECUTE_KW, {}], "only run from an agent's queue"),
        ("orchestrator.routing", H_EXECUTE, [[], EXECUTE_KW, {}], "only run from an agent's queue"),
        ("agent.a", H_EXECUTE, {"args": []}, "body is not [args, kwargs, embed]"),
        ("agent.a", H_EXECUTE, [[], EXECUTE_KW], "body is not [args, kwargs, embed]"),
        ("agent.a", H_EXECUTE, [{}, EXECUTE_KW, {}], "body is not [args, kwargs, embed]"),
        ("agent.a", H_EXECUTE, [[], [], {}], "body is not [args, kwargs, embed]"),
        ("agent.a", H_EXECUTE, [[], EXECUTE_KW, 5], "body is not [args, kwargs, embed]"),
        ("agent.a", H_EXECUTE, "raw", "body is not [args, kwargs, embed]"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "x": 1}, {}], "x: unknown field"),
        ("agent.a", H_EXECUTE, [[], {"payload": {}}, {}], "type: is required"),
        (
            "orchestrator.recovery",
            {"task": "orchestrator.recover", "id": "r"},
            [[], {"type": "echo", "payload": {}}, {}],
            "do not match its signature",
        ),
        ("agent.a", H_EXECUTE, [["echo", {}], {}, {}], "takes keyword arguments only"),
        ("agent.a", {**H_EXECUTE, "id": "a/b"}, [[], EXECUTE_KW, {}], "is not a valid task id"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "type": "Echo"}, {}], "type: must be"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "payload": [1]}, {}], "payload: must be a JSON"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "max_retries": 21}, {}], "max_retries:"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "max_retries": True}, {}], "max_retries:"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "dispatch": -1}, {}], "dispatch:"),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "dispatch": "1"}, {}], "dispatch:"),
    ],
)
def test_check_task_message(queue: str, headers: Any, body: Any, reason: str | None) -> None:
    got = check_task_message(queue, headers, body, POLICY)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got, got


def test_an_execute_message_names_every_broken_field() -> None:
    broken = {"type": "Echo!", "payload": "x", "max_retries": -1, "dispatch": 1.5}
    got = check_task_message("agent.a", H_EXECUTE, [[], broken, {}], POLICY)
    assert got is not None
    for field in ("type:", "payload:", "max_retries:", "dispatch:"):
        assert field in got


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\x00\xffgarbage", "\\x00\\xffgarbage"),
        (b"plain", "plain"),
        (b"line\nbreak\ttab", "line\\nbreak\\ttab"),
        ("é".encode(), "é"),
        (b"x" * 100, "x" * 80 + "..."),
    ],
)
def test_excerpt(raw: bytes, shown: str) -> None:
    assert excerpt(raw) == shown


@pytest.mark.parametrize(
    ("entry_id", "poison"),
    [("poison/1796218228890-3478dd37", True), ("poison-1", False), ("poison", False)],
)
def test_poison_ids_never_look_like_task_ids(entry_id: str, poison: bool) -> None:
    from orchestrator.models import TASK_ID_RE
    from orchestrator.store.dlq import is_poison_id

    assert is_poison_id(entry_id) is poison
    assert bool(TASK_ID_RE.match(entry_id)) is not poison


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("queue", "headers", "body"),
    [
        ("celery", H_SUBMIT, [[], {"type": "echo", "payload": {"d": _deep(600)}}, {}]),
        ("celery", H_SUBMIT, [[], {"type": "echo"}, {"chain": _deep(600)}]),
        ("agent.a", H_EXECUTE, [[], {**EXECUTE_KW, "payload": {"d": _deep(600)}}, {}]),
        ("agent.a", H_EXECUTE, [[], EXECUTE_KW, {"callbacks": _deep(600)}]),
        ("agent.a", {**H_EXECUTE, "x": _deep(600)}, [[], EXECUTE_KW, {}]),
    ],
)
def test_a_message_nested_too_deep_is_refused(queue: str, headers: Any, body: Any) -> None:
    """Found by the submission fuzzer: a worker hands each message to its pool by pickling
    it, and pickle's recursion (at ~500 levels) killed the worker for good; the message came
    back after the restart and killed it again."""
    from orchestrator.security.screen import MAX_MESSAGE_DEPTH

    got = check_task_message(queue, headers, body, POLICY)
    assert got is not None and f"nested deeper than {MAX_MESSAGE_DEPTH} levels" in got, got


def test_a_payload_as_deep_as_the_spec_allows_passes() -> None:
    from orchestrator.models import MAX_PAYLOAD_DEPTH

    payload = {"d": _deep(MAX_PAYLOAD_DEPTH - 1)}
    body = [[], {**EXECUTE_KW, "payload": payload}, {}]
    assert check_task_message("agent.a", H_EXECUTE, body, POLICY) is None


def test_a_keyword_argument_named_self_is_refused() -> None:
    """Found by the submission fuzzer: `self` binds to a task's `**fields`, but Celery calls
    every task through `Task.__call__(self, *args, **kwargs)`, which fails with a TypeError
    ("got multiple values for argument 'self'") before the task runs."""
    body = [[], {"type": "echo", "self": 1}, {}]
    got = check_task_message("celery", H_SUBMIT, body, POLICY)
    assert got is not None and "keyword argument 'self'" in got, got


@pytest.mark.parametrize(
    ("encoded", "bound"),
    [(b"[[], {}, {}]", 4), ('[[{"a": "[x"}]]', 4), (b"7", 0), (None, None), ("", 0)],
)
def test_depth_bound_counts_every_opening_bracket(encoded: Any, bound: int | None) -> None:
    from orchestrator.security.screen import depth_bound

    assert depth_bound(encoded) == bound


def test_a_deep_body_is_refused_whatever_bound_is_given_above_the_limit() -> None:
    from orchestrator.security.screen import MAX_MESSAGE_DEPTH

    deep: Any = {}
    for _ in range(MAX_MESSAGE_DEPTH + 5):
        deep = {"d": deep}
    body = [[], {**EXECUTE_KW, "payload": deep}, {}]
    got = check_task_message("agent.a", H_EXECUTE, body, POLICY, MAX_MESSAGE_DEPTH + 10)
    assert got is not None and "body nested deeper than" in got
    # A bound at or under the limit (from the encoded body) proves the body shallow.
    shallow = check_task_message("agent.a", H_EXECUTE, [[], EXECUTE_KW, {}], POLICY, 4)
    assert shallow is None


#: An agent's worker registers one task per handler type it runs (the task's name is the
#: type), each running what orchestrator.execute runs: the family of handler tasks.
_SIG = inspect.signature(_execute)
TYPED = TaskPolicy(
    {**POLICY.signatures, "echo": _SIG, "count": _SIG},
    max_payload_bytes=1024,
    handler_tasks=frozenset({"orchestrator.execute", "echo", "count"}),
)
H_ECHO = {"task": "echo", "id": "task-2"}


@pytest.mark.parametrize(
    ("queue", "headers", "body", "reason"),
    [
        ("agent.a", H_ECHO, [[], EXECUTE_KW, {}], None),
        ("agent.a", {**H_ECHO, "task": "count"}, [[], {**EXECUTE_KW, "type": "count"}, {}], None),
        # A type's task runs that type only (its rate limit is that type's).
        ("agent.a", {**H_ECHO, "task": "count"}, [[], EXECUTE_KW, {}], "runs type 'count' only"),
        ("agent.a", H_EXECUTE, [[], EXECUTE_KW, {}], None),
        ("celery", H_ECHO, [[], EXECUTE_KW, {}], "task 'echo' is only run from an agent's queue"),
        ("orchestrator.routing", H_ECHO, [[], EXECUTE_KW, {}], "only run from an agent's queue"),
        ("agent.a", H_SUBMIT, [[], {"type": "echo"}, {}], "not run from an agent's queue"),
        ("agent.a", {**H_ECHO, "task": "evil"}, [[], EXECUTE_KW, {}], "unknown task 'evil'"),
        ("celery", {**H_ECHO, "task": "evil"}, [[], EXECUTE_KW, {}], "unknown task 'evil'"),
        ("agent.a", H_ECHO, [["echo", {}], {}, {}], "task 'echo': takes keyword arguments only"),
        ("agent.a", {**H_ECHO, "id": "a/b"}, [[], EXECUTE_KW, {}], "task 'echo': id 'a/b' is not"),
        ("agent.a", H_ECHO, [[], {**EXECUTE_KW, "x": 1}, {}], "task 'echo': x: unknown field"),
        ("agent.a", H_ECHO, [[], {**EXECUTE_KW, "dispatch": -1}, {}], "task 'echo': dispatch:"),
    ],
)
def test_every_task_that_runs_a_handler_is_screened_as_execute(
    queue: str, headers: Any, body: Any, reason: str | None
) -> None:
    got = check_task_message(queue, headers, body, TYPED)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got, got


def test_orchestrator_execute_always_runs_a_handler() -> None:
    """A policy naming only the typed tasks still keeps orchestrator.execute to agents' queues
    and to its model."""
    policy = TaskPolicy(TYPED.signatures, handler_tasks=frozenset({"echo"}))
    assert "orchestrator.execute" in policy.handler_tasks
    got = check_task_message("celery", H_EXECUTE, [[], EXECUTE_KW, {}], policy)
    assert got is not None and "only run from an agent's queue" in got


@pytest.mark.parametrize(
    ("headers", "content_type", "body", "task_id"),
    [
        ({"id": "t-1", "task": "x"}, "application/json", b"[[], {}, {}]", "t-1"),
        ({}, "application/json", b'{"task": "x", "id": "p-1", "args": [], "kwargs": {}}', "p-1"),
        (None, "application/json", b'{"id": "p-2"}', "p-2"),
        ({"id": 7}, "application/json", '{"id": "p-3"}', "p-3"),  # kombu may hand a str
        ({}, "application/json", b'{"id": "../etc"}', None),  # not a task id
        ({}, "application/json", b'{"id": 12}', None),
        ({}, "application/json", b'["p-4"]', None),
        ({}, "application/json", b"{not json", None),
        ({}, "application/json", b"[" * 30_000 + b"]" * 30_000, None),
        ({}, "application/json", b"\xff\xfe\x00", None),
        ({}, "application/x-python-serialize", b'{"id": "p-5"}', None),  # only JSON is read
        ({}, "application/json", None, None),
    ],
)
def test_the_id_a_refused_message_is_answered_under(
    headers: Any, content_type: Any, body: Any, task_id: str | None
) -> None:
    """The id header, or else (Celery protocol 1: the task's fields are the body's) the
    JSON body's own `id`."""
    from orchestrator.security.screen import sender_task_id

    assert sender_task_id(headers, content_type, body) == task_id


def test_the_gate_takes_the_handler_tasks_from_the_app() -> None:
    """The tasks whose class says `runs_handler` (orchestrator.execute's, and the one per
    handler type an agent registers) are the family; orchestrator.execute is one always."""
    from celery import Celery, Task

    from orchestrator.config import load_settings
    from orchestrator.runtime.gate import WorkerGate

    class RunsHandler(Task):  # type: ignore[misc]
        runs_handler = True

    app = Celery("gate-policy", set_as_current=False)
    for name in ("echo", "count"):
        app.task(name=name, base=RunsHandler)(_execute)
    app.task(name="orchestrator.submit")(_submit)
    gate = WorkerGate(app, load_settings(), store=None, source="test")  # type: ignore[arg-type]
    policy = gate.policy()
    assert policy.handler_tasks == {"orchestrator.execute", "echo", "count"}
    assert check_task_message("agent.a", H_ECHO, [[], EXECUTE_KW, {}], policy) is None
    got = check_task_message("celery", H_ECHO, [[], EXECUTE_KW, {}], policy)
    assert got is not None and "only run from an agent's queue" in got
    assert check_task_message("celery", H_SUBMIT, [[], {"type": "echo"}, {}], policy) is None
