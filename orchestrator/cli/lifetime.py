"""How `orchestrator dev` and its children end together.

One stack per run directory, and none of its processes left running once the stack, or
whatever started it (make, an IDE), is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

#: prctl(2): the signal the kernel sends a process when its parent exits (Linux only).
PR_SET_PDEATHSIG = 1
LOCK_NAME = "dev.lock"


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for each child: the kernel kills it (SIGKILL) when the stack dies
    without stopping it (the stack itself killed). Not SIGTERM: every child would get it at
    the same instant, Redis included, and a worker's warm shutdown could then wait on the
    Redis that just went, long after the stack; what a killed worker held comes back through
    the visibility timeout and the ledger. The stack's own stop stays orderly (workers
    first, Redis last). None off Linux (no prctl), where the children stop only through the
    stack's own stop."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the stack died before prctl: no signal would come
            os._exit(1)

    return preexec


def lock_run_dir(run_dir: Path) -> IO[str] | None:
    """Hold `run_dir/dev.lock` for as long as the returned file stays open (the kernel lets
    go when this process dies), with this pid in it; None while another process holds it.
    Two stacks on one run directory would run two redis-servers on one data directory."""
    handle = open(run_dir / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held open
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_holder(run_dir: Path) -> str:
    """The pid written in the run directory's lock ("?" when unreadable)."""
    try:
        return (run_dir / LOCK_NAME).read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


class Lifeline:
    """Why the stack should stop besides a signal to it: its stop file was removed, or the
    process that started it exited.

    The stop file is for make: interrupted (SIGINT, SIGTERM, SIGHUP to make's pid alone, as an
    IDE's stop button sends), make waits for its recipe to end, and ends only after it, but
    first deletes the recipe's target file. `make run` names that file here.
    """

    def __init__(self, stop_file: Path | None, watch_parent: bool) -> None:
        self.stop_file = stop_file
        parent = os.getppid()
        # A parent of 1 is init (or a container's first process): nothing to watch.
        self.parent = parent if watch_parent and parent != 1 else None

    def arm(self) -> None:
        """Write the stop file afresh (a new mtime: make deletes only a target its recipe
        changed), with this pid in it."""
        if self.stop_file is not None:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.unlink(missing_ok=True)
            self.stop_file.write_text(f"{os.getpid()}\n", encoding="utf-8")

    def reason(self) -> str | None:
        if self.stop_file is not None and not self.stop_file.exists():
            return f"{self.stop_file} was removed (make was interrupted, or `make clean` ran)"
        if self.parent is not None and os.getppid() != self.parent:
            return f"the process that started this one (pid {self.parent}) exited"
        return None

    def disarm(self) -> None:
        if self.stop_file is not None:
            with contextlib.suppress(OSError):
                self.stop_file.unlink(missing_ok=True)
