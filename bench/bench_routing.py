"""Routed throughput against plain Celery on the same Redis, plus registration latency.

    .venv/bin/python bench/bench_routing.py [--tasks N] [--repeats R] [--probe M] [--json]
    make bench

Everything runs against a private redis-server on a free port (never 6379), started and stopped
here. Each repeat runs every variant once, in alternating order (A B C D, then D C B A, ...):

- plain: one `celery -A bench.plain_app worker -c 2` running a no-op task (`bench.noop`);
- plain+events: the same with Celery task events on, as the orchestrator's app has them;
- 2-hop+events: two plain workers, the first relaying each task to the second under the same
  id (`bench.relay`): the shape of the orchestrated path without the orchestrator;
- orchestrated: one control worker and one agent worker (capability `echo`), each `-c 2`,
  fed through `OrchestratorClient.submit("echo", ...)`: validate and route in the client -> execute;
- by-name: the same two workers, fed as a service that does not import this project feeds them:
  a plain Celery producer's `send_task("orchestrator.submit", kwargs={...})` -> a control worker
  validates and routes -> execute on the agent.

Every run starts on a flushed server with freshly started workers, warms them up, then times
N tasks from one producer (first send to last result) while measuring the CPU each process
uses (redis-server's from its own INFO, with its reads and commands), then sends M tasks one at
a time to measure the round trip on an idle system. Reported: the median throughput of each
variant, the ratios between variants (median of the per-repeat ratios) with their spread, the
goals' ratios against plain+events (plain Celery as a Flower user runs it), CPU per task by
process, Redis CPU per task and the tasks/s one Redis core carries, and for the routed paths the
enqueue-to-start latency from the ledger (`delegation`: the router's `submitted_at` to the
agent's `started_at`, SPEC's `delegation_p95_ms`).

Last, in-process: `StateStore.register_agent` and `Router.choose` timed with perf_counter.
See bench/README.md for what the numbers mean and how noisy they are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import celery  # noqa: E402
import redis  # noqa: E402
from rich.console import Console  # noqa: E402

from bench.common import (  # noqa: E402
    cpu_s,
    redis_counters,
    redis_per_task,
    source_version,
    summary_ms,
)
from bench.routing_report import (  # noqa: E402
    BYNAME,
    HOP2,
    ORCH,
    PLAIN,
    REQUIRED,
    VARIANTS,
    render,
    summarise,
)
from tests.support import CeleryProcess, RedisServer, tail, wait_for  # noqa: E402

WORKER_FLAGS = ["-P", "prefork", "--without-gossip", "--without-mingle", "-l", "info"]
CONCURRENCY = 2
WARMUP_TASKS = 20


#: A cluster's counters at one moment: CPU seconds by role, and redis-server's own counters.
Mark = tuple[dict[str, float], dict[str, Any]]


class Cluster:
    """The celery processes of one run; stopped (and their process groups swept) on exit."""

    def __init__(self, url: str, log_dir: Path, tag: str) -> None:
        self.url = url
        self.log_dir = log_dir
        self.tag = tag
        self.procs: list[CeleryProcess] = []
        self.redis = redis.Redis.from_url(url)  # reads the server's own counters

    def env(self, **extra: str) -> dict[str, str]:
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        return {
            "ORCH_REDIS_URL": self.url,
            "BENCH_REDIS_URL": self.url,
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def start(self, app: str, name: str, queues: str | None = None, **env: str) -> CeleryProcess:
        args = ["worker", "-n", f"{name}@%h", "-c", str(CONCURRENCY), *WORKER_FLAGS]
        if queues:
            args += ["-Q", queues]
        proc = CeleryProcess(
            args, self.env(**env), app=app, log_dir=self.log_dir, name=f"{self.tag}-{name}"
        )
        self.procs.append(proc)
        return proc.start()

    def stop(self, fast: bool = False) -> None:
        for proc in self.procs:
            if fast:
                proc.kill()
            else:
                proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc._finish(max(deadline - time.monotonic(), 0))
        self.procs.clear()
        self.redis.close()

    def mark(self) -> Mark:
        """CPU seconds used so far by each role (this producer, redis-server, and each worker's
        main process (consumer) and prefork pool), and redis-server's counters."""
        server = redis_counters(self.redis)
        times = os.times()
        cpu = {"producer": times.user + times.system, "redis-server": server["cpu_s"]}
        for proc in self.procs:
            role = proc.name.removeprefix(f"{self.tag}-")
            cpu[f"{role} main"] = cpu_s(proc.pid)
            cpu[f"{role} pool"] = sum(cpu_s(c) for c in proc.child_pids())
        return cpu, server

    def per_task(self, before: Mark, n: int) -> tuple[dict[str, float], dict[str, Any]]:
        """Since `before`, per task: CPU ms by role (and their total), and what redis-server
        did (reads and commands)."""
        cpu, server = self.mark()
        used = {k: (cpu[k] - before[0].get(k, 0.0)) * 1000 / n for k in cpu}
        used["total"] = sum(used.values())
        return {k: round(v, 3) for k, v in used.items()}, redis_per_task(before[1], server, n)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ({p.log_path})\n{tail(p.log_text(), 30)}" for p in self.procs
        )


