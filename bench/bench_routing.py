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
  fed through `OrchestratorClient.submit("echo", ...)`: validate and route in the client -> execute.

Every run starts on a flushed server with freshly started workers, warms them up, then times
N tasks from one producer (first send to last result) while measuring the CPU each process
uses, then sends M tasks one at a time to measure the round trip on an idle system. Reported:
the median throughput of each variant, the ratios between variants (median of the per-repeat
ratios) with their spread, CPU per task by process, and for the orchestrated path the
enqueue-to-start latency from the ledger (`delegation`: the router's `submitted_at` to the
agent's `started_at`, SPEC's `delegation_p95_ms`).

Last, in-process: `StateStore.register_agent` and `Router.choose` timed with perf_counter.
See bench/README.md for what the numbers mean and how noisy they are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
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
from rich.table import Table  # noqa: E402

from tests.support import CeleryProcess, RedisServer, tail, wait_for  # noqa: E402

WORKER_FLAGS = ["-P", "prefork", "--without-gossip", "--without-mingle", "-l", "info"]
CONCURRENCY = 2
WARMUP_TASKS = 20
GOAL_RATIO = 0.5
GOAL_REGISTRATION_P99_MS = 5.0
PLAIN, PLAIN_EV, HOP2, ORCH = "plain", "plain+events", "2-hop+events", "orchestrated"
VARIANTS = (PLAIN, PLAIN_EV, HOP2, ORCH)
LABELS = {
    PLAIN: "plain, 1 worker",
    PLAIN_EV: "plain + task events, 1 worker",
    HOP2: "2-hop relay + events, 2 workers",
    ORCH: "orchestrated, 2 workers",
}
#: (numerator, denominator, what the ratio isolates)
RATIOS = (
    (ORCH, PLAIN, "the goal"),
    (ORCH, HOP2, "the orchestrator's own work"),
    (HOP2, PLAIN, "the extra hop and task events"),
    (PLAIN_EV, PLAIN, "task events alone"),
)


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which pct % of the samples lie)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float], pcts: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    out: dict[str, Any] = {f"p{p}": round(percentile(ms, p), 3) for p in pcts}
    out["n"] = len(ms)
    return out


