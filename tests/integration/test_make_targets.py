"""The Makefile's run, run-fresh and clean targets and its two kinds of install, run by make."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support import REPO_ROOT, child_pids, free_port, hermetic_environ, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH"),
]

#: What `make run` installs first; `-o` tells make it is done (the tests' interpreter is).
RUN_STAMP = ".venv/.installed-run"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _dry_run(venv: Path, *targets: str) -> str:
    """What `make -n <targets>` would run with the virtualenv at `venv`."""
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO_ROOT), f"VENV={venv}", *targets],
        env=hermetic_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def _stamp(path: Path, age_s: float = -60.0) -> None:
    """Create `path` as an install stamp, `age_s` seconds older than pyproject.toml (newer
    when negative)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    t = (REPO_ROOT / "pyproject.toml").stat().st_mtime - age_s
    os.utime(path, (t, t))


def test_run_installs_what_running_needs_and_test_and_lint_the_dev_tools(tmp_path):
    venv = tmp_path / "venv"
    run = _dry_run(venv, "run")
    assert "pip install -e ." in run and "[dev]" not in run and "--quiet" not in run, run
    for target in ("test", "lint"):
        assert "pip install -e '.[dev]'" in _dry_run(venv, target)

    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    _stamp(venv / ".installed-run")
    assert "pip install" not in _dry_run(venv, "run")
    assert "pip install -e '.[dev]'" in _dry_run(venv, "test")  # the run stamp is not enough
    _stamp(venv / ".installed-dev")
    assert "pip install" not in _dry_run(venv, "run", "test", "lint")
    _stamp(venv / ".installed-dev", age_s=60)  # pyproject.toml changed since
    assert "pip install -e '.[dev]'" in _dry_run(venv, "test")


def test_clean_removes_the_dev_data_and_git_ignores_it(tmp_path):
    clean = _dry_run(tmp_path / "venv", "clean")
    assert ".run" in clean.split(), clean
    ignored = (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".run/" in ignored


def _make_run(tmp_path: Path, *targets: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`make run` (or another target) as a user starts it, on ports and a run directory of
    the test's own; returns make, the Redis port and make's log."""
    redis_port = free_port()
    dev_args = (
        f"--redis-port={redis_port} --flower-port={free_port()} --exporter-port={free_port()}"
    )
    argv = [
        "make",
        "-C",
        str(REPO_ROOT),
        "-o",
        RUN_STAMP,
        *targets,
        f"BIN={Path(sys.executable).parent}",
        f"RUN_DIR={tmp_path / 'run'}",
        f"DEV_ARGS={dev_args}",
    ]
    env = hermetic_environ(
        {
            "PYTHONUNBUFFERED": "1",
            "ORCH_AGENT_HEARTBEAT_INTERVAL_S": "1",
            "ORCH_AGENT_TIMEOUT_S": "4",
        }
    )
    # Never an install into the interpreter running the tests: make would run one if the
    # stamp's name changed, and only its dry run says so before anything happens.
    plan = subprocess.run([*argv, "-n"], env=env, capture_output=True, text=True, timeout=30)
    assert plan.returncode == 0 and "pip" not in plan.stdout, plan.stdout + plan.stderr
    log_path = tmp_path / "make.log"
    with open(log_path, "wb") as log:
        make = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return make, redis_port, log_path


def _kill_all(pids: list[int]) -> None:
    """SIGKILL what is left (each child of the stack leads a process group of its own)."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("victim", "sig"),
    [("make", signal.SIGINT), ("make", signal.SIGKILL), ("stack", signal.SIGKILL)],
    ids=["sigint-to-make", "make-killed", "stack-killed"],
)
def test_the_stack_stops_with_make(tmp_path, victim, sig):
    """An IDE's stop button signals make's pid only, and make, interrupted, waits for its
    recipe: the stack stops anyway (make deletes the recipe's target file, which the stack
    watches). Make killed outright: the stack stops when its parent is gone. The stack
    killed outright: its children stop with it (each is told when its parent dies)."""
    make, redis_port, log_path = _make_run(tmp_path, "run")
    client = redis.Redis(port=redis_port, decode_responses=True)
    everyone: list[int] = []
    try:
        wait_for(
            lambda: client.hlen("orch:agents") == 3,
            timeout=90,
            ignore=(redis.RedisError,),
            message="the demo agents never registered",
        )
        (stack,) = child_pids(make.pid)  # make's recipe execs the stack: no shell between
        children = child_pids(stack)
        assert len(children) == 8, children  # redis, control, 3 agents, beat, flower, exporter
        everyone = [stack, *children]
        os.kill(make.pid if victim == "make" else stack, sig)
        wait_for(
            lambda: not [p for p in everyone if _alive(p)],
            timeout=25,
            message=f"some of {everyone} survived",
        )
        make.wait(timeout=10)
    finally:
        client.close()
        _kill_all(everyone)
        if make.poll() is None:
            make.kill()
            make.wait()
    assert "Hive Orchestrator (dev)" in log_path.read_text()
