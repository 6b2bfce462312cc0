"""The security loop's decisions, pure: token buckets, findings, the configuration audit.

Everything here works on plain data with `now` passed in: what the security loop
(orchestrator.monitoring.loops.run_security) gathered from Redis, from the workers' remote-control
replies and from Flower goes in, findings come out. A finding has a stable id (the same
problem found again is the same finding), a severity, and a one-line summary saying what is
wrong and what to do; `diff_findings` tells new findings (one `security.threat` event each)
from those still standing. Findings of severity error or critical are the `security_threats`
metric the `SecurityThreat` alert watches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.models import ProductionEventSeverity as Severity

if TYPE_CHECKING:  # the audit reads the settings; the pure core does not load them
    from orchestrator.config import Settings

#: Severities that make a finding a threat: counted in `security_threats`, fire the alert.
ALERTING = frozenset({Severity.ERROR, Severity.CRITICAL})
RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}

AGENT_QUEUE_PREFIX = "agent."
#: The finding of a client at or above the rejection threshold (the report's `threats`).
REJECTED_SUBMISSIONS = "rejected_submissions"
#: The finding of messages refused at a worker's edge (an unknown task name among them).
POISON_REFUSED = "poison_refused"
#: The threat counters' findings and their severities, as production has them; a profile
#: (orchestrator.profiles) may set others.
COUNTER_SEVERITIES: Mapping[str, Severity] = {
    REJECTED_SUBMISSIONS: Severity.CRITICAL,
    "rate_limited": Severity.WARNING,
    "client_blocked": Severity.WARNING,
    POISON_REFUSED: Severity.ERROR,
}


# --- the token bucket (scripts.ADMIT_CLIENT is its Lua twin) -------------------------------


@dataclass(frozen=True)
class Bucket:
    tokens: float
    ts: float  # when `tokens` was last brought up to date


def take_token(
    bucket: Bucket | None, now: float, rate: float, burst: int
) -> tuple[bool, Bucket, float]:
    """One submission against a client's bucket: (allowed, the bucket after, seconds until a
    token is there again when refused). A missing bucket is a full one; it refills at `rate`
    tokens a second up to `burst`, and a clock that went back refills nothing."""
    if rate <= 0:
        raise ValueError(f"rate must be positive (got {rate})")
    tokens, ts = (float(burst), now) if bucket is None else (bucket.tokens, bucket.ts)
    tokens = min(float(burst), tokens + max(0.0, now - ts) * rate)
    ts = max(ts, now)
    if tokens >= 1:
        return True, Bucket(tokens - 1, ts), 0.0
    return False, Bucket(tokens, ts), (1 - tokens) / rate


# --- findings --------------------------------------------------------------------------------


def finding_id(kind: str, key: str | None) -> str:
    """A finding's id: its kind, then `:` and what it is about (`key`: a client, a worker and
    queue, the Redis roles...) when a deployment can have more than one of that kind."""
    return f"{kind}:{key}" if key else kind


class Finding(BaseModel):
    """One security problem the loop found; `since` is when it was first found. Built with
    `Finding.of`, so that every id is `finding_id(kind, key)`."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    severity: Severity
    summary: str
    since: float = 0.0
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls,
        kind: str,
        key: str | None,
        *,
        severity: Severity,
        summary: str,
        data: Mapping[str, Any] | None = None,
    ) -> Finding:
        """The finding of `kind` about `key` (None: there is one of its kind at most)."""
        return cls(
            id=finding_id(kind, key),
            kind=kind,
            severity=severity,
            summary=summary,
            data=dict(data or {}),
        )

    @property
    def alerting(self) -> bool:
        return self.severity in ALERTING


