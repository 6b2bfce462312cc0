"""Redis URLs with a password, an ACL user or TLS: options, and failures that stop a start.

Redis URLs with a password, an ACL user or TLS: the TLS options read from a rediss:// URL,
what Celery is told, and which connection failures stop a process at start-up."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.redis_urls import redis_ssl_options
from orchestrator.runtime.celeryconf import celery_config, create_app
from orchestrator.security.preflight import (
    RedisTarget,
    classify_failure,
    preflight,
    redis_targets,
    unreadable_tls_file,
)

REQ = ssl.CERT_REQUIRED
CA = "/etc/orch/ca.crt"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/0", None),
        ("redis://:pw@127.0.0.1:6380/0", None),
        ("redis://orchestrator:pw@127.0.0.1:6380/0", None),
        ("unix:///run/redis.sock?db=0", None),
        # No options: verify against the system's CAs, as redis-py does.
        ("rediss://127.0.0.1:6380/0", {"ssl_cert_reqs": REQ}),
        (
            f"rediss://:pw@127.0.0.1:6380/0?ssl_cert_reqs=required&ssl_ca_certs={CA}",
            {"ssl_cert_reqs": REQ, "ssl_ca_certs": CA},
        ),
        ("rediss://h:6380/0?ssl_cert_reqs=optional", {"ssl_cert_reqs": ssl.CERT_OPTIONAL}),
        ("rediss://h:6380/0?ssl_cert_reqs=none", {"ssl_cert_reqs": ssl.CERT_NONE}),
        (
            "rediss://h:6380/0?ssl_ca_certs=/c%20a/ca.crt&ssl_certfile=/c.crt&ssl_keyfile=/c.key",
            {
                "ssl_cert_reqs": REQ,
                "ssl_ca_certs": "/c a/ca.crt",
                "ssl_certfile": "/c.crt",
                "ssl_keyfile": "/c.key",
            },
        ),
        (
            "rediss://h:6380/0?ssl_check_hostname=false",
            {"ssl_cert_reqs": REQ, "ssl_check_hostname": False},
        ),
        (
            "rediss://h:6380/0?ssl_check_hostname=true",
            {"ssl_cert_reqs": REQ, "ssl_check_hostname": True},
        ),
    ],
)
def test_ssl_options_from_url(url: str, expected: dict[str, Any] | None) -> None:
    assert redis_ssl_options(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://h:6380/0?ssl_cert_reqs=CERT_REQUIRED", "ssl_cert_reqs must be one of"),
        ("rediss://h:6380/0?ssl_cert_reqs=yes", "(got ssl_cert_reqs=yes)"),
        ("redis://h:6380/0?ssl_ca_certs=/ca.crt", "TLS options need a rediss:// URL"),
    ],
)
def test_ssl_options_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        redis_ssl_options(url)


def test_settings_name_the_variable_and_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(broker_url="rediss://:hunter2@h:6380/0?ssl_cert_reqs=maybe")
    assert "ORCH_BROKER_URL: ssl_cert_reqs must be one of required, optional, none" in str(
        info.value
    )
    assert "hunter2" not in str(info.value)


TLS_URL = f"rediss://orchestrator:pw@127.0.0.1:6380/0?ssl_cert_reqs=required&ssl_ca_certs={CA}"


def test_celery_is_told_the_tls_options_of_each_url() -> None:
    settings = load_settings(
        redis_url="redis://:pw@127.0.0.1:6380/0",
        broker_url=TLS_URL,
        state_url="rediss://127.0.0.1:6381/0",
    )
    conf = celery_config(settings)
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": REQ, "ssl_ca_certs": CA}
    assert conf["redis_backend_use_ssl"] is None  # the result backend is ORCH_REDIS_URL
    assert conf["redbeat_redis_use_ssl"] == {"ssl_cert_reqs": REQ}  # the state store


def test_a_bare_rediss_broker_url_is_tls_that_verifies() -> None:
    """Under our transport, kombu took a rediss:// URL without query options for plain TCP
    (the password in clear), and Celery's result backend refused the URL outright."""
    app = create_app(load_settings(redis_url="rediss://:pw@127.0.0.1:6380/0"), with_tasks=False)
    with app.connection_for_write() as conn:
        assert conn.ssl == {"ssl_cert_reqs": REQ}
    params = app.backend.connparams
    assert issubclass(params["connection_class"], redis.SSLConnection)
    assert params["ssl_cert_reqs"] == REQ


