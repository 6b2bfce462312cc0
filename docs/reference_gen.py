"""The docs' Reference section, made from the code: settings, commands, metrics, events, errors.

A page holds a marker such as `<!-- generated: settings -->`; docs/hooks.py has mkdocs replace
it with `render("settings")` at build time, so the reference cannot drift from the code. Each
part reads the code's own declarations: the Settings model, the click command tree, the
exporter's families and a worker's metric objects, the event catalogue, the exception tree.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import click

MARKER = re.compile(r"<!--\s*generated:\s*([a-z]+)\s*-->")
#: Width of the rendered `--help` texts (the terminal's is not the page's).
HELP_WIDTH = 88

#: The settings' topics, each starting at a field of the model (they follow its order).
SETTINGS_SECTIONS = (
    ("Profile", "profile"),
    ("Redis", "redis_url"),
    ("Agents", "agent_id"),
    ("Monitoring loops", "alert_evaluation_interval"),
    ("Events and recovery", "event_processing_enabled"),
    ("Circuit breakers", "circuit_breaker_enabled"),
    ("Delivery, retries and quarantine", "visibility_timeout_s"),
    ("Routing", "intelligent_routing_enabled"),
    ("Submission and dispatch", "max_payload_bytes"),
    ("Backups", "backup_dir"),
    ("Alerts and SLAs", "alertmanager_url"),
    ("Logs", "log_format"),
    ("Metrics endpoints", "exporter_port"),
    ("Autoscaling", "scale_min"),
    ("Sleep and wake", "sleep_after_idle_s"),
    ("Snapshots, security counts and beat", "metrics_window_s"),
    ("Security", "poison_keep"),
)
#: The event types' groups, by the part before the dot.
EVENT_GROUPS = {
    "task": "Tasks",
    "agent": "Agents",
    "circuit": "Circuit breakers",
    "recovery": "Recovery",
    "alert": "Alerts",
    "sla": "SLAs",
    "anomaly": "Anomalies and regressions",
    "regression": "Anomalies and regressions",
    "security": "Security",
    "backup": "Backups",
    "scale": "Autoscaling",
}


def cell(text: object) -> str:
    """`text` safe inside a Markdown table cell: one line, no stray HTML, no column break."""
    out = " ".join(str(text).split())
    return out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def code(text: object) -> str:
    return f"`{text}`"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- settings ------------------------------------------------------------------------------


def _number(x: object) -> str:
    """5.0 as 5, 0.5 as 0.5, 1048576 as 1048576."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _bounds(metadata: list[Any]) -> str:
    ge = gt = le = None
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            ge = item.ge
        elif isinstance(item, annotated_types.Gt):
            gt = item.gt
        elif isinstance(item, annotated_types.Le):
            le = item.le
        elif isinstance(item, annotated_types.MinLen) and item.min_length == 1:
            words.append("not empty")
    if ge is not None and le is not None:
        words.append(f"{_number(ge)} to {_number(le)}")
    else:
        words += [f"at least {_number(ge)}"] if ge is not None else []
        words += [f"more than {_number(gt)}"] if gt is not None else []
        words += [f"at most {_number(le)}"] if le is not None else []
    return ", ".join(words)


def value_rule(annotation: Any, metadata: list[Any]) -> str:
    """What a setting's value may be, from its annotation and constraints."""
    metadata = list(metadata)
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return value_rule(inner[0], metadata) + " (or unset)"
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        for extra in extras:
            metadata += list(getattr(extra, "metadata", [extra]))
        return value_rule(base, metadata)
    if get_origin(annotation) is Literal:
        kind = "one of " + ", ".join(code(v) for v in get_args(annotation))
    elif annotation is bool:
        kind = "`true` or `false`"
    elif annotation is int:
        kind = "integer"
    elif annotation is float:
        kind = "number"
    elif get_origin(annotation) is dict:
        kind = "`name=number,...`"
    elif get_origin(annotation) is list:
        kind = "comma-separated list"
    else:
        kind = "text"
    bounds = _bounds(metadata)
    return f"{kind}, {bounds}" if bounds else kind


def default_of(field: Any) -> str:
    if field.default_factory is not None:
        return "empty"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return code(str(value).lower())
    if value == "":
        return "empty"
    return code(_number(value))


def settings_reference() -> str:
    from orchestrator.config import Settings

    fields = Settings.model_fields
    names = list(fields)
    starts = [names.index(first) for _, first in SETTINGS_SECTIONS]  # ValueError: renamed
    if starts != sorted(starts) or starts[0] != 0:
        raise ValueError("SETTINGS_SECTIONS must start at the first field and follow the model")
    out = []
    for (title, _), start, end in zip(SETTINGS_SECTIONS, starts, [*starts[1:], None], strict=True):
        rows = []
        for name in names[start:end]:
            field = fields[name]
            if not field.description:
                raise ValueError(f"Settings.{name} has no description")
            rows.append(
                (
                    code(f"ORCH_{name.upper()}"),
                    default_of(field),
                    cell(value_rule(field.annotation, field.metadata)),
                    cell(field.description),
                )
            )
        out.append(f"## {title}\n\n" + table(("Variable", "Default", "Value", "Meaning"), rows))
    return "\n\n".join(out)


# --- the command line ------------------------------------------------------------------------


