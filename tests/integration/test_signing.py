"""Message signing (Celery's `auth` serializer) on a real cluster.

Message signing (Celery's `auth` serializer) on a real cluster: ORCH_SIGNING_KEY, _CERT and
_CERT_STORE set on every role.

Signed tasks route and complete on every submission path; unsigned, foreign-signed and
tampered messages run nothing and are kept as poison; replays (signing covers the body only)
are caught by the ledger; remote control and beat keep working, and remote control from
outside the trust is ignored.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.security.certificate import Certificate
from celery.security.key import PrivateKey
from celery.security.serialization import DEFAULT_SEPARATOR, SecureSerializer
from kombu.serialization import loads, registry

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.runtime.celeryconf import EXECUTE, SUBMIT, create_app
from orchestrator.runtime.transport import Push, captured_pushes
from orchestrator.store.keys import KOMBU_UNACKED, POISON, POISON_MSG, queue_lists
from tests.support import free_port, wait_for
from tests.unit.test_signing_settings import Identity, openssl_identity

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "orchestrator.cli"]
CELERY = [sys.executable, "-m", "celery", "-A", "orchestrator.app"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    """The cluster's identity (one key for every role here) and a stranger's."""
    root = tmp_path_factory.mktemp("pki")
    return {name: openssl_identity(root / name, name) for name in ("hive", "stranger")}


@pytest.fixture(autouse=True)
def kombu_registry() -> Iterator[None]:
    """Signing changes kombu's process-wide serializer registry (the `auth` codec, the default
    serializer, the disabled decoders); put it back so no other test module inherits it."""
    saved = {
        name: getattr(registry, name)
        for name in ("_default_encode", "_default_content_type", "_default_content_encoding")
    }
    tables = {
        name: dict(getattr(registry, name))
        for name in ("_encoders", "_decoders", "type_to_name", "name_to_type")
    }
    disabled = set(registry._disabled_content_types)
    try:
        yield
    finally:
        for name, value in {**saved, **tables}.items():
            setattr(registry, name, value)
        registry._disabled_content_types = disabled


def signing_client(redis_url: str, identity: Identity, **kw: Any) -> OrchestratorClient:
    settings = load_settings(redis_url=redis_url, **identity.settings())
    return OrchestratorClient(settings=settings, **kw)


def service_app(redis_url: str, identity: Identity) -> Celery:
    """Another service's plain Celery app, configured to sign as the README shows."""
    app = Celery(broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="auth",
        accept_content=["auth"],
        result_serializer="json",
        result_accept_content=["json"],
        security_key=str(identity.key),
        security_certificate=str(identity.cert),
        security_cert_store=str(identity.store),
        security_digest="sha256",
    )
    app.setup_security()
    return app


def envelope_of(push: Push) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(push[1])
    return envelope


def body_of(envelope: dict[str, Any]) -> Any:
    """The task body [args, kwargs, embed] of a signed envelope, verified as a worker would."""
    raw = base64.b64decode(envelope["body"])
    accept = {"application/data"}
    return loads(raw, envelope["content-type"], envelope["content-encoding"], accept=accept)


def with_body(envelope: dict[str, Any], signed: str | bytes) -> bytes:
    changed = json.loads(json.dumps(envelope))
    data = signed.encode() if isinstance(signed, str) else signed
    changed["body"] = base64.b64encode(data).decode()
    changed["content-type"] = "application/data"
    changed["content-encoding"] = "utf-8"
    return json.dumps(changed).encode()


def with_headers(envelope: dict[str, Any], **headers: Any) -> bytes:
    changed = json.loads(json.dumps(envelope))
    changed["headers"].update(headers)
    return json.dumps(changed).encode()


