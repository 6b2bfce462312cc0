"""How routing and the monitoring loops cost as the fleet grows, without real workers.

    .venv/bin/python bench/bench_scale.py [--repeats 5] [--json FILE]
    make bench-scale

A private redis-server on a free port (never 6379) holds two fleets of synthetic agents, 10 in
database 0 and N (1000) in database 1, registered through the state store as an agent
registers itself, with heartbeats and outcome statistics. Each repeat measures, on both
fleets and in alternating order: Redis PING (the same client), one routing decision as a
router makes one for a submission (`Router.fleet` then `Router.choose`: its view of the fleet,
whose version it compares every 0.2 s) and one on a fresh read of the whole fleet (as sweeps
and recovery decide, and a router when its view is re-read); then, on the large fleet,
registration, the CPU (this process and redis-server) one run of each periodic loop costs and
an exporter scrape. Last, the Redis
memory a task leaves behind, accepted, routed and settled through the store in database 2.
Figures are ratios against baselines measured in the same run, medians over the repeats; see
bench/README.md for what each means and how noisy it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402

from bench.common import cpu_s, source_version, summary_ms  # noqa: E402
from bench.scale_report import render, summarise, write_results  # noqa: E402
from orchestrator.config import Settings, load_settings  # noqa: E402
from orchestrator.models import RegisteredAgent, TaskState, parse_task  # noqa: E402
from orchestrator.monitoring.loops import LoopContext  # noqa: E402
from orchestrator.routing.router import Router  # noqa: E402
from orchestrator.store import Acceptance, Settlement, StateStore  # noqa: E402
from orchestrator.store.keys import (  # noqa: E402
    EVENT_STREAMS,
    HEARTBEATS,
    history_key,
    task_key,
)
from orchestrator.store.monitoring import MonitoringStore  # noqa: E402
from tests.support import RedisServer  # noqa: E402

SMALL = 10
CAPABILITIES = ("echo", "summarize", "embed", "translate", "classify", "ocr", "sleep", "fail")
#: Exporter scrape interval the CPU share assumes (Prometheus' default is 60 s; 15 s is common).
SCRAPE_INTERVAL_S = 15.0


# --- the synthetic fleet -----------------------------------------------------------------------


def synthetic_agent(i: int, rng: random.Random, now: float) -> RegisteredAgent:
    """Every agent can `echo` (so every one is eligible for the routed task: the worst case
    for choose) and 2-4 more of CAPABILITIES, with proficiencies in [0.3, 1]."""
    caps = {"echo": round(rng.uniform(0.3, 1.0), 2)}
    for cap in rng.sample(CAPABILITIES[1:], rng.randint(2, 4)):
        caps[cap] = round(rng.uniform(0.3, 1.0), 2)
    agent_id = f"agent-{i:05d}"
    return RegisteredAgent(
        agent_id=agent_id,
        capabilities=caps,
        queue=f"agent.{agent_id}",
        hostname=f"host-{i // 8:04d}",
        node=f"{agent_id}@host-{i // 8:04d}",
        pid=10_000 + i,
        concurrency=2,
        registered_at=now,
        last_heartbeat=now,
    )


def populate(store: StateStore, settings: Settings, n: int, seed: int) -> list[RegisteredAgent]:
    """Register n agents, beat for each, and give each a few outcomes (stats and breaker
    windows, a few failures), as the store would hold after some minutes of work."""
    rng = random.Random(seed)
    now = time.time()
    cfg = settings.circuit_config()
    agents = [synthetic_agent(i, rng, now) for i in range(n)]
    for agent in agents:
        store.register_agent(agent, now, source="bench")
        store.heartbeat(agent.agent_id, now)
        for _ in range(rng.randint(2, 6)):
            ok = rng.random() > 0.1
            store.record_outcome(
                agent.agent_id,
                ok=ok,
                latency_ms=rng.uniform(5, 200),
                circuit_cfg=cfg,
                now=now,
                task_type="echo",
            )
    return agents


def beat_all(store: StateStore, agents: Sequence[RegisteredAgent], now: float) -> None:
    """Fresh heartbeats for the whole fleet in one round trip (agents beat every 5 s)."""
    store.r.hset(HEARTBEATS, mapping={a.agent_id: repr(now) for a in agents})


# --- timings -----------------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Fleet:
    """One database's store, settings and router, with its agents."""

    def __init__(self, url: str, n: int, seed: int) -> None:
        self.settings = load_settings(redis_url=url, _env_file=None)
        self.store = StateStore.from_settings(self.settings)
        self.agents = populate(self.store, self.settings, n, seed)
        self.router = Router(self.store, self.settings, lambda *args, **kwargs: None)
        self.sweeper = Router(self.store, self.settings, lambda *args, **kwargs: None)
        self.task = parse_task({"type": "echo", "task_id": "bench-scale"}, 1 << 20)
        self.mon = MonitoringStore(self.store.r)

    def decide_fresh(self) -> None:
        """A decision on a fresh read of the whole fleet: what sweeps and recovery do, and
        what a router pays when its view is re-read."""
        now = time.time()
        picked = self.sweeper.choose(self.task, self.sweeper.fleet(now, fresh=True), now)
        assert picked is not None, "no eligible agent"

    def decide(self) -> None:
        """A decision as a router makes one for a submission: through its view of the fleet
        (the version compared every 0.2 s, re-read when it moved or the view expired)."""
        now = time.time()
        picked = self.router.choose(self.task, self.router.fleet(now), now)
        assert picked is not None, "no eligible agent"

    def close(self) -> None:
        self.store.r.close()


