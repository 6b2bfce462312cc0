"""`orchestrator bench`: the performance benchmarks in one table, run from the source checkout."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

import orchestrator

#: Where bench/bench_all.py is when this package is the source checkout (or an editable install).
SCRIPT = Path(orchestrator.__file__).resolve().parent.parent / "bench" / "bench_all.py"


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """The child's exit status once it has exited. Ctrl-C reaches it directly (same process
    group) and it cleans up before exiting 130, so this keeps waiting; SIGTERM is passed on."""

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run of a few minutes.")
@click.option(
    "--only",
    metavar="STAGES",
    default=None,
    help="Comma-separated subset of routing,scale,fleet; the others show as not measured.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option(
    "--json-file",
    metavar="PATH",
    default=None,
    help="Write the JSON report to PATH [default for a complete full run: bench/results.json].",
)
def bench(quick: bool, only: str | None, as_json: bool, json_file: str | None) -> None:
    """Measure the ten performance figures against their goals, in one table.

    Runs bench/bench_all.py of the source checkout with this interpreter: the routing, scale
    and fleet benchmarks in turn, each on its own redis-server on a free port (never 6379) with
    the Celery workers it needs (plain and agent workers, then 100 agent processes), all
    stopped when it ends or on Ctrl-C. A full run takes about 10 minutes and writes
    bench/results.json and bench/RESULTS.md; --quick takes a few minutes and writes neither.
    The exit status is the benchmark's: 0 when it ran, even with goals not met; 130 when
    interrupted; 1 on an error.
    """
    if not SCRIPT.is_file():
        click.echo(
            f"orchestrator bench needs the source checkout: {SCRIPT} does not exist (this "
            "installation is not one); run it from a clone of the repository "
            "(pip install -e .) or run `make bench` there",
            err=True,
        )
        sys.exit(2)
    argv = [sys.executable, str(SCRIPT)]
    argv += ["--quick"] if quick else []
    argv += ["--only", only] if only else []
    argv += ["--json"] if as_json else []
    argv += ["--json-file", json_file] if json_file else []
    sys.exit(_wait(subprocess.Popen(argv)))


def register(group: click.Group) -> None:
    """Attach `bench` to the `orchestrator` group."""
    group.add_command(bench)
