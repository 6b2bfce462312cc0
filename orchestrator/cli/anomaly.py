"""CLI verbs of the anomaly detector: the loop's state, backtest, evaluate, tune.

`evaluate --cv` holds each group of series out in turn; `tune --labels` chooses each metric
family's sensitivity on an operator's labelled history and stores it for the live loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from orchestrator.cli import common
from orchestrator.cli.monitoring import _ctx, _guard

if TYPE_CHECKING:
    from orchestrator.monitoring.anomaly_cv import CrossValidation, FamilyTuning
    from orchestrator.monitoring.anomaly_eval import Series

console = common.console
_settings = common.settings
_json = common.print_json


def _labelled(directory: str, labels_file: str) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    """The labels, checked against the folder: a missing series is an error, an unlabelled
    CSV a note on stderr."""
    from orchestrator.monitoring.anomaly_eval import missing_series, read_labels, unlabelled_series

    root = Path(directory)
    try:
        labels = read_labels(Path(labels_file))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    missing = missing_series(root, labels)
    if missing:
        raise click.ClickException(
            f"{len(missing)} labelled series not found in {root}: {', '.join(missing)}"
        )
    ignored = unlabelled_series(root, labels)
    if ignored:
        click.echo(
            f"note: {len(ignored)} CSV file(s) in {root} have no labels and are ignored: "
            + ", ".join(ignored),
            err=True,
        )
    return root, labels


def _read_all(root: Path, labels: dict[str, list[tuple[str, str]]]) -> list[Series]:
    from orchestrator.monitoring.anomaly_eval import check_timestamps, read_labelled

    try:
        series = list(read_labelled(root, labels))
        for name, points, _ in series:
            try:
                check_timestamps(points)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return series


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guard
def anomaly(click_ctx: click.Context, as_json: bool) -> None:
    """Series in an anomalous episode, task types with a regression, and the sensitivity each
    metric pages at (or: backtest, evaluate, tune)."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = _ctx()
    states = ctx.mon.detector_states()
    tuned = ctx.mon.anomaly_sensitivities()
    report: dict[str, Any] = {
        "episodes": sorted(n for n, e in states.items() if e.get("state", {}).get("in_episode")),
        "series": len(states),
        "regressions": ctx.mon.regressions(),
        "sensitivity": {"default": ctx.settings.anomaly_detection_sensitivity, "tuned": tuned},
    }
    if as_json:
        _json(report)
        return
    console.print(f"{report['series']} series watched")
    console.print(f"in an anomalous episode: {', '.join(report['episodes']) or 'none'}")
    console.print(f"regressions: {', '.join(report['regressions']) or 'none'}")
    sensitivity = f"{report['sensitivity']['default']:g} (default)"
    for family, value in sorted(tuned.items()):
        sensitivity += f"; {family} {value:g} (tuned)"
    console.print(f"sensitivity: {sensitivity}", highlight=False)


SENSITIVITY = click.option(
    "--sensitivity",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="How far beyond its recent range a point must lie to page, in 0.45 noise scales: "
    "higher = fewer, surer pages (default ORCH_ANOMALY_DETECTION_SENSITIVITY, 2.0).",
)


