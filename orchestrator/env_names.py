"""The ORCH_* variables no setting reads: each named once per process, with the nearest one.

A misspelt variable (ORCH_REDIS_ULR) is otherwise ignored without a word, its setting left at
the default; config.load_settings warns about each before it reads the settings, so every
process that loads them (workers, beat, the CLI, OrchestratorClient) says it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping

#: The prefix of every variable the settings read.
ENV_PREFIX = "ORCH_"

log = logging.getLogger("orchestrator.config")
_warned: set[str] = set()  # the unknown variables this process has warned about


def unknown_variables(
    environ: Mapping[str, str], known: Collection[str]
) -> list[tuple[str, str | None]]:
    """Each ORCH_* variable in `environ` (whatever its case) that is not in `known`, sorted,
    with the known name nearest to it, or None when none is near. Names are compared without
    the prefix they all share, which would make any two look alike."""
    tails = {name.removeprefix(ENV_PREFIX): name for name in known}
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        nearest = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(tails), n=1)
        found.append((name, tails[nearest[0]] if nearest else None))
    return found


def warn_unknown_variables(environ: Mapping[str, str], known: Collection[str]) -> None:
    """Log a warning about each unknown variable (unknown_variables), once per process,
    however often settings are loaded."""
    for name, nearest in unknown_variables(environ, known):
        if name in _warned:
            continue
        _warned.add(name)
        hint = f"; did you mean {nearest}?" if nearest else ""
        log.warning("unknown variable %s (ignored)%s", name, hint)