def test_query_options_reach_kombu_and_the_backend() -> None:
    app = create_app(load_settings(redis_url=TLS_URL), with_tasks=False)
    with app.connection_for_write() as conn:
        assert conn.ssl == {"ssl_cert_reqs": REQ, "ssl_ca_certs": CA}
        assert (conn.userid, conn.password) == ("orchestrator", "pw")
    params = app.backend.connparams
    assert (params["ssl_ca_certs"], params["username"], params["password"]) == (
        CA,
        "orchestrator",
        "pw",
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, [("ORCH_REDIS_URL", "redis://r:1/0")]),
        (
            {"broker_url": "redis://b:1/0"},
            [("ORCH_BROKER_URL", "redis://b:1/0"), ("ORCH_REDIS_URL", "redis://r:1/0")],
        ),
        (
            {"result_backend": "redis://k:1/0", "state_url": "redis://s:1/0"},
            [
                ("ORCH_REDIS_URL", "redis://r:1/0"),
                ("ORCH_RESULT_BACKEND", "redis://k:1/0"),
                ("ORCH_STATE_URL", "redis://s:1/0"),
            ],
        ),
        # An override equal to another URL is checked once, under the first variable.
        ({"state_url": "redis://r:1/0"}, [("ORCH_REDIS_URL", "redis://r:1/0")]),
    ],
)
def test_each_distinct_url_once_under_its_variable(
    overrides: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    settings = load_settings(redis_url="redis://r:1/0", **overrides)
    assert redis_targets(settings) == [RedisTarget(v, u) for v, u in expected]


def _wrapped(cause: BaseException) -> redis.ConnectionError:
    """What redis-py raises: its ConnectionError, raised while handling the socket error."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to 127.0.0.1:6380. {exc}.") from None
    except redis.ConnectionError as outer:
        outer.__context__ = cause
        return outer


def _verify_failed(message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_message = message
    return exc


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            redis.AuthenticationError(
                "invalid username-password pair or user is disabled.", status_code="WRONGPASS"
            ),
            "authentication failed (WRONGPASS invalid username-password pair or user is disabled)",
        ),
        (
            redis.AuthenticationError("HELLO must be called ...", status_code="NOAUTH"),
            "authentication required: the server has a password and the URL gives none",
        ),
        (
            redis.exceptions.NoPermissionError(
                "this user has no permissions to run the 'ping' command", status_code="NOPERM"
            ),
            "permission denied (NOPERM this user has no permissions to run the 'ping' command)",
        ),
        (
            _wrapped(_verify_failed("self-signed certificate in certificate chain")),
            "TLS certificate not trusted (self-signed certificate in certificate chain)",
        ),
        (
            _wrapped(_verify_failed("Hostname mismatch, certificate is not valid for 'h'.")),
            "TLS certificate not trusted (Hostname mismatch, certificate is not valid for 'h'.)",
        ),
        (
            _wrapped(_ssl_error("WRONG_VERSION_NUMBER")),
            "TLS handshake failed: the server does not speak TLS on this port",
        ),
        # What waiting can fix: the process starts, Celery retries.
        (_wrapped(ConnectionRefusedError(111, "Connection refused")), None),
        (_wrapped(ConnectionResetError(104, "Connection reset by peer")), None),
        (_wrapped(_ssl_error("UNEXPECTED_EOF_WHILE_READING")), None),
        (redis.TimeoutError("Timeout connecting to server"), None),
        (redis.ConnectionError("Connection closed by server."), None),
        (redis.BusyLoadingError("Redis is loading the dataset in memory"), None),
    ],
)
def test_which_failures_stop_start_up(exc: BaseException, expected: str | None) -> None:
    assert classify_failure(exc) == expected


def test_preflight_stops_at_the_first_fatal_failure_naming_its_variable() -> None:
    tried: list[str] = []

    def connect(url: str) -> None:
        tried.append(url)
        if url == "redis://s:1/0":
            raise redis.AuthenticationError("invalid password", status_code="WRONGPASS")
        if url == "redis://b:1/0":
            raise redis.ConnectionError("Error 111 connecting to b:1. Connection refused.")

    targets = [
        RedisTarget("ORCH_BROKER_URL", "redis://b:1/0"),
        RedisTarget("ORCH_STATE_URL", "redis://s:1/0"),
    ]
    with pytest.raises(ConfigError, match=r"^ORCH_STATE_URL: authentication failed \("):
        preflight(targets, connect=connect)
    assert tried == ["redis://b:1/0", "redis://s:1/0"]
    notes = preflight(targets[:1], connect=connect)
    assert notes == [
        "ORCH_BROKER_URL: Redis not reachable yet (Error 111 connecting to b:1. Connection "
        "refused.)"
    ]


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    url = f"rediss://h:1/0?ssl_ca_certs={ca}&ssl_certfile={tmp_path}/client.crt"
    assert unreadable_tls_file(url) == (
        f"ssl_certfile file {tmp_path}/client.crt cannot be read (No such file or directory)"
    )
    assert unreadable_tls_file(f"rediss://h:1/0?ssl_ca_certs={ca}") is None

    def never(url: str) -> None:
        raise AssertionError("no ping when a file is missing")

    with pytest.raises(ConfigError, match=r"^ORCH_REDIS_URL: ssl_certfile file .* cannot be read"):
        preflight([RedisTarget("ORCH_REDIS_URL", url)], connect=never)


def test_a_url_with_a_wrong_scheme_is_refused_without_echoing_its_password() -> None:
    from orchestrator.config import load_settings
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_settings(redis_url="http://worker:s3cret-pw@10.0.0.5:6379/0")
    assert "ORCH_REDIS_URL: must start with redis://" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)
    assert "worker:********@10.0.0.5" in str(refused.value)
