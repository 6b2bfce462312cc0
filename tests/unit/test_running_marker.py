"""RunningMarker: which task a pool child runs, readable by its siblings, surviving its death."""

from __future__ import annotations

import multiprocessing
import os
import uuid

import pytest

from orchestrator.runtime.agent import RunningMarker


@pytest.fixture
def marker(tmp_path, monkeypatch) -> RunningMarker:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return RunningMarker(f"agent-{uuid.uuid4().hex[:8]}")


def test_a_mark_is_read_back_until_cleared_or_replaced(marker):
    pid = os.getpid()
    assert not marker.holds(pid, "t-1")
    marker.mark(pid, "a-much-longer-task-id")
    marker.mark(pid, "t-1")  # a shorter id replaces a longer one entirely
    assert marker.holds(pid, "t-1") and not marker.holds(pid, "a-much-longer-task-id")
    marker.clear(pid)
    assert not marker.holds(pid, "t-1")
    marker.mark(pid, "t-2")
    assert marker.holds(pid, "t-2")


def _mark_and_exit(agent_id: str, tempdir: str, task_id: str) -> None:
    import tempfile

    tempfile.tempdir = tempdir
    RunningMarker(agent_id).mark(os.getpid(), task_id)
    os._exit(0)  # like a SIGKILLed child: no clear


def test_a_mark_survives_its_process_and_an_unmarked_process_clears_a_stale_one(marker, tmp_path):
    agent_id = marker.folder.name.removeprefix("hive-orchestrator-")
    child = multiprocessing.get_context("fork").Process(
        target=_mark_and_exit, args=(agent_id, str(tmp_path), "t-9")
    )
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert marker.holds(child.pid, "t-9")
    # A later process given the same pid that never marked anything clears the stale file.
    RunningMarker(agent_id).clear(child.pid)
    assert not marker.holds(child.pid, "t-9")