def wait_ready(proc: CeleryProcess) -> None:
    proc.wait_for_log(" ready.", timeout=60)


# --- one run of each variant -----------------------------------------------------------------


def collect(results: Sequence[Any], timeout_s: float, check: Callable[[Any], bool]) -> float:
    """Wait for every result in order; return perf_counter() when the last one arrived."""
    deadline = time.monotonic() + timeout_s
    for i, result in enumerate(results):
        value = result.get(timeout=max(deadline - time.monotonic(), 0.1), propagate=True)
        if not check(value):
            raise RuntimeError(f"task {i} ({result.id}) returned {value!r}")
    return time.perf_counter()


def run_plain(
    url: str, cluster: Cluster, n: int, probe: int, task_events: bool = False, hops: int = 1
) -> dict[str, Any]:
    os.environ["BENCH_REDIS_URL"] = url  # bench.plain_app reads it on import
    from bench.plain_app import HOP2_QUEUE, NOOP, QUEUE, RELAY, create_plain_app

    events = "1" if task_events else "0"
    if hops == 1:
        workers = [cluster.start("bench.plain_app", "plain", BENCH_TASK_EVENTS=events)]
    else:
        workers = [
            cluster.start("bench.plain_app", "hop1", QUEUE, BENCH_TASK_EVENTS=events),
            cluster.start("bench.plain_app", "hop2", HOP2_QUEUE, BENCH_TASK_EVENTS=events),
        ]
    for worker in workers:
        wait_ready(worker)
    producer = create_plain_app(url, task_events)
    name = NOOP if hops == 1 else RELAY
    try:

        def send(i: int) -> Any:
            return producer.send_task(name, args=[i], queue=QUEUE)

        timeout = 60 + n / 20
        collect([send(-1 - i) for i in range(WARMUP_TASKS)], timeout, lambda v: True)

        before = cluster.mark()
        start = time.perf_counter()
        results = [send(i) for i in range(n)]
        sent = time.perf_counter()
        end = collect(results, timeout, lambda v: isinstance(v, int))
        cpu, server = cluster.per_task(before, n)

        rtts = []
        for i in range(probe):
            t0 = time.perf_counter()
            send(n + i).get(timeout=30)
            rtts.append(time.perf_counter() - t0)
    finally:
        producer.close()
    return {
        "wall_s": end - start,
        "send_s": sent - start,
        "throughput": n / (end - start),
        "round_trip_ms": summary_ms(rtts, (50, 95, 99)),
        "cpu_ms_per_task": cpu,
        "redis_per_task": server,
    }


