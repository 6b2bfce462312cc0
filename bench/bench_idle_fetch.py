"""How fast an idle worker starts a message, and what idling costs Redis and the worker.

One prefork worker (`-c 1`) consumes four queues under the project's ten priority steps (40
lists) and sits idle; then 50 tasks are sent 200 ms apart, round the four queues, and each
records when it started (`time.time()` in the pool process) against the time it was sent.
While idle (10 s, after 2 s to settle), Redis's CPU comes from INFO CPU and the worker's
(main process and pool child) from psutil; Redis's own idle CPU without a worker is
measured first and subtracted.

    python -m bench.bench_idle_fetch kombu wake        # kombu's BRPOP, this tree's transport
    PYTHONPATH=/tmp/head python -m bench.bench_idle_fetch project   # another tree's transport

Modes: `kombu` (kombu's stock Redis transport), `project` (orchestrator.runtime.transport as
importable), `wake` (the same, named so), `poll` (the same with fetch_wake=False: the idle
fetch polls, doubling 2 -> 20 ms).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery

QUEUES = ("q1", "q2", "q3", "q4")
LATENCIES = "bench:idle:latency"


def _mode_options(mode: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
    }
    if mode == "poll":
        options["fetch_wake"] = False
    return options


def create_app(url: str, mode: str) -> Celery:
    bench = Celery("bench_idle", broker=url, backend=None)
    transport: dict[str, Any] = {}
    if mode != "kombu":
        from orchestrator.runtime.transport import TRANSPORT

        transport["broker_transport"] = TRANSPORT
    bench.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=_mode_options(mode),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        **transport,
    )
    return bench


def _worker_app() -> Celery:
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        raise SystemExit("bench_idle_fetch: BENCH_REDIS_URL is not set")
    bench = create_app(url, os.environ.get("BENCH_MODE", "wake"))
    recorder = redis.Redis.from_url(url)

    @bench.task(name="bench.stamp")
    def stamp(sent: float) -> None:
        recorder.rpush(LATENCIES, time.time() - sent)

    return bench


app = _worker_app() if os.environ.get("BENCH_REDIS_URL") else None


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _proc_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def run(mode: str, url: str, client: redis.Redis, idle_s: float = 10.0) -> dict[str, float]:
    env = {**os.environ, "BENCH_REDIS_URL": url, "BENCH_MODE": mode}
    env = {k: v for k, v in env.items() if not k.startswith("ORCH_")}
    cmd = [
        sys.executable, "-m", "celery", "-A", "bench.bench_idle_fetch", "worker",
        "-P", "prefork", "-c", "1", "-Q", ",".join(QUEUES),
        "--without-gossip", "--without-mingle", "-l", "warning",
    ]  # fmt: skip
    log = Path(tempfile.gettempdir()) / f"bench-idle-{mode}-{os.getpid()}.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    sender = create_app(url, "kombu")
    try:
        client.delete(LATENCIES)
        sender.send_task("bench.stamp", args=[time.time()], queue=QUEUES[0])
        deadline = time.monotonic() + 60
        while client.llen(LATENCIES) < 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"{mode}: the worker never ran the warm-up task ({log})")
            time.sleep(0.05)
        client.delete(LATENCIES)
        time.sleep(2.0)
        proc = psutil.Process(worker.pid)
        r0, w0, t0 = _redis_cpu(client), _proc_cpu(proc), time.monotonic()
        time.sleep(idle_s)
        r1, w1, t1 = _redis_cpu(client), _proc_cpu(proc), time.monotonic()
        for n in range(50):
            sender.send_task("bench.stamp", args=[time.time()], queue=QUEUES[n % 4])
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while client.llen(LATENCIES) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        lat = sorted(float(x) * 1e3 for x in client.lrange(LATENCIES, 0, -1))
    finally:
        sender.close()
        children = psutil.Process(worker.pid).children(recursive=True)
        worker.kill()
        worker.wait()
        for child in children:  # the pool process(es) of this worker
            child.kill()
    return {
        "median_ms": statistics.median(lat),
        "p90_ms": lat[int(0.9 * len(lat))],
        "n": len(lat),
        "redis_pct": 100 * (r1 - r0) / (t1 - t0),
        "worker_pct": 100 * (w1 - w0) / (t1 - t0),
    }


def main(argv: list[str]) -> None:
    from tests.support import RedisServer

    modes = argv or ["kombu", "wake"]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(workdir=Path(tmp)).start()
        try:
            client = server.client()
            c0, t0 = _redis_cpu(client), time.monotonic()
            time.sleep(5)
            base = 100 * (_redis_cpu(client) - c0) / (time.monotonic() - t0)
            print(f"Redis alone, idle: {base:.2f} % of a core")
            print("mode     start median  p90     Redis CPU idle (net)  worker CPU idle")
            for mode in modes:
                res = run(mode, server.url, client)
                print(
                    f"{mode:8} {res['median_ms']:8.2f} ms {res['p90_ms']:6.2f} ms"
                    f"   {res['redis_pct'] - base:6.2f} %"
                    f"              {res['worker_pct']:6.2f} %   (n={res['n']:.0f})",
                    flush=True,
                )
        finally:
            server.close()


if __name__ == "__main__":
    main(sys.argv[1:])
