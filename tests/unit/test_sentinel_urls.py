"""The sentinel form of the Redis URLs: parsed, refused with a reason, and what each role is told.

kombu (the broker), Celery's result backend, Flower, RedBeat and the state store each take a
Redis Sentinel group their own way; these check that one ORCH_REDIS_URL reaches all of them
with the master name of ORCH_REDIS_SENTINEL_MASTER, and that the audit reads it too.
"""

from __future__ import annotations

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.redis_urls import SentinelAddress, mask_password, parse_sentinel
from orchestrator.runtime.celeryconf import celery_config
from orchestrator.runtime.transport import SENTINEL_TRANSPORT, TRANSPORT
from orchestrator.security.policy import RedisEndpoint
from orchestrator.security.preflight import redis_targets

URL = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


def test_a_sentinel_url_names_every_sentinel_the_database_and_the_master_password() -> None:
    assert parse_sentinel(URL) == SentinelAddress(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)),
        db=2,
        username=None,
        password="s3cret",
    )
    assert parse_sentinel("sentinel://u:p%40ss@h") == SentinelAddress(
        (("h", 26379),), 0, "u", "p@ss"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://h1:26379;redis://h2:6379/0", "part 2 of a sentinel URL must start with"),
        ("sentinel://h1:port/0", "part 1 of a sentinel URL has a bad port"),
        ("sentinel://:pw@/0", "part 1 of a sentinel URL names no host"),
        ("sentinel://h1/0;sentinel://h2/1", "name different databases"),
        ("sentinel://h1/x", "database must be a number"),
        ("sentinel://h1/0?master=x", "query options are not supported"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_part(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(redis_url=url)
    assert "ORCH_REDIS_URL" in str(refused.value) and message in str(refused.value)


def test_the_password_of_every_part_is_masked() -> None:
    masked = mask_password("sentinel://:a@h1:1;sentinel://u:b@h2:2/0")
    assert masked == "sentinel://:********@h1:1;sentinel://u:********@h2:2/0"


def test_each_role_is_told_the_master_name() -> None:
    settings = load_settings(redis_url=URL, redis_sentinel_master="orders")
    conf = celery_config(settings)
    assert conf["broker_url"] == conf["result_backend"] == URL
    assert conf["broker_transport"] == SENTINEL_TRANSPORT
    assert conf["broker_transport_options"]["master_name"] == "orders"  # kombu and Flower
    assert conf["result_backend_transport_options"]["master_name"] == "orders"
    assert conf["redbeat_redis_url"] == "redis-sentinel://"
    options = conf["redbeat_redis_options"]
    assert options["service_name"] == "orders" and options["db"] == 2
    assert options["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert options["password"] == "s3cret"
    assert {t.sentinel_master for t in redis_targets(settings)} == {"orders"}


def test_the_default_master_is_mymaster_and_plain_urls_keep_the_plain_transport() -> None:
    assert celery_config(load_settings(redis_url=URL))["broker_transport_options"][
        "master_name"
    ] == ("mymaster")
    plain = celery_config(load_settings(redis_url="redis://127.0.0.1:6380/0"))
    assert plain["broker_transport"] == TRANSPORT
    assert "master_name" not in plain["broker_transport_options"]
    assert plain["redbeat_redis_options"] == {}


def test_only_the_state_store_on_sentinel() -> None:
    settings = load_settings(redis_url="redis://127.0.0.1:6380/0", state_url=URL)
    conf = celery_config(settings)
    assert conf["broker_transport"] == TRANSPORT
    assert conf["redbeat_redis_url"] == "redis-sentinel://"


def test_the_audit_reads_the_sentinels_of_a_url() -> None:
    end = RedisEndpoint.parse(URL)
    assert end.address == "10.0.0.1:26379,10.0.0.2:26380,10.0.0.3:26379"
    assert not end.local and end.authenticated and not end.tls
    assert RedisEndpoint.parse("sentinel://127.0.0.1:1;sentinel://localhost/0").local


def test_switching_to_the_next_sentinel_keeps_this_projects_transport() -> None:
    """kombu treats the `;`-separated parts as failover alternates and, switching to the next
    one after a connection error, takes the transport from its scheme: the stock Sentinel
    transport would drop the screening and the captured pushes of runtime/transport.py."""
    from kombu import Connection

    from orchestrator.runtime import transport
    from orchestrator.runtime.celeryconf import create_app

    create_app(load_settings(redis_url=URL), with_tasks=False)  # as every role's process does
    with Connection(URL, transport=SENTINEL_TRANSPORT) as conn:
        assert type(conn.transport) is transport.SentinelTransport
        conn.maybe_switch_next()
        conn.maybe_switch_next()
        assert type(conn.transport) is transport.SentinelTransport
        assert conn.transport.Channel is transport.SentinelChannel
