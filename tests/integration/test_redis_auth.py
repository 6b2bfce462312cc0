"""Redis with a password, an ACL user and TLS: the cluster over each, and clear refusals.

Redis with a password, with the ACL file of deploy/redis/users.acl, and over TLS: a control
worker, an agent and beat over each, a task routed end to end; and the one line that stops a
worker, beat or the CLI given a wrong password or a CA that did not sign the server's
certificate, while a Redis that is only down lets a worker start and wait for it."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support import (
    REPO_ROOT,
    CeleryProcess,
    RedisServer,
    free_port,
    no_retry,
    wait_for,
)
from tests.tls import make_client_cert, make_tls_files

ACL_FILE = REPO_ROOT / "deploy" / "redis" / "users.acl"
ADMIN_PLACEHOLDER = "CHANGE-ME-ADMIN-PASSWORD"
WORKER_PLACEHOLDER = "CHANGE-ME-ORCHESTRATOR-PASSWORD"
WORKER_USER = "orchestrator"
#: Characters a URL must quote, so credentials go through every parser intact.
PASSWORD = "p@ss:w/rd%+" + secrets.token_hex(4)

WRONGPASS = "authentication failed (WRONGPASS invalid username-password pair or user is disabled)"


@dataclass(frozen=True)
class Secured:
    """A secured redis-server: its client() is an administrator; workers get `worker_url`."""

    kind: str
    server: RedisServer
    worker_user: str | None
    worker_password: str

    @property
    def worker_url(self) -> str:
        return self.server.url_as(self.worker_user, self.worker_password)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    server = RedisServer(
        workdir=tmp_path_factory.mktemp("redis-pw"),
        extra_args=["--requirepass", PASSWORD],
        password=PASSWORD,
    )
    with server:
        yield Secured("password", server, None, PASSWORD)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """The repository's ACL file as it is, its two placeholder passwords filled in."""
    workdir = tmp_path_factory.mktemp("redis-acl")
    template = ACL_FILE.read_text()
    assert ADMIN_PLACEHOLDER in template and WORKER_PLACEHOLDER in template
    admin_pw, worker_pw = secrets.token_hex(16), PASSWORD
    acl = workdir / "users.acl"
    acl.write_text(
        template.replace(ADMIN_PLACEHOLDER, admin_pw).replace(WORKER_PLACEHOLDER, worker_pw)
    )
    server = RedisServer(
        workdir=workdir, extra_args=["--aclfile", str(acl)], username="admin", password=admin_pw
    )
    with server:
        yield Secured("acl", server, WORKER_USER, worker_pw)


