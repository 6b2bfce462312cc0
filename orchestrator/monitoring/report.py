"""`orchestrator sla --html FILE`: a self-contained page (inline CSS and SVG, no scripts).

Pure: reports and the stored SLA history in, one HTML string out.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.monitoring.slo import SLAReport

WIDTH, HEIGHT, PAD = 520, 150, 34

_CSS = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222;max-width:1150px}
h1{font-size:1.4em} h2{font-size:1.1em;margin:1.6em 0 .4em}
table{border-collapse:collapse}
td,th{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:left}
.ok{color:#1a7f37} .bad{color:#c62828;font-weight:600}
.charts{display:flex;gap:1.2em;flex-wrap:wrap}
svg{background:#fafafa;border:1px solid #e3e3e3} .muted{color:#777}
"""


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def line_chart(
    points: Sequence[tuple[float, float]],
    title: str,
    reference: float | None = None,
    reference_label: str = "",
) -> str:
    """An SVG line chart of (ts, value) points, with an optional dashed reference line."""
    esc = html.escape
    head = f'<svg width="{WIDTH}" height="{HEIGHT}" '
    head += f'role="img" aria-label="{esc(title)}">'
    title_el = f'<text x="{PAD}" y="14" font-size="12">{esc(title)}</text>'
    if not points:
        return (
            f'{head}{title_el}<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
            'fill="#777" font-size="12">no data yet</text></svg>'
        )
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([reference] if reference is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1.0, y1 + 1.0
    span_x = (x1 - x0) or 1.0

    def sx(x: float) -> float:
        return PAD + (x - x0) / span_x * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD + 10 - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts = [head, title_el]
    parts.append(
        f'<line x1="{PAD}" y1="{HEIGHT - PAD + 10}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD + 10}" '
        'stroke="#bbb"/>'
    )
    for y in (y0, y1):
        parts.append(
            f'<text x="{PAD - 4}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#555">{_fmt(y, 3)}</text>'
        )
    if reference is not None:
        parts.append(
            f'<line x1="{PAD}" y1="{sy(reference):.1f}" x2="{WIDTH - PAD}" '
            f'y2="{sy(reference):.1f}" stroke="#c62828" stroke-dasharray="4 3"/>'
            f'<text x="{WIDTH - PAD}" y="{sy(reference) - 3:.1f}" text-anchor="end" '
            f'font-size="10" fill="#c62828">{esc(reference_label)}</text>'
        )
    if len(points) == 1:
        x, y = points[0]
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1f6feb"/>')
    else:
        parts.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{path}"/>')
    parts.append(
        f'<text x="{PAD}" y="{HEIGHT - 4}" font-size="10" fill="#555">{esc(_when(x0))}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 4}" text-anchor="end" font-size="10" '
        f'fill="#555">{esc(_when(x1))}</text></svg>'
    )
    return "".join(parts)


def series_of(
    history: Sequence[Mapping[str, Any]], name: str, field: str
) -> list[tuple[float, float]]:
    out = []
    for entry in history:
        point = entry.get("targets", {}).get(name)
        value = point.get(field) if point else None
        if isinstance(value, int | float) and math.isfinite(value):
            out.append((float(entry["ts"]), float(value)))
    return out


def render_sla_html(
    reports: Sequence[SLAReport], history: Sequence[Mapping[str, Any]], now: float
) -> str:
    esc = html.escape
    rows = []
    for r in reports:
        status = (
            '<span class="ok">compliant</span>'
            if r.compliant
            else '<span class="bad">breached</span>'
        )
        burns = ", ".join(f"{k} {v:.2f}" for k, v in r.burn_rates.items())
        rows.append(
            f"<tr><td>{esc(r.name)}</td><td>{esc(r.sli)}</td><td>{_fmt(r.objective)}</td>"
            f"<td>{_fmt(r.value)}</td><td>{status}</td>"
            f"<td>{r.error_budget_remaining:.1%}</td><td class=muted>{esc(burns)}</td></tr>"
        )
    sections = []
    for r in reports:
        sli_chart = line_chart(
            series_of(history, r.name, "value"), f"{r.name}: {r.sli}", r.objective, "objective"
        )
        budget_chart = line_chart(
            series_of(history, r.name, "budget"), f"{r.name}: error budget remaining", 0.0, "0"
        )
        sections.append(f"<h2>{esc(r.name)}</h2><div class=charts>{sli_chart}{budget_chart}</div>")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Hive Orchestrator SLA report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>SLA report</h1><p class=muted>Generated {esc(_when(now))}; "
        f"{len(history)} stored evaluation(s).</p>"
        "<table><tr><th>target</th><th>SLI</th><th>objective</th><th>value</th>"
        "<th>status</th><th>budget left</th><th>burn rates</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(sections)
        + "</body></html>\n"
    )
