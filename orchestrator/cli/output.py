"""The CLI's console: tables that fit a terminal, and plain lines when the output is piped.

On a terminal a table's cells fold onto more lines instead of being cut (`agen…`); piped or
redirected, a table prints as tab-separated lines (its title, a header, a row per line) and
no line is broken at the terminal's width, so `grep`, `cut` and `awk` read whole rows.
`--json` stays the stable, machine-readable form of every report.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def plain(cell: Any) -> str:
    """A cell's text without markup or styles, on one line."""
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell).plain
    else:
        text = str(cell)
    return " ".join(text.split())


def plain_table(table: Table) -> str:
    """The table as tab-separated lines: its title (if any), the header, then each row."""
    lines = [plain(table.title)] if table.title else []
    if table.show_header:
        lines.append("\t".join(plain(c.header) for c in table.columns))
    for row in zip(*(list(c.cells) for c in table.columns), strict=True):
        lines.append("\t".join(plain(cell) for cell in row))
    return "\n".join(lines)


class ReportConsole(Console):
    """rich's Console, printing tables and long lines as this module's docstring says."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if not self.is_terminal:
            kwargs.setdefault("soft_wrap", True)
            if len(objects) == 1 and isinstance(objects[0], Table):
                # Written as it is: rich would expand the tabs into spaces.
                self.file.write(plain_table(objects[0]) + "\n")
                self.file.flush()
                return
        else:
            for table in objects:
                if isinstance(table, Table):
                    for column in table.columns:
                        column.overflow = "fold"
        super().print(*objects, **kwargs)