def _tls_server(workdir: Path, client_cert: bool) -> RedisServer:
    """TLS only (no plain port), certificates made here with openssl, and a password."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make the test certificates with")
    tls = make_tls_files(workdir / "pki")
    server = RedisServer(
        workdir=workdir,
        extra_args=["--requirepass", PASSWORD],
        password=PASSWORD,
        tls=tls,
        tls_client=make_client_cert(tls, workdir / "client") if client_cert else None,
    )
    try:
        return server.start()
    except RuntimeError as exc:
        if "tls-port" in str(exc) and "Bad directive" in str(exc):
            pytest.skip(f"{server.binary} was built without TLS support ({exc})")
        raise


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    server = _tls_server(tmp_path_factory.mktemp("redis-tls"), client_cert=False)
    try:
        yield Secured("tls", server, None, PASSWORD)
    finally:
        server.close()


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """The server asks for a client certificate (ssl_certfile/ssl_keyfile in the URL)."""
    server = _tls_server(tmp_path_factory.mktemp("redis-mtls"), client_cert=True)
    try:
        yield Secured("mtls", server, None, PASSWORD)
    finally:
        server.close()


@pytest.fixture(scope="module", params=["password", "acl", "tls", "mtls"])
def secured(request: pytest.FixtureRequest) -> Secured:
    value: Secured = request.getfixturevalue(f"{request.param}_redis")
    return value


@pytest.fixture
def redis_url(secured: Secured) -> str:
    """Overrides the session server's: orch_env, redis_client, client, start_control and
    start_agent all speak to the secured server, as the worker user."""
    with secured.server.client() as admin:
        admin.flushall()
    return secured.worker_url


def _refused(proc: CeleryProcess, line: str, timeout: float = 30.0) -> str:
    """The process exits 2 by itself, its log holding `line` and no traceback or retries."""
    assert proc.wait(timeout=timeout) == 2, proc.log_text()
    log = proc.log_text()
    assert line in log.splitlines(), log
    assert "Traceback" not in log and "Cannot connect" not in log, log
    return log


def test_a_task_is_routed_end_to_end(
    secured: Secured,
    start_control: Callable[..., CeleryProcess],
    start_agent: Callable[..., CeleryProcess],
    celery_procs: Callable[..., CeleryProcess],
    client,
    redis_client: redis.Redis,
) -> None:
    """Control worker, agent, beat and client all on the secured URL: the client's own
    routing and a by-name `orchestrator.submit` both complete, and beat ticks."""
    start_control()
    start_agent("alpha", "echo")
    beat = celery_procs(["beat", "-l", "info"], name="beat")

    direct = client.submit("echo", {"over": secured.kind})
    assert direct.get(timeout=60) == {"over": secured.kind}
    by_name = client.app.send_task(
        "orchestrator.submit", kwargs={"type": "echo", "payload": {"by": "name"}}
    )
    assert by_name.get(timeout=60) == {"by": "name"}
    for result in (direct, by_name):
        key = f"orch:task:{result.id}"  # the result can come a moment before the ledger's end
        wait_for(lambda: redis_client.hget(key, "state") == "succeeded", timeout=10)  # noqa: B023
        assert redis_client.hget(key, "agent") == "alpha"

    log = beat.wait_for_log("Sending due task", timeout=60)
    assert "beat: Acquired lock" in log and "Traceback" not in log


@pytest.mark.parametrize("secured", ["password"], indirect=True)
def test_a_worker_with_a_wrong_password_stops_with_one_line(
    secured: Secured, start_control: Callable[..., CeleryProcess]
) -> None:
    wrong = secured.server.url_as(None, "wrong-" + PASSWORD)
    proc = start_control(wait=False, ORCH_REDIS_URL=wrong)
    _refused(proc, f"hive-orchestrator: ORCH_REDIS_URL: {WRONGPASS}")


@pytest.mark.parametrize("secured", ["acl"], indirect=True)
def test_an_agent_with_a_wrong_state_password_names_orch_state_url(
    secured: Secured, start_agent: Callable[..., CeleryProcess]
) -> None:
    """Broker and result backend are right; only the state store's override is wrong."""
    wrong = secured.server.url_as(WORKER_USER, "wrong")
    proc = start_agent("beta", "echo", wait=False, ORCH_STATE_URL=wrong)
    _refused(proc, f"hive-orchestrator: ORCH_STATE_URL: {WRONGPASS}")