def commands(
    command: click.Command, name: str, parent: click.Context | None = None
) -> Iterator[tuple[str, click.Command, click.Context]]:
    """Every command of the tree under `command`, depth first, each with its context."""
    settings = {**command.context_settings, "terminal_width": HELP_WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    yield ctx.command_path, command, ctx
    if isinstance(command, click.Group):
        for sub in sorted(command.commands):
            yield from commands(command.commands[sub], sub, ctx)


def cli_reference() -> str:
    from orchestrator.cli.main import main

    tree = list(commands(main, "orchestrator"))
    rows = [(code(path), cell(cmd.get_short_help_str(limit=300))) for path, cmd, _ in tree[1:]]
    out = [table(("Command", "What it does"), rows)]
    for path, cmd, ctx in tree:
        out.append(f"## {path}\n\n```text\n{cmd.get_help(ctx)}\n```")
    return "\n\n".join(out)


# --- metrics --------------------------------------------------------------------------------


def _metric_name(name: str, kind: str) -> str:
    if kind == "counter":
        return code(f"{name}_total")
    if kind == "histogram":
        return f"{code(name)} (`_bucket`, `_sum`, `_count`)"
    return code(name)


def exporter_metrics() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name, type, labels, help) of every family `orchestrator exporter` serves."""
    from orchestrator.cli.exporter import FAMILIES, OrchestratorCollector

    described = {m.name: m for m in OrchestratorCollector(None).describe()}  # type: ignore[arg-type]
    return [
        (n, described[n].type, s.labels, described[n].documentation) for n, s in FAMILIES.items()
    ]


def worker_metrics() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name, type, labels, help) of every family a worker serves on ORCH_METRICS_PORT: those
    of a WorkerMetrics made here (outside any registry, as the worker makes them)."""
    from prometheus_client.metrics import MetricWrapperBase

    from orchestrator.runtime.metrics import WorkerMetrics

    out = []
    for family in vars(WorkerMetrics("agent", "agent")).values():
        if isinstance(family, MetricWrapperBase):
            (metric,) = family.describe()
            labels = tuple(family._labelnames)  # not in the description of a family
            out.append((metric.name, metric.type, labels, metric.documentation))
    return out


def _metrics_table(metrics: list[tuple[str, str, tuple[str, ...], str]]) -> str:
    rows = [
        (_metric_name(n, k), k, ", ".join(code(label) for label in labels) or "none", cell(h))
        for n, k, labels, h in metrics
    ]
    return table(("Metric", "Type", "Labels", "Help"), rows)


def metrics_reference() -> str:
    return (
        "## `orchestrator exporter`\n\nRead from Redis at each scrape; one exporter serves the "
        "whole cluster.\n\n"
        + _metrics_table(exporter_metrics())
        + "\n\n## Each worker (`ORCH_METRICS_PORT`)\n\nCounted in the worker's own processes "
        "(every pool child).\n\n" + _metrics_table(worker_metrics())
    )


# --- events ---------------------------------------------------------------------------------


def events_reference() -> str:
    from orchestrator.events.catalogue import CATALOGUE
    from orchestrator.models import OrchestrationEvent, ProductionEventSeverity
    from orchestrator.store.keys import EVENTS, TASK_EVENTS

    envelope = ", ".join(code(f) for f in OrchestrationEvent.model_fields if f != "id")
    levels = ", ".join(code(s.value) for s in ProductionEventSeverity)
    groups: dict[str, list[tuple[str, ...]]] = {}
    for spec in CATALOGUE:
        title = EVENT_GROUPS[spec.type.split(".", 1)[0]]  # KeyError: a new group to name
        meaning = spec.meaning + (
            " Written only while some control worker's handler takes it." if spec.on_demand else ""
        )
        if spec.task_stream:
            meaning += f" In `{TASK_EVENTS}`."
        groups.setdefault(title, []).append(
            (
                code(spec.type),
                cell(spec.severity),
                cell(spec.source),
                ", ".join(code(f) for f in spec.fields),
                cell(meaning),
            )
        )
    out = [
        f"Each event is an entry of the stream `{EVENTS}`, or of `{TASK_EVENTS}` for the task "
        "lifecycle types every task writes (their meaning says so), with the fields "
        f"{envelope}; `severity` is one of {levels}, and `data` is a JSON object with the keys "
        "listed below. `orchestrator events` reads both streams, merged by entry id."
    ]
    header = ("Type", "Severity", "Source", "Data", "Meaning")
    out += [f"## {title}\n\n" + table(header, rows) for title, rows in groups.items()]
    return "\n\n".join(out)


# --- errors ---------------------------------------------------------------------------------


def error_classes() -> list[type[BaseException]]:
    """The exception classes orchestrator/errors.py defines, in its order."""
    from orchestrator import errors

    return [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    ]


def errors_reference() -> str:
    out = []
    for cls in error_classes():
        base = cls.__bases__[0].__name__
        if "__init__" in vars(cls):
            params = inspect.signature(cls).parameters.values()
            bare = (str(p.replace(annotation=inspect.Parameter.empty)) for p in params)
            call = f"{cls.__name__}({', '.join(bare)})"
        else:
            call = f"{cls.__name__}(message)"
        doc = inspect.getdoc(cls) or ""
        summary = " ".join(doc.split("\n\n", 1)[0].split())
        if not summary:
            raise ValueError(f"{cls.__name__} has no docstring")
        out.append(f"## {cls.__name__}\n\n`{call}`, a subclass of `{base}`.\n\n{summary}")
    return "\n\n".join(out)


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings_reference,
    "cli": cli_reference,
    "metrics": metrics_reference,
    "events": events_reference,
    "errors": errors_reference,
}


def render(name: str) -> str:
    if name not in GENERATORS:
        raise ValueError(f"no generated reference {name!r}; there are {', '.join(GENERATORS)}")
    return GENERATORS[name]()


def fill(markdown: str) -> str:
    """`markdown` with each marker replaced by its reference."""
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
