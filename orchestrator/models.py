"""Domain records and enumerations (the seed's names), validated at every boundary."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.errors import InvalidTask

# `\Z`, not `$`: `$` also matches before a trailing newline, so "echo\n" would pass.
TASK_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
TYPE_RE = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}\Z")
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
MAX_CAPABILITIES = 16
#: Levels of objects and arrays a payload may nest ({} is one). Every hop recurses over it
#: (pydantic's serializer gives up near 255 levels, the pool's pickle near 500).
MAX_PAYLOAD_DEPTH = 100


# --- enumerations ------------------------------------------------------------------------


class ProductionEventSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class SystemHealth(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"


class AutoScalingAction(StrEnum):
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    MAINTAIN = "maintain"


class OrchestrationStrategy(StrEnum):
    """How the router chooses among eligible agents (ORCH_LOAD_BALANCING_ALGORITHM)."""

    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    LEAST_LOADED = "least_loaded"
    POWER_OF_TWO = "power_of_two"


class RecoveryTier(StrEnum):
    RETRY = "retry"
    REROUTE = "reroute"
    QUARANTINE = "quarantine"
    ESCALATE = "escalate"


class CircuitBreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class AgentStatus(StrEnum):
    ACTIVE = "active"
    SLEEPING = "sleeping"
    QUARANTINED = "quarantined"
    OFFLINE = "offline"


class TaskState(StrEnum):
    """Ledger states; the last three are terminal."""

    ACCEPTED = "accepted"
    QUEUED = "queued"  # in the backlog: waiting for a free slot (or a concurrency key, or due)
    PARKED = "parked"  # in the backlog with no capable agent at all
    ROUTED = "routed"
    RUNNING = "running"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD_LETTERED)


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


# --- the task spec -----------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate: JSON can carry one (as a \\u escape),
    UTF-8, and so Redis and every store behind it, cannot."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_invalid_text(payload: Any) -> str | None:
    """The payload's first string (key or value) that is not valid Unicode, if any."""
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return value
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return None


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of dicts, lists and tuples in `value` ({} is one, a scalar none), counted level
    by level and only up to `limit` + 1: the input may be deeper than the recursion limit."""
    containers = (dict, list, tuple)
    depth = 0
    level = [value] if isinstance(value, containers) else []
    while level and depth <= limit:
        depth += 1
        level = [
            item
            for node in level
            for item in (node.values() if isinstance(node, dict) else node)
            if isinstance(item, containers)
        ]
    return depth


def _shown(value: str, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(value)} chars)"


class Canvas(BaseModel):
    """What Celery's canvas hung on a submission's message: the links to fire when its
    handler finishes (`callbacks`, the rest of a `chain`), on failure (`errbacks`), the
    `chord` callback with the header's group, and the workflow's root and parent ids. The
    submit hop takes them off its own request and every execute message of the task carries
    them, so Celery fires each link once the handler has run, never when the task is routed.
    Set by the submit hop only, never from a client's fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    group_id: str | None = None
    group_index: int | None = None
    root_id: str | None = None
    parent_id: str | None = None


