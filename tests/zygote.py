"""A fork server for the tests' `celery -A <app> ...` processes: imports paid once, not per start.

Two thirds of a worker's start-up CPU (about 0.6 of 0.95 s on this machine) is importing
celery, kombu, redis, pydantic and billiard; the suite starts a few hundred workers on two
cores. This process imports them once and forks a child per start, which then runs exactly
what `python -m celery -A <app> <args>` runs (`celery.__main__.main` with that argv), in its own
session, cwd, environment and log file. Nothing of the orchestrator is imported here: the app
module reads its settings from the environment, so every child imports it itself.

`python -m tests.zygote` speaks JSON lines on stdin/stdout: {"op": "spawn", "module", "args",
"env", "cwd", "out", "err"} -> {"pid"}; {"op": "poll", "pid"} -> {"code"} (None while it runs;
a negative code is the signal that ended it, as Popen's returncode). The zygote is the
children's parent and reaps them, so their exit codes are known here.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.redis_urls import STATE_CLUSTER_VARIABLE

PRELOAD = (  # not celery.__main__: runpy runs that one fresh, as `python -m celery` does
    "celery.bin.celery",
    "celery.apps.worker",
    "celery.apps.beat",
    "celery.worker.consumer",
    "celery.concurrency.prefork",
    "celery.backends.redis",
    "kombu.transport.redis",
    "billiard.pool",
    "redis",
    "pydantic",
    "pydantic_settings",
    "redbeat",
    # The orchestrator's modules read no environment at import (orchestrator.app does: each
    # child imports that one itself).
    "orchestrator.cli.main",
    "orchestrator.runtime.agent",
    "orchestrator.runtime.event_processing",
    "orchestrator.runtime.gate",
    "orchestrator.runtime.metrics",
    "orchestrator.runtime.upgrade",
    "orchestrator.security.preflight",
)


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the `celery` process the request describes; never return."""
    code: int = 1
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for fd, path in ((1, request["out"]), (2, request["err"]), (0, os.devnull)):
            flags = os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_APPEND | os.O_CREAT
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = request["cwd"]  # as `python -m` puts the cwd first
        sys.argv = ["-m", *request["args"]]  # run_module puts the module's path first
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    exited: dict[int, int] = {}
    stdin = sys.stdin.buffer

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            exited[pid] = os.waitstatus_to_exitcode(status)

    def answer(reply: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        reap()
        if not ready:
            continue
        line = stdin.readline()
        if not line:
            return  # the test process is gone; its teardown killed every group it started
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer({"pid": pid})
        else:
            reap()
            answer({"code": exited.get(request["pid"])})


class ForkedChild:
    """A child of the zygote, with the part of Popen's interface the tests use."""

    def __init__(self, server: ForkServer, pid: int, args: Sequence[str]) -> None:
        self.server = server
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.call({"op": "poll", "pid": self.pid})["code"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.01)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    """The client side: one zygote per test process and Python environment, started on first
    use and ended when the test process exits. TESTS_FORK_SERVER=0 turns it off (every
    start is then a plain `python -m celery` subprocess)."""

    _servers: ClassVar[dict[tuple[tuple[str, str], ...], ForkServer]] = {}

    def __init__(self, env: Mapping[str, str]) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote"],
            env=dict(env),
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )

    @classmethod
    def for_env(cls, env: Mapping[str, str]) -> ForkServer | None:
        """The zygote whose interpreter was started as `env` starts one (the variables read at
        import: PYTHON* and ORCH_STATE_CLUSTER), or None when fork serving is off."""
        if os.environ.get("TESTS_FORK_SERVER", "1") == "0":
            return None
        key = tuple(sorted((k, v) for k, v in env.items() if _read_at_import(k)))
        server = cls._servers.get(key)
        if server is None or server._proc.poll() is not None:
            plain = {k: v for k, v in env.items() if _read_at_import(k) or k[:5] != "ORCH_"}
            server = cls._servers[key] = cls(plain)  # its children get their ORCH_* per start
        return server

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server (pid {self._proc.pid}) exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def spawn(
        self,
        module: str,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        out: Path,
        err: Path | None = None,
    ) -> ForkedChild:
        """Start `python -m <module> <args>` as a child of the zygote, its output to files."""
        request = {"op": "spawn", "module": module, "args": list(args), "env": dict(env)}
        paths = {"cwd": str(cwd), "out": str(out), "err": str(err or out)}
        reply = self.call({**request, **paths})
        return ForkedChild(self, reply["pid"], [module, *args])

    def run(
        self, module: str, args: Sequence[str], env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """`subprocess.run([python, -m, module, *args], capture_output=True, text=True)`."""
        with tempfile.TemporaryDirectory(prefix="zygote-run-") as folder:
            out, err = Path(folder) / "out", Path(folder) / "err"
            child = self.spawn(module, args, env, Path.cwd(), out, err)
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise
            return subprocess.CompletedProcess(
                [module, *args], code, out.read_text(errors="replace"), err.read_text("utf-8")
            )

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _read_at_import(name: str) -> bool:
    """A variable the zygote's imports read (its children cannot change what it did): the
    interpreter's, and the one that picks the state store's key layout."""
    return name.startswith("PYTHON") or name == STATE_CLUSTER_VARIABLE


def run_module(
    module: str, args: Sequence[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` run to its end with its output captured: forked from the
    zygote when fork serving is on, else a subprocess."""
    server = ForkServer.for_env(env)
    if server is not None:
        return server.run(module, args, env, timeout)
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, env=dict(env), capture_output=True, text=True, timeout=timeout)


@atexit.register
def _close_servers() -> None:
    for server in ForkServer._servers.values():
        server.close()


if __name__ == "__main__":
    main()
