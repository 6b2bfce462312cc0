"""The metric names the deploy/ files query: Grafana dashboard, Prometheus rules, KEDA trigger.

Plain importable code, no tests: the unit tests hold these names to the list the orchestrator
promises to serve, and an integration test holds them to what a real exporter and worker do
serve (`served_names` over their /metrics text), so a renamed metric cannot leave a panel,
an alert or the autoscaler silently empty.

Names are compared in the vocabulary of the exposition format: a counter as its samples are
named (`orchestrator_tasks_total`), a histogram by its family (`orchestrator_task_run_seconds`,
whatever of `_bucket`, `_sum`, `_count` a query reads), everything else by its one name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"

#: The histogram families the orchestrator serves (exporter and workers). A query reads them
#: through `_bucket`, `_sum` and `_count` samples, which `metric_names` maps back to these.
HISTOGRAMS: frozenset[str] = frozenset(
    {
        "orchestrator_task_run_seconds",
        "orchestrator_task_delegation_seconds",
        "orchestrator_worker_task_run_seconds",
        "orchestrator_worker_task_delegation_seconds",
    }
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL string literals: "..." and '...' with backslash escapes, and `...` raw strings. Label
# values live there; a value that happens to start with orchestrator_ is not a metric.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# A word of PromQL: a metric, label or function name (colons allowed, as in recording rules),
# a keyword, or a number or duration.
_WORD = re.compile(r"[A-Za-z0-9_:]+")


def dashboard_path() -> Path:
    return DEPLOY / "grafana" / "dashboards" / "hive-orchestrator.json"


def rules_path() -> Path:
    return DEPLOY / "prometheus-rules.yml"


def scaledobject_path() -> Path:
    return DEPLOY / "keda" / "scaledobject.yaml"


def load_dashboard() -> dict[str, Any]:
    data = json.loads(dashboard_path().read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_exprs() -> list[str]:
    """The PromQL of every target of every panel, in dashboard order."""
    return [
        target["expr"]
        for panel in panels(load_dashboard())
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def rule_exprs() -> list[str]:
    """The PromQL of every alerting and recording rule in deploy/prometheus-rules.yml."""
    config = yaml.safe_load(rules_path().read_text(encoding="utf-8"))
    return [rule["expr"] for group in config["groups"] for rule in group["rules"]]


def scaledobject_queries() -> list[str]:
    """The query of every prometheus trigger of the KEDA ScaledObject."""
    spec = yaml.safe_load(scaledobject_path().read_text(encoding="utf-8"))["spec"]
    return [t["metadata"]["query"] for t in spec["triggers"] if t["type"] == "prometheus"]


def words(expr: str) -> set[str]:
    """Every word of `expr` outside its string literals: metric, label and function names,
    keywords, numbers (so `"up" in words(expr)` asks whether it reads Prometheus' `up`)."""
    return set(_WORD.findall(_STRING.sub('""', expr)))


def _identifiers(expr: str) -> set[str]:
    return {word for word in words(expr) if word.startswith("orchestrator_")}


def _strip_histogram_suffix(name: str, histograms: Collection[str] | None) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and (histograms is None or base in histograms):
            return base
    return name


def metric_names(expr: str, histograms: Collection[str] = HISTOGRAMS) -> set[str]:
    """The orchestrator_* metrics `expr` reads, as served: a histogram's `_bucket`, `_sum` and
    `_count` become its family name, but only for the families in `histograms` (a gauge may
    well end in `_count`); a counter keeps its `_total`.

    The integration test passes the histogram families it scraped, so the real processes, not
    this module's list, decide what is a histogram.
    """
    return {_strip_histogram_suffix(name, histograms) for name in _identifiers(expr)}


def family_names(expr: str) -> set[str]:
    """The orchestrator_* names `expr` reads with every `x_bucket`, `x_sum`, `x_count` mapped to
    `x`, whatever x is: the family names, when every such name is known to be a histogram's."""
    return {_strip_histogram_suffix(name, None) for name in _identifiers(expr)}


def served_names(exposition: str) -> set[str]:
    """The names a /metrics text serves, in `metric_names`' vocabulary: every sample name
    (`x_total` of a counter, the samples of a gauge) and the family name of each histogram
    and summary, including families declared with no sample yet (a labelled gauge nobody
    has set)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if family.type in {"histogram", "gaugehistogram", "summary"}:
            names.add(family.name)
        elif not family.samples:
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def histogram_families(exposition: str) -> set[str]:
    """The histogram families a /metrics text declares (for `metric_names(histograms=...)`)."""
    return {
        family.name
        for family in text_string_to_metric_families(exposition)
        if family.type in {"histogram", "gaugehistogram"}
    }