def spread(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# --- processes -----------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of one process so far, from /proc (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Cluster:
    """The celery processes of one run; stopped (and their process groups swept) on exit."""

    def __init__(self, url: str, log_dir: Path, tag: str, redis_pid: int | None = None) -> None:
        self.url = url
        self.redis_pid = redis_pid
        self.log_dir = log_dir
        self.tag = tag
        self.procs: list[CeleryProcess] = []

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

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each role: this producer, redis-server, and each
        worker's main process (consumer) and prefork pool."""
        times = os.times()
        out = {"producer": times.user + times.system, "redis-server": cpu_s(self.redis_pid)}
        for proc in self.procs:
            role = proc.name.removeprefix(f"{self.tag}-")
            out[f"{role} main"] = cpu_s(proc.pid)
            out[f"{role} pool"] = sum(cpu_s(c) for c in proc.child_pids())
        return out

    def cpu_ms_per_task(self, before: dict[str, float], n: int) -> dict[str, float]:
        after = self.cpu()
        used = {k: (after[k] - before.get(k, 0.0)) * 1000 / n for k in after}
        used["total"] = sum(used.values())
        return {k: round(v, 3) for k, v in used.items()}

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

        cpu_before = cluster.cpu()
        start = time.perf_counter()
        results = [send(i) for i in range(n)]
        sent = time.perf_counter()
        end = collect(results, timeout, lambda v: isinstance(v, int))
        cpu = cluster.cpu_ms_per_task(cpu_before, n)

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
        "round_trip_ms": summary_ms(rtts, (50, 95)),
        "cpu_ms_per_task": cpu,
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


def run_orchestrated(url: str, cluster: Cluster, n: int, probe: int) -> dict[str, Any]:
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
    try:
        wait_for(lambda: client.store.r.hlen(AGENTS) >= 1, 30, message="agent never registered")
        timeout = 60 + n / 10

        def check(i: int) -> Callable[[Any], bool]:
            return lambda v: v == {"i": i}

        warm = [client.submit("echo", {"i": -1}) for _ in range(WARMUP_TASKS)]
        collect(warm, timeout, check(-1))

        sent_at: dict[str, float] = {}
        cpu_before = cluster.cpu()
        start = time.perf_counter()
        results = []
        for i in range(n):
            t_sent = time.time()
            results.append(client.submit("echo", {"i": i}))
            sent_at[results[-1].id] = t_sent
        sent = time.perf_counter()
        deadline = time.monotonic() + timeout
        for i, result in enumerate(results):
            value = result.get(timeout=max(deadline - time.monotonic(), 0.1))
            if value != {"i": i}:
                raise RuntimeError(f"task {i} ({result.id}) returned {value!r}")
        end = time.perf_counter()
        cpu = cluster.cpu_ms_per_task(cpu_before, n)
        burst = ledger_delays(client.store.r, [r.id for r in results], sent_at)

        rtts, probe_sent = [], {}
        probe_ids = []
        for i in range(probe):
            t0, t_sent = time.perf_counter(), time.time()
            result = client.submit("echo", {"i": i})
            probe_sent[result.id] = t_sent
            result.get(timeout=30)
            rtts.append(time.perf_counter() - t0)
            probe_ids.append(result.id)
        idle = ledger_delays(client.store.r, probe_ids, probe_sent)
    finally:
        client.close()
    return {
        "wall_s": end - start,
        "send_s": sent - start,
        "throughput": n / (end - start),
        "round_trip_ms": summary_ms(rtts, (50, 95)),
        "cpu_ms_per_task": cpu,
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


def source_version() -> str | None:
    """The commit measured, with "+dirty" when the work tree has changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


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
                cluster = Cluster(server.url, log_root / f"run{len(runs) + 1}", variant, server.pid)
                try:
                    if variant == ORCH:
                        result = run_orchestrated(server.url, cluster, args.tasks, args.probe)
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
                if variant == ORCH:
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


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    runs = report.pop("runs")
    in_process = report.pop("in_process")
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    group = {v: [r for r in runs if r["variant"] == v] for v in variants}
    by_repeat = {(r["repeat"], r["variant"]): r["throughput"] for r in runs}
    repeats = sorted({r["repeat"] for r in runs})

    def ratio(num: str, den: str) -> dict[str, float]:
        """Median (and spread) of the per-repeat ratios: drift between repeats cancels."""
        return spread([by_repeat[(p, num)] / by_repeat[(p, den)] for p in repeats], 3)

    ratios = {
        f"{num}/{den}": {**ratio(num, den), "isolates": why}
        for num, den, why in RATIOS
        if num in group and den in group
    }
    cpu_by_repeat = {(r["repeat"], r["variant"]): r["cpu_ms_per_task"]["total"] for r in runs}
    ratios["cpu: plain/orchestrated"] = {
        **spread([cpu_by_repeat[(p, PLAIN)] / cpu_by_repeat[(p, ORCH)] for p in repeats], 3),
        "isolates": "CPU per task; steadier than throughput",
    }
    report["throughput_per_s"] = {v: spread([r["throughput"] for r in group[v]]) for v in variants}
    report["ratios"] = ratios
    report["round_trip_idle_p50_ms"] = {
        v: spread([r["round_trip_ms"]["p50"] for r in group[v]], 2) for v in variants
    }

    def pooled(field: str) -> list[float]:
        return [x for r in group[ORCH] for x in r[field]]

    report["orchestrated_latency_ms"] = {
        "delegation_idle": summary_ms(pooled("idle_delegation"), (50, 95)),
        "send_to_start_idle": summary_ms(pooled("idle_send_to_start"), (50, 95)),
        "delegation_under_load": summary_ms(pooled("burst_delegation"), (50, 95)),
        "send_to_start_under_load": summary_ms(pooled("burst_send_to_start"), (50, 95)),
    }
    report["cpu_ms_per_task"] = {
        v: {
            role: round(statistics.median(r["cpu_ms_per_task"][role] for r in group[v]), 3)
            for role in group[v][0]["cpu_ms_per_task"]
        }
        for v in variants
    }
    report["in_process_ms"] = in_process
    report["goals"] = {
        "ratio_ge_0.5": ratios["orchestrated/plain"]["median"] >= GOAL_RATIO,
        "register_p99_le_5ms": in_process["register_agent_ms"]["p99"] <= GOAL_REGISTRATION_P99_MS,
    }
    report["runs"] = [
        {
            "repeat": r["repeat"],
            "variant": r["variant"],
            "throughput_per_s": round(r["throughput"], 1),
            "wall_s": round(r["wall_s"], 3),
            "send_s": round(r["send_s"], 3),
            "round_trip_idle_ms": r["round_trip_ms"],
            "cpu_ms_per_task": r["cpu_ms_per_task"],
            **(
                {
                    "delegation_idle_ms": summary_ms(r["idle_delegation"], (50, 95)),
                    "delegation_under_load_ms": summary_ms(r["burst_delegation"], (50, 95)),
                }
                if r["variant"] == ORCH
                else {}
            ),
        }
        for r in runs
    ]
    return report


def render(report: dict[str, Any], console: Console) -> None:
    cfg = report["config"]
    tp = report["throughput_per_s"]
    lat = report["orchestrated_latency_ms"]
    ip = report["in_process_ms"]
    variants = list(tp)

    def mark(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]no[/red]"

    def span(s: dict[str, float], fmt: str) -> str:
        return f"{s['min']:{fmt}}-{s['max']:{fmt}}"

    table = Table(
        title=(
            f"routing benchmark: {cfg['tasks']} tasks x {cfg['repeats']} repeats, "
            f"{cfg['cpus']} CPUs, celery {cfg['celery']}, redis {cfg['redis_server']}, "
            f"-c {cfg['concurrency']} per worker"
        )
    )
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("spread (min-max)", justify="right")
    table.add_column("goal or what it isolates", justify="right")
    for v in variants:
        table.add_row(
            f"throughput, {LABELS[v]} (tasks/s)",
            f"{tp[v]['median']:.0f}",
            span(tp[v], ".0f"),
            "",
        )
    for name, r in report["ratios"].items():
        goal = r["isolates"]
        if name == f"{ORCH}/{PLAIN}":
            goal = f">= {GOAL_RATIO} {mark(report['goals']['ratio_ge_0.5'])}"
        label = f"CPU per task, {name[5:]}" if name.startswith("cpu: ") else f"ratio {name}"
        table.add_row(label, f"{r['median']:.2f}", span(r, ".2f"), goal)
    table.add_section()
    for v in variants:
        s = report["round_trip_idle_p50_ms"][v]
        table.add_row(f"idle round trip p50 (ms), {v}", f"{s['median']:.2f}", span(s, ".2f"), "")
    for key, label in (
        ("delegation_idle", "delegation, idle"),
        ("send_to_start_idle", "client send -> started_at, idle"),
        ("delegation_under_load", "delegation, during the burst"),
        ("send_to_start_under_load", "client send -> started_at, burst"),
    ):
        s = lat[key]
        table.add_row(f"{label} (ms)", f"p50 {s['p50']:.2f}", f"p95 {s['p95']:.2f}", "")
    table.add_section()
    reg = ip["register_agent_ms"]
    table.add_row(
        "register_agent, 5 capabilities (ms)",
        f"p50 {reg['p50']:.3f}",
        f"p95 {reg['p95']:.3f} / p99 {reg['p99']:.3f}",
        f"p99 <= {GOAL_REGISTRATION_P99_MS:g} {mark(report['goals']['register_p99_le_5ms'])}",
    )
    for key, label in (
        ("choose_ms", "Router.choose, 10 agents (ms)"),
        ("load_fleet_and_choose_ms", "load fleet + choose, 10 agents (ms)"),
    ):
        s = ip[key]
        table.add_row(label, f"p50 {s['p50']:.3f}", f"p95 {s['p95']:.3f} / p99 {s['p99']:.3f}", "")
    console.print(table)

    cpu = report["cpu_ms_per_task"]
    roles = [*dict.fromkeys(role for v in reversed(variants) for role in cpu[v] if role != "total")]
    by_role = Table(title="CPU ms per task during the timed burst, by process (median of repeats)")
    by_role.add_column("process")
    for v in variants:
        by_role.add_column(v, justify="right")
    for role in [*roles, "total"]:
        by_role.add_row(role, *(f"{cpu[v][role]:.2f}" if role in cpu[v] else "-" for v in variants))
    console.print(by_role)
    console.print(
        f"load average {cfg['loadavg_start']} at start, {cfg['loadavg_end']} at end; "
        "run-to-run noise is about 20 %: compare the ratios, not absolute figures."
    )


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
        "plain and orchestrated are required",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the worker and redis logs (a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeats < 1 or args.probe < 1 or args.samples < 1:
        parser.error("--tasks, --repeats, --probe and --samples must be positive")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or PLAIN not in variants or ORCH not in variants:
        parser.error(
            f"--variants: choose from {', '.join(VARIANTS)}, including {PLAIN} and {ORCH}"
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
