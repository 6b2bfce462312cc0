"""What every CLI verb shares: the consoles, settings and the store, errors as clean exits."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from orchestrator.config import Settings, load_settings
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.store.ports import CliStore

console = Console()
err_console = Console(stderr=True)

#: The port of `orchestrator dev`'s own Redis unless taken: fixed, so that what a second
#: terminal exported stays true from one run to the next (never 6379, the machine's own).
DEV_REDIS_PORT = 6390


def settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def exec_celery(args: list[str], env: dict[str, str]) -> None:
    """Replace this process with celery, so signals (Ctrl-C, SIGTERM) reach it directly."""
    argv = [sys.executable, "-m", "celery", "-A", "orchestrator.app", *args]
    os.execvpe(argv[0], argv, {**os.environ, **env})


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def preflight(settings: Settings, state_only: bool = False) -> None:
    """A wrong password or an untrusted certificate, said in one line naming the variable."""
    from orchestrator.security.preflight import preflight, redis_targets, state_target

    try:
        preflight([state_target(settings)] if state_only else redis_targets(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def store(settings: Settings) -> CliStore:
    from orchestrator.store import StateStore

    preflight(settings, state_only=True)
    return StateStore.from_settings(settings)


def fmt_ts(ts: Any) -> str:
    if ts is None:
        return "-"
    return (
        time.strftime("%H:%M:%S", time.localtime(float(ts)))
        + f".{int(float(ts) * 1000) % 1000:03d}"
    )


def root_command(ctx: click.Context, name: str) -> click.Command:
    """Another verb of the `orchestrator` command, to invoke from this one."""
    root = ctx.find_root().command
    command = root.get_command(ctx, name) if isinstance(root, click.Group) else None
    if command is None:
        raise click.UsageError(f"no command {name!r}")
    return command