class OrchestrationTask(BaseModel):
    """The task spec other services submit. Every rule's message names the field and the value.
    `canvas` is the submit hop's, not a client's (parse_task refuses it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str | None = None
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    required_capabilities: list[str] = Field(default_factory=list)
    priority: int = 5
    timeout_s: float = 300.0
    max_retries: int = 3
    affinity_key: str | None = None
    client_id: str = "anonymous"
    concurrency_key: str | None = None
    concurrency_limit: int | None = None  # None: ORCH_CONCURRENCY_DEFAULT_LIMIT
    canvas: Canvas | None = None

    @field_validator("task_id", mode="before")
    @classmethod
    def _task_id(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and TASK_ID_RE.match(v)):
            raise ValueError(f"must be 1-128 chars of [A-Za-z0-9._:-] (got {v!r})")
        return v

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        if not (isinstance(v, str) and TYPE_RE.match(v)):
            raise ValueError(f"must be 1-64 chars of [a-z0-9_.-] (got {v!r})")
        return v

    @field_validator("payload", mode="before")
    @classmethod
    def _payload(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError(f"must be a JSON object (got {type(v).__name__})")
        if nesting_depth(v, MAX_PAYLOAD_DEPTH) > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels of objects and arrays")
        invalid = _first_invalid_text(v)
        if invalid is not None:
            raise ValueError(f"must be valid Unicode text ({_shown(invalid)} has a lone surrogate)")
        try:
            size = len(json.dumps(v, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON-encodable ({exc})") from None
        limit = (info.context or {}).get("max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
        if size > limit:
            raise ValueError(f"encoded size {size} bytes exceeds the limit of {limit} bytes")
        return v

    @field_validator("required_capabilities", mode="before")
    @classmethod
    def _capabilities(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list | tuple):
            raise ValueError(f"must be a list of capability names (got {v!r})")
        if len(v) > MAX_CAPABILITIES:
            raise ValueError(f"at most {MAX_CAPABILITIES} capabilities (got {len(v)})")
        bad = [c for c in v if not (isinstance(c, str) and TYPE_RE.match(c))]
        if bad:
            raise ValueError(f"names must be 1-64 chars of [a-z0-9_.-] (got {bad!r})")
        return sorted(set(v))

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        if not _is_int(v) or not 0 <= v <= 9:
            raise ValueError(f"must be between 0 and 9 (got {v!r})")
        return v

    @field_validator("timeout_s", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        if not _is_number(v) or not 0 < v <= 86400:
            raise ValueError(f"must be a number with 0 < timeout_s <= 86400 (got {v!r})")
        return v

    @field_validator("max_retries", mode="before")
    @classmethod
    def _max_retries(cls, v: Any) -> Any:
        if not _is_int(v) or not 0 <= v <= 20:
            raise ValueError(f"must be an integer between 0 and 20 (got {v!r})")
        return v

    @field_validator("affinity_key", "concurrency_key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and 1 <= len(v) <= 256):
            raise ValueError(f"must be a string of 1-256 chars (got {v!r})")
        if v is not None and not _is_unicode(v):
            raise ValueError(f"must be valid Unicode text ({_shown(v)} has a lone surrogate)")
        return v

    @field_validator("concurrency_limit", mode="before")
    @classmethod
    def _concurrency_limit(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and not (_is_int(v) and 1 <= v <= 10_000):
            raise ValueError(f"must be an integer between 1 and 10000 (got {v!r})")
        if v is not None and info.data.get("concurrency_key") is None:
            raise ValueError("needs a concurrency_key (the limit is per key)")
        return v

    @field_validator("client_id", mode="before")
    @classmethod
    def _client(cls, v: Any) -> Any:
        if v is None:
            return "anonymous"
        if not (isinstance(v, str) and CLIENT_ID_RE.match(v)):
            raise ValueError(f"must be 1-128 chars of [A-Za-z0-9._:@-] (got {v!r})")
        return v

    @model_validator(mode="after")
    def _default_capabilities(self) -> OrchestrationTask:
        if not self.required_capabilities:
            object.__setattr__(self, "required_capabilities", [self.type])
        return self

    @property
    def capability_key(self) -> str:
        """Stable name of the pool of agents this task can go to."""
        return ",".join(self.required_capabilities)


#: The fields a client may set (the canvas comes from the submission's own message).
ALLOWED_TASK_FIELDS = tuple(f for f in OrchestrationTask.model_fields if f != "canvas")


class ExecuteRequest(BaseModel):
    """The keyword arguments of `orchestrator.execute`, as routers publish them; a message
    that breaks them was not published by a router (orchestrator.security.screen refuses it). The
    payload's size is bounded by the message size the gate admits, not re-measured here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    payload: dict[str, Any]
    max_retries: int = 3
    dispatch: int = 0

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        return OrchestrationTask._type(v)

    @field_validator("payload", mode="before")
    @classmethod
    def _payload(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError(f"must be a JSON object (got {type(v).__name__})")
        return v

    @field_validator("max_retries", mode="before")
    @classmethod
    def _max_retries(cls, v: Any) -> Any:
        return OrchestrationTask._max_retries(v)

    @field_validator("dispatch", mode="before")
    @classmethod
    def _dispatch(cls, v: Any) -> Any:
        if not _is_int(v) or v < 0:
            raise ValueError(f"must be a non-negative integer (got {v!r})")
        return v


def parse_task(fields: dict[str, Any], max_payload_bytes: int) -> OrchestrationTask:
    """Validate raw submit kwargs; raise InvalidTask naming every offending field."""
    # pydantic cannot even read a key with a lone surrogate (it reports it as the model's
    # error, not the field's); no field has such a name, so it is an unknown one.
    unreadable = [k for k in fields if isinstance(k, str) and not _is_unicode(k)]
    if unreadable:
        fields = {k: v for k, v in fields.items() if k not in unreadable}
    unknown = [_unknown_field(field_label((k,)), ALLOWED_TASK_FIELDS) for k in unreadable]
    if "canvas" in fields:
        fields = {k: v for k, v in fields.items() if k != "canvas"}
        unknown.append(_unknown_field("canvas", ALLOWED_TASK_FIELDS))
    try:
        task = OrchestrationTask.model_validate(
            fields, context={"max_payload_bytes": max_payload_bytes}
        )
    except ValidationError as exc:
        raise InvalidTask(describe_errors(exc) + unknown) from None
    if unknown:
        raise InvalidTask(unknown)
    return task


def field_label(loc: tuple[Any, ...]) -> str:
    """How a message names a field: as is when it is an identifier, else quoted (an empty,
    spaced or control-character name must stay visible and on one line)."""
    if not loc:
        return "task"
    return ".".join(
        p if isinstance(p, str) and p.isidentifier() else repr(p) if isinstance(p, str) else str(p)
        for p in loc
    )


def _unknown_field(label: str, allowed: tuple[str, ...]) -> str:
    return f"{label}: unknown field (allowed: {', '.join(allowed)})"


def describe_errors(exc: ValidationError, allowed: tuple[str, ...] | None = None) -> list[str]:
    """One `field: reason` line per error; `allowed` names the fields of the model
    (default: the task spec's)."""
    problems = []
    names = ALLOWED_TASK_FIELDS if allowed is None else allowed
    for err in exc.errors():
        field = field_label(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            problems.append(_unknown_field(field, names))
        elif err["type"] == "missing":
            problems.append(f"{field}: is required")
        else:
            problems.append(f"{field}: {str(err['msg']).removeprefix('Value error, ')}")
    return problems


# --- agents ------------------------------------------------------------------------------


class RegisteredAgent(BaseModel):
    """An agent as the registry sees it: identity, declared skills, and live figures."""

    agent_id: str
    capabilities: dict[str, float]
    status: AgentStatus = AgentStatus.ACTIVE
    queue: str
    hostname: str = ""
    node: str = ""  # the Celery node name (`agent@host`) remote control commands address
    pid: int = 0
    concurrency: int = 1
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    circuit: CircuitBreakerState = CircuitBreakerState.CLOSED
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    latency_ms: float | None = None
    in_flight: int = 0
    performance_score: float = 1.0  # the lowest of its capability scores (1.0: none yet)
    capability_scores: dict[str, float] = Field(default_factory=dict)  # orchestrator.optimize's
    # Runs a Celery task named by each of its capabilities (an agent of an earlier version
    # runs `orchestrator.execute` only): routers name the execute message by its type then.
    handler_tasks: bool = False


# --- events, recovery, breakers ----------------------------------------------------------


class OrchestrationEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    ts: float
    severity: ProductionEventSeverity = ProductionEventSeverity.INFO
    source: str = "orchestrator"
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class RecoveryPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    tier: RecoveryTier
    reason: str
    attempt: int = 0
    failed_agent: str | None = None
    target_agent: str | None = None
    delay_s: float = 0.0
    created_at: float = 0.0
    deadline: float = 0.0


class CircuitBreakerConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    failure_threshold: int = Field(default=5, ge=1)
    recovery_timeout_s: float = Field(default=60.0, gt=0)
    half_open_max_calls: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    window_size: int = Field(default=20, ge=1)
    minimum_calls: int = Field(default=10, ge=1)


# --- monitoring --------------------------------------------------------------------------


class ProductionMetrics(BaseModel):
    """One snapshot of the cluster: the vocabulary of alert rules and SLA targets."""

    ts: float = 0.0
    agents_total: int = 0
    agents_active: int = 0
    agents_sleeping: int = 0
    agents_quarantined: int = 0
    agents_offline: int = 0
    queue_depth: int = 0
    parked_tasks: int = 0
    dead_letters: int = 0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    error_rate: float = 0.0
    throughput_per_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    delegation_p95_ms: float = 0.0
    circuits_open: int = 0
    alerts_firing: int = 0
    health: SystemHealth = SystemHealth.HEALTHY
    # Filled by the monitoring loops (alert rules read them like any other metric).
    backup_age_s: float = 0.0  # since the newest backup, or since monitoring began
    backup_rpo_met: int = 0  # 1 while the newest good backup is within ORCH_BACKUP_RPO_S
    security_threats: int = 0  # clients currently above the rejection threshold
    anomalies_active: int = 0  # metric series inside an anomalous episode
    regressions_active: int = 0  # task types whose latency regressed
    tasks_retried: int = 0  # handler attempts that ended in a retry (in the last window)


Op = Literal[">", ">=", "<", "<=", "==", "!="]


class AlertRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    metric: str
    op: Op
    threshold: float
    for_s: float = Field(default=0.0, ge=0)
    keep_firing_for_s: float = Field(default=0.0, ge=0)
    severity: ProductionEventSeverity = ProductionEventSeverity.WARNING
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


SLI = Literal["success_rate", "error_rate", "latency_p95_ms", "latency_p99_ms", "availability"]


class SLATarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sli: SLI
    objective: float
    window_s: float = Field(default=2_592_000, gt=0)
    task_type: str | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.sli in ("success_rate", "availability")


class ProductionAlert(BaseModel):
    name: str
    state: AlertState
    severity: ProductionEventSeverity
    value: float | None = None
    since: float = 0.0
    active_since: float | None = None
    last_true: float | None = None
    resolved_at: float | None = None
    acknowledged: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class DisasterRecoveryStatus(BaseModel):
    """`orchestrator backup status`: the newest good backup against the RPO, the last restore."""

    last_backup_at: float | None = None
    last_backup_path: str | None = None
    last_backup_sha256: str | None = None
    last_verified_at: float | None = None  # the newest backup, read back after writing
    backups_kept: int = 0
    backup_age_s: float | None = None
    rpo_s: float | None = None  # ORCH_BACKUP_RPO_S (default twice the backup interval)
    rpo_met: bool = False
    last_restore_at: float | None = None
    last_restore_path: str | None = None
    healthy: bool = False  # a verified backup within the RPO


class TaskRecord(BaseModel):
    """A task's ledger entry as `orchestrator task ID --json` shows it."""

    task_id: str
    type: str
    state: TaskState
    agent_id: str | None = None
    attempts: int = 0
    priority: int = 5
    required_capabilities: list[str] = Field(default_factory=list)
    client_id: str = "anonymous"
    submitted_at: float | None = None
    routed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
