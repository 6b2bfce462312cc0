"""Start-up checks of the Redis URLs: a bad credential, certificate or policy stops with one line.

A wrong password, a refused ACL user or an untrusted certificate stops a process with one line
naming the ORCH_ variable to fix; so does a Redis that evicts keys when full (any
maxmemory-policy but noeviction: queued tasks and records would vanish), unless
ORCH_ALLOW_EVICTING_REDIS=true, which leaves a warning line instead. A Redis without an AOF is
a warning line; one whose configuration cannot be read (an ACL user without CONFIG, a managed
Redis that renamed it) a note.

Celery treats every failure to reach the broker alike: "Cannot connect ... Trying again", a
hundred times over, so a worker given a wrong password or the wrong CA never starts and never
says why. Those failures do not heal by waiting; a Redis that is down does (Celery reconnects,
and the chaos tests restart Redis under running workers), so it is only reported here.

`classify_failure` and `fitness_verdict` (over security.fitness's findings) are the pure
decisions; `preflight` pings each distinct URL once, `check_fitness` reads the configuration of
those that answered (store.fitness); `stop_unless_usable` runs both in a worker before the pool
forks (`RedisPreflight`), in `celery beat` and Flower before RedBeat or Flower open their own
clients (the `import_modules` receiver below), and in `orchestrator exporter` and
`orchestrator dev`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import click
import redis
from celery import bootsteps, signals
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.config import Settings
from orchestrator.errors import ConfigError
from orchestrator.models import ProductionEventSeverity as Severity
from orchestrator.redis_urls import DEFAULT_SENTINEL_MASTER, SSL_FILE_PARAMS
from orchestrator.runtime.logs import say_refusal
from orchestrator.security.fitness import EVICTING, RedisConfig, cluster_refusal, judge_redis
from orchestrator.security.policy import Finding, RedisEndpoint
from orchestrator.store.connect import redis_client
from orchestrator.store.fitness import read_config

log = logging.getLogger(__name__)

#: Exit status of a process that refused to start (as for an invalid setting).
EXIT_CODE = 2
#: How long a ping may take; an unreachable host is reported, never waited out.
PING_TIMEOUT_S = 3.0
#: Celery commands checked through `import_modules` (workers have their own bootstep).
CHECKED_COMMANDS = ("beat", "flower")


@dataclass(frozen=True)
class RedisTarget:
    """One Redis URL to check, and the variable an operator changes to fix it."""

    variable: str
    url: str
    #: The master's name when `url` is the sentinel form (ORCH_REDIS_SENTINEL_MASTER).
    sentinel_master: str = DEFAULT_SENTINEL_MASTER
    #: A node of a Redis Cluster (the state store with ORCH_STATE_CLUSTER).
    cluster: bool = False


def redis_targets(settings: Settings) -> list[RedisTarget]:
    """The broker, result backend and state store URLs, each distinct URL once, under the
    variable that set it: the override when given, else ORCH_REDIS_URL."""
    found = [
        RedisTarget(
            "ORCH_BROKER_URL" if settings.broker_url else "ORCH_REDIS_URL",
            settings.effective_broker_url,
            settings.redis_sentinel_master,
        ),
        RedisTarget(
            "ORCH_RESULT_BACKEND" if settings.result_backend else "ORCH_REDIS_URL",
            settings.effective_result_backend,
            settings.redis_sentinel_master,
        ),
        state_target(settings),
    ]
    distinct: dict[str, RedisTarget] = {}
    for target in found:
        distinct.setdefault(target.url, target)
    return list(distinct.values())


def state_target(settings: Settings) -> RedisTarget:
    return RedisTarget(
        "ORCH_STATE_URL" if settings.state_url else "ORCH_REDIS_URL",
        settings.effective_state_url,
        settings.redis_sentinel_master,
        settings.state_cluster,
    )


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or during (redis-py wraps socket errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _server_said(exc: redis.RedisError) -> str:
    """The server's reply as it sent it: redis-py keeps the error code apart."""
    code = getattr(exc, "status_code", None)
    text = str(exc).strip().rstrip(".")
    return f"{code} {text}" if code and not text.startswith(code) else text


