"""The big chaos run: thousands of tasks while random workers are killed, then the checker.

The chaos suite in tests/chaos proves each fault once, within the test budget; this runs the
same history checker over a longer, noisier run, outside `make test`:

    .venv/bin/python bench/chaos.py --tasks 3000 --kills 10

It starts its own redis-server on a free port (never 6379), control workers, beat and agents
(real `celery` processes), submits `chaos` tasks (count start, sleep, count completion) at a
steady rate, and every `duration / kills` seconds injects a random fault from `--modes`:

  agent    SIGKILL an agent's whole process group (a host dies); a new agent replaces it
  child    SIGKILL one pool child of an agent (the OOM killer)
  term     warm SIGTERM an agent (a deploy); a new agent replaces it
  control  SIGKILL a control worker; a new one replaces it

Then it waits for every id to settle and prints the checker's counts line and timings. Exit
status: 0 when nothing was lost, duplicated or inconsistent, 1 otherwise, 130 on Ctrl-C.
Every child process is stopped on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: `bench/` is on sys.path, not the root
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402

from orchestrator.client import OrchestratorClient  # noqa: E402
from orchestrator.config import load_settings  # noqa: E402
from orchestrator.store.keys import AGENTS  # noqa: E402
from tests.chaos.checker import check, counter_total, read_events  # noqa: E402
from tests.chaos.cluster import Cluster, ProcessSet, chaos_env  # noqa: E402
from tests.support import CeleryProcess, RedisServer, terminate_all  # noqa: E402

MODES = ("agent", "child", "term", "control")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="tasks to submit (3000)")
    parser.add_argument("--kills", type=int, default=10, help="faults to inject (10)")
    parser.add_argument("--duration", type=float, default=60.0, help="fault window, s (60)")
    parser.add_argument("--agents", type=int, default=4, help="agents alive at a time (4)")
    parser.add_argument("--controls", type=int, default=2, help="control workers (2)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size per agent (2)")
    parser.add_argument("--seconds", type=float, default=0.05, help="task sleep, s (0.05)")
    parser.add_argument(
        "--modes", default="agent,child,term", help=f"comma-separated, from {','.join(MODES)}"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="settle deadline, s (300)")
    parser.add_argument("--aof", action="store_true", help="run Redis with AOF everysec")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or not args.modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    if args.tasks < 1 or args.kills < 0 or args.agents < 2 or args.controls < 1:
        parser.error("need --tasks >= 1, --kills >= 0, --agents >= 2, --controls >= 1")
    return args


class Chaos:
    """The fleet, and the faults injected into it."""

    def __init__(self, cluster: Cluster, args: argparse.Namespace, rng: random.Random) -> None:
        self.cluster = cluster
        self.args = args
        self.rng = rng
        self.live_agents: list[str] = []
        self.live_controls: list[str] = []
        self.next_agent = 0
        self.next_control = 0
        self.log: list[str] = []
        self.faults: Counter[str] = Counter()
        self.killed_agents: list[str] = []
        self.stopping: list[threading.Thread] = []
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {text}"
        self.log.append(line)
        print(line, flush=True)

    def add_agent(self, wait: bool = True) -> str:
        self.next_agent += 1
        agent_id = f"ag{self.next_agent:03d}"
        self.cluster.agent(agent_id, "chaos", concurrency=self.args.concurrency, wait=wait)
        self.live_agents.append(agent_id)
        return agent_id

    def add_control(self, wait: bool = True) -> str:
        self.next_control += 1
        name = f"control{self.next_control:02d}"
        self.cluster.control(name, wait=wait)
        self.live_controls.append(name)
        return name

    def inject(self) -> None:
        mode = self.rng.choice(self.args.modes)
        self.faults[mode] += 1
        if mode == "control":
            victim = self.rng.choice(self.live_controls)
            self.cluster.controls[victim].kill()
            self.live_controls.remove(victim)
            new = self.add_control(wait=False)
            self.note(f"SIGKILL control {victim} (group); started {new}")
            return
        # Only agents that registered: killing one still starting up proves nothing.
        ready = [a for a in self.live_agents if self.cluster.r.hexists(AGENTS, a)]
        if not ready:
            self.note(f"no registered agent to hit with {mode}")
            return
        victim = self.rng.choice(ready)
        proc = self.cluster.agents[victim]
        if mode == "child":
            children = proc.child_pids()
            if children:
                pid = self.rng.choice(children)
                proc_kill(pid)
                self.note(f"SIGKILL pool child {pid} of {victim}")
            else:
                self.note(f"{victim} had no pool child to kill")
            return
        self.live_agents.remove(victim)
        if mode == "agent":
            proc.kill()
            self.killed_agents.append(victim)
            verb = "SIGKILL agent"
        else:
            # A warm shutdown waits for running tasks: do not hold up the fault schedule.
            stopper = threading.Thread(target=proc.terminate, kwargs={"timeout": 60}, daemon=True)
            stopper.start()
            self.stopping.append(stopper)
            verb = "SIGTERM agent"
        new = self.add_agent(wait=False)
        self.note(f"{verb} {victim}; started {new}")


def wait_noticed(r: redis.Redis, agents: list[str], timeout: float) -> list[str]:
    """The killed agents that no `agent.lost` event names after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        named = {d.get("agent_id") or d.get("agent") for _, _, d in read_events(r, ["agent.lost"])}
        missing = [a for a in agents if a not in named]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.5)


