"""The dev stack's lifetime helpers: its Redis port, the run directory's lock, the stop file."""

from __future__ import annotations

import socket

from orchestrator.cli.embedded import MACHINE_REDIS_PORT, pick_port, port_free
from orchestrator.cli.lifetime import Lifeline, lock_holder, lock_run_dir


def test_the_preferred_port_when_free_another_when_taken_and_never_6379():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert not port_free(busy)
        assert pick_port(busy) not in (busy, MACHINE_REDIS_PORT)
    assert pick_port(busy) == busy  # free again
    assert pick_port(MACHINE_REDIS_PORT) != MACHINE_REDIS_PORT
    assert pick_port(0) not in (0, MACHINE_REDIS_PORT)


def test_one_stack_per_run_directory(tmp_path):
    first = lock_run_dir(tmp_path)
    assert first is not None
    try:
        assert lock_run_dir(tmp_path) is None
        assert lock_holder(tmp_path).isdigit()
    finally:
        first.close()
    again = lock_run_dir(tmp_path)
    assert again is not None
    again.close()


def test_the_stop_file_written_afresh_and_its_removal_a_reason_to_stop(tmp_path):
    stop = tmp_path / "run" / "running"
    stop.parent.mkdir()
    stop.write_text("stale\n")
    line = Lifeline(stop, watch_parent=True)
    line.arm()
    assert stop.read_text() != "stale\n" and line.reason() is None
    stop.unlink()
    assert "was removed" in (line.reason() or "")
    line.disarm()  # already gone: no error
    assert Lifeline(None, watch_parent=False).reason() is None