def classify_failure(exc: BaseException) -> str | None:
    """Why connecting failed, when waiting cannot fix it; None when it may (Redis down,
    a timeout, a reset connection), so the process starts and Celery keeps retrying."""
    if isinstance(exc, redis.AuthenticationError):
        if getattr(exc, "status_code", None) == "NOAUTH":
            return "authentication required: the server has a password and the URL gives none"
        return f"authentication failed ({_server_said(exc)})"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"permission denied ({_server_said(exc)})"
    for cause in exception_chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({cause.verify_message or cause.reason})"
        if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
            return "TLS handshake failed: the server does not speak TLS on this port"
    return None


def unreadable_tls_file(url: str) -> str | None:
    """A file the URL's TLS options name that cannot be read (redis-py says only "No such
    file or directory", without the name)."""
    query = dict(parse_qsl(urlsplit(url).query))
    for name in SSL_FILE_PARAMS:
        path = query.get(name)
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return f"{name} file {path} cannot be read ({exc.strerror or exc})"
    return None


def _probe_client(
    url: str, timeout_s: float, sentinel_master: str, cluster: bool = False
) -> redis.Redis:
    return redis_client(
        url,
        sentinel_master=sentinel_master,
        cluster=cluster,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def ping(
    url: str, timeout_s: float = PING_TIMEOUT_S, sentinel_master: str = DEFAULT_SENTINEL_MASTER
) -> None:
    """One PING with the options the URL gives, no retries: the answer now (through the
    sentinels, for a sentinel-form URL)."""
    client = _probe_client(url, timeout_s, sentinel_master)
    try:
        client.ping()
    finally:
        client.close()


def read_target(target: RedisTarget, timeout_s: float = PING_TIMEOUT_S) -> RedisConfig:
    """The target's maxmemory-policy, maxmemory, AOF and cluster settings, no retries (of
    the node that holds the state store's slot, for a Redis Cluster's)."""
    client = _probe_client(target.url, timeout_s, target.sentinel_master)
    try:
        config = read_config(client)
    finally:
        client.close()
    if not (target.cluster and config.cluster):
        return config
    # A cluster's state store lives on the node that holds its slot, maybe not this one.
    node = _probe_client(target.url, timeout_s, target.sentinel_master, cluster=True)
    try:
        return read_config(node)
    finally:
        node.close()


def preflight(
    targets: Iterable[RedisTarget],
    connect: Callable[[str], Any] | None = None,
    strict: bool = False,
) -> list[str]:
    """Ping each target once (`connect(url)` instead, when given). Raises ConfigError, one line
    `VARIABLE: reason`, at the first failure waiting cannot fix, and with `strict` (a command
    that does its work now, or not at all) at a target that does not answer too; returns notes
    on the targets that did not answer."""
    notes = []
    for target in targets:
        problem = unreadable_tls_file(target.url)
        if problem is None:
            try:
                if connect is None:
                    ping(target.url, sentinel_master=target.sentinel_master)
                else:
                    connect(target.url)
            except (redis.RedisError, OSError) as exc:
                problem = classify_failure(exc)
                if problem is None and strict:
                    problem = f"Redis not reachable ({exc})"
                elif problem is None:
                    notes.append(f"{target.variable}: Redis not reachable yet ({exc})")
        if problem is not None:
            raise ConfigError(f"{target.variable}: {problem}")
    return notes


def fitness_verdict(
    variable: str, findings: Iterable[Finding], allow_evicting: bool
) -> tuple[str | None, list[tuple[int, str]]]:
    """(the one line that refuses the start, or None; the lines to log, each with its level)
    over the findings on the Redis `variable` names. An evicting policy refuses unless
    allowed, then it is a warning; any other finding is a warning, or a note (info)."""
    refusal = None
    lines: list[tuple[int, str]] = []
    for f in findings:
        line = f"{variable}: {f.summary}"
        if f.kind == EVICTING and not allow_evicting:
            refusal = refusal or line
        else:
            lines.append((logging.INFO if f.severity is Severity.INFO else logging.WARNING, line))
    return refusal, lines


def check_fitness(
    targets: Iterable[RedisTarget],
    allow_evicting: bool = False,
    read: Callable[[RedisTarget], RedisConfig] | None = None,
) -> list[tuple[int, str]]:
    """Read each target's configuration (`read(target)` instead, when given) and judge it.
    Raises ConfigError, one line `VARIABLE: ...`, at an evicting policy unless allowed, and
    at a Redis Cluster node anywhere but the state store with ORCH_STATE_CLUSTER (or at a
    server that is no node where that setting says it is); returns the lines to log. A
    target that does not answer is skipped (preflight said so)."""
    lines: list[tuple[int, str]] = []
    for target in targets:
        try:
            config = (read or read_target)(target)
        except (redis.RedisError, OSError):
            continue
        address = RedisEndpoint.parse(target.url).address
        misplaced = cluster_refusal(address, config, target.cluster)
        if misplaced is not None:
            raise ConfigError(f"{target.variable}: {misplaced}")
        findings = judge_redis("Redis", address, config, allow_evicting)
        refusal, said = fitness_verdict(target.variable, findings, allow_evicting)
        if refusal is not None:
            raise ConfigError(refusal)
        lines += said
    return lines


def stop_unless_usable(
    targets: Iterable[RedisTarget],
    log_format: str = "text",
    allow_evicting: bool = False,
    fitness: bool = True,
) -> None:
    """Run the preflight in a starting process: say the one line and exit on failure. With
    `fitness`, the Redis servers that answered are judged too (check_fitness)."""
    targets = list(targets)
    try:
        notes = preflight(targets)
        silent = {note.split(":", 1)[0] for note in notes}
        lines = (
            check_fitness([t for t in targets if t.variable not in silent], allow_evicting)
            if fitness
            else []
        )
    except ConfigError as exc:
        say_refusal(str(exc), log_format)
        raise SystemExit(EXIT_CODE) from None
    for note in notes:
        log.warning("%s; starting anyway, Celery keeps retrying", note)
    for level, line in lines:
        log.log(level, "%s", line)


def stop_unless_settled(settings: Settings) -> None:
    """Every role's start-up check over the settings' Redis URLs: reachable with the
    credentials given, and fit to keep what it is given (ORCH_ALLOW_EVICTING_REDIS)."""
    stop_unless_usable(redis_targets(settings), settings.log_format, settings.allow_evicting_redis)


def _settings_of(app: Any) -> Settings | None:
    value = app.conf.get("orchestrator_settings")
    return value if isinstance(value, Settings) else None


class RedisPreflight(bootsteps.Step):
    """Worker blueprint: checks every Redis URL before the pool forks or the consumer
    connects, so a refused worker exits at once instead of retrying for ever."""

    name = "orchestrator.preflight"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = _settings_of(worker.app)
        if settings is not None:
            stop_unless_settled(settings)


def _command() -> str | None:
    ctx = click.get_current_context(silent=True)
    return ctx.info_name if ctx is not None else None


@signals.import_modules.connect
def _check_before_beat(sender: Any = None, **kwargs: Any) -> None:
    """`celery beat` and Flower import the task modules before anything connects; beat's own
    `beat_init` signal comes after RedBeat has already used Redis (with a traceback)."""
    settings = _settings_of(sender) if sender is not None else None
    if settings is not None and _command() in CHECKED_COMMANDS:
        stop_unless_settled(settings)