def routing_repeat(fleets: Sequence[Fleet], decisions: Sequence[int]) -> dict[str, Any]:
    """PING, a router's decisions and decisions on a fresh fleet read, per fleet; the fleets
    take turns in chunks so slow drift hits both alike."""
    out: dict[str, Any] = {}
    samples: dict[int, dict[str, list[float]]] = {
        len(f.agents): {"ping": [], "decide": [], "fresh": []} for f in fleets
    }
    chunks = 10
    for chunk in range(chunks):
        order = fleets if chunk % 2 == 0 else list(reversed(fleets))
        counts = decisions if chunk % 2 == 0 else list(reversed(decisions))
        for fleet, n in zip(order, counts, strict=True):
            s = samples[len(fleet.agents)]
            beat_all(fleet.store, fleet.agents, time.time())
            per = max(1, n // chunks)
            s["ping"] += time_calls(fleet.store.r.ping, per, warmup=5)
            s["decide"] += time_calls(fleet.decide, per, warmup=2)
            s["fresh"] += time_calls(fleet.decide_fresh, per, warmup=2)
    for n, s in samples.items():
        out[str(n)] = {k: summary_ms(v, (50, 99)) for k, v in s.items()}
    return out


def registration(fleet: Fleet, samples: int) -> dict[str, Any]:
    """register_agent of an agent with 5 capabilities re-registering into the large fleet."""
    rng = random.Random(7)
    pool = fleet.agents[:100]

    def register() -> None:
        agent = pool[rng.randrange(len(pool))]
        fleet.store.register_agent(agent, time.time(), source="bench")

    return summary_ms(time_calls(register, samples, warmup=100), (50, 95, 99))


# --- loop costs --------------------------------------------------------------------------------


def server_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def loops(fleet: Fleet, app_free_settings: Settings) -> dict[str, tuple[Callable[[], Any], float]]:
    """Each periodic job as one call, with its interval (seconds), as the workers run them
    (workers/monitoring.py's run_loop: lock, run log, body; app None skips remote control)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from orchestrator.cli.exporter import OrchestratorCollector
    from orchestrator.monitoring.anomaly_loop import run_anomaly
    from orchestrator.monitoring.loops import (
        run_alerts,
        run_backup,
        run_optimize,
        run_security,
        run_sla,
    )
    from orchestrator.monitoring.schedule import LOOPS
    from orchestrator.recovery.healer import Healer
    from orchestrator.scaling.autoscale import run_autoscale
    from orchestrator.scaling.sleepwake import run_sleep_wake

    s = app_free_settings
    ctx = LoopContext(s, fleet.store, fleet.mon, app=None)
    bodies = {
        "alert-evaluation": run_alerts,
        "sla-monitoring": run_sla,
        "security-monitoring": run_security,
        "backup-management": run_backup,
        "anomaly-detection": run_anomaly,
        "performance-optimization": run_optimize,
        "autoscaling": run_autoscale,
        "sleep-wake": run_sleep_wake,
    }
    out: dict[str, tuple[Callable[[], Any], float]] = {}
    for loop in LOOPS:
        body = bodies[loop.entry]

        def run(loop: Any = loop, body: Any = body) -> Any:
            with ctx.store.singleton(f"monitor:{loop.name}", loop.ttl_s(s)) as held:
                now = time.time()
                ctx.mon.record_run(loop.name, now, "bench", ran=held)
                ctx.mon.monitoring_since(now)
                return body(ctx, now)

        out[loop.entry] = (run, loop.interval(s))
    router = Router(fleet.store, s, lambda *args, **kwargs: None)
    healer = Healer(fleet.store, router, lambda task_id, exc: None)

    def recovery() -> Any:
        interval = s.recovery_monitor_interval_s
        with fleet.store.singleton("recovery-monitor", ttl_s=max(interval * 5, 30)):
            now = time.time()
            healer.monitor(now)
            fleet.store.outbox_due(now - s.outbox_resend_s, now)

    out["recovery-monitor"] = (recovery, s.recovery_monitor_interval_s)

    def rescue_scan() -> Any:
        """The part of Healer.monitor that runs every half visibility timeout (the bench's
        other runs fall between two scans): one `vanished` step per active agent holding
        unended tasks."""
        healer.rescue_all(time.time())

    out["recovery rescue scan"] = (rescue_scan, s.visibility_timeout_s / 2)
    out["parked-sweep"] = (
        lambda: router.dispatch_sweep(time.time(), lambda *a: None),
        s.parked_sweep_interval_s,
    )
    registry = CollectorRegistry()
    registry.register(OrchestratorCollector(ctx))
    out["exporter scrape"] = (lambda: generate_latest(registry), SCRAPE_INTERVAL_S)
    return out


def loop_costs(fleet: Fleet, settings: Settings, runs: int) -> dict[str, Any]:
    """CPU seconds of one run of each loop: this process (process_time) and redis-server
    (INFO used_cpu_*, the server's own getrusage), averaged over `runs` runs."""
    probe = fleet.store.r
    info_cost = server_cpu(probe)
    info_cost = -(info_cost - server_cpu(probe))  # what one INFO costs the server
    out = {}
    for name, (fn, interval) in loops(fleet, settings).items():
        beat_all(fleet.store, fleet.agents, time.time())
        fn()  # warm: scripts loaded, first-run state written
        client0, server0, wall0 = time.process_time(), server_cpu(probe), time.perf_counter()
        for _ in range(runs):
            fn()
        wall = (time.perf_counter() - wall0) / runs
        client = (time.process_time() - client0) / runs
        server = max(0.0, server_cpu(probe) - server0 - info_cost) / runs
        out[name] = {
            "interval_s": interval,
            "wall_ms": round(wall * 1000, 3),
            "client_cpu_ms": round(client * 1000, 3),
            "server_cpu_ms": round(server * 1000, 3),
            "share_pct": round((client + server) / interval * 100, 4),
        }
    return out


# --- memory per task ---------------------------------------------------------------------------


def memory_per_task(url: str, k: int) -> dict[str, Any]:
    """Accept + route (accept_and_route, the client's atomic step, without the broker's
    message, which the agent consumes), begin the attempt and settle K tasks over 10 agents,
    as the real path does; Redis used_memory before/after. Then what stays once the ledger
    entries expire (ORCH_LEDGER_TTL_S): their keys are removed here as expiry would."""
    settings = load_settings(redis_url=url, _env_file=None)
    store = StateStore.from_settings(settings)
    r = store.r
    try:
        agents = populate(store, settings, SMALL, seed=3)
        router = Router(store, settings, lambda *args, **kwargs: None)
        cfg = settings.circuit_config()

        def run_tasks(count: int, tag: str) -> None:
            for i in range(count):
                now = time.time()
                payload = {"text": f"document {i}", "n": i}
                task = parse_task(
                    {"type": "echo", "payload": payload, "task_id": f"{tag}-{i:06d}"}, 1 << 20
                )
                assert task.task_id is not None
                chosen = router.choose(task, router.fleet(now), now)
                assert chosen is not None
                store.accept_and_route(
                    Acceptance(task, f"submit-{tag}-{i}", now), agent_id=chosen.agent_id, pushes=[]
                )
                store.begin_attempt(
                    task.task_id,
                    agent_id=chosen.agent_id,
                    dispatch=1,
                    now=now,
                    pid=4242,
                    max_deliveries=5,
                )
                store.settle_run(
                    Settlement(
                        task.task_id,
                        chosen.agent_id,
                        TaskState.SUCCEEDED,
                        time.time(),
                        1.5,
                        "echo",
                        {"runs:echo": 1, "ok:echo": 1},
                        circuit_cfg=cfg,
                        result=json.dumps(payload),
                    )
                )

        beat_all(store, agents, time.time())
        run_tasks(200, "warm")  # telemetry buckets, counters, stats keys exist from here on
        before = int(r.info("memory")["used_memory"])
        stream_before = sum(int(r.xlen(s)) for s in EVENT_STREAMS)
        run_tasks(k, "t")
        after = int(r.info("memory")["used_memory"])
        stream_after = sum(int(r.xlen(s)) for s in EVENT_STREAMS)
        ids = [f"t-{i:06d}" for i in range(0, k, max(1, k // 50))]
        sample = [task_key(i) for i in ids]
        histories = [history_key(i) for i in ids]
        task_bytes = statistics.mean(int(r.memory_usage(key) or 0) for key in sample)
        history_bytes = statistics.mean(int(r.memory_usage(key) or 0) for key in histories)
        ttls = [int(r.ttl(key)) for key in sample + histories]
        stream_total = sum(int(r.memory_usage(s, samples=0) or 0) for s in EVENT_STREAMS)
        stream_entries = sum(int(r.xlen(s)) for s in EVENT_STREAMS)
        # What the ledger's TTL leaves: every key without a TTL (the task keys all have one).
        lasting = [key for key in r.scan_iter(count=1000) if int(r.ttl(key)) == -1]
        kept = sum(int(r.memory_usage(key, samples=0) or 0) for key in lasting)
        return {
            "tasks": k,
            "bytes_per_task_retained": round((after - before) / k),
            "ledger_hash_bytes": round(task_bytes),
            "history_list_bytes": round(history_bytes),
            "events_per_task": round((stream_after - stream_before) / k, 2),
            "event_bytes": round(stream_total / max(stream_entries, 1)),
            "ledger_ttl_s": settings.ledger_ttl_s,
            "ledger_ttls_set": all(0 < t <= settings.ledger_ttl_s for t in ttls),
            "events_max_len": settings.events_max_len,
            "lasting_keys": len(lasting),
            "lasting_bytes": kept,
            "stream_bytes": stream_total,
            "bytes_per_task_after_ttl": round(stream_total / max(stream_entries, 1))
            * round((stream_after - stream_before) / k),
            "result_expires_s": 24 * 3600,
        }
    finally:
        r.close()


# --- driver ------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-scale-"))
    server = RedisServer(workdir=workdir)
    fleets: list[Fleet] = []
    try:
        server.start()
        assert server.port != 6379
        base = server.url.rsplit("/", 1)[0] if server.url.count("/") > 2 else server.url
        with server.client() as c:
            redis_version = c.info("server")["redis_version"]
        report: dict[str, Any] = {
            "config": {
                "agents": [SMALL, args.agents],
                "repeats": args.repeats,
                "decisions": [args.decisions, args.decisions_large],
                "loop_runs": args.loop_runs,
                "cpus": os.cpu_count(),
                "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                "commit": source_version(),
                "python": platform.python_version(),
                "redis_server": redis_version,
            }
        }
        console.print(f"bench redis {redis_version} on port {server.port}; registering fleets")
        t0 = time.perf_counter()
        fleets = [Fleet(f"{base}/0", SMALL, 1), Fleet(f"{base}/1", args.agents, 2)]
        report["config"]["populate_s"] = round(time.perf_counter() - t0, 1)
        large = fleets[1]
        backup_dir = workdir / "backups"
        loop_settings = load_settings(
            redis_url=f"{base}/1", backup_dir=str(backup_dir), _env_file=None
        )
        repeats = []
        for rep in range(args.repeats):
            one: dict[str, Any] = {"repeat": rep + 1}
            one["routing"] = routing_repeat(fleets, [args.decisions, args.decisions_large])
            one["register_ms"] = registration(large, args.samples)
            one["loops"] = loop_costs(large, loop_settings, args.loop_runs)
            repeats.append(one)
            r10, rn = one["routing"][str(SMALL)], one["routing"][str(args.agents)]
            total = sum(v["share_pct"] for v in one["loops"].values())
            console.print(
                f"[{rep + 1}/{args.repeats}] decision p50 {r10['decide']['p50']:.2f} / "
                f"{rn['decide']['p50']:.2f} ms at {SMALL} / {args.agents} agents; ping p99 "
                f"{rn['ping']['p99']:.3f} ms; register p99 {one['register_ms']['p99']:.2f} ms; "
                f"loops {total:.2f} % of a core"
            )
        console.print(f"memory per task ({args.memory_tasks} tasks) ...")
        report["memory"] = memory_per_task(f"{base}/2", args.memory_tasks)
        report["config"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["config"]["server_cpu_s"] = round(cpu_s(server.pid), 2)
        report["repeats"] = repeats
    finally:
        for fleet in fleets:
            fleet.close()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return summarise(report)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats (5)")
    parser.add_argument("--agents", type=int, default=1000, help="the large fleet (1000)")
    parser.add_argument(
        "--decisions", type=int, default=2000, help=f"decisions per repeat at {SMALL} (2000)"
    )
    parser.add_argument(
        "--decisions-large", type=int, default=500, help="decisions per repeat, large (500)"
    )
    parser.add_argument("--samples", type=int, default=1000, help="register_agent samples")
    parser.add_argument("--loop-runs", type=int, default=3, help="runs of each loop per repeat")
    parser.add_argument("--memory-tasks", type=int, default=5000, help="tasks for memory")
    parser.add_argument("--json", metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument(
        "--results", default=str(REPO_ROOT / "bench" / "RESULTS.md"), help="RESULTS.md to update"
    )
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if min(args.repeats, args.agents, args.decisions, args.decisions_large, args.samples) < 1:
        parser.error("counts must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, width=max(Console(stderr=True).width, 120))
    load = os.getloadavg()[0]
    if load > 1:
        console.print(f"[yellow]load average {load:.2f} at start: figures will be noisier")
    report = run_all(args, console)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    render(report, Console(width=max(Console().width, 120)))
    if not args.no_results:
        write_results(Path(args.results), report)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
