"""Celery's canvas over `orchestrator.submit`: chains, chords, groups and link_error.

Built as a Celery user builds them, on real workers. Each step records when it started and
ended in a file (outside Redis), so order is judged by the handlers' own clocks."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group
from celery.canvas import Signature

from orchestrator.errors import PermanentError
from tests.support import wait_for

SHARED_AGENTS = {"a": ("step,echo", 2), "b": ("step,echo", 2)}
SUBMIT = "orchestrator.submit"


class Steps:
    """Signatures of `step` tasks that log to one file, and that file's lines by key."""

    def __init__(self, app: Any, path: Path) -> None:
        self.app, self.path = app, path

    def payload(self, key: str, **extra: Any) -> dict[str, Any]:
        return {"key": key, "path": str(self.path), **extra}

    def s(self, key: str, **extra: Any) -> Signature:
        return self.app.signature(
            SUBMIT, kwargs={"type": "step", "payload": self.payload(key, **extra)}
        )

    def si(self, key: str, **extra: Any) -> Signature:
        return self.app.signature(
            SUBMIT, kwargs={"type": "step", "payload": self.payload(key, **extra)}, immutable=True
        )

    def runs(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return {line["key"]: line for line in lines}

    def after(self, later: str, *earlier: str) -> None:
        runs = self.runs()
        for key in earlier:
            assert runs[later]["start"] >= runs[key]["end"], (later, key, runs)


@pytest.fixture
def steps(shared, tmp_path: Path) -> Steps:
    return Steps(shared.client.app, tmp_path / "steps.jsonl")


def test_a_chain_of_mutable_links_runs_each_after_the_last_and_hands_its_result_on(steps):
    result = chain(steps.s("a", seconds=0.5), steps.s("b", seconds=0.5), steps.s("c")).apply_async()
    value = result.get(timeout=60)
    assert value == {
        "key": "c",
        "previous": {"key": "b", "previous": {"key": "a", "previous": None}},
    }
    steps.after("b", "a")
    steps.after("c", "b")
    # Every link's own id resolves to its handler's value, as in plain Celery.
    assert result.parent.get(timeout=10)["key"] == "b"
    assert result.parent.parent.get(timeout=10)["key"] == "a"


def test_a_chain_of_immutable_links_waits_for_each_handler(steps):
    value = chain(
        steps.si("a", seconds=0.5), steps.si("b", seconds=0.5), steps.si("c")
    ).apply_async()
    assert value.get(timeout=60) == {"key": "c", "previous": None}
    steps.after("b", "a")
    steps.after("c", "b")


def test_a_chord_callback_starts_after_every_header_handler_with_their_results(steps):
    header = [steps.s(f"h{i}", seconds=0.3 * i) for i in range(4)]
    value = chord(header, steps.s("body")).apply_async().get(timeout=60)
    assert value["key"] == "body"
    assert [r["key"] for r in value["previous"]] == ["h0", "h1", "h2", "h3"]  # header order
    steps.after("body", "h0", "h1", "h2", "h3")


def test_an_immutable_chord_callback_gets_no_results_but_still_waits(steps):
    value = chord([steps.s("x", seconds=0.5), steps.s("y")], steps.si("after")).apply_async()
    assert value.get(timeout=60) == {"key": "after", "previous": None}
    steps.after("after", "x", "y")


def test_a_group_inside_a_chain_fans_out_and_joins(steps):
    flow = chain(
        steps.s("first", seconds=0.3),
        group(steps.s("left", seconds=0.3), steps.s("right")),
        steps.s("last"),
    )
    value = flow.apply_async().get(timeout=60)
    assert value["key"] == "last"
    assert [r["key"] for r in value["previous"]] == ["left", "right"]
    assert all(r["previous"]["key"] == "first" for r in value["previous"])
    steps.after("left", "first")
    steps.after("right", "first")
    steps.after("last", "left", "right")


def test_nested_chords_and_a_chord_inside_a_chain_join_in_order(steps):
    inner = chord([steps.s("i1", seconds=0.3), steps.s("i2")], steps.s("inner"))
    flow = chain(chord([inner, steps.s("side", seconds=0.2)], steps.s("outer")), steps.s("tail"))
    value = flow.apply_async().get(timeout=60)
    assert value["key"] == "tail" and value["previous"]["key"] == "outer"
    assert [r["key"] for r in value["previous"]["previous"]] == ["inner", "side"]
    steps.after("inner", "i1", "i2")
    steps.after("outer", "inner", "side")
    steps.after("tail", "outer")


def test_a_group_resolves_to_its_handlers_results_in_order(steps):
    results = group(steps.si(f"g{i}") for i in range(6)).apply_async()
    assert [r["key"] for r in results.get(timeout=60)] == [f"g{i}" for i in range(6)]


def test_a_failing_link_fails_the_chain_with_its_error_and_fires_link_error(steps):
    errback = steps.si("errback")
    flow = chain(steps.s("ok"), steps.s("bad", fail=True), steps.s("never"))
    result = flow.apply_async(link_error=errback)
    with pytest.raises(PermanentError, match="step bad failed on purpose"):
        result.get(timeout=60)
    wait_for(lambda: "errback" in steps.runs(), timeout=30, message="link_error never ran")
    assert "never" not in steps.runs()
    assert result.state == "FAILURE"  # the last link's id tells the chain's failure


def test_a_task_dead_lettered_by_recovery_fails_its_chain_too(steps):
    flow = chain(steps.s("crashes", crash=True), steps.s("never"))
    first = flow.tasks[0]
    first.kwargs["max_retries"] = 0
    result = flow.apply_async()
    with pytest.raises(Exception, match=r"dead-lettered"):
        result.get(timeout=60)
    assert "never" not in steps.runs()


def test_the_message_id_and_a_given_task_id_tell_one_outcome(shared):
    app = shared.client.app
    own = f"own-{uuid.uuid4().hex[:8]}"
    first = app.send_task(SUBMIT, kwargs={"type": "echo", "payload": {"n": 1}, "task_id": own})
    assert first.get(timeout=30) == {"n": 1}
    assert app.AsyncResult(own).get(timeout=10) == {"n": 1}
    # A second submission of the ended id runs nothing, and its message id tells the outcome.
    again = app.send_task(SUBMIT, kwargs={"type": "echo", "payload": {"n": 2}, "task_id": own})
    assert again.get(timeout=30) == {"n": 1}