def ledger_delays(
    r: redis.Redis, ids: Sequence[str], sent_at: dict[str, float]
) -> dict[str, list[float]]:
    """Per task, from the ledger: submit->start (delegation) and client send->start."""
    from orchestrator.store.keys import task_key

    pipe = r.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(task_key(task_id), "submitted_at", "started_at")
    delegation, send_to_start = [], []
    for task_id, (submitted, started) in zip(ids, pipe.execute(), strict=True):
        if submitted is None or started is None:
            continue
        delegation.append(float(started) - float(submitted))
        send_to_start.append(float(started) - sent_at[task_id])
    return {"delegation": delegation, "send_to_start": send_to_start}


def by_name_sender(url: str) -> tuple[Callable[[str, dict[str, Any]], Any], Callable[[], None]]:
    """`send(type, payload)` through `orchestrator.submit` from a plain Celery producer."""
    from orchestrator.runtime.celeryconf import ROUTING_QUEUE

    producer = celery.Celery("by-name", broker=url, backend=url)
    producer.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")

    def send(type_: str, payload: dict[str, Any]) -> Any:
        return producer.send_task(
            "orchestrator.submit", kwargs={"type": type_, "payload": payload}, queue=ROUTING_QUEUE
        )

    return send, producer.close


def run_orchestrated(
    url: str, cluster: Cluster, n: int, probe: int, by_name: bool = False
) -> dict[str, Any]:
    from orchestrator.client import OrchestratorClient
    from orchestrator.config import load_settings
    from orchestrator.store.keys import AGENTS

    control = cluster.start("orchestrator.app", "control")
    agent = cluster.start(
        "orchestrator.app",
        "agent",
        ORCH_AGENT_CAPABILITIES="echo",
        ORCH_HANDLERS="examples.handlers",
    )
    wait_ready(control)
    wait_ready(agent)
    settings = load_settings(redis_url=url, _env_file=None)
    client = OrchestratorClient(settings=settings)
    submit, close = by_name_sender(url) if by_name else (client.submit, lambda: None)
    try:
        wait_for(lambda: client.store.r.hlen(AGENTS) >= 1, 30, message="agent never registered")
        timeout = 60 + n / 10

        def check(i: int) -> Callable[[Any], bool]:
            return lambda v: v == {"i": i}

        warm = [submit("echo", {"i": -1}) for _ in range(WARMUP_TASKS)]
        collect(warm, timeout, check(-1))

        sent_at: dict[str, float] = {}
        before = cluster.mark()
        start = time.perf_counter()
        results = []
        for i in range(n):
            t_sent = time.time()
            results.append(submit("echo", {"i": i}))
            sent_at[results[-1].id] = t_sent
        sent = time.perf_counter()
        deadline = time.monotonic() + timeout
        for i, result in enumerate(results):
            value = result.get(timeout=max(deadline - time.monotonic(), 0.1))
            if value != {"i": i}:
                raise RuntimeError(f"task {i} ({result.id}) returned {value!r}")
        end = time.perf_counter()
        cpu, server = cluster.per_task(before, n)
        burst = ledger_delays(client.store.r, [r.id for r in results], sent_at)

        rtts, probe_sent = [], {}
        probe_ids = []
        for i in range(probe):
            t0, t_sent = time.perf_counter(), time.time()
            result = submit("echo", {"i": i})
            probe_sent[result.id] = t_sent
            result.get(timeout=30)
            rtts.append(time.perf_counter() - t0)
            probe_ids.append(result.id)
        idle = ledger_delays(client.store.r, probe_ids, probe_sent)
    finally:
        close()
        client.close()
    return {
        "wall_s": end - start,
        "send_s": sent - start,
        "throughput": n / (end - start),
        "round_trip_ms": summary_ms(rtts, (50, 95, 99)),
        "cpu_ms_per_task": cpu,
        "redis_per_task": server,
        "burst_delegation": burst["delegation"],
        "burst_send_to_start": burst["send_to_start"],
        "idle_delegation": idle["delegation"],
        "idle_send_to_start": idle["send_to_start"],
    }


