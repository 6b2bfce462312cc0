"""What every CLI verb shares: the consoles, settings and the store, errors as clean exits.

An error that concerns a setting reads `Error: ORCH_X: what is wrong` and exits with status 2
in every command (SettingProblem): an invalid value, and a Redis that refuses the credentials
or does not answer, named by the variable that points at it (ORCH_REDIS_URL, or the override
in use: ORCH_STATE_URL, ORCH_BROKER_URL, ORCH_RESULT_BACKEND).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.output import ReportConsole
from orchestrator.config import Settings, load_settings
from orchestrator.errors import ConfigError, OrchestratorError

if TYPE_CHECKING:
    from orchestrator.store.ports import CliStore

console = ReportConsole()
err_console = ReportConsole(stderr=True)


#: Exit status of a command stopped by a setting, as of a worker that refuses to start.
SETTING_EXIT = 2
#: Where settings() leaves the settings it loaded, for the errors that name a variable.
SETTINGS_KEY = "orchestrator.settings"


class SettingProblem(click.ClickException):
    """`Error: ORCH_X: what is wrong`, exit status 2: a setting stops the command."""

    exit_code = SETTING_EXIT


#: The port of `orchestrator dev`'s own Redis unless taken: fixed, so that what a second
#: terminal exported stays true from one run to the next (never 6379, the machine's own).
DEV_REDIS_PORT = 6390


def settings(**overrides: Any) -> Settings:
    try:
        loaded = load_settings(**overrides)
    except ConfigError as exc:
        raise SettingProblem(config_problem(exc)) from None
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[SETTINGS_KEY] = loaded
    return loaded


def config_problem(exc: ConfigError) -> str:
    """One setting at fault as its own line (`ORCH_X: ...`); several under the heading."""
    return exc.problems[0] if len(exc.problems) == 1 else str(exc)


def _loaded_settings() -> Settings | None:
    ctx = click.get_current_context(silent=True)
    found = ctx.meta.get(SETTINGS_KEY) if ctx is not None else None
    if isinstance(found, Settings):
        return found
    try:
        return load_settings()
    except ConfigError:
        return None


def redis_problem(exc: BaseException) -> str | None:
    """`ORCH_X: what is wrong` when `exc` is (or was raised from) a Redis that refused the
    credentials, the certificate or the connection, or did not answer: ORCH_X is the variable
    that points at that Redis (the broker's for a failed publish, else the state store's).
    None for any other error (one Redis answered and refused a step is not a setting's)."""
    if "redis" not in sys.modules:  # nothing connected, so nothing failed to
        return None
    import redis
    from kombu.exceptions import OperationalError

    from orchestrator.security.preflight import (
        classify_failure,
        exception_chain,
        redis_targets,
        state_target,
    )

    for cause in exception_chain(exc):
        if not isinstance(cause, redis.ConnectionError | redis.TimeoutError):
            continue
        loaded = _loaded_settings()
        if loaded is None:
            variable = "ORCH_REDIS_URL"
        elif any(isinstance(c, OperationalError) for c in exception_chain(exc)):
            variable = redis_targets(loaded)[0].variable  # the broker comes first
        else:
            variable = state_target(loaded).variable
        return f"{variable}: {classify_failure(cause) or f'Redis not reachable ({cause})'}"
    return None


def failure(exc: BaseException) -> click.ClickException:
    """An error as the command's clean exit: one that concerns a setting (an invalid value;
    a Redis refusing or not answering, redis_problem) as SettingProblem, any other as its
    message (exit status 1)."""
    if isinstance(exc, ConfigError):
        return SettingProblem(config_problem(exc))
    said = redis_problem(exc)
    if said is not None:
        return SettingProblem(said)
    return click.ClickException(str(exc))


class OrchestratorGroup(click.Group):
    """The `orchestrator` group: an error of ours, or a Redis failure, that a verb leaves
    uncaught ends the command as one it caught would (failure), not as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if isinstance(exc, OrchestratorError) or redis_problem(exc) is not None:
                raise failure(exc) from None
            raise


def exec_celery(args: list[str], env: dict[str, str]) -> None:
    """Replace this process with celery, so signals (Ctrl-C, SIGTERM) reach it directly."""
    argv = [sys.executable, "-m", "celery", "-A", "orchestrator.app", *args]
    os.execvpe(argv[0], argv, {**os.environ, **env})


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def preflight(settings: Settings, state_only: bool = False) -> None:
    """A wrong password, an untrusted certificate or a Redis that does not answer, said in
    one line naming the variable (SettingProblem), before the command does anything."""
    from orchestrator.security.preflight import preflight, redis_targets, state_target

    try:
        preflight([state_target(settings)] if state_only else redis_targets(settings), strict=True)
    except ConfigError as exc:
        raise SettingProblem(str(exc)) from None


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
