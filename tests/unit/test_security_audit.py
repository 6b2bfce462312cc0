"""The security loop's pure core: token buckets, findings and their diffing, the audit."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.config import load_settings, mask_password
from orchestrator.errors import ClientBlocked, ConfigError, RateLimited
from orchestrator.models import ProductionEventSeverity as Sev
from orchestrator.security.fitness import KINDS as CONFIG_KINDS
from orchestrator.security.fitness import NO_EVICTION, RedisConfig, config_findings
from orchestrator.security.policy import (
    AuditFacts,
    Bucket,
    Finding,
    RedisEndpoint,
    WorkerFacts,
    audit,
    consumer_findings,
    content_findings,
    counter_findings,
    diff_findings,
    finding_id,
    flower_findings,
    is_loopback,
    ordered,
    remote_control_findings,
    take_token,
    threats,
    url_findings,
    without_credentials,
)

# --- the token bucket ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "times", "expected"),
    [
        # A full bucket of 3 lets 3 through at once, then one per 1/rate seconds.
        (1.0, 3, [0, 0, 0, 0], [True, True, True, False]),
        (1.0, 3, [0, 0, 0, 0, 1.0], [True, True, True, False, True]),
        (1.0, 3, [0, 0, 0, 0.5, 0.99, 1.0], [True, True, True, False, False, True]),
        # Refill never goes beyond the burst: a long pause gives back 3, not 100.
        (1.0, 3, [0, 0, 0, 100, 100, 100, 100], [True, True, True, True, True, True, False]),
        # Fractional rates: one every 4 s.
        (0.25, 1, [0, 1, 3.9, 4.0, 4.1], [True, False, False, True, False]),
        # A clock that went backwards refills nothing (and does not move the bucket back).
        (1.0, 1, [10, 5, 10.5, 11.0], [True, False, False, True]),
        # Fast rates.
        (1000.0, 1, [0, 0.0005, 0.001], [True, False, True]),
    ],
)
def test_token_bucket_sequences(
    rate: float, burst: int, times: list[float], expected: list[bool]
) -> None:
    bucket: Bucket | None = None
    got = []
    for now in times:
        allowed, bucket, retry = take_token(bucket, now, rate, burst)
        got.append(allowed)
        assert (retry == 0.0) == allowed
    assert got == expected


@pytest.mark.parametrize(
    ("bucket", "now", "rate", "retry"),
    [
        (Bucket(0.0, 0.0), 0.0, 1.0, 1.0),
        (Bucket(0.0, 0.0), 0.25, 1.0, 0.75),
        (Bucket(0.5, 0.0), 0.0, 2.0, 0.25),
        (Bucket(0.0, 0.0), 0.0, 0.1, 10.0),
    ],
)
def test_a_refused_token_says_when_to_retry(
    bucket: Bucket, now: float, rate: float, retry: float
) -> None:
    allowed, after, got = take_token(bucket, now, rate, 5)
    assert not allowed and got == pytest.approx(retry)
    # Retrying exactly then is let through.
    assert take_token(after, now + got, rate, 5)[0]


def test_take_token_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="rate"):
        take_token(None, 0.0, 0.0, 1)


@pytest.mark.parametrize(
    ("rate", "burst", "effective", "on"),
    [
        (0.0, 0, 1, False),
        (0.5, 0, 1, True),
        (2.0, 0, 2, True),
        (2.5, 0, 3, True),
        (2.5, 10, 10, True),
    ],
)
def test_burst_defaults_to_the_rate_rounded_up(
    rate: float, burst: int, effective: int, on: bool
) -> None:
    s = load_settings(client_rate_limit=rate, client_rate_burst=burst)
    assert (s.client_burst, s.client_limits_on) == (effective, on)
    assert load_settings(security_auto_block=True).client_limits_on


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"flower_url": "127.0.0.1:5555"}, "ORCH_FLOWER_URL: must start with http://"),
        ({"client_rate_limit": -1}, "ORCH_CLIENT_RATE_LIMIT"),
        ({"security_block_s": 0}, "ORCH_SECURITY_BLOCK_S"),
        ({"security_inspect_timeout_s": 60}, "ORCH_SECURITY_INSPECT_TIMEOUT_S"),
    ],
)
def test_bad_security_settings_name_the_variable(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**fields)


# --- the errors ------------------------------------------------------------------------------


def test_refusal_errors_name_the_client_the_limit_and_when() -> None:
    limited = RateLimited("svc-a", 2.5, 0.4)
    assert str(limited) == (
        "client 'svc-a' is over its rate limit of 2.5 submissions/s "
        "(ORCH_CLIENT_RATE_LIMIT): retry in 0.400s"
    )
    blocked = ClientBlocked("svc-a", 1_800_000_300.0, 299.6)
    text = str(blocked)
    assert "'svc-a' is blocked until 2027-01-15T08:05:00Z (300s left)" in text
    assert "orchestrator security unblock svc-a" in text
    # Celery's JSON result backend rebuilds an error as cls(*args): the message survives.
    for error in (limited, blocked):
        assert str(type(error)(*error.args)) == str(error)


# --- (a) the threat counters -----------------------------------------------------------------


def test_counter_findings() -> None:
    found = counter_findings(
        rejections={"bad": 20, "meh": 19, "limited": 25},
        threshold=20,
        rate_limited={"limited": 25, "zero": 0},
        blocked={"bad": 1_800_000_300.0},
        blocked_refusals={"bad": 7},
        poison_refused=3,
        window_s=300,
    )
    by_id = {f.id: f for f in found}
    assert set(by_id) == {
        "rejected_submissions:bad",
        "rejected_submissions:limited",
        "rate_limited:limited",
        "client_blocked:bad",
        "poison_refused",
    }
    assert by_id["rejected_submissions:bad"].severity is Sev.CRITICAL
    assert by_id["rejected_submissions:bad"].data == {
        "client_id": "bad",
        "rejections": 20,
        "window_s": 300,
        "threshold": 20,
        "blocked_until": 1_800_000_300.0,
    }
    assert "blocked_until" not in by_id["rejected_submissions:limited"].data
    assert by_id["rate_limited:limited"].severity is Sev.WARNING
    assert by_id["client_blocked:bad"].data["refused"] == 7
    assert (
        by_id["poison_refused"].severity is Sev.ERROR
        and by_id["poison_refused"].data["refused"] == 3
    )
    assert [f.id for f in threats(found)] == [
        "rejected_submissions:bad",
        "rejected_submissions:limited",
        "poison_refused",
    ]
    quiet: dict[str, Any] = {"rate_limited": {}, "blocked": {}, "blocked_refusals": {}}
    assert counter_findings({}, threshold=20, poison_refused=0, window_s=300, **quiet) == []


# --- (b) consumers of agent queues -----------------------------------------------------------

AGENTS = {"alpha": "host-1", "beta": "host-2", "old": ""}


@pytest.mark.parametrize(
    ("consumed", "expected"),
    [
        ({"alpha@host-1": ["agent.alpha"]}, []),
        ({"control@host-1": ["celery", "orchestrator.routing"]}, []),
        (
            {"x@host-9": ["agent.ghost"]},
            [("unregistered_consumer:x@host-9:agent.ghost", Sev.ERROR)],
        ),
        (
            {"alpha@host-9": ["agent.alpha"]},
            [("foreign_consumer:alpha@host-9:agent.alpha", Sev.CRITICAL)],
        ),
        # A control worker told to consume an agent's queue too, on the agent's own host.
        ({"control@host-2": ["celery", "agent.beta"]}, []),
        # A registration without a hostname (older record): only the id is checked.
        ({"any@where": ["agent.old"]}, []),
        # A node name without a host part is compared as a whole.
        ({"host-1": ["agent.alpha"]}, []),
        (
            {"a@h": ["agent.ghost", "agent.ghost"], "b@h": ["agent.spook"]},
            [
                ("unregistered_consumer:a@h:agent.ghost", Sev.ERROR),
                ("unregistered_consumer:b@h:agent.spook", Sev.ERROR),
            ],
        ),
    ],
)
def test_consumer_findings(consumed: dict[str, list[str]], expected: list[tuple[str, Sev]]) -> None:
    assert [(f.id, f.severity) for f in consumer_findings(consumed, AGENTS)] == expected


# --- (c) the configuration audit -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted", "expected"),
    [
        (["json"], []),
        (["auth"], []),
        (["json", "pickle"], [("unsafe_content:app:pickle", Sev.CRITICAL)]),
        (["application/x-python-serialize"], [("unsafe_content:app:pickle", Sev.CRITICAL)]),
        (["YAML"], [("unsafe_content:app:yaml", Sev.WARNING)]),
        (
            ["application/x-msgpack", "application/x-yaml"],
            [("unsafe_content:app:msgpack", Sev.WARNING), ("unsafe_content:app:yaml", Sev.WARNING)],
        ),
    ],
)
def test_content_findings(accepted: list[str], expected: list[tuple[str, Sev]]) -> None:
    assert [(f.id, f.severity) for f in content_findings("app", accepted)] == expected


def test_a_workers_content_finding_is_its_own_kind() -> None:
    (found,) = content_findings("rogue@h", ["pickle"])
    assert (found.id, found.kind) == (
        "worker_unsafe_content:rogue@h:pickle",
        "worker_unsafe_content",
    )
    assert "worker rogue@h accepts pickle" in found.summary


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        (None, True),
        ("", True),
        ("localhost", True),
        ("redis.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.5", False),
        ("0.0.0.0", False),
        ("redis", False),
        ("redis.example.com", False),
        ("::", False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "local", "authenticated", "tls"),
    [
        ("redis://127.0.0.1:6379/0", True, False, False),
        ("redis://:secret@10.0.0.5:6380/0", False, True, False),
        ("redis://worker:secret@redis/0", False, True, False),
        ("redis://worker@redis/0", False, False, False),
        ("rediss://redis:6380/0?ssl_cert_reqs=required", False, False, True),
        ("rediss://redis:6380/0?ssl_certfile=/c.pem&ssl_keyfile=/k.pem", False, True, True),
        ("unix:///run/redis.sock", True, False, False),
    ],
)
def test_redis_endpoint(url: str, local: bool, authenticated: bool, tls: bool) -> None:
    end = RedisEndpoint.parse(url)
    assert (end.local, end.authenticated, end.tls) == (local, authenticated, tls)
    assert "secret" not in end.address


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        ({"broker": "redis://127.0.0.1:1/0", "state": "redis://localhost:1/0"}, []),
        (
            {"broker": "redis://redis:6379/0", "results": "redis://redis:6379/0"},
            [
                ("redis_no_password:broker+results", Sev.CRITICAL),
                ("redis_no_tls:broker+results", Sev.WARNING),
            ],
        ),
        ({"state": "redis://:pw@10.1.1.1/0"}, [("redis_no_tls:state", Sev.WARNING)]),
        ({"broker": "rediss://:pw@10.1.1.1/0"}, []),
        ({"broker": "rediss://10.1.1.1/0"}, [("redis_no_password:broker", Sev.CRITICAL)]),
        (
            {"broker": "redis://127.0.0.1/0", "state": "redis://store:6379/1"},
            [("redis_no_password:state", Sev.CRITICAL), ("redis_no_tls:state", Sev.WARNING)],
        ),
    ],
)
def test_url_findings(urls: dict[str, str], expected: list[tuple[str, Sev]]) -> None:
    assert [(f.id, f.severity) for f in url_findings(urls)] == expected


def test_url_findings_never_show_a_password() -> None:
    for f in url_findings({"broker": "redis://:hunter2@10.0.0.1:7000/0"}):
        assert "hunter2" not in f.model_dump_json()
        assert "10.0.0.1:7000" in f.summary


@pytest.mark.parametrize(
    ("broker", "remote_control", "found"),
    [
        ("redis://127.0.0.1:6379/0", True, False),
        ("redis://redis:6379/0", True, True),
        ("redis://redis:6379/0", False, False),
        ("redis://:pw@redis:6379/0", True, False),
        ("rediss://redis:6379/0", True, True),
        ("unix:///tmp/redis.sock", True, False),
    ],
)
def test_remote_control_findings(broker: str, remote_control: bool, found: bool) -> None:
    got = remote_control_findings(broker, remote_control)
    assert [f.id for f in got] == (["remote_control_open"] if found else [])
    assert all(f.severity is Sev.ERROR for f in got)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ops:pw@127.0.0.1:5555/flower", "http://127.0.0.1:5555/flower"),
        ("https://ops@flower.example.com", "https://flower.example.com"),
        ("http://[::1]:5555", "http://[::1]:5555"),
        ("http://h:1/?a=b", "http://h:1/?a=b"),
    ],
)
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
    (found,) = flower_findings(url, 200)
    assert "pw" not in found.model_dump_json() and found.data["url"] == shown


@pytest.mark.parametrize(
    ("status", "found"),
    [(200, True), (204, True), (401, False), (403, False), (302, False), (None, False)],
)
def test_flower_findings(status: int | None, found: bool) -> None:
    got = flower_findings("http://127.0.0.1:5555", status)
    assert [(f.id, f.severity) for f in got] == ([("flower_open", Sev.CRITICAL)] if found else [])


@pytest.mark.parametrize(
    ("settings", "facts", "expected"),
    [
        # The default: loopback Redis, JSON only, nothing else asked.
        ({}, AuditFacts(), []),
        # Flower is probed only when ORCH_FLOWER_URL names it.
        ({}, AuditFacts(flower_status=200), []),
        ({"flower_url": "http://f:5555"}, AuditFacts(flower_status=200), ["flower_open"]),
        ({"flower_url": "http://f:5555"}, AuditFacts(flower_status=401), []),
        (
            {},
            AuditFacts(
                app_accept_content=["json", "pickle"],
                workers={
                    "a@h": WorkerFacts(["agent.a"], ["json"]),
                    "r@h": WorkerFacts(["x"], ["pickle", "json"]),
                    "q@h": WorkerFacts(["y"], None),
                },
            ),
            ["unsafe_content:app:pickle", "worker_unsafe_content:r@h:pickle"],
        ),
        (
            {"redis_url": "redis://redis:6379/0"},
            AuditFacts(),
            [
                "redis_no_password:broker+results+state",
                "redis_no_tls:broker+results+state",
                "remote_control_open",
            ],
        ),
        (
            {"redis_url": "redis://:pw@redis:6379/0", "broker_url": "redis://127.0.0.1:6379/0"},
            AuditFacts(remote_control=True),
            ["redis_no_tls:results+state"],
        ),
        (
            {"redis_url": "rediss://:pw@redis:6379/0?ssl_cert_reqs=required"},
            AuditFacts(),
            [],
        ),
    ],
)
def test_audit(settings: dict[str, str], facts: AuditFacts, expected: list[str]) -> None:
    assert [f.id for f in audit(load_settings(**settings), facts)] == expected


# --- finding ids ----------------------------------------------------------------------------


def every_kind_of_finding() -> list[Finding]:
    """At least one finding of each kind the audit makes, from each function that makes them."""
    found = counter_findings(
        {"bad": 20},
        threshold=20,
        rate_limited={"bad": 1},
        blocked={"bad": 9.0},
        blocked_refusals={"bad": 1},
        poison_refused=1,
        window_s=300,
    )
    found += consumer_findings({"x@h": ["agent.ghost"], "alpha@h9": ["agent.alpha"]}, AGENTS)
    found += content_findings("app", ["pickle"]) + content_findings("w@h", ["yaml"])
    found += url_findings({"broker": "redis://redis:6379/0", "state": "redis://redis:6379/1"})
    found += remote_control_findings("redis://redis:6379/0", True)
    found += flower_findings("http://f:5555", 200)
    configs = {
        "redis://a:1/0": RedisConfig(policy="allkeys-lru", appendonly=False),
        "redis://b:1/0": RedisConfig(policy=NO_EVICTION, appendonly=True, appendfsync="no"),
        "redis://c:1/0": RedisConfig(unreadable="NOPERM"),
    }
    found += config_findings({"broker": "redis://a:1/0", "results": "redis://b:1/0"}, configs)
    found += config_findings({"state": "redis://c:1/0"}, configs)
    return found


def test_every_finding_id_is_its_kind_then_what_it_is_about() -> None:
    found = every_kind_of_finding()
    assert {f.kind for f in found} == {
        "rejected_submissions",
        "rate_limited",
        "client_blocked",
        "poison_refused",
        "unregistered_consumer",
        "foreign_consumer",
        "unsafe_content",
        "worker_unsafe_content",
        "redis_no_password",
        "redis_no_tls",
        "remote_control_open",
        "flower_open",
        *CONFIG_KINDS,
    }
    for f in found:
        kind, _, key = f.id.partition(":")
        assert (kind, f.id) == (f.kind, finding_id(f.kind, key or None)), f


def test_a_finding_of_a_kind_that_has_one_is_named_by_its_kind() -> None:
    made = Finding.of("flower_open", None, severity=Sev.CRITICAL, summary="s", data={"n": 1})
    assert (made.id, made.kind, made.data) == ("flower_open", "flower_open", {"n": 1})
    assert Finding.of("rate_limited", "c", severity=Sev.WARNING, summary="s").id == (
        "rate_limited:c"
    )


# --- diffing ---------------------------------------------------------------------------------


def finding(
    fid: str, kind: str | None = None, severity: Sev = Sev.ERROR, since: float = 0.0
) -> Finding:
    """The finding `fid`: one of its own kind, or about `fid` when of `kind`."""
    made = Finding.of(kind or fid, fid if kind else None, severity=severity, summary=fid)
    return made.model_copy(update={"since": since})


@pytest.mark.parametrize(
    ("runs", "new_per_run"),
    [
        # Found at every run: new once.
        ([["a"], ["a"], ["a"]], [["a"], [], []]),
        # Gone, then back: new again.
        ([["a"], [], ["a"]], [["a"], [], ["a"]]),
        # Several at once, one leaves, one arrives.
        ([["a", "b"], ["b", "c"], ["b", "c"]], [["a", "b"], ["c"], []]),
        ([[], [], []], [[], [], []]),
    ],
)
def test_each_finding_is_new_once_per_episode(
    runs: list[list[str]], new_per_run: list[list[str]]
) -> None:
    standing: dict[str, Finding] = {}
    for t, (ids, expected) in enumerate(zip(runs, new_per_run, strict=True)):
        standing, new = diff_findings(standing, [finding(i) for i in ids], now=100.0 + t)
        assert [f.id for f in new] == expected
        assert sorted(standing) == sorted(ids)


def test_a_standing_finding_keeps_its_since_and_takes_fresh_data() -> None:
    first, _ = diff_findings({}, [finding("a")], now=10.0)
    fresh = Finding.of("a", None, severity=Sev.ERROR, summary="now 5", data={"n": 5})
    second, new = diff_findings(first, [fresh], now=20.0)
    assert new == [] and second["a"].since == 10.0 and second["a"].data == {"n": 5}


def test_findings_of_a_check_that_did_not_run_stand_as_they_were() -> None:
    consumer = finding("c", kind="unregistered_consumer", since=5.0)
    other = finding("x", kind="other", since=5.0)
    before = {consumer.id: consumer, other.id: other}
    standing, new = diff_findings(before, [], now=50.0, unchecked_kinds=["unregistered_consumer"])
    assert standing == {"unregistered_consumer:c": consumer} and new == []


def test_ordered_puts_the_most_severe_and_oldest_first() -> None:
    got = ordered(
        [
            finding("w", severity=Sev.WARNING, since=1),
            finding("c2", severity=Sev.CRITICAL, since=9),
            finding("c1", severity=Sev.CRITICAL, since=3),
            finding("i", severity=Sev.INFO, since=0),
        ]
    )
    assert [f.id for f in got] == ["c1", "c2", "w", "i"]
    assert [f.id for f in threats(got)] == ["c1", "c2"]


# --- what remote control tells anyone who asks -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@10.0.0.1:6379/0", "redis://:********@10.0.0.1:6379/0"),
        (
            "rediss://worker:p%40ss@h:1/0?ssl_cert_reqs=none",
            "rediss://worker:********@h:1/0?ssl_cert_reqs=none",
        ),
        ("redis://worker@h/0", "redis://worker@h/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("./backups", "./backups"),
    ],
)
def test_mask_password(url: str, shown: str) -> None:
    assert mask_password(url) == shown


def test_the_conf_reply_of_remote_control_shows_no_settings_password() -> None:
    """`celery inspect conf` (and the security loop's audit) gets the app's settings as their
    repr: it must not carry the Redis passwords."""
    from celery.worker import control

    from orchestrator.runtime.celeryconf import create_app

    settings = load_settings(
        redis_url="redis://:hunter2@10.0.0.1:6379/0", state_url="redis://:s3cret@10.0.0.2/1"
    )
    app = create_app(settings, with_tasks=False)
    try:
        reply = control.conf(SimpleNamespace(app=app))
    finally:
        app.close()
    shown = json.dumps(reply["orchestrator_settings"])
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "redis://:********@10.0.0.1:6379/0" in shown
    assert reply["accept_content"] == ["json"]


def test_a_client_without_this_package_reads_each_refusal_as_its_message() -> None:
    """Celery's JSON result backend stores an error's args; a client that cannot import
    orchestrator.errors rebuilds a plain exception from them, so the only arg must be the
    message (and a client that can import it gets the fields back from that message)."""
    from celery import Celery

    from orchestrator.errors import MessageRefused

    backend = Celery(set_as_current=False).backend
    for error in (
        RateLimited("svc-a", 2.5, 0.4),
        ClientBlocked("svc-a", 1_800_000_300.0, 299.6),
        MessageRefused("celery", "unknown task 'orchestrator.submitt'"),
    ):
        stored = backend.prepare_exception(error, "json")
        assert list(stored["exc_message"]) == [str(error)]
        foreign = backend.exception_to_python({**stored, "exc_module": "no_such_package.errors"})
        assert str(foreign) == str(error)
        rebuilt = backend.exception_to_python(stored)
        assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    rebuilt_limit = RateLimited(str(RateLimited("svc-a", 2.5, 0.4)))
    assert (rebuilt_limit.client_id, rebuilt_limit.limit_per_s, rebuilt_limit.retry_after_s) == (
        "svc-a",
        2.5,
        0.4,
    )
    rebuilt_block = ClientBlocked(str(ClientBlocked("svc-a", 1_800_000_300.0, 299.6)))
    assert (rebuilt_block.client_id, rebuilt_block.until) == ("svc-a", 1_800_000_300.0)
