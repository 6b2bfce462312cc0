"""Fixtures over real servers: a private redis-server per session, celery processes per test."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.support import (
    FORBIDDEN_PORT,
    CeleryProcess,
    RedisServer,
    tail,
    worker_environ,
)

#: The celery processes a test started, for the failure report hook below.
CELERY_PROCS_KEY = pytest.StashKey[list[CeleryProcess]]()

CeleryFactory = Callable[..., CeleryProcess]


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (`make test &`, a CI step
    run as a background job) inherits SIGINT ignored, and an ignored signal stays ignored
    across exec: every CLI a test sends Ctrl-C would ignore it. Python's own handler instead
    (exec resets a handled signal to its default), in the main process and each xdist worker."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of each celery log to a failed test's report.

    The worker's log is usually the only place the reason is (an import error, a traceback in
    a task); attaching it as a report section puts it in CI output next to the assertion.
    """
    report = yield
    if report.failed:
        for proc in item.stash.get(CELERY_PROCS_KEY, []):
            report.sections.append(
                (f"{proc.name} log (last 60 lines, {proc.log_path})", tail(proc.log_text(), 60))
            )
    return report


@pytest.fixture(autouse=True)
def _no_inherited_orch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no ORCH_* variable in os.environ.

    A developer's shell (or CI) may export ORCH_REDIS_URL or ORCH_SCALE_MIN; settings loaded in
    the test process would read them, so a test would pass or fail by the shell it ran in. A test
    sets what it needs with monkeypatch; children get theirs from `orch_env`.
    """
    for key in [k for k in os.environ if k.startswith("ORCH_")]:
        monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session: starting one per test costs more than a flush."""
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, flushed before the test so no state leaks between tests.

    A test that killed the server (chaos) and did not restart it gets it back here. At the
    end a garbage collection runs, so a connection the test left open is reported (as an
    unclosed-socket ResourceWarning, an error here) against this test, not whichever test
    the collector happens to run in later.
    """
    assert redis_server.port != FORBIDDEN_PORT, "refusing to flush the machine's own Redis"
    if not redis_server.alive:
        redis_server.restart()
    with redis_server.client() as client:
        client.flushall()
    yield redis_server.url
    gc.collect()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A str-decoding client on the flushed test server."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def orch_env(redis_url: str) -> dict[str, str]:
    """A complete, hermetic environment for child processes (usable with subprocess.run too).

    Inherited ORCH_* variables are dropped so a developer's shell cannot point workers at a real
    Redis; liveness timings are shortened so agent-loss tests finish in seconds. The repository
    root goes on PYTHONPATH because children run in a temp cwd and must import `tests.handlers`.
    """
    return worker_environ(redis_url)


@pytest.fixture
def celery_procs(
    request: pytest.FixtureRequest, tmp_path: Path, orch_env: dict[str, str]
) -> Iterator[CeleryFactory]:
    """Factory `celery_procs(args, env=orch_env, **kw)` -> a started CeleryProcess.

    Every process group is SIGKILLed at teardown, so a test never leaks a worker that would
    consume the next test's tasks. Not a warm stop: that costs 2-3 s per test (billiard's pool
    supervisor sleeps in 0.8 s steps, the event consumer finishes its 1 s blocking read) and
    nothing after the test body is checked; tests about warm shutdown stop workers themselves.
    An env without a test Redis URL is refused: the default is the machine's own Redis on 6379.
    """
    procs: list[CeleryProcess] = []
    request.node.stash[CELERY_PROCS_KEY] = procs

    def start(
        args: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> CeleryProcess:
        env = orch_env if env is None else env
        urls = [env[k] for k in ("ORCH_REDIS_URL", "ORCH_BROKER_URL") if k in env]
        # No port in a redis:// URL means 6379 too; a sentinel URL names a test group's
        # sentinels (tests/sentinel.py), never the machine's Redis.
        direct = [url for url in urls if not url.startswith("sentinel://")]
        if not urls or any(urlsplit(url).port in (None, FORBIDDEN_PORT) for url in direct):
            raise ValueError(f"celery_procs needs ORCH_REDIS_URL of a test server, got {urls}")
        kwargs.setdefault("name", f"{args[0] if args else 'celery'}-{len(procs) + 1}")
        kwargs.setdefault("log_dir", tmp_path / "celery")
        proc = CeleryProcess(args, env, **kwargs)
        procs.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in procs:  # the whole group, at once; one already reaped is only swept
            proc.kill()
