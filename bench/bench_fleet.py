"""What an agent worker costs in memory, and a fleet of real agent processes on one machine.

    .venv/bin/python bench/bench_fleet.py [--repeats 5] [--agents 100] [--json FILE]
    make bench-fleet

Two of the performance figures, against a private redis-server on a free port (never 6379):

1. Memory: a plain Celery worker (`celery -A bench.plain_app worker -c 2`) and an agent worker
   (`celery -A orchestrator.app worker -c 2`, capability `echo`, handlers `examples.handlers`),
   each warmed with 200 tasks, then the resident set (RSS) of the main process and of each pool
   child. Goal: agent - plain <= 15 MB (main process and total). Median of the repeats, each on
   freshly started workers, the order alternating.
2. Fleet: N agent workers (`-P solo`: one process each) a000.. started in parallel batches, half
   `echo=1.0` and half `echo=0.5`: the time until all are registered and beating, their memory,
   then T echo tasks through `OrchestratorClient.submit` (routed in this process, weighted round
   robin) and, from each task's ledger entry (`orch:task:<id>`, field `agent`), who ran it.
   Goals: every agent registered, every agent got work, the 1.0 group's share 2/3 (0.5 group's
   1/3) within 10 % relative.

Prints a table, writes `--json FILE`, replaces its section of bench/RESULTS.md. See
bench/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import celery  # noqa: E402
from rich.console import Console  # noqa: E402

from bench.common import source_version  # noqa: E402
from bench.fleet_report import render, write_results  # noqa: E402
from tests.support import CeleryProcess, RedisServer, child_pids, tail, wait_for  # noqa: E402

FLAGS = ["--without-gossip", "--without-mingle", "-l", "info"]
MB = 1024 * 1024


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


# --- memory ------------------------------------------------------------------------------------


def _kib_field(path: str, name: str) -> int:
    """A `Name:   N kB` line of a /proc file, in bytes; 0 when the file or the line is gone
    (the process exited, or smaps_rollup is not readable)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def rss(pid: int) -> int:
    """Resident set of one process in bytes."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


def pss(pid: int) -> int:
    """Proportional set (shared pages split among their sharers), bytes."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def mem_available() -> int:
    return _kib_field("/proc/meminfo", "MemAvailable:")


def process_memory(proc: CeleryProcess) -> dict[str, Any]:
    children = child_pids(proc.pid)
    main = rss(proc.pid)
    per_child = [rss(c) for c in children]
    return {
        "main_mb": round(main / MB, 2),
        "children_mb": [round(c / MB, 2) for c in per_child],
        "total_mb": round((main + sum(per_child)) / MB, 2),
        "pss_total_mb": round((pss(proc.pid) + sum(pss(c) for c in children)) / MB, 2),
    }


