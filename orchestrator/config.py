"""Settings: every ORCH_* variable, validated once at start-up and passed down."""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.env_names import ENV_PREFIX, warn_unknown_variables
from orchestrator.errors import ConfigError
from orchestrator.models import CircuitBreakerConfig
from orchestrator.profiles import PROFILE_HELP, PROFILES, ProfileDefaults, ProfileName
from orchestrator.redis_urls import (
    DEFAULT_SENTINEL_MASTER,
    check_redis_url,
    cluster_problem,
    mask_password,
)
from orchestrator.scaling.windows import SleepWindow, parse_windows
from orchestrator.security.signing import LOADERS, SIGNING_VARIABLES, check_signing_identity
from orchestrator.settings_parsers import (
    check_command_line,
    parse_capabilities,
    parse_client_weights,
    parse_handlers,
    settings_problems,
)

#: An agent id (ORCH_AGENT_ID, or else the worker's node name): never a `|`, which joins an
#: agent id to a name in the store's hash fields (store.keys).
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9._@:-]{1,128}\Z")
AGENT_ID_RULE = "1-128 chars of [A-Za-z0-9._@:-]"

PositiveSeconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """The whole configuration surface: every ORCH_* variable, each described by its rule."""

    model_config = SettingsConfigDict(
        env_prefix="ORCH_", env_file=".env", extra="ignore", validate_default=True
    )

    profile: ProfileName = Field("production", description=PROFILE_HELP)
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis of the broker, result backend and state store: redis://, rediss://, "
        "unix://, or the Sentinel form sentinel://h1:26379;sentinel://h2:26379/0.",
    )
    broker_url: str | None = Field(
        None, description="The broker's Redis URL, if not ORCH_REDIS_URL (same forms)."
    )
    result_backend: str | None = Field(
        None, description="The result backend's Redis URL, if not ORCH_REDIS_URL (same forms)."
    )
    state_url: str | None = Field(
        None, description="The state store's Redis URL, if not ORCH_REDIS_URL (same forms)."
    )
    state_cluster: bool = Field(
        False,
        description="The state store (ORCH_STATE_URL, any node's redis:// or rediss:// URL) is a "
        "Redis Cluster; its keys then share the event stream's hash slot. Needs a broker and "
        "result backend on another, single Redis. Read when the process starts.",
    )
    redis_sentinel_master: str = Field(
        DEFAULT_SENTINEL_MASTER,
        min_length=1,
        description="Master to ask the sentinels for (Sentinel URLs).",
    )
    allow_evicting_redis: bool = Field(
        False,
        description="Start even if a Redis evicts keys when full (maxmemory-policy not "
        "noeviction), with a warning instead of the refusal: tasks and records may vanish.",
    )

    agent_id: str | None = Field(
        None,
        description=f"This agent's id ({AGENT_ID_RULE}; its queue is agent.<id>); unset: the "
        "worker's node name.",
    )
    agent_capabilities: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="name=proficiency,... (0 < proficiency <= 1; a bare name means 1); set: "
        "this worker is an agent.",
    )
    handlers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules that agents import for @capability handlers, "
        "control workers for @on_event handlers.",
    )
    agent_heartbeat_interval_s: PositiveSeconds = Field(
        5.0, description="Seconds between an agent's heartbeats."
    )
    agent_timeout_s: PositiveSeconds = Field(
        15.0,
        description="Seconds of heartbeat silence after which an agent is lost and its work "
        "moved; more than ORCH_AGENT_HEARTBEAT_INTERVAL_S.",
    )

    alert_evaluation_interval: PositiveSeconds = Field(
        30.0, description="Seconds between runs of the alert loop."
    )
    sla_monitoring_interval: PositiveSeconds = Field(
        60.0, description="Seconds between runs of the SLA loop."
    )
    security_monitoring_interval: PositiveSeconds = Field(
        30.0, description="Seconds between runs of the security loop."
    )
    backup_interval_hours: float = Field(
        6, gt=0, description="Hours between backups of the Redis state (a fraction is accepted)."
    )
    anomaly_detection_interval: PositiveSeconds = Field(
        60.0, description="Seconds between runs of the anomaly loop."
    )
    anomaly_detection_sensitivity: float = Field(
        2.0,
        gt=0,
        description="How far past its recent range a point must lie to be anomalous, in 0.45 "
        "noise scales: higher pages less.",
    )

    event_processing_enabled: bool = Field(
        True,
        description="Control workers run the event handlers, and beat the security and "
        "anomaly loops; false: none of them.",
    )
    auto_recovery_enabled: bool = Field(
        True, description="Recover failed attempts (retry, move, quarantine); false: fail them."
    )
    recovery_escalation_timeout: PositiveSeconds = Field(
        300.0, description="Seconds a recovery plan may stay open before it escalates."
    )

    circuit_breaker_enabled: bool = Field(
        True, description="Circuit breakers keep failing agents out of routing; false: off."
    )
    circuit_failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures that open an agent's circuit."
    )
    circuit_recovery_timeout_s: PositiveSeconds = Field(
        60.0, description="Seconds an open circuit waits before it half-opens."
    )
    circuit_half_open_max_calls: int = Field(
        3, ge=1, description="Trial tasks a half-open circuit admits."
    )

    visibility_timeout_s: float = Field(
        60.0,
        ge=10,
        description="kombu's visibility timeout (broker, result backend), in seconds: what a "
        "dead worker held comes back after it.",
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        le=100,
        description="Deliveries of one dispatch before it is poison (dead-lettered), and of "
        "one event before its failing handler is given up.",
    )
    recovery_monitor_interval_s: PositiveSeconds = Field(
        2.0, description="Seconds between the recovery monitor's lost-agent and escalation sweeps."
    )
    outbox_resend_s: PositiveSeconds = Field(
        60.0, description="Seconds after which a submission no router accepted is sent again."
    )
    retry_base_delay_s: float = Field(
        1.0, ge=0, description="Retry tier: seconds of the first backoff, doubled per attempt."
    )
    retry_max_delay_s: float = Field(
        30.0,
        ge=0,
        description="Longest backoff of the retry tier, in seconds; at most half of "
        "ORCH_VISIBILITY_TIMEOUT_S.",
    )
    quarantine_failures: int = Field(
        10,
        ge=1,
        description="Failed attempts within the quarantine window that quarantine an agent.",
    )
    quarantine_window_s: PositiveSeconds = Field(
        600.0, description="Seconds over which ORCH_QUARANTINE_FAILURES are counted."
    )
    quarantine_s: PositiveSeconds = Field(
        300.0, description="Seconds a quarantined agent stays out of routing."
    )
    min_healthy_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of a capability's live agents that quarantine and open circuits "
        "must leave eligible (and never none): an ejection past it is refused; 0: off.",
    )

    intelligent_routing_enabled: bool = Field(
        True,
        description="Weigh agents by proficiency and performance score; false: each weighs 1 "
        "and the scores are not computed.",
    )
    performance_optimization_interval: PositiveSeconds = Field(
        120.0, description="Seconds between updates of the agents' performance scores."
    )
    load_balancing_algorithm: Literal["weighted_round_robin", "least_loaded", "power_of_two"] = (
        Field("weighted_round_robin", description="How a router picks among eligible agents.")
    )

    max_payload_bytes: int = Field(
        1_048_576, ge=2, description="Largest payload accepted, in bytes of compact JSON."
    )
    pending_timeout_s: PositiveSeconds = Field(
        3600.0,
        description="Seconds a parked task (no capable agent) may wait before it is dead-lettered.",
    )
    parked_sweep_interval_s: PositiveSeconds = Field(
        5.0,
        description="Seconds between dispatch sweeps: fill free slots from the backlog, "
        "release due countdowns, expire parked tasks.",
    )
    agent_prefetch: int = Field(
        1,
        ge=0,
        le=1000,
        description="Tasks an agent may hold beyond its concurrency; the rest wait in the backlog.",
    )
    fair_share: Literal["client", "off"] = Field(
        "client",
        description="Backlog order within a priority: client (fair share between client ids, "
        "by worker-seconds) or off (oldest first).",
    )
    client_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Fair-share weights, client=weight,...; a client not named weighs 1.",
    )
    concurrency_default_limit: int = Field(
        1,
        ge=1,
        le=10_000,
        description="The limit of a concurrency_key submitted without concurrency_limit.",
    )
    ledger_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="Seconds an ended task's ledger entry is kept."
    )
    events_max_len: int = Field(
        100_000, ge=100, description="Entries each of the two event streams keeps (roughly)."
    )
    submit_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Replicas that must have a submission (Redis WAIT) before it is "
        "confirmed; 0: off.",
    )
    submit_wait_ms: int = Field(
        100,
        ge=1,
        le=60_000,
        description="Longest wait for ORCH_SUBMIT_WAIT_REPLICAS, in milliseconds.",
    )

    backup_dir: str = Field("./backups", description="Folder the backups are written to.")
    backup_retention: int = Field(10, ge=1, description="Backups kept; older ones are deleted.")
    backup_rpo_s: PositiveSeconds | None = Field(
        None,
        description="Seconds the newest good backup may be old (the RPO); unset: twice the "
        "backup interval.",
    )

    alertmanager_url: str = Field(
        "", description="Alertmanager's URL to push alerts to (API v2); empty: none."
    )
    alert_rules_file: str = Field(
        "", description="YAML or JSON alert rules merged over the built-in ones; empty: none."
    )
    sla_targets_file: str = Field(
        "", description="YAML or JSON SLA targets merged over the built-in ones; empty: none."
    )

    log_format: Literal["text", "json"] = Field(
        "text", description="How every role logs: text lines, or json (one object per line)."
    )

    exporter_port: int = Field(
        9808, ge=0, le=65535, description="Port of `orchestrator exporter`; 0: any free port."
    )
    exporter_address: str = Field("0.0.0.0", description="Address `orchestrator exporter` binds.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of a worker's own /metrics; 0: off."
    )
    metrics_address: str = Field("0.0.0.0", description="Address a worker's own /metrics binds.")

    scale_min: int = Field(
        1, ge=0, le=10_000, description="Fewest agents per capability the autoscaling signal wants."
    )
    scale_max: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Most agents per capability the signal wants (>= ORCH_SCALE_MIN).",
    )
    scale_target_backlog: int = Field(
        5,
        ge=1,
        le=1_000_000,
        description="Tasks waiting or running per agent that the desired count is sized for "
        "(and per awake agent, past which a sleeping one wakes).",
    )
    scale_interval_s: PositiveSeconds = Field(
        15.0, description="Seconds between runs of the autoscaling and sleep-wake loops."
    )
    scale_command: str = Field(
        "",
        description="Command run (no shell) when a desired count changes, {n} and {capability} "
        "replaced; empty: the signal is only exported and shown.",
    )
    scale_cooldown_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="Seconds a lower need must last before the desired count drops, and before "
        "a failed ORCH_SCALE_COMMAND is retried; 0: none.",
    )

    sleep_after_idle_s: float = Field(
        0.0, ge=0, description="Seconds an agent may idle before it sleeps; 0: never."
    )
    min_awake_agents: int = Field(
        1, ge=0, le=10_000, description="Agents kept awake per capability."
    )
    sleep_windows: Annotated[list[SleepWindow], NoDecode] = Field(
        default_factory=list,
        description="HH:MM-HH:MM [time zone],...: inside, idle agents sleep at once and are "
        "recycled; they wake when a window ends.",
    )

    metrics_window_s: PositiveSeconds = Field(
        300.0, description="Seconds of the snapshot's rates and percentiles."
    )
    metrics_history_len: int = Field(
        1440, ge=1, description="Metrics snapshots and SLA points kept (one per evaluation)."
    )
    security_window_s: PositiveSeconds = Field(
        300.0, description="Seconds over which a client's rejected submissions are counted."
    )
    security_rejection_threshold: int = Field(
        20, ge=1, description="Rejections of a client within ORCH_SECURITY_WINDOW_S that flag it."
    )
    beat_max_interval_s: PositiveSeconds = Field(
        5.0, description="Longest sleep of beat between ticks, in seconds."
    )
    beat_lock_timeout_s: PositiveSeconds = Field(
        30.0,
        description="Seconds after which a dead beat's lock frees; at least 3 x "
        "ORCH_BEAT_MAX_INTERVAL_S.",
    )

    poison_keep: int = Field(
        10_000, ge=1, description="Messages refused at workers' edges kept (the newest)."
    )
    poison_raw_max_bytes: int = Field(
        65_536, ge=64, description="Raw bytes kept of each refused message."
    )
    client_rate_limit: float = Field(
        0.0, ge=0, description="Submissions per second per client_id (a token bucket); 0: off."
    )
    client_rate_burst: int = Field(
        0, ge=0, description="Tokens a client's bucket holds; 0: the rate rounded up (at least 1)."
    )
    security_auto_block: bool = Field(
        False, description="Refuse a client the security loop flags for ORCH_SECURITY_BLOCK_S."
    )
    security_block_s: PositiveSeconds = Field(
        300.0, description="Seconds a flagged client stays blocked."
    )
    security_inspect_timeout_s: float = Field(
        1.0, gt=0, le=10, description="Seconds the security loop waits for workers' replies."
    )
    flower_url: str = Field(
        "", description="Flower's URL, probed for an unauthenticated API; empty: not checked."
    )
    signing_key: str = Field(
        "",
        description="This role's private key (PEM, RSA, unencrypted); the three ORCH_SIGNING_* "
        "are set together, on every role, or none (off).",
    )
    signing_cert: str = Field(
        "", description="This role's certificate (PEM, RSA, not expired), for signing."
    )
    signing_cert_store: str = Field(
        "", description="Certificates of every signer this role trusts: a PEM file or a folder."
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """The profile's defaults under what was set: a variable set explicitly wins."""
        if isinstance(data, dict) and data.get("profile") in PROFILES:
            return {**PROFILES[data["profile"]].settings, **data}
        return data

    @field_validator("agent_capabilities", mode="before")
    @classmethod
    def _capabilities(cls, value: Any) -> dict[str, float]:
        return parse_capabilities(value)

    @field_validator("client_weights", mode="before")
    @classmethod
    def _client_weights(cls, value: Any) -> dict[str, float]:
        return parse_client_weights(value)

    @field_validator("handlers", mode="before")
    @classmethod
    def _handlers(cls, value: Any) -> list[str]:
        return parse_handlers(value)

    @field_validator("redis_url", "broker_url", "result_backend", "state_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        return value if value is None else check_redis_url(value)

    @field_validator("signing_key", "signing_cert", "signing_cert_store")
    @classmethod
    def _signing_file(cls, value: str, info: ValidationInfo) -> str:
        if value:
            LOADERS[f"ORCH_{str(info.field_name).upper()}"](value)  # raises naming what is wrong
        return value

    @field_validator("flower_url")
    @classmethod
    def _flower_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (or be empty: not checked)")
        return value

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str | None) -> str | None:
        if value is not None and not AGENT_ID_RE.match(value):
            raise ValueError(f"must be {AGENT_ID_RULE}")
        return value or None

    @field_validator("scale_command")
    @classmethod
    def _scale_command(cls, value: str) -> str:
        return check_command_line(value)

    @field_validator("sleep_windows", mode="before")
    @classmethod
    def _sleep_windows(cls, value: Any) -> list[SleepWindow]:
        if isinstance(value, str):
            return parse_windows(value)
        return list(value or [])

    @model_validator(mode="after")
    def _relations(self) -> Settings:
        """The rules between settings. A countdown longer than the visibility timeout makes
        kombu restore the held message and run it again, so every retry delay stays well
        inside it; beat's lock holder extends its lock once per tick, so a lock shorter than
        three ticks would lapse under a healthy beat and let a standby in."""
        for broken, rule in (
            (self.scale_min > self.scale_max, "ORCH_SCALE_MIN must be at most ORCH_SCALE_MAX"),
            (
                self.agent_timeout_s <= self.agent_heartbeat_interval_s,
                "ORCH_AGENT_TIMEOUT_S must be longer than ORCH_AGENT_HEARTBEAT_INTERVAL_S",
            ),
            (
                self.retry_max_delay_s > self.visibility_timeout_s / 2,
                "ORCH_RETRY_MAX_DELAY_S must be at most half of ORCH_VISIBILITY_TIMEOUT_S",
            ),
            (
                self.beat_lock_timeout_s < 3 * self.beat_max_interval_s,
                "ORCH_BEAT_LOCK_TIMEOUT_S must be at least 3 x ORCH_BEAT_MAX_INTERVAL_S",
            ),
        ):
            if broken:
                raise ValueError(rule)
        return self

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        problem = cluster_problem(
            self.state_cluster,
            self.effective_state_url,
            (self.effective_broker_url, self.effective_result_backend),
            self.submit_wait_replicas,
        )
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _signing(self) -> Settings:
        paths = dict(
            zip(
                SIGNING_VARIABLES,
                (self.signing_key, self.signing_cert, self.signing_cert_store),
                strict=True,
            )
        )
        missing = [name for name, path in paths.items() if not path]
        if missing and len(missing) < len(paths):
            raise ValueError(
                f"{', '.join(SIGNING_VARIABLES)} must be set together (missing: "
                f"{', '.join(missing)})"
            )
        if not missing:
            problem = check_signing_identity(*paths.values())
            if problem:
                raise ValueError(problem)
        return self

    def __repr_args__(self) -> Any:
        # Never a URL's password: Celery's remote-control `conf` (asked by anyone who reaches
        # the broker, and by the security loop) answers with this repr of the app's settings.
        for name, value in super().__repr_args__():
            yield name, mask_password(value) if isinstance(value, str) else value

    @property
    def profile_defaults(self) -> ProfileDefaults:
        """What the profile sets beyond settings: finding severities, the latency objective."""
        return PROFILES[self.profile]

    def circuit_config(self) -> CircuitBreakerConfig:
        return CircuitBreakerConfig(
            failure_threshold=self.circuit_failure_threshold,
            recovery_timeout_s=self.circuit_recovery_timeout_s,
            half_open_max_calls=self.circuit_half_open_max_calls,
        )

    def circuit_rule(self) -> CircuitBreakerConfig | None:
        """The breakers' rule as routing and every display apply it: None while
        ORCH_CIRCUIT_BREAKER_ENABLED=false, when no breaker excludes anyone."""
        return self.circuit_config() if self.circuit_breaker_enabled else None

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def effective_backup_rpo_s(self) -> float:
        return self.backup_rpo_s or 2 * self.backup_interval_hours * 3600

    @property
    def effective_state_url(self) -> str:
        return self.state_url or self.redis_url

    @property
    def broker_is_state_store(self) -> bool:
        """One Redis for the broker's queues and the state store (the default): a Lua step
        can then see and change both at once."""
        return self.effective_broker_url == self.effective_state_url

    @property
    def signing_enabled(self) -> bool:
        """Every message this role sends is signed, and only signed ones are accepted."""
        return bool(self.signing_key)

    @property
    def client_burst(self) -> int:
        """Tokens a client's bucket holds: ORCH_CLIENT_RATE_BURST, else the rate rounded up."""
        return self.client_rate_burst or max(1, math.ceil(self.client_rate_limit))

    @property
    def client_limits_on(self) -> bool:
        """Whether a submission needs the limit check at all (off: no Redis call for it)."""
        return self.client_rate_limit > 0 or self.security_auto_block

    @property
    def is_agent(self) -> bool:
        return bool(self.agent_capabilities)


def setting_names() -> frozenset[str]:
    """Every variable Settings reads (upper case; read whatever its case)."""
    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, turning validation errors into one ConfigError
    whose lines name the ORCH_ variable, so an operator knows exactly what to fix. A variable
    no setting reads is warned about first (warn_unknown_variables)."""
    warn_unknown_variables(os.environ, setting_names())
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = settings_problems(exc)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines), lines) from None