# --- in-process latencies ----------------------------------------------------------------------


def bench_registration(url: str, samples: int) -> dict[str, Any]:
    from orchestrator.config import load_settings
    from orchestrator.models import RegisteredAgent, parse_task
    from orchestrator.routing.router import Router
    from orchestrator.store import StateStore

    store = StateStore.from_url(url)
    try:
        capabilities = {"echo": 1.0, "sleep": 0.8, "fail": 0.5, "summarize": 0.9, "embed": 0.7}

        def agent(i: int) -> RegisteredAgent:
            now = time.time()
            return RegisteredAgent(
                agent_id=f"bench-reg-{i}",
                capabilities=capabilities,
                queue=f"agent.bench-reg-{i}",
                hostname=platform.node(),
                pid=os.getpid(),
                concurrency=2,
                registered_at=now,
                last_heartbeat=now,
            )

        pool = [agent(i) for i in range(100)]
        for a in pool:  # warm-up: connection, script cache, pydantic serializers
            store.register_agent(a, time.time(), source="bench")
        register = []
        for i in range(samples):
            a = pool[i % len(pool)]
            now = time.time()
            t0 = time.perf_counter()
            store.register_agent(a, now, source="bench")
            register.append(time.perf_counter() - t0)

        # Routing decisions over 10 registered agents with different proficiencies.
        store.r.flushdb()  # the bench's own server: only the 10 agents below remain
        for i in range(10):
            a = agent(i).model_copy(update={"capabilities": {**capabilities, "echo": 0.1 + i / 10}})
            store.register_agent(a, time.time(), source="bench")
        settings = load_settings(redis_url=url, _env_file=None)
        router = Router(store, settings, lambda *args, **kwargs: None)
        task = parse_task({"type": "echo", "task_id": "bench-choose"}, settings.max_payload_bytes)

        loaded = router.fleet(time.time())
        for _ in range(100):
            router.choose(task, loaded, time.time())
        choose, load_and_choose = [], []
        for _ in range(samples):
            now = time.time()
            t0 = time.perf_counter()
            picked = router.choose(task, loaded, now)
            choose.append(time.perf_counter() - t0)
            assert picked is not None, "no eligible agent among the 10 registered"
        for _ in range(samples):
            now = time.time()
            t0 = time.perf_counter()
            router.choose(task, router.fleet(now), now)
            load_and_choose.append(time.perf_counter() - t0)
    finally:
        store.r.close()
    return {
        "register_agent_ms": summary_ms(register),
        "choose_ms": summary_ms(choose),
        "load_fleet_and_choose_ms": summary_ms(load_and_choose),
    }


# --- driver ------------------------------------------------------------------------------------