class Procs:
    """The celery processes started here; all SIGKILLed (with their groups) by kill_all."""

    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.procs: list[CeleryProcess] = []

    def start(self, app: str, name: str, args: Sequence[str], **env: str) -> CeleryProcess:
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        full_env = {
            "ORCH_REDIS_URL": self.url,
            "BENCH_REDIS_URL": self.url,
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        proc = CeleryProcess(
            ["worker", "-n", f"{name}@%h", *args, *FLAGS],
            full_env,
            app=app,
            log_dir=self.log_dir,
            name=name,
        )
        self.procs.append(proc)
        return proc.start()

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
        self.procs.clear()

    def logs(self, limit: int = 3) -> str:
        dead = [p for p in self.procs if not p.alive] or self.procs
        return "\n".join(
            f"--- {p.name} ({p.log_path})\n{tail(p.log_text(), 20)}" for p in dead[:limit]
        )


def settings_for(url: str) -> Any:
    from orchestrator.config import load_settings

    return load_settings(redis_url=url, _env_file=None)


def memory_plain(procs: Procs, url: str, warm: int) -> dict[str, Any]:
    os.environ["BENCH_REDIS_URL"] = url  # bench.plain_app reads it on import
    from bench.plain_app import NOOP, QUEUE, create_plain_app

    proc = procs.start("bench.plain_app", "plain", ["-c", "2", "-P", "prefork"])
    proc.wait_for_log(" ready.", timeout=60)
    producer = create_plain_app(url)
    try:
        results = [producer.send_task(NOOP, args=[i], queue=QUEUE) for i in range(warm)]
        for i, result in enumerate(results):
            assert result.get(timeout=60) == i
    finally:
        producer.close()
    time.sleep(0.5)
    return process_memory(proc)


def memory_agent(procs: Procs, url: str, warm: int) -> dict[str, Any]:
    from orchestrator.client import OrchestratorClient
    from orchestrator.store.keys import AGENTS

    proc = procs.start(
        "orchestrator.app",
        "rss-agent",
        ["-c", "2", "-P", "prefork"],
        ORCH_AGENT_ID="rss-agent",
        ORCH_AGENT_CAPABILITIES="echo",
        ORCH_HANDLERS="examples.handlers",
    )
    proc.wait_for_log(" ready.", timeout=60)
    with OrchestratorClient(settings=settings_for(url)) as client:
        wait_for(lambda: client.store.r.hexists(AGENTS, "rss-agent"), 30, message="no agent")
        results = [client.submit("echo", {"i": i}) for i in range(warm)]
        for i, result in enumerate(results):
            assert result.get(timeout=60) == {"i": i}
    time.sleep(0.5)
    return process_memory(proc)


def flush(server: RedisServer) -> None:
    assert server.port != 6379, "refusing to flush the machine's own Redis"
    with server.client() as c:
        c.flushall()


def run_memory(
    server: RedisServer, log_root: Path, repeats: int, warm: int, console: Console
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        order = ("plain", "agent") if repeat % 2 == 0 else ("agent", "plain")
        run: dict[str, Any] = {}
        for kind in order:
            flush(server)
            procs = Procs(server.url, log_root / f"mem{repeat + 1}-{kind}")
            try:
                fn = memory_plain if kind == "plain" else memory_agent
                run[kind] = fn(procs, server.url, warm)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise RuntimeError(f"{kind} memory run failed: {exc}\n{procs.logs()}") from exc
            finally:
                procs.kill_all()
        run["delta_main_mb"] = round(run["agent"]["main_mb"] - run["plain"]["main_mb"], 2)
        run["delta_total_mb"] = round(run["agent"]["total_mb"] - run["plain"]["total_mb"], 2)
        runs.append(run)
        console.print(
            f"memory repeat {repeat + 1}: plain main {run['plain']['main_mb']:.1f} MB, total "
            f"{run['plain']['total_mb']:.1f} MB; agent main {run['agent']['main_mb']:.1f} MB, "
            f"total {run['agent']['total_mb']:.1f} MB"
        )

    def med(path: Sequence[str]) -> float:
        values = []
        for run in runs:
            v: Any = run
            for key in path:
                v = v[key]
            values.append(v)
        return round(statistics.median(values), 2)

    summary: dict[str, Any] = {"runs": runs}
    for kind in ("plain", "agent"):
        n_children = min(len(r[kind]["children_mb"]) for r in runs)
        summary[kind] = {
            "main_mb": med((kind, "main_mb")),
            "children_mb": [
                round(statistics.median(r[kind]["children_mb"][i] for r in runs), 2)
                for i in range(n_children)
            ],
            "total_mb": med((kind, "total_mb")),
            "pss_total_mb": med((kind, "pss_total_mb")),
        }
    summary["delta_main_mb"] = med(("delta_main_mb",))
    summary["delta_total_mb"] = med(("delta_total_mb",))
    return summary


# --- the fleet ---------------------------------------------------------------------------------


def run_fleet(
    server: RedisServer, log_root: Path, args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    from orchestrator.client import OrchestratorClient
    from orchestrator.store.keys import AGENTS, HEARTBEATS, task_key

    flush(server)
    procs = Procs(server.url, log_root / "fleet")
    ids = [f"a{i:03d}" for i in range(args.agents)]
    weight = {a: (1.0 if i % 2 == 0 else 0.5) for i, a in enumerate(ids)}
    out: dict[str, Any] = {"requested": args.agents, "pool": "solo", "batch": args.batch}
    avail_before = mem_available()
    r = server.client()
    try:
        t0 = time.monotonic()
        started: list[str] = []
        for b in range(0, len(ids), args.batch):
            if mem_available() < args.min_free_mb * MB:
                console.print(
                    f"[yellow]stopping at {len(started)} agents: "
                    f"MemAvailable under {args.min_free_mb} MB"
                )
                break
            batch = ids[b : b + args.batch]
            for agent_id in batch:
                procs.start(
                    "orchestrator.app",
                    agent_id,
                    ["-P", "solo"],
                    ORCH_AGENT_ID=agent_id,
                    ORCH_AGENT_CAPABILITIES=f"echo={weight[agent_id]}",
                    ORCH_HANDLERS="examples.handlers",
                )
            started += batch
            want = len(started)
            wait_for(
                lambda want=want: r.hlen(AGENTS) >= want or any(not p.alive for p in procs.procs),
                timeout=120 + 10 * len(batch),
                interval=0.1,
                message=f"batch {b // args.batch + 1} never registered",
            )
            dead = [p.name for p in procs.procs if not p.alive]
            if dead:
                raise RuntimeError(f"agents exited: {dead}\n{procs.logs()}")
            console.print(
                f"{r.hlen(AGENTS)}/{args.agents} registered after {time.monotonic() - t0:.1f} s"
            )
        registered_s = time.monotonic() - t0
        registered = sorted(k.decode() for k in r.hkeys(AGENTS))
        out["started"] = len(started)
        out["registered"] = len(registered)
        out["registered_s"] = round(registered_s, 1)
        # Beating: every heartbeat moves past the value it had when all were registered.
        beats0 = {k.decode(): float(v) for k, v in r.hgetall(HEARTBEATS).items()}

        def all_beat() -> bool:
            now = {k.decode(): float(v) for k, v in r.hgetall(HEARTBEATS).items()}
            return all(now.get(a, 0.0) > beats0.get(a, 0.0) for a in started)

        settings = settings_for(server.url)
        wait_for(all_beat, timeout=settings.agent_heartbeat_interval_s * 4, interval=0.5)
        out["beating_s"] = round(time.monotonic() - t0, 1)
        pids = [p.pid for p in procs.procs]
        pids += [c for p in procs.procs for c in p.child_pids()]
        out["processes"] = len(pids)
        out["rss_total_mb"] = round(sum(rss(p) for p in pids) / MB, 1)
        out["pss_total_mb"] = round(sum(pss(p) for p in pids) / MB, 1)
        out["rss_per_agent_mb"] = round(out["rss_total_mb"] / len(started), 1)
        out["mem_available_drop_mb"] = round((avail_before - mem_available()) / MB, 1)
        console.print(
            f"all {len(started)} beating after {out['beating_s']} s; RSS "
            f"{out['rss_total_mb']:.0f} MB ({out['rss_per_agent_mb']:.1f} per agent), "
            f"MemAvailable down {out['mem_available_drop_mb']:.0f} MB"
        )

        with OrchestratorClient(settings=settings) as client:
            t1 = time.perf_counter()
            results = [client.submit("echo", {"i": i}) for i in range(args.tasks)]
            sent_s = time.perf_counter() - t1
            deadline = time.monotonic() + 120 + args.tasks / 5
            for i, result in enumerate(results):
                value = result.get(timeout=max(deadline - time.monotonic(), 0.1))
                if value != {"i": i}:
                    raise RuntimeError(f"task {i} ({result.id}) returned {value!r}")
            done_s = time.perf_counter() - t1
            pipe = r.pipeline(transaction=False)
            for result in results:
                pipe.hget(task_key(result.id), "agent")
            ran = Counter(a.decode() if a else "?" for a in pipe.execute())
        console.print(f"{args.tasks} tasks sent in {sent_s:.1f} s, all done in {done_s:.1f} s")
        total_weight = sum(weight[a] for a in started)
        counts = {a: ran.get(a, 0) for a in started}
        share_hi = sum(c for a, c in counts.items() if weight[a] == 1.0) / args.tasks
        share_lo = sum(c for a, c in counts.items() if weight[a] == 0.5) / args.tasks
        exp_hi = sum(weight[a] for a in started if weight[a] == 1.0) / total_weight
        per: dict[str, Any] = {}
        for w in (1.0, 0.5):
            group = [counts[a] for a in started if weight[a] == w]
            per[str(w)] = {
                "expected": round(args.tasks * w / total_weight, 1),
                "min": min(group),
                "max": max(group),
            }
        out.update(
            tasks=args.tasks,
            sent_s=round(sent_s, 2),
            done_s=round(done_s, 2),
            share_1_0=round(share_hi, 4),
            share_0_5=round(share_lo, 4),
            expected_share_1_0=round(exp_hi, 4),
            rel_error_1_0=round(abs(share_hi - exp_hi) / exp_hi, 4),
            rel_error_0_5=round(abs(share_lo - (1 - exp_hi)) / (1 - exp_hi), 4),
            per_agent=per,
            idle_agents=sorted(a for a, c in counts.items() if c == 0),
            unknown_agent=ran.get("?", 0) + sum(c for a, c in ran.items() if a not in counts),
            counts=counts,
        )
    except KeyboardInterrupt:
        raise
    except AssertionError as exc:
        raise RuntimeError(f"fleet run failed: {exc}\n{procs.logs()}") from exc
    finally:
        procs.kill_all()
        r.close()
    return out


# --- driver ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="memory repeats (5: the issue asks for the median of at least five)",
    )
    parser.add_argument("--warm", type=int, default=200, help="warm-up tasks per worker (200)")
    parser.add_argument("--agents", type=int, default=100, help="fleet size (100)")
    parser.add_argument("--batch", type=int, default=10, help="agents started at once (10)")
    parser.add_argument("--tasks", type=int, default=3000, help="tasks over the fleet (3000)")
    parser.add_argument(
        "--min-free-mb", type=int, default=2048, help="start no batch below this MemAvailable"
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument(
        "--results", default=str(REPO_ROOT / "bench" / "RESULTS.md"), help="RESULTS.md to update"
    )
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    args = parser.parse_args(argv)
    if min(args.repeats, args.warm, args.agents, args.batch, args.tasks) < 1:
        parser.error("counts must be positive")
    return args


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Both parts on a private redis-server; everything started is stopped before this returns
    or raises (KeyboardInterrupt included). The logs are kept when it did not finish."""
    log_root = Path(tempfile.mkdtemp(prefix="orch-bench-fleet-"))
    (log_root / "redis").mkdir()
    server = RedisServer(workdir=log_root / "redis", extra_args=["--maxclients", "10000"])
    ok = False
    try:
        server.start()
        with server.client() as c:
            redis_version = c.info("server")["redis_version"]
        report: dict[str, Any] = {
            "config": {
                "repeats": args.repeats,
                "warm": args.warm,
                "cpus": os.cpu_count(),
                "mem_total_gib": round(
                    os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1
                ),
                "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                "commit": source_version(),
                "python": platform.python_version(),
                "celery": celery.__version__,
                "redis_server": redis_version,
                "logs": str(log_root),
            }
        }
        console.print(f"bench redis {redis_version} on port {server.port}; logs in {log_root}")
        report["memory"] = run_memory(server, log_root, args.repeats, args.warm, console)
        report["fleet"] = run_fleet(server, log_root, args, console)
        report["config"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        ok = True
    finally:
        server.stop()
        if ok and not args.keep_logs:
            shutil.rmtree(log_root, ignore_errors=True)
        elif not ok:
            console.print(f"logs kept in {log_root}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, width=max(Console(stderr=True).width, 120))
    signal.signal(signal.SIGTERM, _interrupt)
    load = os.getloadavg()[0]
    if load > 1:
        console.print(f"[yellow]load average {load:.2f} at start: figures will be noisier")
    try:
        report = run_all(args, console)
    except KeyboardInterrupt:
        console.print("[red]interrupted: workers and redis stopped")
        return 130
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    render(report, Console(width=max(Console().width, 120)))
    if not args.no_results:
        write_results(Path(args.results), report)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
