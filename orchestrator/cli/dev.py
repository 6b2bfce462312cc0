"""`orchestrator dev`: the whole stack on one machine, as child processes it supervises."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.table import Column, Table

from orchestrator.cli.common import DEV_REDIS_PORT
from orchestrator.cli.embedded import pick_port, reachable, start_redis
from orchestrator.cli.lifetime import Lifeline, die_with_parent, lock_holder, lock_run_dir
from orchestrator.cli.output import ReportConsole
from orchestrator.config import Settings, mask_password
from orchestrator.redis_urls import is_sentinel

if TYPE_CHECKING:
    from orchestrator.store.ports import CliStore

console = ReportConsole()
log = logging.getLogger(__name__)

# Demo agents: every one runs echo, at different proficiencies, so the weighted sequence shows.
DEMO_AGENTS = [
    ("agent-1", "echo=1.0,sleep=1.0,fail=1.0"),
    ("agent-2", "echo=0.6,sleep=0.8"),
    ("agent-3", "echo=0.3,fail=0.5"),
]
DEMO_HANDLERS = "examples.handlers"
STOP_GRACE_S = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)
    restart_at: float | None = None
    backoff_s: float = 1.0
    preexec_fn: Callable[[], None] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self.preexec_fn,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "orchestrator.app", *args]


class DevStack:
    def __init__(
        self,
        settings: Settings,
        run_dir: str,
        n_agents: int = 3,
        flower_port: int = 5555,
        beat: bool = True,
        flower: bool = True,
        exporter_port: int | None = None,
        redis_port: int = DEV_REDIS_PORT,
        fresh: bool = False,
        stop_file: str | None = None,
        watch_parent: bool = True,
    ) -> None:
        self.settings = settings
        # Its own Redis unless ORCH_REDIS_URL (or .env) names one: never a guess at 6379.
        self.own_redis = "redis_url" not in settings.model_fields_set
        self.redis_port = redis_port
        self.fresh = fresh
        self.lifeline = Lifeline(Path(stop_file) if stop_file else None, watch_parent)
        self.preexec_fn = die_with_parent()
        self.run_dir = Path(run_dir).resolve()
        self.logs = self.run_dir / "logs"
        self.n_agents = n_agents
        self.flower_port = flower_port
        self.beat = beat
        self.flower = flower
        # The exporter binds loopback here, like Flower: a local stack, not a deployment.
        self.exporter_port = settings.exporter_port if exporter_port is None else exporter_port
        self.children: list[Child] = []
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        # ORCH_LOG_FORMAT=json: the children log JSON (they inherit the variable), and so
        # does this supervisor: its status lines become log lines, addresses as fields.
        self.as_json = settings.log_format == "json"

    def _say(self, text: str, level: int = logging.INFO, style: str = "", **fields: Any) -> None:
        if self.as_json:
            log.log(level, text, extra=fields)
        else:
            console.print(f"[{style}]{text}[/]" if style else text, soft_wrap=True)

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_AGENT_")}
        env.update(
            {
                "ORCH_REDIS_URL": self.settings.redis_url,
                "ORCH_PROFILE": self.settings.profile,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def _metrics_env(self, index: int) -> dict[str, str]:
        """With ORCH_METRICS_PORT set, each worker here serves its own metrics on the next
        port up (control on the port itself): one host cannot give them all the same one."""
        base = self.settings.metrics_port
        if not base:
            return {}
        return {"ORCH_METRICS_PORT": str(base + index), "ORCH_METRICS_ADDRESS": "127.0.0.1"}

    def plan(self) -> list[Child]:
        children = [
            Child(
                "control",
                celery_argv("worker", "-n", "control@%h", "-c", "2", "-l", "info"),
                self._env(**self._metrics_env(0)),
                self.logs / "control.log",
            )
        ]
        for i in range(self.n_agents):
            agent_id, caps = DEMO_AGENTS[i % len(DEMO_AGENTS)]
            if i >= len(DEMO_AGENTS):
                agent_id = f"agent-{i + 1}"
            children.append(
                Child(
                    agent_id,
                    celery_argv("worker", "-n", f"{agent_id}@%h", "-c", "2", "-l", "info"),
                    self._env(
                        ORCH_AGENT_ID=agent_id,
                        ORCH_AGENT_CAPABILITIES=caps,
                        ORCH_HANDLERS=DEMO_HANDLERS,
                        **self._metrics_env(i + 1),
                    ),
                    self.logs / f"{agent_id}.log",
                )
            )
        if self.beat:
            children.append(
                Child(
                    "beat",
                    celery_argv("beat", "-l", "info"),
                    self._env(),
                    self.logs / "beat.log",
                )
            )
        if self.flower:
            flower_env = self._env()
            if "FLOWER_BASIC_AUTH" not in flower_env:
                # Loopback only, for local use: the API is open so curl examples work.
                flower_env["FLOWER_UNAUTHENTICATED_API"] = "true"
            children.append(
                Child(
                    "flower",
                    celery_argv("flower", f"--port={self.flower_port}", "--address=127.0.0.1"),
                    flower_env,
                    self.logs / "flower.log",
                )
            )
        children.append(
            Child(
                "exporter",
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli",
                    "exporter",
                    f"--port={self.exporter_port}",
                    "--address=127.0.0.1",
                ],
                self._env(),
                self.logs / "exporter.log",
            )
        )
        return children

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.as_json:
            from orchestrator.runtime.logs import configure_logging

            configure_logging("json")
        lock = lock_run_dir(self.run_dir)
        if lock is None:
            self._say(
                f"another `orchestrator dev` (pid {lock_holder(self.run_dir)}) uses "
                f"{self.run_dir}: stop it first, or give this one another --run-dir",
                logging.ERROR,
                "red",
            )
            return 2
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            self.lifeline.arm()
            code = self._redis()
            if code:
                return code
            refusal = self._fitness()
            if refusal is not None:
                self._say(refusal, logging.ERROR, "red")
                return 2
            self._migrate_keys()
            self.children = self.plan()
            for child in self.children:
                child.preexec_fn = self.preexec_fn
                child.start()
            self._banner()
            while not self._stopping:
                reason = self.lifeline.reason()
                if reason is not None:
                    self._say(f"{reason}: stopping", logging.WARNING, "yellow")
                    break
                for child in self.children:
                    self._supervise(child)
                time.sleep(0.5)
        finally:
            self.stop()
            self.lifeline.disarm()
            lock.close()
        return 0

    def _redis(self) -> int:
        """Start this stack's own redis-server, or use the one ORCH_REDIS_URL names (started
        at that address when nothing answers there); non-zero when the stack cannot go on."""
        data_dir = self.run_dir / "redis"
        if self.own_redis:
            split = ("broker_url", "result_backend", "state_url")
            given = [f"ORCH_{n.upper()}" for n in split if getattr(self.settings, n)]
            if given:
                self._say(
                    f"{', '.join(given)} set without ORCH_REDIS_URL: the stack starts its own "
                    "Redis only when no Redis is named; set ORCH_REDIS_URL too",
                    logging.ERROR,
                    "red",
                )
                return 2
            port = pick_port(self.redis_port)
            url = f"redis://127.0.0.1:{port}/0"
            self.settings = self.settings.model_copy(update={"redis_url": url})
            taken = (
                f" ({self.redis_port} is taken)"
                if self.redis_port and port != self.redis_port
                else ""
            )
            self._say(
                f"Redis: ORCH_REDIS_URL is not set: starting this stack's own redis-server at "
                f"{url}{taken}, data in {data_dir}",
                redis_url=url,
            )
            return self._start_own(url, data_dir)
        url = self.settings.redis_url
        masked = mask_password(url)
        if reachable(url, sentinel_master=self.settings.redis_sentinel_master):
            if self.fresh:
                self._say(
                    f"--fresh wipes only the data of a Redis this stack starts; the one at "
                    f"ORCH_REDIS_URL ({masked}) answers already, and is left as it is",
                    logging.ERROR,
                    "red",
                    redis_url=masked,
                )
                return 2
            self._say(f"Redis: using the server at ORCH_REDIS_URL, {masked}", redis_url=masked)
            return 0
        if is_sentinel(url):
            self._say(
                f"no master {self.settings.redis_sentinel_master!r} answers through "
                f"the sentinels of ORCH_REDIS_URL ({masked}); an embedded "
                "Redis is only started for a redis:// URL",
                logging.ERROR,
                "red",
                redis_url=masked,
            )
            return 1
        self._say(
            f"Redis: nothing answers at {masked}; starting an embedded one, data in {data_dir}",
            redis_url=masked,
        )
        return self._start_own(url, data_dir)

    def _start_own(self, url: str, data_dir: Path) -> int:
        """Start this stack's redis-server at `url` (its data wiped first with --fresh)."""
        self._wipe(data_dir)
        self.redis_proc = start_redis(
            url, data_dir, self.logs / "redis.log", preexec_fn=self.preexec_fn
        )
        return 0

    def _wipe(self, data_dir: Path) -> None:
        """With --fresh, the embedded Redis's data of earlier runs goes (tasks, parked and
        dead-lettered ones, findings, alerts), before the server reads it."""
        if self.fresh and data_dir.exists():
            shutil.rmtree(data_dir)
            self._say(f"--fresh: removed {data_dir}")

    def _migrate_keys(self) -> None:
        """Keys of an older layout renamed before any worker starts (idempotent)."""
        from orchestrator.errors import OrchestratorError
        from orchestrator.store import StateStore

        store: CliStore = StateStore.from_settings(self.settings)
        try:
            store.migrate_keys()
        except OrchestratorError as exc:
            self._say(f"could not rename older keys: {exc}", logging.WARNING, "yellow")
        finally:
            store.r.close()

    def _fitness(self) -> str | None:
        """The roles' start-up check of the Redis in use (an evicting one stops the stack
        here, rather than every child over and over), its warnings said; the one line that
        refuses, or None."""
        from orchestrator.errors import ConfigError
        from orchestrator.security.preflight import check_fitness, redis_targets

        try:
            lines = check_fitness(redis_targets(self.settings), self.settings.allow_evicting_redis)
        except ConfigError as exc:
            return str(exc)
        for level, line in lines:
            self._say(line, level, "yellow" if level >= logging.WARNING else "")
        return None

    def _supervise(self, child: Child) -> None:
        """Restart a child that died, as a container runtime's restart policy would, with a
        backoff that doubles up to a minute so a child that cannot start does not spin."""
        if child.proc is None or child.proc.poll() is None:
            return
        now = time.monotonic()
        if child.restart_at is None:
            self._say(
                f"{child.name} exited with {child.proc.returncode}; restarting "
                f"in {child.backoff_s:.0f}s (log: {child.log_path})",
                logging.ERROR,
                "red",
                role=child.name,
                returncode=child.proc.returncode,
                log_path=str(child.log_path),
            )
            child.restart_at = now + child.backoff_s
        elif now >= child.restart_at:
            child.close()
            child.start()
            child.restart_at = None
            child.backoff_s = min(60.0, child.backoff_s * 2)

    def stop(self) -> None:
        self._say("stopping: warm shutdown of every child (Ctrl-C again is ignored)")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(self.children):
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(
                    f"{child.name} did not stop in {STOP_GRACE_S:.0f}s: killing it",
                    logging.WARNING,
                    role=child.name,
                )
                child.signal_group(signal.SIGKILL)
                child.proc.wait()
            child.close()
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
                self.redis_proc.wait()
        self._say("stopped")

    def _banner(self) -> None:
        url = self.settings.redis_url
        masked = mask_password(url)
        redis_pid = self.redis_proc.pid if self.redis_proc else None
        # role, pid, where (as the table says it), where (as JSON fields), log
        rows: list[tuple[str, int | None, str, dict[str, str], Path]] = [
            ("redis", redis_pid, masked, {"address": masked}, self.logs / "redis.log")
        ]
        for child in self.children:
            where, fields = "", {}
            if child.name == "flower":
                address = f"http://127.0.0.1:{self.flower_port}"
                where = f"{address}\n(metrics: /metrics)"
                fields = {"address": address, "metrics": f"{address}/metrics"}
            elif child.name == "exporter":
                where = f"http://127.0.0.1:{self.exporter_port}/metrics"
                fields = {"address": where}
            elif child.name.startswith("agent"):
                where = child.env.get("ORCH_AGENT_CAPABILITIES", "")
                fields = {"capabilities": where}
            if "ORCH_METRICS_PORT" in child.env and child.argv[5:6] == ["worker"]:
                metrics = f"http://127.0.0.1:{child.env['ORCH_METRICS_PORT']}/metrics"
                where = f"{where}\n{metrics}" if where else metrics
                fields["metrics"] = metrics
            pid = child.proc.pid if child.proc else None
            rows.append((child.name, pid, where, fields, child.log_path))
        submit = ".venv/bin/orchestrator submit echo --payload '{\"x\": 1}' --wait"
        # What a second terminal needs so that `orchestrator status` there sees this stack:
        # its Redis (with the password masked, for a URL that has one) and its profile.
        export = f"export ORCH_REDIS_URL={shlex.quote(masked)} ORCH_PROFILE={self.settings.profile}"
        if self.as_json:
            for role, pid, where, fields, log_path in rows:
                detail = fields.get("address", where)
                text = f"{role}{': ' + detail if detail else ''} (pid {pid}, log: {log_path})"
                log.info(
                    text, extra={"role": role, "pid": pid, **fields, "log_path": str(log_path)}
                )
            log.info(
                "Hive Orchestrator (dev) is up; Ctrl-C stops everything",
                extra={"submit": submit, "export": export},
            )
            return
        # Addresses and log paths are copied whole, never cut to "…", even on a narrow console
        # (80 columns when not a terminal): an address keeps its line, a long path folds.
        table = Table(
            "role",
            "pid",
            Column("where", no_wrap=True),
            Column("log", overflow="fold"),
            title="Hive Orchestrator (dev)",
        )
        for role, pid, where, _, log_path in rows:
            table.add_row(role, "-" if pid is None else str(pid), where, str(log_path))
        console.print(table)
        console.print(
            f"In another terminal, first:\n  {export}\n"
            f"Submit a task:  {submit}\n"
            "Agents:         .venv/bin/orchestrator agents\n"
            "Events:         .venv/bin/orchestrator events --follow\n"
            f"Flower API:     curl -X POST http://127.0.0.1:{self.flower_port}/api/task/send-task/"
            "orchestrator.submit -H 'Content-Type: application/json' "
            '-d \'{"kwargs": {"type": "echo", "payload": {"x": 1}}}\'\n'
            "Ctrl-C stops everything."
        )
