"""Ctrl-C to a CLI process in a test, as a terminal sends it."""

from __future__ import annotations

import signal
import subprocess


def interrupt(proc: subprocess.Popen[str]) -> str:
    """SIGINT to `proc`: its stderr once it exited (killed if it had not after 15 s)."""
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err
