"""`orchestrator scale`: the autoscaling decision per capability, as the exporter serves it."""

from __future__ import annotations

import time
from typing import Any

import click
from rich import box
from rich.table import Table

from orchestrator.cli import common
from orchestrator.errors import OrchestratorError


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{max(0.0, now - ts):.0f} s ago"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _executed(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    return f"{run['desired']}" + ("" if run["exit_code"] == 0 else f" (exit {run['exit_code']})")


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON list, one object per capability."
)
def scale(as_json: bool) -> None:
    """How many agents each capability should have, and why.

    One row per capability that an agent offers or a parked task needs: the active agents
    (`current`), the tasks waiting for it (`backlog`: every priority, fetched but unacknowledged,
    parked), the count its figures need now (`need`: backlog, utilisation, delegation latency
    against the SLA targets), and the count decided with hysteresis and a cool-down (`desired`,
    the value of orchestrator_desired_agents{capability} and what ORCH_SCALE_COMMAND is run
    with). `action` is scale_up, scale_down or maintain: `desired` against `current`.

    The autoscaling loop (beat entry `autoscaling`) makes the decisions; when it has not run
    lately, `desired` is the need itself and the reason says so.
    """
    import redis

    from orchestrator.monitoring.loops import LoopContext
    from orchestrator.scaling.autoscale import scale_report

    settings = common.settings()
    common.preflight(settings, state_only=True)
    now = time.time()
    try:
        rows = scale_report(LoopContext.from_settings(settings), now)
    except (OrchestratorError, redis.RedisError) as exc:  # a clean message, not a traceback
        raise common.failure(exc) from None
    if as_json:
        common.print_json(rows)
        return
    if not rows:
        common.console.print("no capabilities: no agent registered and no task parked")
        return
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        title=f"autoscaling: ORCH_SCALE_MIN={settings.scale_min} "
        f"ORCH_SCALE_MAX={settings.scale_max} cool-down {settings.scale_cooldown_s:g} s",
    )
    table.add_column("capability", no_wrap=True)
    table.add_column("action", no_wrap=True)
    for name in ("current", "desired", "need", "backlog", "busy", "wait", "ran"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["capability"],
            r["action"],
            str(r["current"]),
            str(r["desired"]),
            str(r["need"]),
            str(r["backlog"]),
            _pct(r["utilisation"]),
            _ms(r["delegation_p95_ms"]),
            _executed(r["executed"]),
        )
    common.console.print(table)
    for r in rows:  # sentences: below the table, not squeezed into it
        when = _ago(r["decided_at"], now)
        common.console.print(
            f"{r['capability']}: {r['reason']} (decided {when})", highlight=False, markup=False
        )
    common.console.print(
        "busy: share of the active agents' slots in use; wait: p95 of submit to start over the "
        "metrics window; ran: the count ORCH_SCALE_COMMAND last ran with",
        highlight=False,
        markup=False,
    )


def register(group: click.Group) -> None:
    """Attach `scale` to the `orchestrator` group."""
    group.add_command(scale)
