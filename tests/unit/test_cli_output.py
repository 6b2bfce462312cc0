"""The CLI's tables: folded to fit an 80-column terminal, plain tab-separated lines when piped."""

from __future__ import annotations

import io

from rich.table import Table

from orchestrator.cli.output import ReportConsole

WIDE = [
    ("agent-with-a-rather-long-name-1", "active", "echo=1.0,sleep=0.5,resize=0.25,transcode=0.1"),
    ("agent-2", "quarantined", "echo=0.6"),
]


def table() -> Table:
    t = Table("agent", "status", "capabilities", "circuit", "score", title="agents")
    for agent, status, caps in WIDE:
        t.add_row(agent, status, caps, "[red]open[/red]", "0.75")
    return t


def test_a_terminal_of_80_columns_folds_cells_instead_of_cutting_them() -> None:
    out = io.StringIO()
    ReportConsole(file=out, force_terminal=True, width=80, color_system=None).print(table())
    text = out.getvalue()
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    squeezed = "".join(text.split())
    for word in ("active", "quarantined", "agent", "status", "capabilities", "circuit", "score"):
        assert word in squeezed  # whole: each header and status keeps every letter


def test_piped_a_table_is_tab_separated_lines_a_row_each() -> None:
    out = io.StringIO()
    ReportConsole(file=out, force_terminal=False, width=80).print(table())
    assert out.getvalue().splitlines() == [
        "agents",
        "agent\tstatus\tcapabilities\tcircuit\tscore",
        *(f"{a}\t{s}\t{c}\topen\t0.75" for a, s, c in WIDE),
    ]


def test_piped_a_long_line_is_not_broken_at_the_terminal_width() -> None:
    out = io.StringIO()
    line = "finding: " + "x" * 200
    ReportConsole(file=out, force_terminal=False, width=80).print(line)
    assert out.getvalue() == line + "\n"
