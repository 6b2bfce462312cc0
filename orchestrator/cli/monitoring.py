"""CLI verbs of the monitoring loops (status, alerts, sla, anomaly, security, backup, exporter).

Each verb reads what the loops store (or computes the same read-only figures live) through
orchestrator.monitoring.loops; `--json` prints machine-readable output, otherwise a table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from orchestrator.cli import common
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.monitoring.loops import LoopContext
    from orchestrator.store.ports import CliStore

console = common.console
_settings = common.settings
_json = common.print_json


def _ctx(settings: Settings | None = None, check: bool = True) -> LoopContext:
    """The loops' context; with `check`, the state store answering first (common.preflight:
    a refusal or silence said in one line naming the variable)."""
    from orchestrator.monitoring.loops import LoopContext

    settings = settings or _settings()
    if check:
        common.preflight(settings, state_only=True)
    return LoopContext.from_settings(settings)


def _store(settings: Settings) -> CliStore:
    """The state store for a verb that changes state itself (not through a loop's acts)."""
    return common.store(settings)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _guard(fn: Any) -> Any:
    """Turn the orchestrator's own errors (Redis down, a bad rules file) into clean exits."""
    import functools

    import redis

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OrchestratorError, redis.RedisError) as exc:
            raise common.failure(exc) from None

    return wrapper


@click.command()
@click.option("--json", "as_json", is_flag=True)
@_guard
def status(as_json: bool) -> None:
    """The current metrics snapshot and health."""
    from orchestrator.monitoring.snapshot import gather
    from orchestrator.store import now_s

    ctx = _ctx()
    metrics = gather(ctx.store, ctx.mon, ctx.settings, now_s()).metrics
    if as_json:
        _json(metrics.model_dump(mode="json"))
        return
    table = Table("metric", "value", title=f"health: {metrics.health.value}")
    for name, value in metrics.model_dump(mode="json").items():
        if name not in ("ts", "health"):
            table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def _alert_rows(ctx: LoopContext) -> list[dict[str, Any]]:
    order = {"firing": 0, "pending": 1, "resolved": 2}
    alerts = sorted(ctx.mon.all_alerts(), key=lambda a: (order[a.state.value], a.name))
    return [
        {
            "name": a.name,
            "state": a.state.value,
            "severity": a.severity.value,
            "value": a.value,
            "since": a.since,
            "labels": a.labels,
            "_ack": a.acknowledged,
        }
        for a in alerts
    ]


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guard
def alerts(click_ctx: click.Context, as_json: bool) -> None:
    """Alerts pending or firing (and those resolved at the last evaluation)."""
    if click_ctx.invoked_subcommand is not None:
        return
    rows = _alert_rows(_ctx())
    if as_json:
        _json([{k: v for k, v in r.items() if k != "_ack"} for r in rows])
        return
    if not rows:
        console.print("no alerts")
        return
    table = Table("name", "state", "severity", "value", "since", "ack", "labels")
    for r in rows:
        extra = {k: v for k, v in r["labels"].items() if k not in ("alertname", "severity")}
        table.add_row(
            r["name"],
            r["state"],
            r["severity"],
            "-" if r["value"] is None else f"{r['value']:.4g}",
            _when(r["since"]),
            "yes" if r["_ack"] else "",
            json.dumps(extra) if extra else "",
        )
    console.print(table)


