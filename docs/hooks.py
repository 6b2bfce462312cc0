"""The mkdocs hook: each page's `<!-- generated: NAME -->` marker becomes its reference."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# This checkout's code, not whichever copy of the package the environment has installed. The
# package is imported now: mkdocs restores sys.path once the hook module is loaded, and the
# generator imports orchestrator's modules later, from the package found here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orchestrator  # noqa: F401
from docs.reference_gen import fill


def on_page_markdown(markdown: str, **_: Any) -> str:
    return fill(markdown)
