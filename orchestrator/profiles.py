"""Profiles (ORCH_PROFILE): the defaults a deployment starts from, `production` or `dev`.

`production` is every default as the settings, the built-in SLA targets and alert rules and
the security loop's findings state them. `dev`, which `orchestrator dev` runs under, relaxes
what would page an operator over ordinary development: a typo in a task name (a message
refused at a worker's edge) or a client's rejected submissions are warnings, not threats; a
demo task of a minute is within the latency objective; a task of a type no agent runs waits
30 s for one, not an hour, before it is dead-lettered. A variable set explicitly still wins,
and so do the entries of ORCH_SLA_TARGETS_FILE and ORCH_ALERT_RULES_FILE (by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.models import ProductionEventSeverity as Severity
from orchestrator.security.policy import POISON_REFUSED, REJECTED_SUBMISSIONS

ProfileName = Literal["production", "dev"]
#: ORCH_PROFILE's description (the settings reference shows it).
PROFILE_HELP = (
    "The set of defaults to start from: `production`, or `dev` (what `orchestrator dev` "
    "sets), which keeps ordinary development from paging anyone; a variable set explicitly "
    "wins over either (orchestrator.profiles)."
)

#: The built-in latency objective (task-latency-p95, HighLatencyP95) of `production`, in ms.
PRODUCTION_LATENCY_P95_MS = 5000.0


@dataclass(frozen=True)
class ProfileDefaults:
    """What a profile sets apart from the production defaults."""

    #: Settings fields -> their default under this profile (ORCH_<FIELD> set still wins).
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Security finding kinds -> their severity (error and critical ones are threats).
    finding_severities: Mapping[str, Severity] = field(default_factory=dict)
    #: The p95 run time the built-in SLA target and the HighLatencyP95 alert allow, in ms.
    latency_p95_ms: float = PRODUCTION_LATENCY_P95_MS


PROFILES: dict[str, ProfileDefaults] = {
    "production": ProfileDefaults(),
    "dev": ProfileDefaults(
        settings={"pending_timeout_s": 30.0},
        finding_severities={
            POISON_REFUSED: Severity.WARNING,
            REJECTED_SUBMISSIONS: Severity.WARNING,
        },
        latency_p95_ms=60_000.0,
    ),
}