@alerts.command("ack")
@click.argument("alert_id")
@_guard
def alerts_ack(alert_id: str) -> None:
    """Acknowledge ALERT_ID (its name) for its current episode."""
    from orchestrator.models import AlertState
    from orchestrator.store.keys import ALERTS, SLO_ALERTS

    ctx = _ctx()
    for key in (ALERTS, SLO_ALERTS):
        stored = ctx.mon.alerts(key)
        alert = stored.get(alert_id)
        if alert is None or alert.state is AlertState.RESOLVED:
            continue
        since = alert.active_since if alert.active_since is not None else alert.since
        ctx.mon.ack(alert_id, since)
        stored[alert_id] = alert.model_copy(update={"acknowledged": True})
        ctx.mon.save_alerts(stored, key)
        click.echo(f"acknowledged {alert_id} ({alert.state.value} since {_when(since)})")
        return
    raise click.ClickException(
        f"no pending or firing alert named {alert_id!r} (see `orchestrator alerts`)"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write a self-contained HTML report with charts to this file.",
)
@_guard
def sla(as_json: bool, html_file: str | None) -> None:
    """SLA targets: SLI, compliance, error budget left, burn rates."""
    from orchestrator.monitoring.loops import sla_reports
    from orchestrator.monitoring.report import render_sla_html
    from orchestrator.store import now_s
    from orchestrator.store.keys import SLA_HISTORY

    ctx = _ctx()
    now = now_s()
    reports = sla_reports(ctx, now)
    if html_file:
        page = render_sla_html(
            reports, ctx.mon.history(SLA_HISTORY, ctx.settings.metrics_history_len), now
        )
        Path(html_file).write_text(page, encoding="utf-8")
        if not as_json:
            click.echo(f"wrote {html_file}")
    fields = (
        "name",
        "sli",
        "objective",
        "value",
        "compliant",
        "error_budget_remaining",
        "burn_rates",
    )
    if as_json:
        _json([r.model_dump(mode="json", include=set(fields)) for r in reports])
        return
    if html_file:
        return
    table = Table("target", "SLI", "objective", "value", "compliant", "budget left", "burn rates")
    for r in reports:
        table.add_row(
            r.name,
            r.sli,
            f"{r.objective:g}",
            "-" if r.value is None else f"{r.value:.4g}",
            "yes" if r.compliant else "[red]NO[/]",
            f"{r.error_budget_remaining:.1%}",
            " ".join(f"{k}={v:.2f}" for k, v in r.burn_rates.items()),
        )
    console.print(table)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guard
def security(click_ctx: click.Context, as_json: bool) -> None:
    """Security findings (as the security loop last saw them) and the threat counters."""
    if click_ctx.invoked_subcommand is not None:
        return
    from orchestrator.monitoring.loops import security_report
    from orchestrator.store import now_s

    report = security_report(_ctx(), now_s())
    if as_json:
        _json(report)
        return
    c = report["counters"]
    console.print(
        f"in the last {report['window_s']:g}s: rejected {c['rejected']}, rate-limited "
        f"{c['rate_limited']}, refused while blocked {c['refused_while_blocked']}, poison "
        f"{c['poison']}; threshold {report['threshold']} per client; security loop last ran "
        f"{_when(report['checked_at'])}"
    )
    findings = Table("id", "severity", "summary", "since", title="findings")
    for f in report["findings"]:
        findings.add_row(f["id"], f["severity"], f["summary"], _when(f["since"]))
    console.print(findings if report["findings"] else "no findings")
    if report["rejections"] or report["blocked"]:
        table = Table("client", "rejected in window", "rate-limited", "threat", "blocked until")
        flagged = {t["client_id"] for t in report["threats"]}
        for client in sorted({*report["rejections"], *report["blocked"]}):
            table.add_row(
                client,
                str(report["rejections"].get(client, 0)),
                str(report["rate_limited"].get(client, 0)),
                "[red]yes[/]" if client in flagged else "",
                _when(report["blocked"].get(client)),
            )
        console.print(table)


@security.command("unblock")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True)
@_guard
def security_unblock(client_id: str, as_json: bool) -> None:
    """Lift CLIENT_ID's block (ORCH_SECURITY_AUTO_BLOCK) now."""
    lifted = _store(_settings()).unblock_client(client_id)
    if as_json:
        _json({"client_id": client_id, "unblocked": lifted})
    elif lifted:
        click.echo(f"unblocked {client_id}: its submissions are accepted again")
    else:
        click.echo(f"{client_id} was not blocked")


@click.group()
def backup() -> None:
    """Backups of the orchestrator's Redis state (ORCH_BACKUP_DIR)."""


@backup.command("create")
@click.option("--json", "as_json", is_flag=True)
@_guard
def backup_create(as_json: bool) -> None:
    """Write a backup now (as the backup loop does) and print where."""
    from orchestrator.monitoring.loops import run_backup
    from orchestrator.store import now_s

    info = run_backup(_ctx(), now_s())
    if as_json:
        _json(info)
    else:
        click.echo(f"{info['path']}  sha256 {info['sha256']}")


@backup.command("list")
@click.option("--json", "as_json", is_flag=True)
def backup_list(as_json: bool) -> None:
    """Backups in ORCH_BACKUP_DIR, oldest first."""
    from orchestrator.backup.archive import list_backups

    found = list_backups(_settings().backup_dir)
    if as_json:
        _json([b.public() for b in found])
        return
    table = Table("path", "created", "bytes", "sha256")
    for b in found:
        table.add_row(b.path, _when(b.created_at), str(b.bytes), b.sha256[:16])
    console.print(table if found else "no backups")


