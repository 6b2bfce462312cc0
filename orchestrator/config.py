"""Settings: every ORCH_* variable, validated once at start-up and passed down."""

from __future__ import annotations

import math
import os
import re
import shlex
import ssl
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.models import CircuitBreakerConfig
from orchestrator.profiles import PROFILES, ProfileDefaults, ProfileName
from orchestrator.scaling.windows import SleepWindow, parse_windows
from orchestrator.settings_parsers import parse_capabilities, parse_client_weights

MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
#: An agent id (ORCH_AGENT_ID, or else the worker's node name): never a `|`, which joins an
#: agent id to a name in the store's hash fields (store.keys).
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9._@:-]{1,128}\Z")
AGENT_ID_RULE = "1-128 chars of [A-Za-z0-9._@:-]"

PositiveSeconds = Annotated[float, Field(gt=0)]


#: `ssl_cert_reqs` values of a rediss:// URL that Celery, kombu and redis-py all read alike.
SSL_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
#: Query parameters of a rediss:// URL that name files (CA bundle, client certificate and key).
SSL_FILE_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def redis_ssl_options(url: str) -> dict[str, Any] | None:
    """The TLS options a rediss:// URL asks for in its query, as Celery's `broker_use_ssl`
    and `redis_backend_use_ssl` take them; None for a URL without TLS.

    Without them, kombu under our transport (orchestrator.runtime.transport) speaks plain TCP to a
    rediss:// broker, and Celery's result backend refuses the URL; given them, both verify
    the server against the system's CAs unless the query says otherwise, as redis-py does
    for the state store. The messages name the parameter, never the URL: it may hold a
    password.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    asked = sorted(k for k in query if k.startswith("ssl_"))
    if parts.scheme != "rediss":
        if asked:
            raise ValueError(f"TLS options need a rediss:// URL (got {', '.join(asked)})")
        return None
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in SSL_CERT_REQS:
        raise ValueError(
            f"ssl_cert_reqs must be one of {', '.join(SSL_CERT_REQS)} (got ssl_cert_reqs={reqs})"
        )
    options: dict[str, Any] = {"ssl_cert_reqs": SSL_CERT_REQS[reqs]}
    options.update({name: query[name] for name in SSL_FILE_PARAMS if query.get(name)})
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() not in (
            "false",
            "no",
            "0",
        )
    return options


#: The signing variables, all set or none (Celery's `auth` serializer, see celeryconf).
SIGNING_VARIABLES = ("ORCH_SIGNING_KEY", "ORCH_SIGNING_CERT", "ORCH_SIGNING_CERT_STORE")
#: Digest of the signatures (Celery's security_digest).
SIGNING_DIGEST = "sha256"


def load_signing_key(path: str) -> Any:
    """This role's private key as Celery's `auth` serializer reads it (celery.security), so
    what passes here is what `app.setup_security()` accepts: an unencrypted PEM RSA key."""
    from celery.exceptions import SecurityError
    from celery.security.key import PrivateKey

    if not os.path.isfile(path):
        raise ValueError("no such file")
    try:
        with open(path) as f:
            return PrivateKey(f.read())
    except (SecurityError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"not an unencrypted PEM RSA private key ({exc})") from None


def load_signing_cert(path: str) -> Any:
    """This role's certificate (PEM, RSA, not expired), as Celery reads it."""
    from celery.exceptions import SecurityError
    from celery.security.certificate import Certificate

    if not os.path.isfile(path):
        raise ValueError("no such file")
    try:
        with open(path) as f:
            cert = Certificate(f.read())
    except (SecurityError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"not a PEM RSA certificate ({exc})") from None
    if cert.has_expired():
        raise ValueError("the certificate has expired")
    return cert


def load_cert_store(path: str) -> Any:
    """The certificates this role trusts: a PEM file, or a directory of them, as Celery's
    FSCertStore reads it (none expired, no two of one issuer and serial)."""
    from celery.exceptions import SecurityError
    from celery.security.certificate import FSCertStore

    if not os.path.exists(path):
        raise ValueError("no such file or directory")
    try:
        store = FSCertStore(path)
    except (SecurityError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"not a store of PEM RSA certificates ({exc})") from None
    if not list(store.itercerts()):
        raise ValueError("holds no certificate")
    return store