@anomaly.command("backtest")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@SENSITIVITY
@click.option("--json", "as_json", is_flag=True)
def anomaly_backtest(csv_file: str, sensitivity: float | None, as_json: bool) -> None:
    """Replay a `timestamp,value` CSV through the live detector; print where it would page."""
    from orchestrator.monitoring.anomaly import backtest, read_series_csv

    if sensitivity is None:
        sensitivity = _settings().anomaly_detection_sensitivity
    try:
        points = read_series_csv(Path(csv_file).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{csv_file}: {exc}") from None
    fired = backtest(points, sensitivity)
    if as_json:
        _json(fired)
        return
    click.echo(f"{len(points)} points, sensitivity {sensitivity:g}: {len(fired)} episode(s)")
    for ts in fired:
        click.echo(ts)


def _labels(help: str) -> Any:
    """The --labels option (a JSON file of labelled windows per series)."""
    return click.option(
        "--labels",
        "labels_file",
        type=click.Path(exists=True, dir_okay=False),
        required=True,
        help=help,
    )


@anomaly.command("evaluate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@_labels('JSON: {"series.csv": [[start, end], ...], ...}, paths relative to DIRECTORY.')
@SENSITIVITY
@click.option(
    "--cv",
    is_flag=True,
    help="Also hold each group (the first folder of a series' path) out in turn: choose the "
    "settings on the others, score it (leave-one-group-out; about a minute per 100k points).",
)
@click.option("--json", "as_json", is_flag=True)
def anomaly_evaluate(
    directory: str, labels_file: str, sensitivity: float | None, cv: bool, as_json: bool
) -> None:
    """Backtest every labelled series in DIRECTORY and score it: windows hit and missed,
    false flags, and the simplified NAB score (per series and in total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from orchestrator.monitoring.anomaly_eval import evaluate, read_labelled, total

    if sensitivity is None:
        sensitivity = _settings().anomaly_detection_sensitivity
    root, labels = _labelled(directory, labels_file)
    err = common.err_console
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task("evaluating", total=len(labels))

        def announced() -> Iterator[Any]:
            for series in read_labelled(root, labels):
                progress.update(task, description=series[0])
                yield series

        def advance(_score: Any) -> None:
            progress.advance(task)

        try:
            scores = evaluate(announced(), sensitivity, on_series=advance)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    summed = total(scores)
    validation = _cross_validate(root, labels) if cv else None
    if as_json:
        report: dict[str, Any] = {
            "sensitivity": sensitivity,
            "series": [s.model_dump() for s in scores],
            "total": summed.model_dump(),
        }
        if validation is not None:
            report["cv"] = validation.model_dump(mode="json")
        _json(report)
        return
    table = Table(title=f"sensitivity {sensitivity:g}")
    table.add_column("series", overflow="fold")
    for column in ("points", "windows", "hit", "missed", "false flags", "score"):
        table.add_column(column, justify="right")
    for i, s in enumerate([*scores, summed]):
        score = "-" if s.score is None else f"{s.score:.1f}"
        counts = (s.points, s.windows, s.hit, s.missed, s.false_flags)
        table.add_row(s.name, *map(str, counts), score, end_section=i == len(scores) - 1)
    console.print(table)  # piped into a file: whole series names, a row per line
    if validation is not None:
        _print_cv(validation)


def _cross_validate(root: Path, labels: dict[str, list[tuple[str, str]]]) -> CrossValidation:
    from orchestrator.monitoring.anomaly_cv import DEFAULT_GRID, cross_validate

    series = _read_all(root, labels)
    groups = {name.partition("/")[0] for name, _, _ in series}
    if len(groups) < 2:
        raise click.ClickException(
            "--cv holds out one group (the first folder of a series' path) at a time: "
            f"{root} has {len(groups)}"
        )
    err = common.err_console
    with err.status(f"cross-validating {len(DEFAULT_GRID)} settings", spinner="dots"):
        return cross_validate(series, DEFAULT_GRID, processes=2)


def _print_cv(cv: CrossValidation) -> None:
    table = Table(title=f"leave one group out ({cv.settings} settings)")
    table.add_column("held out", overflow="fold")
    for column in ("windows", "hit", "false flags", "score", "chosen on the others"):
        table.add_column(column, justify="right")
    for i, r in enumerate(cv.groups):
        h = r.held_out
        chosen = ", ".join(f"{k} {v:g}" for k, v in r.setting.items())
        table.add_row(
            r.group,
            str(h.windows),
            str(h.hit),
            str(h.false_flags),
            _num(h.score),
            chosen,
            end_section=i == len(cv.groups) - 1,
        )
    p = cv.pooled
    table.add_row("mean of groups", "", "", "", _num(cv.mean), "")
    table.add_row("pooled", str(p.windows), str(p.hit), str(p.false_flags), _num(p.score), "")
    ins = cv.in_sample
    table.add_row(
        "in-sample (defaults)",
        str(ins.windows),
        str(ins.hit),
        str(ins.false_flags),
        _num(ins.score),
        "",
    )
    console.print(table)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@anomaly.command("tune")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@_labels(
    'JSON: {"family/series.csv": [[start, end], ...], ...}, paths relative to DIRECTORY; '
    "the first folder is the metric family (throughput, error_rate, latency_p95_ms, "
    "queue_depth)."
)
@click.option("--dry-run", is_flag=True, help="Report the choice; write nothing.")
@click.option("--json", "as_json", is_flag=True)
@_guard
def anomaly_tune(directory: str, labels_file: str, dry_run: bool, as_json: bool) -> None:
    """Choose each metric family's sensitivity on your own labelled history and store it
    where the live loop reads it. A family's best sensitivity is adopted only when, chosen
    with each series left out in turn, it scores better on that series than the default does;
    otherwise the family keeps ORCH_ANOMALY_DETECTION_SENSITIVITY."""
    from orchestrator.monitoring.anomaly_cv import tune
    from orchestrator.monitoring.anomaly_loop import DETECTOR_PARAMS

    settings = _settings()
    default = settings.anomaly_detection_sensitivity
    root, labels = _labelled(directory, labels_file)
    series = _read_all(root, labels)
    families = {name.partition("/")[0] for name, _, _ in series}
    unknown = sorted(families - set(DETECTOR_PARAMS))
    if unknown:
        raise click.ClickException(
            f"the first folder of each series must be a metric family the live loop watches "
            f"({', '.join(DETECTOR_PARAMS)}); got {', '.join(unknown)}"
        )
    with common.err_console.status("tuning", spinner="dots"):
        results = tune(series, default, lambda family: DETECTOR_PARAMS[family])
    if not dry_run:
        mon = _ctx(settings).mon
        now = time.time()
        for r in results:
            mon.set_anomaly_tuning(r.family, _entry(r, now) if r.adopted else None)
    if as_json:
        _json(
            {
                "default": default,
                "written": not dry_run,
                "families": [
                    r.model_dump(mode="json") | {"sensitivity": r.sensitivity} for r in results
                ],
            }
        )
        return
    _print_tuning(results, written=not dry_run)


def _entry(r: FamilyTuning, now: float) -> dict[str, Any]:
    held = r.held_out
    return {
        "sensitivity": r.sensitivity,
        "held_out_score": None if held is None else held.score,
        "default_score": r.default.score,
        "series": r.series,
        "windows": r.windows,
        "tuned_at": now,
    }


def _print_tuning(results: list[FamilyTuning], written: bool) -> None:
    table = Table(title="sensitivity per metric family")
    table.add_column("family")
    for column in ("series", "windows", "best", "in-sample", "held out", "default", "uses"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.family,
            str(r.series),
            str(r.windows),
            f"{r.best:g}",
            _num(r.in_sample.score),
            _num(None if r.held_out is None else r.held_out.score),
            f"{r.default_sensitivity:g}: {_num(r.default.score)}",
            f"{r.sensitivity:g}" + ("" if r.adopted else " (default)"),
        )
    console.print(table)
    if written:
        console.print("stored: the live loop uses these from its next tick")


def register(group: click.Group) -> None:
    """Attach `orchestrator anomaly` to the `orchestrator` group."""
    group.add_command(anomaly)
