"""A Redis's fitness to hold queues and state, judged from its configuration: the tables.

An evicting maxmemory-policy is a critical finding and refuses every role's start unless
ORCH_ALLOW_EVICTING_REDIS (then a warning); no AOF, or an AOF never fsynced, is a warning; a
configuration that cannot be read (NOPERM, CONFIG renamed) is a note, never a refusal."""

from __future__ import annotations

import logging

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import ProductionEventSeverity as Sev
from orchestrator.security.fitness import (
    RedisConfig,
    config_findings,
    judge_redis,
    memory_text,
    role_names,
)
from orchestrator.security.preflight import RedisTarget, check_fitness, fitness_verdict

FIT = RedisConfig("noeviction", 0, True, "everysec")
ADDRESS = "10.0.0.5:6379"


EV, NO_AOF, UNSYNCED, UNREAD = (
    "redis_evicting",
    "redis_no_aof",
    "redis_aof_unsynced",
    "redis_config_unreadable",
)
MB20 = 20 << 20
NOPERM = "NOPERM this user has no permissions to run the 'config|get' command"


@pytest.mark.parametrize(
    ("config", "allow", "expected"),
    [
        (FIT, False, []),
        (RedisConfig("noeviction", MB20, True, "always"), False, []),
        (RedisConfig("allkeys-lru", MB20, True, "everysec"), False, [(EV, Sev.CRITICAL)]),
        (RedisConfig("volatile-lru", 0, True, "everysec"), False, [(EV, Sev.CRITICAL)]),
        (RedisConfig("allkeys-random", MB20, True, "everysec"), True, [(EV, Sev.WARNING)]),
        (
            RedisConfig("volatile-ttl", 0, False, "everysec"),
            False,
            [(EV, Sev.CRITICAL), (NO_AOF, Sev.WARNING)],
        ),
        (RedisConfig("noeviction", 0, False, "everysec"), False, [(NO_AOF, Sev.WARNING)]),
        (RedisConfig("noeviction", 0, True, "no"), False, [(UNSYNCED, Sev.WARNING)]),
        # appendfsync only matters with an AOF.
        (RedisConfig("noeviction", 0, False, "no"), False, [(NO_AOF, Sev.WARNING)]),
        # What the server did not say is not judged.
        (RedisConfig("noeviction", None, None, None), False, []),
        (RedisConfig(unreadable=NOPERM), False, [(UNREAD, Sev.INFO)]),
        (RedisConfig(unreadable="ERR unknown command 'CONFIG'"), True, [(UNREAD, Sev.INFO)]),
    ],
)
def test_judge_redis(config: RedisConfig, allow: bool, expected: list[tuple[str, Sev]]) -> None:
    found = judge_redis("broker", ADDRESS, config, allow)
    assert [(f.kind, f.severity) for f in found] == expected
    assert all(f.id == f"{f.kind}:{ADDRESS}" for f in found)


def test_an_evicting_finding_names_the_policy_the_limit_and_the_fix() -> None:
    (found,) = judge_redis("state store", ADDRESS, RedisConfig("allkeys-lru", 20 << 20, True))
    assert found.summary.startswith(
        f"the state store at {ADDRESS} has maxmemory-policy allkeys-lru (maxmemory 20mb)"
    )
    assert "noeviction" in found.summary and "ORCH_ALLOW_EVICTING_REDIS=true" in found.summary
    assert found.data["policy"] == "allkeys-lru" and found.data["maxmemory"] == 20 << 20
    (allowed,) = judge_redis("state store", ADDRESS, RedisConfig("allkeys-lru", 0, True), True)
    assert "(allowed by ORCH_ALLOW_EVICTING_REDIS)" in allowed.summary
    assert "no maxmemory set" in allowed.summary


@pytest.mark.parametrize(
    ("maxmemory", "text"),
    [
        (None, "no maxmemory set"),
        (0, "no maxmemory set"),
        (20 << 20, "maxmemory 20mb"),
        (2 << 30, "maxmemory 2gb"),
        (1536 << 10, "maxmemory 1536kb"),
        (1000, "maxmemory 1000 bytes"),
    ],
)
def test_memory_text(maxmemory: int | None, text: str) -> None:
    assert memory_text(maxmemory) == text