@pytest.mark.parametrize("secured", ["password"], indirect=True)
def test_beat_and_the_cli_with_a_wrong_password_stop_with_one_line(
    secured: Secured, celery_procs: Callable[..., CeleryProcess], orch_env: dict[str, str]
) -> None:
    env = {**orch_env, "ORCH_REDIS_URL": secured.server.url_as(None, "wrong")}
    beat = celery_procs(["beat", "-l", "info"], env, name="beat")
    _refused(beat, f"hive-orchestrator: ORCH_REDIS_URL: {WRONGPASS}")

    cli = [sys.executable, "-m", "orchestrator.cli", "agents"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2  # a setting's error, in every command
    assert done.stderr.strip() == f"Error: ORCH_REDIS_URL: {WRONGPASS}"


@pytest.mark.parametrize("secured", ["tls"], indirect=True)
def test_a_worker_that_does_not_trust_the_servers_ca_stops_with_one_line(
    secured: Secured, start_control: Callable[..., CeleryProcess], tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path / "other-pki", name="Other")
    untrusted = secured.server.url_as(None, PASSWORD, ca_cert=other.ca_cert)
    proc = start_control(wait=False, ORCH_REDIS_URL=untrusted)
    assert proc.wait(timeout=30) == 2, proc.log_text()
    lines = [x for x in proc.log_text().splitlines() if x.startswith("hive-orchestrator:")]
    assert len(lines) == 1, proc.log_text()
    assert lines[0].startswith("hive-orchestrator: ORCH_REDIS_URL: TLS certificate not trusted (")
    assert "certificate" in lines[0].split("(", 1)[1]  # OpenSSL's reason, e.g. self-signed
    assert "Traceback" not in proc.log_text()


def _denied_to_worker(worker: redis.Redis, admin: redis.Redis, command: tuple[str, ...]) -> bool:
    try:
        worker.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.ResponseError as exc:
        # Redis 7 refuses DEBUG to every client (enable-debug-command) before it looks at
        # the ACL; ask the ACL itself what it would do.
        if "not allowed" not in str(exc):
            raise
        verdict = admin.execute_command("ACL", "DRYRUN", WORKER_USER, *command)
        return "no permissions" in str(verdict)
    return False


@pytest.mark.parametrize("secured", ["acl"], indirect=True)
def test_the_worker_user_cannot_flush_reconfigure_or_list_keys(secured: Secured) -> None:
    worker = redis.Redis.from_url(secured.worker_url, retry=no_retry())
    try:
        worker.set("orch:probe", "1")
        refused = [
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "GET", "maxmemory"),
            ("CONFIG", "SET", "dir", "/tmp"),
            ("KEYS", "*"),
            ("DEBUG", "SLEEP", "0"),
            ("ACL", "SETUSER", WORKER_USER, "+flushall"),  # it cannot grant itself back
            ("SHUTDOWN", "NOSAVE"),
        ]
        with secured.server.client() as admin:
            allowed = [c for c in refused if not _denied_to_worker(worker, admin, c)]
        assert allowed == []
        assert worker.get("orch:probe") == b"1"
    finally:
        worker.close()
    # Without a user, the default user is off: nothing at all.
    anonymous = redis.Redis(host="127.0.0.1", port=secured.server.port, retry=no_retry())
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()


@pytest.mark.parametrize("secured", ["password"], indirect=True)
def test_a_redis_that_is_only_down_lets_the_worker_start_and_wait(
    secured: Secured,
    start_control: Callable[..., CeleryProcess],
    tmp_path: Path,
) -> None:
    """Connection refused is not a reason to stop (Celery retries, the chaos suite restarts
    Redis under workers): the worker waits, and serves once the server comes up."""
    port = free_port()
    later = RedisServer(
        port=port,
        workdir=tmp_path / "later",
        extra_args=["--requirepass", PASSWORD],
        password=PASSWORD,
    )
    proc = start_control(wait=False, ORCH_REDIS_URL=later.url)
    proc.wait_for_log("ORCH_REDIS_URL: Redis not reachable yet", timeout=60)
    assert proc.alive
    with later:
        proc.wait_for_log("ready.", timeout=60)
        proc.terminate()  # while its Redis is still up


@pytest.mark.parametrize("secured", ["password"], indirect=True)
def test_the_test_port_guard_reads_rediss_and_credentials(
    celery_procs: Callable[..., CeleryProcess],
) -> None:
    """conftest's celery_procs refuses a URL that would reach the machine's own Redis."""
    for url in (
        "rediss://:pw@127.0.0.1/0?ssl_cert_reqs=required",
        "rediss://:pw@127.0.0.1:6379/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.crt",
        "redis://orchestrator:p%40ss@127.0.0.1:6379/0",
        "redis://orchestrator:pw@localhost/0",
    ):
        with pytest.raises(ValueError, match="needs ORCH_REDIS_URL of a test server"):
            celery_procs(["worker"], {"ORCH_REDIS_URL": url})