def diff_findings(
    previous: Mapping[str, Finding],
    current: Iterable[Finding],
    now: float,
    unchecked_kinds: Iterable[str] = (),
) -> tuple[dict[str, Finding], list[Finding]]:
    """(the findings standing now, the new ones among them). A finding found again keeps its
    `since`; one no longer found is dropped (and is new again if it comes back). Previous
    findings of `unchecked_kinds` (a check that could not run this time) stand as they were."""
    skipped = set(unchecked_kinds)
    standing = {k: f for k, f in previous.items() if f.kind in skipped}
    new: list[Finding] = []
    for finding in current:
        before = previous.get(finding.id)
        finding = finding.model_copy(update={"since": before.since if before else now})
        standing[finding.id] = finding
        if before is None:
            new.append(finding)
    return standing, new


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then oldest, then by id."""
    return sorted(findings, key=lambda f: (-RANK[f.severity], f.since, f.id))


def threats(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.alerting]


# --- (a) the threat counters -----------------------------------------------------------------


def counter_findings(
    rejections: Mapping[str, int],
    *,
    threshold: int,
    rate_limited: Mapping[str, int],
    blocked: Mapping[str, float],
    blocked_refusals: Mapping[str, int],
    poison_refused: int,
    window_s: float,
    severities: Mapping[str, Severity] | None = None,
) -> list[Finding]:
    """Clients at or above the rejection threshold (critical; with when their block ends, if
    blocked), clients refused by the rate limit (warning), clients blocked now (warning),
    messages refused at a worker's edge in the window (error). `blocked`: client -> when its
    block ends; `severities`: finding kind -> severity, where a profile changes one."""
    severity = {**COUNTER_SEVERITIES, **(severities or {})}
    out = []
    for client, n in sorted(rejections.items()):
        if n >= threshold:
            out.append(
                Finding.of(
                    REJECTED_SUBMISSIONS,
                    client,
                    severity=severity[REJECTED_SUBMISSIONS],
                    summary=(
                        f"client {client!r} had {n} submissions rejected in {window_s:g}s "
                        f"(threshold {threshold}): a broken or hostile producer"
                    ),
                    data={
                        "client_id": client,
                        "rejections": n,
                        "window_s": window_s,
                        "threshold": threshold,
                        **({"blocked_until": blocked[client]} if client in blocked else {}),
                    },
                )
            )
    for client, n in sorted(rate_limited.items()):
        if n > 0:
            out.append(
                Finding.of(
                    "rate_limited",
                    client,
                    severity=severity["rate_limited"],
                    summary=(
                        f"client {client!r} went over its rate limit: {n} submissions "
                        f"refused in {window_s:g}s (ORCH_CLIENT_RATE_LIMIT)"
                    ),
                    data={"client_id": client, "refused": n, "window_s": window_s},
                )
            )
    for client, until in sorted(blocked.items()):
        n = blocked_refusals.get(client, 0)
        out.append(
            Finding.of(
                "client_blocked",
                client,
                severity=severity["client_blocked"],
                summary=(
                    f"client {client!r} is blocked ({n} submissions refused in {window_s:g}s); "
                    f"`orchestrator security unblock {client}` lifts it"
                ),
                data={"client_id": client, "until": until, "refused": n, "window_s": window_s},
            )
        )
    if poison_refused > 0:
        out.append(
            Finding.of(
                POISON_REFUSED,
                None,
                severity=severity[POISON_REFUSED],
                summary=(
                    f"{poison_refused} message{'s' if poison_refused != 1 else ''} refused at "
                    f"a worker's edge in {window_s:g}s: "
                    "something writes to the broker what no producer of ours sends "
                    "(`orchestrator dlq list --kind poison`)"
                ),
                data={"refused": poison_refused, "window_s": window_s},
            )
        )
    return out


# --- (b) consumers of agent queues -----------------------------------------------------------


def consumer_findings(
    consumed: Mapping[str, Sequence[str]], agents: Mapping[str, str]
) -> list[Finding]:
    """Workers consuming an `agent.<id>` queue that is not theirs.

    `consumed`: worker node name (`name@host`) -> the queues it consumes, from remote
    control's active_queues; `agents`: registered agent id -> the hostname it registered from.
    A queue of no registered agent (error) or of an agent registered on another host
    (critical) is a finding: that worker takes, and reads, tasks meant for someone else.
    """
    out = []
    for node in sorted(consumed):
        host = node.partition("@")[2] or node
        for queue in sorted(set(consumed[node])):
            if not queue.startswith(AGENT_QUEUE_PREFIX):
                continue
            agent_id = queue[len(AGENT_QUEUE_PREFIX) :]
            data = {"worker": node, "queue": queue, "agent_id": agent_id}
            if agent_id not in agents:
                out.append(
                    Finding.of(
                        "unregistered_consumer",
                        f"{node}:{queue}",
                        severity=Severity.ERROR,
                        summary=(
                            f"worker {node} consumes {queue} but no agent {agent_id!r} is "
                            "registered: it takes tasks routed there (stop it, or start it "
                            "as that agent)"
                        ),
                        data=data,
                    )
                )
            elif agents[agent_id] and agents[agent_id] != host:
                out.append(
                    Finding.of(
                        "foreign_consumer",
                        f"{node}:{queue}",
                        severity=Severity.CRITICAL,
                        summary=(
                            f"worker {node} consumes {queue}, the queue of agent "
                            f"{agent_id!r} registered on host {agents[agent_id]!r}: it takes "
                            "that agent's tasks"
                        ),
                        data={**data, "registered_host": agents[agent_id]},
                    )
                )
    return out


# --- (c) the configuration audit -------------------------------------------------------------

#: Content types Celery can be told to accept that deserialize more than data: pickle runs
#: code on load; yaml and msgpack widen what a worker parses beyond the JSON we send.
UNSAFE_CONTENT = {
    "pickle": Severity.CRITICAL,
    "application/x-python-serialize": Severity.CRITICAL,
    "yaml": Severity.WARNING,
    "application/x-yaml": Severity.WARNING,
    "msgpack": Severity.WARNING,
    "application/x-msgpack": Severity.WARNING,
}
_CANONICAL = {
    "application/x-python-serialize": "pickle",
    "application/x-yaml": "yaml",
    "application/x-msgpack": "msgpack",
}


def content_findings(where: str, accepted: Iterable[str]) -> list[Finding]:
    """`where` ("app" for this process's configuration, else a worker's node name) accepts
    content types beyond JSON (its accept_content and result_accept_content together)."""
    names = {_CANONICAL.get(str(c).lower(), str(c).lower()) for c in accepted}
    out = []
    for name in sorted(names & set(UNSAFE_CONTENT)):
        subject = "this deployment's configuration" if where == "app" else f"worker {where}"
        out.append(
            Finding.of(
                "unsafe_content" if where == "app" else "worker_unsafe_content",
                f"{where}:{name}",
                severity=UNSAFE_CONTENT[name],
                summary=(
                    f"{subject} accepts {name} messages"
                    + (
                        ": anyone who can write to the broker runs code there"
                        if name == "pickle"
                        else ": more than the JSON the orchestrator sends"
                    )
                    + " (accept_content should be ['json'])"
                ),
                data={"where": where, "content_type": name},
            )
        )
    return out


def is_loopback(host: str | None) -> bool:
    if not host or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RedisEndpoint:
    """What the audit needs to know of one Redis URL (never its password)."""

    address: str  # host:port, or the socket path
    local: bool  # loopback or a unix socket
    authenticated: bool  # a password, or a TLS client certificate
    tls: bool

    @classmethod
    def parse(cls, url: str, default_port: int = 6379) -> RedisEndpoint:
        if url.startswith("sentinel://"):  # the sentinels, `;`-separated; the master's password
            ends = [cls.parse("redis" + chunk.strip()[8:], 26379) for chunk in url.split(";")]
            return cls(
                address=",".join(e.address for e in ends),
                local=all(e.local for e in ends),
                authenticated=any(e.authenticated for e in ends),
                tls=False,
            )
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return cls(
                address=parts.path, local=True, authenticated=bool(parts.password), tls=False
            )
        query = dict(parse_qsl(parts.query))
        tls = parts.scheme == "rediss"
        return cls(
            address=f"{parts.hostname or 'localhost'}:{parts.port or default_port}",
            local=is_loopback(parts.hostname),
            authenticated=bool(parts.password) or (tls and bool(query.get("ssl_certfile"))),
            tls=tls,
        )


#: role name in finding ids -> how a summary names it
ROLES = {"broker": "broker", "results": "result backend", "state": "state store"}


def url_findings(urls: Mapping[str, str]) -> list[Finding]:
    """Redis beyond loopback without a password (critical: anyone who reaches it reads and
    writes every queue and all state) or without TLS (warning: the password and every message
    cross the network in clear). `urls`: role ("broker", "results", "state") -> URL; roles
    sharing one URL make one finding."""
    by_url: dict[str, list[str]] = {}
    for role, url in urls.items():
        by_url.setdefault(url, []).append(role)
    out = []
    for url, roles in by_url.items():
        end = RedisEndpoint.parse(url)
        if end.local:
            continue
        slug = "+".join(roles)
        names = " and ".join(ROLES.get(r, r) for r in roles)
        data = {"roles": roles, "address": end.address}
        if not end.authenticated:
            out.append(
                Finding.of(
                    "redis_no_password",
                    slug,
                    severity=Severity.CRITICAL,
                    summary=(
                        f"the {names} at {end.address} is reached beyond loopback without a "
                        "password: anyone who can connect reads and writes every queue and "
                        "all state (put a password or an ACL user in the URL)"
                    ),
                    data=data,
                )
            )
        if not end.tls:
            out.append(
                Finding.of(
                    "redis_no_tls",
                    slug,
                    severity=Severity.WARNING,
                    summary=(
                        f"the {names} at {end.address} is reached beyond loopback without "
                        "TLS: passwords and messages cross the network in clear (rediss://)"
                    ),
                    data=data,
                )
            )
    return out


def remote_control_findings(broker_url: str, remote_control: bool) -> list[Finding]:
    """Celery's remote control (the pidbox on the broker) answers anyone who reaches a broker
    beyond loopback that asks for no credentials."""
    end = RedisEndpoint.parse(broker_url)
    if not remote_control or end.local or end.authenticated:
        return []
    return [
        Finding.of(
            "remote_control_open",
            None,
            severity=Severity.ERROR,
            summary=(
                f"remote control through the broker at {end.address} needs no credentials: "
                "anyone who reaches it can shut workers down, cancel their consumers or change "
                "rate limits (`celery control`); set a broker password, or "
                "worker_enable_remote_control=False"
            ),
            data={"address": end.address},
        )
    ]


def without_credentials(url: str) -> str:
    """`url` with any user and password taken out (what findings and probes show and use)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def flower_findings(url: str, status: int | None) -> list[Finding]:
    """Flower answered `GET <url>/api/workers` without credentials with `status` (None: it
    could not be reached, which is no finding). 2xx means its API is open: it sends tasks and
    shuts workers down for anyone who reaches it."""
    if status is None or not 200 <= status < 300:
        return []
    url = without_credentials(url)
    return [
        Finding.of(
            "flower_open",
            None,
            severity=Severity.CRITICAL,
            summary=(
                f"Flower at {url} answers its API without credentials: anyone who reaches it "
                "can run tasks and shut workers down (FLOWER_BASIC_AUTH, or --basic-auth)"
            ),
            data={"url": url, "status": status},
        )
    ]


@dataclass
class WorkerFacts:
    """One worker as remote control described it."""

    queues: list[str] = field(default_factory=list)
    accept_content: list[str] | None = None  # None: its reply did not say (Celery's default)


@dataclass
class AuditFacts:
    """Everything the audit looks at besides the settings."""

    app_accept_content: list[str] = field(default_factory=lambda: ["json"])
    remote_control: bool = True  # worker_enable_remote_control
    workers: dict[str, WorkerFacts] | None = None  # None: remote control was not asked
    flower_status: int | None = None


def audit(settings: Settings, facts: AuditFacts) -> list[Finding]:
    """The configuration audit over the settings and the gathered facts."""
    out = content_findings("app", facts.app_accept_content)
    for node, worker in sorted((facts.workers or {}).items()):
        out += content_findings(node, worker.accept_content or ())
    broker = settings.effective_broker_url
    out += url_findings(
        {
            "broker": broker,
            "results": settings.effective_result_backend,
            "state": settings.effective_state_url,
        }
    )
    out += remote_control_findings(broker, facts.remote_control)
    if settings.flower_url:
        out += flower_findings(settings.flower_url, facts.flower_status)
    return out