@pytest.mark.parametrize(
    ("roles", "names"),
    [
        (["state"], "state store"),
        (["broker", "state"], "broker and state store"),
        (["broker", "results", "state"], "broker, result backend and state store"),
    ],
)
def test_role_names(roles: list[str], names: str) -> None:
    assert role_names(roles) == names


def test_config_findings_one_per_redis_keyed_by_its_roles() -> None:
    one, other = "redis://10.0.0.5:6379/0", "redis://:pw@10.0.0.6:6380/1"
    urls = {"broker": one, "results": one, "state": other}
    configs = {one: RedisConfig("allkeys-lru", 0, True, "everysec"), other: FIT}
    found = config_findings(urls, configs)
    assert [f.id for f in found] == ["redis_evicting:broker+results"]
    assert found[0].summary.startswith("the broker and result backend at 10.0.0.5:6379 ")
    # A URL not asked (it did not answer) makes no finding; the password never shows.
    found = config_findings(urls, {other: RedisConfig("allkeys-lru", 0, False)})
    assert [f.id for f in found] == ["redis_evicting:state", "redis_no_aof:state"]
    assert all("pw" not in f.summary for f in found)


EVICTING = judge_redis("Redis", ADDRESS, RedisConfig("allkeys-lru", 20 << 20, False))
UNREADABLE = judge_redis("Redis", ADDRESS, RedisConfig(unreadable="NOPERM no"))


@pytest.mark.parametrize(
    ("findings", "allow", "refused", "levels"),
    [
        ([], False, False, []),
        (EVICTING, False, True, [logging.WARNING]),
        (EVICTING, True, False, [logging.WARNING, logging.WARNING]),
        (UNREADABLE, False, False, [logging.INFO]),
    ],
)
def test_fitness_verdict(findings, allow: bool, refused: bool, levels: list[int]) -> None:
    refusal, lines = fitness_verdict("ORCH_STATE_URL", findings, allow)
    assert (refusal is not None) is refused
    assert [level for level, _ in lines] == levels
    for line in [refusal or "", *(text for _, text in lines)]:
        assert "\n" not in line
    assert all(text.startswith("ORCH_STATE_URL: ") for _, text in lines)
    if refusal:
        assert refusal.startswith("ORCH_STATE_URL: the Redis at 10.0.0.5:6379 has ")
        assert "maxmemory-policy allkeys-lru" in refusal


def test_check_fitness_refuses_at_an_evicting_redis_and_skips_one_that_is_down() -> None:
    import redis

    said = {
        "redis://a:1/0": RedisConfig("noeviction", 0, False, "everysec"),
        "redis://b:2/0": RedisConfig("allkeys-lfu", 0, True, "everysec"),
    }

    def read(target: RedisTarget) -> RedisConfig:
        if target.url not in said:
            raise redis.ConnectionError("down")
        return said[target.url]

    down = RedisTarget("ORCH_BROKER_URL", "redis://c:3/0")
    fit = RedisTarget("ORCH_REDIS_URL", "redis://a:1/0")
    evicting = RedisTarget("ORCH_STATE_URL", "redis://b:2/0")
    lines = check_fitness([down, fit], read=read)
    assert [(level, text.split(":", 1)[0]) for level, text in lines] == [
        (logging.WARNING, "ORCH_REDIS_URL")
    ]
    with pytest.raises(ConfigError, match=r"^ORCH_STATE_URL: the Redis at b:2 has maxmemory-"):
        check_fitness([fit, evicting], read=read)
    assert len(check_fitness([evicting], allow_evicting=True, read=read)) == 1


def test_allow_evicting_redis_is_a_setting() -> None:
    assert load_settings().allow_evicting_redis is False
    assert load_settings(allow_evicting_redis="true").allow_evicting_redis is True