def tampered(envelope: dict[str, Any], kwargs: dict[str, Any]) -> bytes:
    """The envelope with its signer and signature kept and the signed body replaced."""
    packed = base64.b64decode(base64.b64decode(envelope["body"]))
    signer, signature, ctype, encoding, _body = packed.split(DEFAULT_SEPARATOR, 4)
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None}])
    fields = [signer, signature, ctype, encoding, body.encode()]
    return with_body(envelope, base64.b64encode(DEFAULT_SEPARATOR.join(fields)))


def stranger_signed(envelope: dict[str, Any], identity: Identity) -> bytes:
    """The envelope re-signed by a key the cluster does not trust (Celery's own signer)."""
    signer = SecureSerializer(
        PrivateKey(identity.key.read_text()), Certificate(identity.cert.read_text()), None
    )
    return with_body(envelope, signer.serialize(body_of(envelope)))


def captured(app: Celery, name: str, kwargs: dict[str, Any], queue: str, **opts: Any) -> Push:
    with captured_pushes() as pushes:
        app.send_task(name, kwargs=kwargs, queue=queue, **opts)
    (push,) = pushes
    return push


def poison(redis_client: redis.Redis) -> list[dict[str, Any]]:
    return [
        json.loads(redis_client.hget(POISON_MSG, i)) for i in redis_client.zrange(POISON, 0, -1)
    ]


