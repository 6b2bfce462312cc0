"""Settings: every ORCH_* variable, validated once at start-up and passed down."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.models import CircuitBreakerConfig

NAME_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

PositiveSeconds = Annotated[float, Field(gt=0)]


def parse_capabilities(raw: str | dict[str, Any] | None) -> dict[str, float]:
    """Parse `name=proficiency,...` (a bare name means 1.0) into a validated mapping."""
    if raw is None or raw == "":
        return {}
    items: dict[str, Any]
    if isinstance(raw, dict):
        items = dict(raw)
    else:
        items = {}
        for part in str(raw).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            items[name.strip()] = value.strip() if sep else 1.0
    parsed: dict[str, float] = {}
    for name, value in items.items():
        if not NAME_RE.match(name):
            raise ValueError(f"capability name {name!r} must be 1-64 chars of [a-z0-9_.-]")
        try:
            proficiency = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"proficiency of {name!r} must be a number (got {value!r})") from None
        if not 0 < proficiency <= 1:
            raise ValueError(f"proficiency of {name!r} must be in (0, 1] (got {value})")
        parsed[name] = proficiency
    return parsed


class Settings(BaseSettings):
    """The whole configuration surface; see SPEC section 3 and the README."""

    model_config = SettingsConfigDict(
        env_prefix="ORCH_", env_file=".env", extra="ignore", validate_default=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    result_backend: str | None = None
    state_url: str | None = None

    agent_id: str | None = None
    agent_capabilities: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    handlers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    agent_heartbeat_interval_s: PositiveSeconds = 5.0
    agent_timeout_s: PositiveSeconds = 15.0

    alert_evaluation_interval: PositiveSeconds = 30.0
    sla_monitoring_interval: PositiveSeconds = 60.0
    security_monitoring_interval: PositiveSeconds = 30.0
    backup_interval_hours: Annotated[float, Field(gt=0)] = 6
    anomaly_detection_interval: PositiveSeconds = 60.0
    anomaly_detection_sensitivity: Annotated[float, Field(gt=0)] = 2.0

    event_processing_enabled: bool = True
    auto_recovery_enabled: bool = True
    recovery_escalation_timeout: PositiveSeconds = 300.0

    circuit_breaker_enabled: bool = True
    circuit_failure_threshold: Annotated[int, Field(ge=1)] = 5
    circuit_recovery_timeout_s: PositiveSeconds = 60.0
    circuit_half_open_max_calls: Annotated[int, Field(ge=1)] = 3

    visibility_timeout_s: Annotated[float, Field(ge=10)] = 60.0
    max_deliveries: Annotated[int, Field(ge=1, le=100)] = 3
    recovery_monitor_interval_s: PositiveSeconds = 2.0
    outbox_resend_s: PositiveSeconds = 60.0
    retry_base_delay_s: Annotated[float, Field(ge=0)] = 1.0
    retry_max_delay_s: Annotated[float, Field(ge=0)] = 30.0
    quarantine_failures: Annotated[int, Field(ge=1)] = 10
    quarantine_s: PositiveSeconds = 300.0

    intelligent_routing_enabled: bool = True
    performance_optimization_interval: PositiveSeconds = 120.0
    load_balancing_algorithm: Literal["weighted_round_robin", "least_loaded", "power_of_two"] = (
        "weighted_round_robin"
    )

    max_payload_bytes: Annotated[int, Field(ge=2)] = 1_048_576
    pending_timeout_s: PositiveSeconds = 3600.0
    parked_sweep_interval_s: PositiveSeconds = 5.0
    ledger_ttl_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    events_max_len: Annotated[int, Field(ge=100)] = 100_000

    backup_dir: str = "./backups"
    backup_retention: Annotated[int, Field(ge=1)] = 10

    alertmanager_url: str = ""
    alert_rules_file: str = ""
    sla_targets_file: str = ""

    exporter_port: Annotated[int, Field(ge=0, le=65535)] = 9808
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0

    # Monitoring loops (issue 4); see the README's Operations section.
    exporter_address: str = "0.0.0.0"  # where `orchestrator exporter` binds
    metrics_window_s: PositiveSeconds = 300.0  # window of the snapshot's rates and latencies
    metrics_history_len: Annotated[int, Field(ge=1)] = 1440  # snapshots / SLA points kept
    security_window_s: PositiveSeconds = 300.0  # window rejections are counted over
    security_rejection_threshold: Annotated[int, Field(ge=1)] = 20  # per client, per window
    beat_max_interval_s: PositiveSeconds = 5.0  # longest sleep of beat between ticks
    beat_lock_timeout_s: PositiveSeconds = 30.0  # a dead beat's lock frees after this

    # Security at the edges (issue 8); see the README's Security chapter.
    poison_keep: Annotated[int, Field(ge=1)] = 10_000  # refused messages kept for inspection
    poison_raw_max_bytes: Annotated[int, Field(ge=64)] = 65_536  # raw bytes kept of each

    @field_validator("agent_capabilities", mode="before")
    @classmethod
    def _capabilities(cls, value: Any) -> dict[str, float]:
        return parse_capabilities(value)

    @field_validator("handlers", mode="before")
    @classmethod
    def _handlers(cls, value: Any) -> list[str]:
        if value is None or value == "":
            return []
        modules = value if isinstance(value, list) else str(value).split(",")
        modules = [m.strip() for m in modules if m.strip()]
        for module in modules:
            if not MODULE_RE.match(module):
                raise ValueError(f"{module!r} is not an importable module path")
        return modules

    @field_validator("redis_url", "broker_url", "result_backend", "state_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix:// (got {value!r})")
        return value

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9._@:-]{1,128}$", value):
            raise ValueError("must be 1-128 chars of [A-Za-z0-9._@:-]")
        return value or None

    @model_validator(mode="after")
    def _liveness(self) -> Settings:
        if self.agent_timeout_s <= self.agent_heartbeat_interval_s:
            raise ValueError(
                "ORCH_AGENT_TIMEOUT_S must be longer than ORCH_AGENT_HEARTBEAT_INTERVAL_S"
            )
        return self

    @model_validator(mode="after")
    def _delays(self) -> Settings:
        # A countdown longer than the visibility timeout makes kombu restore the held message
        # and run it again; keep every retry delay well inside it.
        if self.retry_max_delay_s > self.visibility_timeout_s / 2:
            raise ValueError(
                "ORCH_RETRY_MAX_DELAY_S must be at most half of ORCH_VISIBILITY_TIMEOUT_S"
            )
        return self

    @model_validator(mode="after")
    def _beat_lock(self) -> Settings:
        # The lock holder extends its lock once per tick; a tick can be beat_max_interval_s
        # apart, so a shorter lock would lapse under a healthy beat and let a standby in.
        if self.beat_lock_timeout_s < 3 * self.beat_max_interval_s:
            raise ValueError(
                "ORCH_BEAT_LOCK_TIMEOUT_S must be at least 3 x ORCH_BEAT_MAX_INTERVAL_S"
            )
        return self

    def circuit_config(self) -> CircuitBreakerConfig:
        return CircuitBreakerConfig(
            failure_threshold=self.circuit_failure_threshold,
            recovery_timeout_s=self.circuit_recovery_timeout_s,
            half_open_max_calls=self.circuit_half_open_max_calls,
        )

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def effective_state_url(self) -> str:
        return self.state_url or self.redis_url

    @property
    def broker_is_state_store(self) -> bool:
        """One Redis for the broker's queues and the state store (the default): a Lua step
        can then see and change both at once."""
        return self.effective_broker_url == self.effective_state_url

    @property
    def is_agent(self) -> bool:
        return bool(self.agent_capabilities)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, turning validation errors into one ConfigError
    whose lines name the ORCH_ variable, so an operator knows exactly what to fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = f"ORCH_{field.upper()}" if field else "configuration"
            message = str(err["msg"]).removeprefix("Value error, ")
            got = err.get("input")
            quiet = isinstance(got, dict) or field == "" or "(got" in message
            shown = "" if quiet else f" (got {got!r})"
            lines.append(f"{name}: {message}{shown}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
