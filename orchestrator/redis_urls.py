"""What a Redis URL says: its TLS options, the Sentinel form, its password masked.

And whether the state store is a Redis Cluster (ORCH_STATE_CLUSTER), read once per process.
Shared by the settings, the store's connections and key layout, the Celery app and the
start-up checks."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dotenv import dotenv_values  # the .env reader pydantic-settings uses

#: `ssl_cert_reqs` values of a rediss:// URL that Celery, kombu and redis-py all read alike.
SSL_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
#: The variable that puts the state store on a Redis Cluster. The key layout depends on it and
#: is fixed when orchestrator.store.keys is imported, so it is read here, at import, from the
#: environment or the `.env` file of the working directory (as the settings read it); the
#: settings refuse a value that differs from what the layout was built with (config.py).
STATE_CLUSTER_VARIABLE = "ORCH_STATE_CLUSTER"
#: How pydantic reads a boolean: the words the setting accepts.
TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})


def env_flag(name: str, env_file: str = ".env") -> bool:
    """Whether the variable `name` is true in the environment, else in `env_file` (a name's
    case aside, as the settings read it); anything but a true word is false (the settings
    then say what is wrong with it)."""
    sources: list[Mapping[str, str]] = [os.environ]
    if os.path.isfile(env_file):
        sources.append({k: v or "" for k, v in dotenv_values(env_file).items()})
    for source in sources:
        for key, value in source.items():
            if key.upper() == name:
                return value.strip().lower() in TRUE_WORDS
    return False


#: Whether this process's key layout is the Redis Cluster one (store/keys.py).
STATE_CLUSTER_LAYOUT = env_flag(STATE_CLUSTER_VARIABLE)


def cluster_problem(
    cluster: bool, state_url: str, others: tuple[str, ...], wait_replicas: int = 0
) -> str | None:
    """What is wrong with ORCH_STATE_CLUSTER=`cluster` beside the state store's URL and the
    broker's and result backend's (`others`), or None. The key layout it needs was chosen
    when the process started (STATE_CLUSTER_LAYOUT); kombu and Celery's result backend have
    no Redis Cluster client; a submission's WAIT for replicas is not built for a cluster."""
    name = STATE_CLUSTER_VARIABLE
    if cluster != STATE_CLUSTER_LAYOUT:
        return (
            f"{name} is {str(cluster).lower()} here, but the key names of this process were "
            f"built with it {str(STATE_CLUSTER_LAYOUT).lower()}: set it in the environment or "
            ".env before the process starts"
        )
    if not cluster:
        return None
    if not state_url.startswith(("redis://", "rediss://")):
        return f"{name} needs a redis:// or rediss:// ORCH_STATE_URL (a node of the cluster)"
    if state_url in others:
        return (
            f"{name} needs ORCH_BROKER_URL and ORCH_RESULT_BACKEND on another, single Redis: "
            "kombu and Celery's result backend have no Redis Cluster client"
        )
    if wait_replicas > 0:
        return f"{name} does not work with ORCH_SUBMIT_WAIT_REPLICAS yet (set it to 0)"
    return None


#: Query parameters of a rediss:// URL that name files (CA bundle, client certificate and key).
SSL_FILE_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def check_redis_url(value: str) -> str:
    """`value` unchanged, if it is a URL form every Redis client here reads: redis://,
    rediss:// (with TLS options they can all honour), unix:// or the Sentinel form."""
    if is_sentinel(value):
        parse_sentinel(value)  # raises naming the part that is wrong
        return value
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "must start with redis://, rediss://, unix:// or sentinel:// "
            f"(got {mask_password(value)!r})"
        )
    redis_ssl_options(value)  # raises on TLS options it cannot honour
    return value


def redis_ssl_options(url: str) -> dict[str, Any] | None:
    """The TLS options a rediss:// URL asks for in its query, as Celery's `broker_use_ssl`
    and `redis_backend_use_ssl` take them; None for a URL without TLS.

    Without them, kombu under our transport (orchestrator.runtime.transport) speaks plain TCP to a
    rediss:// broker, and Celery's result backend refuses the URL; given them, both verify
    the server against the system's CAs unless the query says otherwise, as redis-py does
    for the state store. The messages name the parameter, never the URL: it may hold a
    password.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    asked = sorted(k for k in query if k.startswith("ssl_"))
    if parts.scheme != "rediss":
        if asked:
            raise ValueError(f"TLS options need a rediss:// URL (got {', '.join(asked)})")
        return None
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in SSL_CERT_REQS:
        raise ValueError(
            f"ssl_cert_reqs must be one of {', '.join(SSL_CERT_REQS)} (got ssl_cert_reqs={reqs})"
        )
    options: dict[str, Any] = {"ssl_cert_reqs": SSL_CERT_REQS[reqs]}
    options.update({name: query[name] for name in SSL_FILE_PARAMS if query.get(name)})
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() not in (
            "false",
            "no",
            "0",
        )
    return options


#: The master name of a sentinel-form URL unless ORCH_REDIS_SENTINEL_MASTER says otherwise.
DEFAULT_SENTINEL_MASTER = "mymaster"


@dataclass(frozen=True)
class SentinelAddress:
    """A sentinel-form URL (`sentinel://h1:26379;sentinel://h2:26379/0`), as kombu reads it
    for the broker and Celery for the result backend: the sentinels to ask for the master,
    and the database and credentials (of the first part that has them) for the master."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def parse_sentinel(url: str) -> SentinelAddress:
    """Parse a sentinel-form URL; ValueError naming the part that is wrong (never the
    password)."""
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for number, chunk in enumerate(url.split(";"), 1):
        parts = urlsplit(chunk.strip())
        if parts.scheme != "sentinel":
            raise ValueError(f"part {number} of a sentinel URL must start with sentinel://")
        try:
            port = parts.port or 26379
        except ValueError:
            raise ValueError(f"part {number} of a sentinel URL has a bad port") from None
        if not parts.hostname:
            raise ValueError(f"part {number} of a sentinel URL names no host")
        if parts.query:
            raise ValueError(f"part {number} of a sentinel URL: query options are not supported")
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"part {number} of a sentinel URL: database must be a number")
            if db is not None and int(path) != db:
                raise ValueError("the parts of a sentinel URL name different databases")
            db = int(path)
        if parts.password and password is None:
            username, password = parts.username or None, unquote(parts.password)
        sentinels.append((parts.hostname, port))
    return SentinelAddress(tuple(sentinels), db or 0, username, password)


def mask_password(url: str) -> str:
    """`url` with its password (if any) shown as ********."""
    if ";" in url:
        return ";".join(mask_password(chunk) for chunk in url.split(";"))
    parts = urlsplit(url)
    if "://" not in url or not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:********@{host}").geturl()