def drained(redis_client: redis.Redis, queues: list[str]) -> bool:
    empty = all(redis_client.llen(q) == 0 for queue in queues for q in queue_lists(queue))
    return empty and redis_client.hlen(KOMBU_UNACKED) == 0


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def http(url: str, auth: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_signed_tasks_route_and_complete_on_every_submission_path(
    start_control: Callable[..., Any],
    start_agent: Callable[..., Any],
    celery_procs: Callable[..., Any],
    orch_env: dict[str, str],
    redis_client: redis.Redis,
    redis_url: str,
    pki: dict[str, Identity],
) -> None:
    hive = pki["hive"]
    signed = {**orch_env, **hive.env()}
    start_control(concurrency=1, **hive.env())
    start_agent("alpha", "echo,count", **hive.env())

    # OrchestratorClient routes in-process: kombu builds the signed execute message and the
    # Lua step pushes it. Look at what was pushed: signed (the body; the step puts the picked
    # agent into the envelope's routing key and the list key, which no signature covers), and
    # it runs.
    with signing_client(redis_url, hive) as client:
        pushed: list[Push] = []
        prepare = client._prepare

        def spy(*args: Any) -> Any:
            sent, pushes = prepare(*args)
            pushed.extend(pushes)
            return sent, pushes

        client._prepare = spy
        assert client.submit("echo", {"path": "lua"}).get(timeout=30) == {"path": "lua"}
        ((key, _payload),) = pushed
        execute = envelope_of(pushed[0])
        # Built for the stand-in the placing step replaces with the pick (alpha, the only one)
        assert key.startswith(("agent.alpha", "agent.orch-stand-in-"))
        assert execute["content-type"] == "application/data"
        assert body_of(execute)[1]["payload"] == {"path": "lua"}

        # Through a control worker: the submit message carries its id and an expiry.
        remote = signing_client(redis_url, hive, route_locally=False)
        with captured_pushes() as pushes:
            handle = remote.submit("echo", {"path": "routed"})
        (submit,) = pushes
        redis.Redis.from_url(redis_url).lpush(*submit)
        assert handle.get(timeout=30) == {"path": "routed"}
        submit_env = envelope_of(submit)
        assert body_of(submit_env)[1]["task_id"] == handle.id
        assert submit_env["headers"]["expires"]
        assert remote.submit("echo", {"path": "sent"}).get(timeout=30) == {"path": "sent"}
        remote.close()

    # Another service: a plain Celery app configured to sign, submitting by name.
    service = service_app(redis_url, hive)
    kwargs = {"type": "count", "payload": {"key": "svc"}, "task_id": "svc-1"}
    service.send_task(SUBMIT, kwargs=kwargs, expires=3600)
    assert service.AsyncResult("svc-1").get(timeout=30) == {"runs": 1}
    service.close()

    # The CLI signs through OrchestratorClient.
    cli = run([*CLI, "submit", "echo", "--payload", '{"via": "cli"}', "--wait", "--json"], signed)
    assert cli.returncode == 0 and "cli" in cli.stdout, cli.stdout + cli.stderr

    # Flower signs what its send-task API sends, and its worker view (remote control) works.
    port, auth = free_port(), "ops:secret"
    flower = celery_procs(
        ["flower", f"--port={port}", "--address=127.0.0.1"],
        {**signed, "FLOWER_BASIC_AUTH": auth},
        name="flower",
    )
    flower.wait_for_log("Visit me at", timeout=60)
    base = f"http://127.0.0.1:{port}"
    # Flower's worker view first: once its remote control answers, its event receiver listens
    # too, so the task sent next is seen (one run before that never is: events are pub/sub).
    workers = wait_for(
        lambda: http(f"{base}/api/workers?refresh=1", auth),
        timeout=30,
        ignore=(urllib.error.URLError, OSError),
        message="Flower saw no worker",
    )
    assert any(name.startswith("control@") for name in workers)
    assert any(name.startswith("alpha@") for name in workers)
    sent = http(
        f"{base}/api/task/send-task/{SUBMIT}",
        auth,
        {"kwargs": {"type": "echo", "payload": {"via": "flower"}, "task_id": "flower-1"}},
    )
    assert sent["task-id"]
    plain = create_app(load_settings(redis_url=redis_url, **hive.settings()), with_tasks=False)
    assert plain.AsyncResult("flower-1").get(timeout=30) == {"via": "flower"}
    plain.close()
    # Events stay JSON (unsigned): Flower still sees every task, by its type.
    wait_for(
        lambda: http(f"{base}/api/tasks", auth).get("flower-1", {}).get("name") == "echo",
        timeout=30,
        message="Flower did not see the task's events",
    )

    assert redis_client.zcard(POISON) == 0  # nothing genuine was refused


def test_unsigned_foreign_and_tampered_messages_run_nothing(
    start_control: Callable[..., Any],
    start_agent: Callable[..., Any],
    orch_env: dict[str, str],
    redis_client: redis.Redis,
    redis_url: str,
    pki: dict[str, Identity],
) -> None:
    """Waits for the gate (orchestrator.runtime.gate): refused at the point where kombu decodes."""
    hive, stranger = pki["hive"], pki["stranger"]
    control = start_control(concurrency=1, **hive.env())
    agent = start_agent("alpha", "echo,count", **hive.env())
    pids = (control.pid, agent.pid)

    unsigned_app = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    signed_app = create_app(load_settings(redis_url=redis_url, **hive.settings()), with_tasks=False)
    entries: list[tuple[str, str, bytes]] = []
    for queue in ("celery", "agent.alpha"):
        on_agent = queue.startswith("agent.")
        name = EXECUTE if on_agent else SUBMIT
        kwargs: dict[str, Any] = {"type": "count", "payload": {"key": f"hostile-{queue}"}}
        if on_agent:
            kwargs |= {"max_retries": 3, "dispatch": 1}
        _, unsigned = captured(unsigned_app, name, kwargs, queue, task_id=f"u-{queue}")
        genuine = envelope_of(captured(signed_app, name, kwargs, queue, task_id=f"s-{queue}"))
        evil = {**kwargs, "payload": {"key": f"tampered-{queue}"}}
        entries += [
            (queue, "unsigned", unsigned.encode()),
            (queue, "another key", stranger_signed(genuine, stranger)),
            (queue, "tampered body", tampered(genuine, evil)),
        ]
    unsigned_app.close()
    signed_app.close()

    raw = redis.Redis.from_url(redis_url)
    for queue, _what, entry in entries:
        raw.lpush(queue, entry)
    kept = wait_for(
        lambda: (found := poison(redis_client)) and len(found) >= len(entries) and found,
        timeout=60,
        message=f"not all {len(entries)} messages were refused",
    )
    assert len(kept) == len(entries)
    assert sorted(k["queue"] for k in kept) == sorted(q for q, _, _ in entries)
    reasons = [k["reason"] for k in kept]
    assert sum("'application/json' is not accepted" in r for r in reasons) == 2, reasons
    assert sum("signed body does not verify" in r for r in reasons) == 4, reasons
    assert sum("Unknown certificate" in r for r in reasons) == 2, reasons  # the stranger's
    assert redis_client.keys("test:runs:*") == []  # nothing ran
    wait_for(lambda: drained(redis_client, ["celery", "agent.alpha"]), timeout=30)

    # The same processes serve the next task, on both paths.
    assert (control.pid, agent.pid) == pids and control.alive and agent.alive
    with signing_client(redis_url, hive) as client:
        assert client.submit("count", {"key": "after"}).get(timeout=30) == {"runs": 1}
    with signing_client(redis_url, hive, route_locally=False) as remote:
        assert remote.submit("count", {"key": "after-routed"}).get(timeout=30) == {"runs": 1}
    assert "Unrecoverable error" not in control.log_text() + agent.log_text()

    env = {**orch_env, **hive.env()}
    listed = run([*CLI, "dlq", "list", "--kind", "poison", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == len(entries)
    assert all({"id", "queue", "reason", "size", "excerpt", "ts"} <= set(r) for r in rows)


def test_replayed_signed_messages_run_the_handler_once(
    start_control: Callable[..., Any],
    start_agent: Callable[..., Any],
    redis_client: redis.Redis,
    redis_url: str,
    pki: dict[str, Identity],
) -> None:
    """A copy of a signed message is as valid as the original (the signature covers the body,
    not the headers): pushed again after it ran, with or without an edited id header, the
    ledger recognises it and nothing runs twice."""
    hive = pki["hive"]
    start_control(concurrency=1, **hive.env())
    start_agent("alpha", "count", **hive.env())
    raw = redis.Redis.from_url(redis_url)

    with signing_client(redis_url, hive) as client:
        pushed: list[Push] = []
        prepare = client._prepare

        def spy(*args: Any) -> Any:
            sent, pushes = prepare(*args)
            pushed.extend(pushes)
            return sent, pushes

        client._prepare = spy
        assert client.submit("count", {"key": "exec"}, task_id="exec-1").get(timeout=30) == {
            "runs": 1
        }
    ((exec_key, exec_entry),) = pushed

    with signing_client(redis_url, hive, route_locally=False) as remote:
        with captured_pushes() as pushes:
            handle = remote.submit("count", {"key": "submit"})
        ((submit_key, submit_entry),) = pushes
        raw.lpush(submit_key, submit_entry)
        assert handle.get(timeout=30) == {"runs": 1}
        # A submission nobody took before its expiry is dropped by the worker.
        with captured_pushes() as pushes:
            late = remote.submit("count", {"key": "late"}, task_id="late-1")
        ((late_key, late_entry),) = pushes
    late_envelope = envelope_of((late_key, late_entry))
    late_submit_id = late_envelope["headers"]["id"]

    replays = [
        (exec_key, exec_entry.encode()),
        (exec_key, with_headers(envelope_of((exec_key, exec_entry)), id="exec-edited")),
        (submit_key, submit_entry.encode()),
        (submit_key, with_headers(envelope_of((submit_key, submit_entry)), id="submit-edited")),
        (late_key, with_headers(late_envelope, expires="2001-01-01T00:00:00+00:00")),
    ]
    for key, entry in replays:
        raw.lpush(key, entry)
    wait_for(
        lambda: drained(redis_client, ["orchestrator.routing", "agent.alpha"]),
        timeout=30,
        message="the replays were not consumed",
    )
    # After the replays, on the same queues: they were handled before these.
    with signing_client(redis_url, hive) as client:
        assert client.submit("count", {"key": "next"}).get(timeout=30) == {"runs": 1}
        with signing_client(redis_url, hive, route_locally=False) as remote:
            assert remote.submit("count", {"key": "next-2"}).get(timeout=30) == {"runs": 1}
        assert redis_client.get("test:runs:exec") == "1"
        assert redis_client.get("test:runs:submit") == "1"
        assert client.task("exec-1").attempts == 1
        assert client.task(handle.id).attempts == 1
        assert redis_client.get("test:runs:late") is None
        assert not redis_client.exists("orch:task:late-1")
        assert wait_for(lambda: client.result(late_submit_id).state == "REVOKED", timeout=10)
        assert late.id == "late-1"
    assert redis_client.zcard(POISON) == 0  # genuine copies pass the gate: the ledger stops them


def test_remote_control_and_beat_work_signed_and_outsiders_are_ignored(
    start_control: Callable[..., Any],
    start_agent: Callable[..., Any],
    celery_procs: Callable[..., Any],
    orch_env: dict[str, str],
    redis_client: redis.Redis,
    pki: dict[str, Identity],
) -> None:
    hive = pki["hive"]
    fast = {"ORCH_ALERT_EVALUATION_INTERVAL": "1", "ORCH_BEAT_MAX_INTERVAL_S": "1"}
    control = start_control(concurrency=1, **hive.env(), **fast)
    agent = start_agent("alpha", "echo", **hive.env())
    signed, unsigned = {**orch_env, **hive.env()}, dict(orch_env)

    nodes = ",".join(f"{name}@{socket.gethostname()}" for name in ("control", "alpha"))

    def ping(env: dict[str, str], timeout: float = 10) -> str:
        # Naming the nodes lets the command return as soon as both have answered.
        done = run([*CELERY, "inspect", "ping", "-d", nodes, "--timeout", str(timeout)], env)
        return done.stdout + done.stderr

    answered = ping(signed)
    assert answered.count("pong") == 2, answered  # the control worker and the agent

    # Remote control from outside the trust: no answer, and a shutdown is not obeyed.
    assert "pong" not in ping(unsigned, timeout=2)
    run([*CELERY, "control", "shutdown", "--timeout", "2"], unsigned)
    assert ping(signed).count("pong") == 2  # the broadcast before this one was ignored
    assert control.alive and agent.alive
    # Celery's own mailbox refused them (it takes the task serializer's accept list): logged,
    # not run, and not kept as poison (the gate screens task queues only).
    for worker in (control, agent):
        log = worker.log_text()
        assert log.count("Can't decode message body: ContentDisallowed") == 2, worker.name
        assert '"method": "shutdown"' in log

    # Beat signs what it sends: a monitoring loop runs.
    celery_procs(["beat", "-l", "info"], {**signed, **fast}, name="beat")
    runs = wait_for(
        lambda: [
            r
            for r in map(json.loads, redis_client.lrange("orch:monitor:runs", 0, -1))
            if r["loop"] == "alerts" and r["ran"]
        ],
        timeout=40,
        message="beat delivered no monitoring run",
    )
    assert runs
    assert redis_client.zcard(POISON) == 0


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("ORCH_SIGNING_CERT_STORE", "missing: ORCH_SIGNING_CERT_STORE"),
        (None, "ORCH_SIGNING_KEY: no such file"),
    ],
)
def test_a_broken_signing_setup_stops_start_up_naming_the_variable(
    orch_env: dict[str, str],
    pki: dict[str, Identity],
    tmp_path: Path,
    drop: str | None,
    expected: str,
) -> None:
    env = {**orch_env, **pki["hive"].env()}
    if drop:
        del env[drop]
    else:
        env["ORCH_SIGNING_KEY"] = str(tmp_path / "gone.key")
    done = run([*CELERY, "worker", "-l", "info"], env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