def proc_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def run(args: argparse.Namespace, procs: ProcessSet, server: RedisServer) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(
        f"chaos bench: {args.tasks} tasks, {args.kills} faults ({','.join(args.modes)}) over "
        f"{args.duration:g}s, {args.agents} agents x{args.concurrency}, {args.controls} "
        f"controls, Redis :{server.port}{' AOF' if args.aof else ''}, seed {seed}",
        flush=True,
    )
    env = chaos_env(server.url)
    with (
        redis.Redis.from_url(server.url, decode_responses=True) as r,
        OrchestratorClient(settings=load_settings(redis_url=server.url)) as client,
    ):
        cluster = Cluster(procs, env, r)
        chaos = Chaos(cluster, args, rng)
        for _ in range(args.controls):
            chaos.add_control(wait=False)
        cluster.beat(procs.log_dir)
        for _ in range(args.agents):
            chaos.add_agent(wait=False)
        cluster.wait_controls_ready()
        cluster.wait_ready(chaos.live_agents)
        chaos.note("cluster ready")

        ids = [f"bench-{n:06d}" for n in range(args.tasks)]
        submitted: list[str] = []
        failed: list[str] = []
        finished_submitting: list[float] = []

        def submit_all() -> None:
            t0 = time.monotonic()
            for n, task_id in enumerate(ids):
                due = t0 + args.duration * n / len(ids)
                if (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                try:
                    client.submit(
                        "chaos", {"key": task_id, "seconds": args.seconds}, task_id=task_id
                    )
                except Exception as exc:
                    failed.append(task_id)
                    if len(failed) <= 3:
                        print(f"submit {task_id} failed: {exc!r}", flush=True)
                else:
                    submitted.append(task_id)
            finished_submitting.append(time.monotonic())

        submitter = threading.Thread(target=submit_all, daemon=True)
        t_start = time.monotonic()
        submitter.start()
        # Faults land inside the submission window, so each one meets queued and running work.
        for k in range(args.kills):
            due = t_start + args.duration * (k + 0.5) / args.kills
            while (left := due - time.monotonic()) > 0:
                time.sleep(min(left, 0.5))
            chaos.inject()
        submitter.join()
        t_submitted = finished_submitting[0] if finished_submitting else time.monotonic()
        chaos.note(
            f"submitted {len(submitted)} in {t_submitted - t_start:.1f}s "
            f"({len(failed)} failed at the client); "
            f"{counter_total(r, 'test:done:', ids)} done so far"
        )
        for stopper in chaos.stopping:
            stopper.join(timeout=60)

        report = check(
            r,
            ids,
            timeout=args.timeout,
            name="chaos[bench]",
            submit_failed=failed,
            poll_s=0.5,
        )
        t_end = time.monotonic()
        # Every agent killed outright must have been noticed: `agent.lost` names it.
        unnoticed = wait_noticed(r, chaos.killed_agents, timeout=15.0)
        kinds = Counter(kind for _, kind, _ in read_events(r))
        interesting = {
            k: v
            for k, v in sorted(kinds.items())
            if k.startswith(("agent.", "circuit.", "recovery.")) or k == "task.dead_lettered"
        }
        print(report.summary())
        done = report.counts()["succeeded"]
        print(
            f"timings: submit {t_submitted - t_start:.1f}s, settle after submit "
            f"{t_end - t_submitted:.1f}s, total {t_end - t_start:.1f}s, "
            f"{done / max(t_end - t_start, 1e-9):.0f} tasks/s end to end"
        )
        print(f"events: {interesting}")
        print(f"faults: {dict(chaos.faults)} (seed {seed})")
        if unnoticed:
            print(f"SIGKILLed agents never reported by agent.lost: {unnoticed}")
        if report.lost or report.duplicated or report.inconsistent:
            print(report.problems_text())
            return 1
        return 1 if unnoticed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Also when started in the background, where a shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="orch-chaos-bench-"))
    extra = ["--appendonly", "yes", "--appendfsync", "everysec"] if args.aof else []
    server = RedisServer(workdir=workdir / "redis", extra_args=extra)  # it makes the folder
    procs = ProcessSet(workdir / "logs")
    code = 1
    interrupted = False
    try:
        server.start()
        code = run(args, procs, server)
    except KeyboardInterrupt:
        interrupted = True
        code = 130
        print("interrupted: killing every child process", file=sys.stderr, flush=True)
    finally:
        try:
            if interrupted:
                procs.kill_all()
            else:
                live: list[CeleryProcess] = [p for p in procs.procs if p.alive]
                terminate_all(live, timeout=20)
        except KeyboardInterrupt:  # a second Ctrl-C during the warm stop: no more waiting
            procs.kill_all()
        finally:
            procs.kill_all()  # whatever is still alive after the warm stop's deadline
            server.stop()
        if args.keep_logs or code not in (0, 130):
            print(f"worker logs kept in {workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