@backup.command("verify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def backup_verify(path: str, as_json: bool) -> None:
    """Check a backup's checksum and contents; non-zero exit when damaged."""
    from orchestrator.backup.archive import BackupError, verify_backup

    try:
        info = verify_backup(path)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _json(info.manifest())
        return
    kinds = ", ".join(f"{n} {k}" for k, n in info.kinds.items())
    click.echo(f"ok: {info.keys} keys ({kinds or 'none'}), sha256 {info.sha256}")


@backup.command("status")
@click.option("--json", "as_json", is_flag=True)
@_guard
def backup_status(as_json: bool) -> None:
    """Disaster-recovery status: the newest good backup against the RPO, the last restore."""
    from orchestrator.backup.archive import list_backups
    from orchestrator.backup.restore import last_restore
    from orchestrator.backup.status import dr_status
    from orchestrator.store import now_s

    ctx = _ctx()
    status = dr_status(
        ctx.mon.last_backup(),
        len(list_backups(ctx.settings.backup_dir)),
        last_restore(ctx.store.r),
        ctx.settings.effective_backup_rpo_s,
        now_s(),
        since=ctx.mon.monitoring_began(),
    )
    if as_json:
        _json(status.model_dump(mode="json"))
        return
    age = "-" if status.backup_age_s is None else f"{status.backup_age_s:.0f} s"
    if status.last_backup_path is None:
        console.print(f"newest backup: none (none for {age}: since monitoring began)")
    else:
        console.print(
            f"newest backup: {status.last_backup_path} ({_when(status.last_backup_at)}, "
            f"age {age}, verified {_when(status.last_verified_at)})"
        )
    verdict = "met" if status.rpo_met else "NOT met"
    console.print(f"RPO {status.rpo_s:.0f} s: {verdict}; {status.backups_kept} backups kept")
    restore = status.last_restore_path or "none"
    console.print(f"last restore: {restore} ({_when(status.last_restore_at)})")


@backup.command("restore")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print what would change, per kind; write nothing.")
@click.option("--json", "as_json", is_flag=True)
@_guard
def backup_restore(path: str, dry_run: bool, as_json: bool) -> None:
    """Restore a backup into an empty or a live Redis; the live state wins where both have it.

    The file is verified first: a damaged, truncated or wrong-version file is refused and
    Redis is not touched. Unfinished tasks of the snapshot are parked again so they run once.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from orchestrator.backup.archive import BackupError
    from orchestrator.backup.restore import restore_backup
    from orchestrator.store import now_s
    from orchestrator.store.connect import state_client

    settings = _settings()
    err = common.err_console
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    binary = state_client(settings)
    try:
        with progress:
            bar = progress.add_task("restoring", total=None)
            report = restore_backup(
                binary,
                _store(settings),
                path,
                now_s(),
                dry_run=dry_run,
                on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
            )
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        binary.close()
    if as_json:
        _json(report.as_dict())
        return
    verb = "would change" if dry_run else "restored"
    table = Table(title=f"{report.path}: {report.keys} keys, {verb}")
    actions = ["restore", "merge", "keep", "skip", "park_again"]
    table.add_column("kind")
    for action in actions:
        table.add_column(action.replace("_", " "), justify="right")
    for kind, counts in report.kinds.items():
        table.add_row(kind, *(str(counts.get(a, 0)) for a in actions))
    console.print(table)


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="ORCH_EXPORTER_PORT")
@click.option("--address", default=None, help="ORCH_EXPORTER_ADDRESS")
def exporter(port: int | None, address: str | None) -> None:
    """Serve cluster-level Prometheus metrics on /metrics (Ctrl-C stops)."""
    import logging

    from orchestrator.cli.exporter import serve
    from orchestrator.runtime.logs import configure_logging
    from orchestrator.security.preflight import stop_unless_settled

    settings = _settings()
    configure_logging(settings.log_format)
    stop_unless_settled(settings)  # the Redis reachable, and fit (not evicting)
    as_json = settings.log_format == "json"  # then even its last words are a JSON line
    log = logging.getLogger("orchestrator.cli.exporter")
    port = settings.exporter_port if port is None else port
    address = settings.exporter_address if address is None else address
    try:
        serve(_ctx(settings, check=False), address, port)  # checked above, and waits for Redis
    except OSError as exc:
        if as_json:
            log.critical("cannot serve on %s:%d: %s", address, port, exc)
            raise SystemExit(1) from None
        raise click.ClickException(f"cannot serve on {address}:{port}: {exc}") from None
    if as_json:
        log.info("exporter stopped")
    else:
        click.echo("exporter stopped")


def register(group: click.Group) -> None:
    """Attach this module's commands to the `orchestrator` group."""
    for command in (status, alerts, sla, security, backup, exporter):
        group.add_command(command)
