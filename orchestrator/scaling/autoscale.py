"""The autoscaling loop (`orchestrator.autoscale`), ORCH_SCALE_COMMAND, and the scale report.

Figures come from Redis, the decision from orchestrator.scaling.decide, and the command runs
without a shell. `run_autoscale` decides every capability's desired count, stores the
decisions (they carry the hysteresis state the next run needs), and runs the command for each
count that changed since it last ran, recording each run as a `scale.executed` event.
`scale_report` is what the exporter (`orchestrator_desired_agents`) and `orchestrator scale`
show: the loop's stored decisions while it runs, so all three agree, and the plain need when
it has not run lately.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.config import Settings
from orchestrator.errors import ConfigError
from orchestrator.models import ProductionEventSeverity, RegisteredAgent, SLATarget
from orchestrator.monitoring.loops import LoopContext, sla_targets
from orchestrator.monitoring.schedule import LOOPS_BY_TASK
from orchestrator.monitoring.slo import builtin_targets
from orchestrator.monitoring.stats import WindowStats
from orchestrator.routing.weights import effective_status
from orchestrator.scaling.decide import (
    POOL,
    ScaleDecision,
    ScaleExecution,
    ScaleFigures,
    ScalePolicy,
    agents_needed,
    command_argv,
    command_targets,
    decide,
    execution_due,
    is_fresh,
    output_tail,
    scale_figures,
)
from orchestrator.scaling.signal import action_for
from orchestrator.store.scaling import ScaleStore

log = logging.getLogger(__name__)
SOURCE = "autoscale"
#: The longest one run of ORCH_SCALE_COMMAND may take (within the loop's own time limit).
COMMAND_TIMEOUT_S = 60.0
#: Seconds of the loop's time limit kept for everything but the command.
_MARGIN_S = 3.0
#: Exit codes recorded when the command did not run to an exit of its own (as a shell says).
EXIT_TIMEOUT, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_BAD_COMMAND = 124, 126, 127, 2


def policy_of(settings: Settings) -> ScalePolicy:
    return ScalePolicy(
        target_backlog=settings.scale_target_backlog,
        lo=settings.scale_min,
        hi=settings.scale_max,
        cooldown_s=settings.scale_cooldown_s,
    )


def stale_after_s(settings: Settings) -> float:
    """A stored decision older than this no longer speaks for a running loop."""
    return max(3.0 * settings.scale_interval_s, 30.0)


def command_budget_s(settings: Settings) -> float:
    """Time the loop's commands may take in one run: the run's time limit (its lock TTL, as
    beat sends it) less a margin, at most COMMAND_TIMEOUT_S per command."""
    return max(1.0, LOOPS_BY_TASK["orchestrator.autoscale"].ttl_s(settings) - _MARGIN_S)


def _targets(settings: Settings) -> list[SLATarget]:
    try:
        return sla_targets(settings)
    except ConfigError as exc:  # the SLA loop reports it; scaling goes on with the defaults
        log.warning("autoscale: %s; using the built-in SLA targets", exc)
        return builtin_targets(settings.profile_defaults.latency_p95_ms)


def figures(
    ctx: LoopContext,
    now: float,
    agents: Sequence[RegisteredAgent] | None = None,
    depths: dict[str, int] | None = None,
    window: WindowStats | None = None,
) -> list[ScaleFigures]:
    """Every capability's figures now. `agents` (with their effective status), `depths` and
    the metrics `window` may come from a metrics snapshot already read (the exporter's)."""
    settings = ctx.settings
    if agents is None:
        agents = ctx.store.load_agents()
        for agent in agents:
            agent.status = effective_status(agent, now, settings.agent_timeout_s)
    if depths is None:
        depths = ctx.mon.queue_depths([a.queue for a in agents])
    if window is None:
        window, _ = ctx.mon.window(settings.metrics_window_s, now)
    return scale_figures(agents, depths, ctx.mon.waiting_needs(), window, _targets(settings))


# --- the loop ------------------------------------------------------------------------------


def run_autoscale(ctx: LoopContext, now: float) -> dict[str, Any]:
    """Decide, store, and (ORCH_SCALE_COMMAND) carry out; returns a summary for the log."""
    settings = ctx.settings
    policy = policy_of(settings)
    scales = ScaleStore(ctx.store.r)
    previous = scales.decisions()
    decisions = [decide(f, previous.get(f.capability), policy, now) for f in figures(ctx, now)]
    scales.save_decisions(decisions)  # before the command: a hung command loses no decision
    runs = execute(ctx, scales, decisions, now) if settings.scale_command.strip() else []
    return {
        "desired": {d.capability: d.desired for d in decisions},
        "changed": sorted(
            d.capability
            for d in decisions
            if d.capability in previous and previous[d.capability].desired != d.desired
        ),
        "executed": [
            {"capability": r.capability, "desired": r.desired, "exit_code": r.exit_code}
            for r in runs
        ],
    }


def execute(
    ctx: LoopContext, scales: ScaleStore, decisions: Sequence[ScaleDecision], now: float
) -> list[ScaleExecution]:
    """Run ORCH_SCALE_COMMAND for every count that changed since its last run (and again for
    one that failed, a cool-down later); each run is stored and announced."""
    settings = ctx.settings
    template = settings.scale_command
    wanted = command_targets(template, decisions)
    scales.keep_executions(key for key, _, _ in wanted)
    last = scales.executions()
    deadline = time.monotonic() + command_budget_s(settings)
    done = []
    for key, capability, n in wanted:
        if not execution_due(last.get(key), n, now, settings.scale_cooldown_s):
            continue
        left = deadline - time.monotonic()
        if left < 1.0:
            log.warning("autoscale: no time left this run for %s=%d; next run", capability, n)
            break
        run = run_command(template, n, capability, min(COMMAND_TIMEOUT_S, left), now)
        scales.save_execution(key, run)
        ctx.store.event(
            "scale.executed",
            now=now,
            source=SOURCE,
            severity=ProductionEventSeverity.INFO if run.ok else ProductionEventSeverity.WARNING,
            **run.model_dump(mode="json", exclude={"ts"}),
        )
        (log.info if run.ok else log.warning)(
            "autoscale: %s exited %d for %s=%d", run.argv[:1], run.exit_code, capability, n
        )
        done.append(run)
    return done


def run_command(
    template: str, n: int, capability: str, timeout_s: float, now: float
) -> ScaleExecution:
    """One run of the command, without a shell, in a session of its own (a timeout kills
    every process it started). Whatever happens is returned, never raised."""
    started = time.monotonic()

    def record(argv: list[str], code: int, output: str) -> ScaleExecution:
        return ScaleExecution(
            capability=capability,
            desired=n,
            argv=argv,
            exit_code=code,
            output=output_tail(output),
            ts=now,
            duration_s=round(time.monotonic() - started, 3),
        )

    try:
        argv = command_argv(template, n, capability)
    except ValueError as exc:
        return record([], EXIT_BAD_COMMAND, f"ORCH_SCALE_COMMAND cannot be split: {exc}")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
        return record(argv, code, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
        text = out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a child left its own session
            proc.kill()
            out, _ = proc.communicate()
        code = EXIT_TIMEOUT
        text = out.decode(errors="replace") + f"\ntimed out after {timeout_s:.0f} s: killed"
    return record(argv, code, text)


# --- the report (exporter, `orchestrator scale`) -------------------------------------------


def scale_report(
    ctx: LoopContext,
    now: float,
    agents: Sequence[RegisteredAgent] | None = None,
    depths: dict[str, int] | None = None,
    window: WindowStats | None = None,
) -> list[dict[str, Any]]:
    """One row per capability: the live figures, and the desired count the loop decided (or,
    without a recent decision, what the figures need now). `action` compares that count with
    the active agents now."""
    settings = ctx.settings
    policy = policy_of(settings)
    scales = ScaleStore(ctx.store.r)
    stored = scales.decisions()
    runs = scales.executions()
    rows = []
    for fig in figures(ctx, now, agents, depths, window):
        need, why = agents_needed(fig, policy)
        decision = stored.get(fig.capability)
        if decision is not None and not is_fresh(decision, now, stale_after_s(settings)):
            decision = None
        desired = need if decision is None else decision.desired
        run = runs.get(fig.capability) or runs.get(POOL)
        rows.append(
            {
                "capability": fig.capability,
                "action": action_for(fig.current, desired).value,
                "current": fig.current,
                "desired": desired,
                "need": need,
                "backlog": fig.backlog,
                "utilisation": fig.utilisation,
                "delegation_p95_ms": fig.delegation_p95_ms,
                "latency_objective_ms": fig.latency_objective_ms,
                "reason": f"{why} (no recent decision)" if decision is None else decision.reason,
                "decided_at": None if decision is None else decision.decided_at,
                "changed_at": None if decision is None else decision.changed_at,
                "executed": None
                if run is None
                else {"desired": run.desired, "exit_code": run.exit_code, "ts": run.ts},
            }
        )
    return rows