def check_signing_identity(key: str, cert: str, store: str) -> str | None:
    """Why this key, certificate and store would not sign and verify messages, or None: the
    key must be the certificate's, and the store must trust the certificate (a role verifies
    what it signs itself: tasks it sends itself, the replies to its remote-control
    requests)."""
    from celery.exceptions import SecurityError
    from celery.security.utils import get_digest_algorithm

    digest = get_digest_algorithm(SIGNING_DIGEST)
    own = load_signing_cert(cert)
    probe = b"hive-orchestrator signing probe"
    signature = load_signing_key(key).sign(probe, digest)
    # A signature that does not verify surfaces as TypeError in Celery 5.7 (its
    # reraise_errors is handed the cryptography.exceptions module, not a class).
    try:
        own.verify(probe, signature, digest)
    except (SecurityError, TypeError):
        return "ORCH_SIGNING_KEY is not the key of ORCH_SIGNING_CERT"
    try:
        load_cert_store(store)[own.get_id()].verify(probe, signature, digest)
    except (SecurityError, TypeError):
        return "ORCH_SIGNING_CERT_STORE does not hold ORCH_SIGNING_CERT"
    return None


_SIGNING_LOADERS = {
    "signing_key": load_signing_key,
    "signing_cert": load_signing_cert,
    "signing_cert_store": load_cert_store,
}


#: The master name of a sentinel-form URL unless ORCH_REDIS_SENTINEL_MASTER says otherwise.
DEFAULT_SENTINEL_MASTER = "mymaster"