def flush(server: RedisServer) -> None:
    assert server.port != 6379, "refusing to flush the machine's own Redis"
    with server.client() as c:
        c.flushall()


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    log_root = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    (log_root / "redis").mkdir()
    server = RedisServer(workdir=log_root / "redis")
    report: dict[str, Any] = {}
    cluster: Cluster | None = None
    interrupted = succeeded = False
    try:
        server.start()
        with server.client() as c:
            redis_version = c.info("server")["redis_version"]
        report["config"] = {
            "tasks": args.tasks,
            "repeats": args.repeats,
            "probe": args.probe,
            "concurrency": CONCURRENCY,
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "commit": source_version(),
            "python": platform.python_version(),
            "celery": celery.__version__,
            "redis_server": redis_version,
            "redis_port": server.port,
            "logs": str(log_root),
        }
        variants = args.variants
        load = os.getloadavg()[0]
        if load > 1:
            console.print(
                f"[yellow]warning: load average {load:.2f} at start: other processes compete "
                "for the CPUs, so every figure will be lower and noisier[/yellow]"
            )
        console.print(
            f"bench redis {redis_version} on port {server.port}; "
            f"{args.repeats} x {len(variants)} runs of {args.tasks} tasks "
            f"(+{args.probe} probes each)"
        )
        runs: list[dict[str, Any]] = []
        total = len(variants) * args.repeats
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else variants[::-1]
            for variant in order:
                flush(server)
                cluster = Cluster(server.url, log_root / f"run{len(runs) + 1}", variant)
                try:
                    if variant in (ORCH, BYNAME):
                        result = run_orchestrated(
                            server.url, cluster, args.tasks, args.probe, by_name=variant == BYNAME
                        )
                    else:
                        result = run_plain(
                            server.url,
                            cluster,
                            args.tasks,
                            args.probe,
                            task_events=variant != PLAIN,
                            hops=2 if variant == HOP2 else 1,
                        )
                except KeyboardInterrupt:
                    cluster.stop(fast=True)
                    raise
                except Exception as exc:
                    raise RuntimeError(f"{variant} run failed: {exc}\n{cluster.logs()}") from exc
                finally:
                    cluster.stop()
                    cluster = None
                result.update(repeat=repeat + 1, variant=variant)
                runs.append(result)
                extra = ""
                if variant in (ORCH, BYNAME):
                    d = summary_ms(result["burst_delegation"], (50, 95))
                    extra = f", delegation under load p50 {d['p50']:.0f} ms p95 {d['p95']:.0f} ms"
                console.print(
                    f"[{len(runs)}/{total}] repeat {repeat + 1} {variant:<12} "
                    f"{args.tasks} tasks in {result['wall_s']:.2f} s = "
                    f"{result['throughput']:.0f} tasks/s (sent in {result['send_s']:.2f} s; "
                    f"idle round trip p50 {result['round_trip_ms']['p50']:.1f} ms{extra})"
                )
        flush(server)
        console.print("timing register_agent and Router.choose in-process ...")
        report["in_process"] = bench_registration(server.url, args.samples)
        report["config"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["runs"] = runs
        succeeded = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # A second Ctrl-C must not leave workers or the server behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if cluster is not None:
                cluster.stop(fast=interrupted)
            server.close()
            if (succeeded or interrupted) and not args.keep_logs:
                shutil.rmtree(log_root, ignore_errors=True)
                report.get("config", {}).pop("logs", None)
            else:
                console.print(f"worker and redis logs kept in {log_root}")
        finally:
            signal.signal(signal.SIGINT, previous)
    return summarise(report)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per timed run (1000)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="repeats, each running every variant once (5)"
    )
    parser.add_argument(
        "--probe", type=int, default=50, help="sequential idle tasks per run, for latency (50)"
    )
    parser.add_argument(
        "--samples", type=int, default=2000, help="register_agent / choose samples (2000)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--json-file", metavar="PATH", help="also write the JSON object to PATH")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, in this order within a repeat ({','.join(VARIANTS)}); "
        f"{', '.join(REQUIRED)} are required",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the worker and redis logs (a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeats < 1 or args.probe < 1 or args.samples < 1:
        parser.error("--tasks, --repeats, --probe and --samples must be positive")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not set(REQUIRED) <= set(variants):
        parser.error(
            f"--variants: choose from {', '.join(VARIANTS)}, including {', '.join(REQUIRED)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    args.variants = [v for v in VARIANTS if v in variants]
    return args


def exit_now(code: int) -> NoReturn:
    """Exit without unwinding: the traceback still holds the interrupted run's AsyncResults,
    and each one's __del__ would try to unsubscribe from the stopped redis-server, retrying
    for about 20 s apiece. Every child process is already stopped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, width=max(Console(stderr=True).width, 120))

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # same clean-up as Ctrl-C

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        report = run_all(args, console)
    except KeyboardInterrupt:
        console.print("interrupted: workers and redis-server stopped")
        exit_now(130)
    except Exception:
        console.print_exception()
        exit_now(1)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, Console(width=max(Console().width, 120)))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