@dataclass(frozen=True)
class SentinelAddress:
    """A sentinel-form URL (`sentinel://h1:26379;sentinel://h2:26379/0`), as kombu reads it
    for the broker and Celery for the result backend: the sentinels to ask for the master,
    and the database and credentials (of the first part that has them) for the master."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def parse_sentinel(url: str) -> SentinelAddress:
    """Parse a sentinel-form URL; ValueError naming the part that is wrong (never the
    password)."""
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for number, chunk in enumerate(url.split(";"), 1):
        parts = urlsplit(chunk.strip())
        if parts.scheme != "sentinel":
            raise ValueError(f"part {number} of a sentinel URL must start with sentinel://")
        try:
            port = parts.port or 26379
        except ValueError:
            raise ValueError(f"part {number} of a sentinel URL has a bad port") from None
        if not parts.hostname:
            raise ValueError(f"part {number} of a sentinel URL names no host")
        if parts.query:
            raise ValueError(f"part {number} of a sentinel URL: query options are not supported")
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"part {number} of a sentinel URL: database must be a number")
            if db is not None and int(path) != db:
                raise ValueError("the parts of a sentinel URL name different databases")
            db = int(path)
        if parts.password and password is None:
            username, password = parts.username or None, unquote(parts.password)
        sentinels.append((parts.hostname, port))
    return SentinelAddress(tuple(sentinels), db or 0, username, password)


def mask_password(url: str) -> str:
    """`url` with its password (if any) shown as ********."""
    if ";" in url:
        return ";".join(mask_password(chunk) for chunk in url.split(";"))
    parts = urlsplit(url)
    if "://" not in url or not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:********@{host}").geturl()


class Settings(BaseSettings):
    """The whole configuration surface: every ORCH_* variable, described in the README."""

    model_config = SettingsConfigDict(
        env_prefix="ORCH_", env_file=".env", extra="ignore", validate_default=True
    )

    profile: ProfileName = Field(
        "production",
        description="The set of defaults to start from: `production`, or `dev` (what "
        "`orchestrator dev` sets), which keeps ordinary development from paging anyone; "
        "a variable set explicitly wins over either (orchestrator.profiles).",
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    result_backend: str | None = None
    state_url: str | None = None
    redis_sentinel_master: Annotated[str, Field(min_length=1)] = DEFAULT_SENTINEL_MASTER
    # Start even when a Redis evicts keys when full (maxmemory-policy other than noeviction),
    # with a warning instead of the refusal: queued tasks and records may then vanish.
    allow_evicting_redis: bool = False

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
    # The quarantine tier: an agent with this many failed attempts (handed to recovery) within
    # the window is quarantined for quarantine_s. Counted apart from the breaker's window,
    # which clears when it opens, so the tier is reachable at any breaker setting.
    quarantine_failures: Annotated[int, Field(ge=1)] = 10
    quarantine_window_s: PositiveSeconds = 600.0
    quarantine_s: PositiveSeconds = 300.0
    # The ejection floor (Envoy's panic threshold): quarantine and open circuits together
    # never leave fewer than this share of a capability's live agents eligible, nor none;
    # an ejection past it is refused (`agent.ejection_refused`). 0 turns the floor off.
    min_healthy_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5

    intelligent_routing_enabled: bool = True
    performance_optimization_interval: PositiveSeconds = 120.0
    load_balancing_algorithm: Literal["weighted_round_robin", "least_loaded", "power_of_two"] = (
        "weighted_round_robin"
    )

    max_payload_bytes: Annotated[int, Field(ge=2)] = 1_048_576
    pending_timeout_s: PositiveSeconds = 3600.0
    parked_sweep_interval_s: PositiveSeconds = 5.0
    # Dispatch: an agent holds at most concurrency + agent_prefetch unended tasks; the rest
    # waits in the backlog, by priority, then fair share between clients (or oldest first).
    agent_prefetch: Annotated[int, Field(ge=0, le=1000)] = 1
    fair_share: Literal["client", "off"] = "client"
    client_weights: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    concurrency_default_limit: Annotated[int, Field(ge=1, le=10_000)] = 1
    ledger_ttl_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    events_max_len: Annotated[int, Field(ge=100)] = 100_000
    # A submission is confirmed only once this many replicas have it (Redis WAIT), so a
    # failover right after cannot lose it; 0 = off (README, Disaster recovery).
    submit_wait_replicas: Annotated[int, Field(ge=0, le=16)] = 0
    submit_wait_ms: Annotated[int, Field(ge=1, le=60_000)] = 100

    backup_dir: str = "./backups"
    backup_retention: Annotated[int, Field(ge=1)] = 10
    # The recovery point objective: the newest good backup may be this old (default: twice
    # the backup interval); the BackupStale alert and `backup status` judge it.
    backup_rpo_s: PositiveSeconds | None = None

    alertmanager_url: str = ""
    alert_rules_file: str = ""
    sla_targets_file: str = ""

    # How every role writes its log: `text` lines as Celery and logging print them, or `json`,
    # one JSON object per line for a log collector (orchestrator.runtime.logs).
    log_format: Literal["text", "json"] = "text"

    exporter_port: Annotated[int, Field(ge=0, le=65535)] = 9808
    # A worker's own Prometheus endpoint (runtime/metrics.py); 0 = off.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    metrics_address: str = "0.0.0.0"

    # The autoscaling signal (scaling/signal.py): per capability, enough agents that each has
    # at most `scale_target_backlog` tasks waiting or running, within [scale_min, scale_max].
    scale_min: Annotated[int, Field(ge=0, le=10_000)] = 1
    scale_max: Annotated[int, Field(ge=1, le=10_000)] = 10
    scale_target_backlog: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    # The two scaling loops (orchestrator.autoscale, orchestrator.sleep_wake) run this often
    # (as Kubernetes' HPA syncs; a parked task wakes a sleeping agent at once regardless).
    scale_interval_s: PositiveSeconds = 15.0
    # Autoscaling: a command run (no shell) with {n} replaced by the desired count
    # of a capability; empty = the signal is only exported and shown.
    scale_command: str = ""
    # Autoscaling hysteresis (scaling/decide.py): a lower need must hold this long before the
    # desired count drops, and a failed ORCH_SCALE_COMMAND is tried again after it; 0 = none.
    scale_cooldown_s: Annotated[float, Field(ge=0, le=86_400)] = 300.0

    # Sleep/wake (scaling/sleep.py): an agent idle this long sleeps (0 = never, outside the
    # sleep windows), keeping at least `min_awake_agents` awake per capability; inside a
    # window idle agents sleep at once and are recycled, and wake when it ends.
    sleep_after_idle_s: Annotated[float, Field(ge=0)] = 0.0
    min_awake_agents: Annotated[int, Field(ge=0, le=10_000)] = 1
    sleep_windows: Annotated[list[SleepWindow], NoDecode] = Field(default_factory=list)

    # Monitoring loops; see the README's Operations section.
    exporter_address: str = "0.0.0.0"  # where `orchestrator exporter` binds
    metrics_window_s: PositiveSeconds = 300.0  # window of the snapshot's rates and latencies
    metrics_history_len: Annotated[int, Field(ge=1)] = 1440  # snapshots / SLA points kept
    security_window_s: PositiveSeconds = 300.0  # window rejections are counted over
    security_rejection_threshold: Annotated[int, Field(ge=1)] = 20  # per client, per window
    beat_max_interval_s: PositiveSeconds = 5.0  # longest sleep of beat between ticks
    beat_lock_timeout_s: PositiveSeconds = 30.0  # a dead beat's lock frees after this

    # Security at the edges; see the README's Security chapter.
    poison_keep: Annotated[int, Field(ge=1)] = 10_000  # refused messages kept for inspection
    poison_raw_max_bytes: Annotated[int, Field(ge=64)] = 65_536  # raw bytes kept of each
    # Per-client limits (checked in one Lua step, and only when one of them is on): a token
    # bucket of `client_rate_limit` submissions/s per client_id (0: off) holding at most
    # `client_rate_burst` (0: the rate rounded up, at least 1); and, with auto-block, a client
    # the security loop flags is refused for `security_block_s`.
    client_rate_limit: Annotated[float, Field(ge=0)] = 0.0
    client_rate_burst: Annotated[int, Field(ge=0)] = 0
    security_auto_block: bool = False
    security_block_s: PositiveSeconds = 300.0
    # The security loop's audit: how long it waits for workers' remote-control replies, and
    # Flower's base URL to probe for an unauthenticated API (empty: not checked).
    security_inspect_timeout_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    flower_url: str = ""
    # Message signing (Celery's `auth` serializer), all three or none (empty: off): this
    # role's private key and certificate, and the certificates of every signer it trusts (a
    # PEM file or a directory of them). Set on every role; see celeryconf.signing_config.
    signing_key: str = ""
    signing_cert: str = ""
    signing_cert_store: str = ""

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
        if value is None:
            return value
        if is_sentinel(value):
            parse_sentinel(value)  # raises naming the part that is wrong
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "must start with redis://, rediss://, unix:// or sentinel:// "
                f"(got {mask_password(value)!r})"
            )
        redis_ssl_options(value)  # raises on TLS options it cannot honour
        return value

    @field_validator("signing_key", "signing_cert", "signing_cert_store")
    @classmethod
    def _signing_file(cls, value: str, info: ValidationInfo) -> str:
        if value:
            _SIGNING_LOADERS[str(info.field_name)](value)  # raises naming what is wrong
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
        if value.strip():
            try:
                shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot be split like a shell command line: {exc}") from None
        return value

    @field_validator("sleep_windows", mode="before")
    @classmethod
    def _sleep_windows(cls, value: Any) -> list[SleepWindow]:
        if isinstance(value, str):
            return parse_windows(value)
        return list(value or [])

    @model_validator(mode="after")
    def _scale_bounds(self) -> Settings:
        if self.scale_min > self.scale_max:
            raise ValueError("ORCH_SCALE_MIN must be at most ORCH_SCALE_MAX")
        return self

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
