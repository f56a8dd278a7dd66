"""One settings object, read from environment variables, with defaults for the embedded stack.

Every field names its variable; a bad value fails fast with a message naming it.
`mta-feedback config` prints the effective settings (secrets masked, inside URLs too).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streams.domain.control.mx_rules import MxRules, load_mx_rules
from streams.domain.recipient.address_health import QuarantinePolicy
from streams.domain.recipient.message_status import ValidityPolicy
from streams.pipeline.feedback import PipelineConfig
from streams.runtime.secrets import MASK, mask_secrets, url_secrets

_DAY_S = 86_400


class ConfigError(ValueError):
    """A configuration variable has a value that cannot be used."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw

    return parse


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("must be one of debug, info, warning, error (any case)")
    return level


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _servers(raw: str) -> str:
    for server in raw.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server!r} is not host:port")
    return raw


def _topic_prefix(raw: str) -> str:
    if not raw or not all(c.isalnum() or c in "._-" for c in raw):
        raise ValueError("must be non-empty and use only letters, digits, '.', '_' and '-'")
    return raw


def _text(raw: str) -> str:
    return raw


def _optional_path(raw: str) -> str:
    if raw and not Path(raw).is_file():
        raise ValueError(f"file {raw!r} does not exist")
    return raw


def _listen(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port (port 0 picks a free one)")
    return raw


def _cidrs(raw: str) -> str:
    for part in raw.split(","):
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not an address or a network") from None
    return raw


def _var(
    env: str, default: Any, parse: Callable[[str], Any] = _text, doc: str = "", secret: bool = False
) -> Any:
    return field(
        default=default, metadata={"env": env, "parse": parse, "doc": doc, "secret": secret}
    )


@dataclass(frozen=True)
class Settings:
    """Effective configuration of workers, producers, consumers and the embedded stack."""

    bootstrap_servers: str = _var(
        "MTA_BOOTSTRAP_SERVERS", "127.0.0.1:19092", _servers, "Kafka bootstrap servers"
    )
    schema_registry_url: str = _var(
        "SCHEMA_REGISTRY_URL",
        "",
        doc="Schema registry; empty = Avro single-object encoding, set = Confluent wire format",
    )
    schema_registry_user: str = _var(
        "SCHEMA_REGISTRY_USER", "", doc="Schema registry basic auth user (API key)"
    )
    schema_registry_password: str = _var(
        "SCHEMA_REGISTRY_PASSWORD",
        "",
        doc="Schema registry basic auth password (API secret)",
        secret=True,
    )
    redis_url: str = _var("REDIS_URL", "redis://127.0.0.1:6379/0", doc="Redis serving views")
    topic_prefix: str = _var("MTA_TOPIC_PREFIX", "mta", _topic_prefix, "Namespace of all topics")
    partitions: int = _var("MTA_PARTITIONS", 4, _int(1, 1024), "Partitions per topic")
    replication_factor: int = _var(
        "MTA_REPLICATION_FACTOR", 1, _int(1, 16), "Replication factor of created topics"
    )
    app_id: str = _var("MTA_APP_ID", "mta-feedback", _topic_prefix, "Consumer group / Faust app id")
    store: str = _var(
        "MTA_STORE", "memory://", _choice("memory://", "rocksdb://"), "Faust table store"
    )
    data_dir: str = _var("MTA_DATA_DIR", ".run/data", doc="Worker data dir (RocksDB tables)")
    rocksdb_cache_mb: int = _var(
        "MTA_ROCKSDB_CACHE_MB",
        64,
        _int(8, 65536),
        "RocksDB memory of the whole worker: one block cache for every table partition, "
        "memtables, index and filter blocks included",
    )
    rocksdb_write_buffer_mb: int = _var(
        "MTA_ROCKSDB_WRITE_BUFFER_MB",
        4,
        _int(1, 4096),
        "RocksDB memtable size per table partition (within the worker's cache budget)",
    )
    run_dir: str = _var("MTA_RUN_DIR", ".run", doc="Embedded stack pid and log files")
    session_timeout_s: float = _var(
        "MTA_SESSION_TIMEOUT_S", 6.0, _float(1, 600), "Consumer session timeout"
    )
    heartbeat_interval_s: float = _var(
        "MTA_HEARTBEAT_INTERVAL_S", 0.5, _float(0.1, 60), "Consumer heartbeat interval"
    )
    max_poll_interval_s: float = _var(
        "MTA_MAX_POLL_INTERVAL_S", 300.0, _float(1, 3600), "Consumer max poll interval"
    )
    commit_interval_s: float = _var(
        "MTA_COMMIT_INTERVAL_S",
        1.0,
        _float(0.01, 60),
        "How often the worker commits offsets (flushing its outputs first)",
    )
    progress_interval_ms: int = _var(
        "MTA_PROGRESS_INTERVAL_MS",
        100,
        _int(10, 60_000),
        "How often a worker tells the control step how far its input partitions have come",
    )
    idle_after_ms: int = _var(
        "MTA_IDLE_AFTER_MS",
        400,
        _int(10, 600_000),
        "An input partition read to its end this long vouches for the worker's clock as it "
        "was this long ago: the longest a record may take from producer to broker",
    )
    linger_ms: int = _var(
        "MTA_LINGER_MS",
        20,
        _int(0, 1000),
        "How long a producer gathers records into one batch per partition (latency vs load)",
    )
    fetch_max_bytes: int = _var(
        "MTA_FETCH_MAX_BYTES",
        1 << 20,
        _int(64 << 10, 1 << 30),
        "Most bytes one fetch of a worker asks for, all its partitions together: the records "
        "a fetch brings stay in memory until the agents have taken them",
    )
    web_port: int = _var(
        "MTA_WEB_PORT",
        9108,
        _int(0, 65535),
        "First port of the worker's /metrics, /healthz, /readyz (next free one if taken; 0: off)",
    )
    standby_replicas: int = _var(
        "MTA_STANDBY_REPLICAS", 1, _int(0, 8), "Faust table standby replicas"
    )
    bounce_rules_file: str = _var(
        "MTA_BOUNCE_RULES_FILE", "", _optional_path, "Operator bounce rules (TOML)"
    )
    mx_rules_file: str = _var("MTA_MX_RULES_FILE", "", _optional_path, "Operator MX rules (TOML)")
    log_level: str = _var("MTA_LOG_LEVEL", "info", _log_level, "Log level (any case)")
    redis_views: bool = _var("MTA_REDIS_VIEWS", True, _bool, "Write the Redis serving views")
    security_protocol: str = _var(
        "MTA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "Kafka security protocol",
    )
    sasl_mechanism: str = _var(
        "MTA_SASL_MECHANISM",
        "",
        _choice("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        "Kafka SASL mechanism",
    )
    sasl_username: str = _var("MTA_SASL_USERNAME", "", doc="Kafka SASL user")
    sasl_password: str = _var("MTA_SASL_PASSWORD", "", doc="Kafka SASL password", secret=True)
    ssl_cafile: str = _var("MTA_SSL_CAFILE", "", _optional_path, "CA bundle for Kafka TLS")
    # Domain thresholds: every worker of a group, and replay, must use the same values.
    validity_default_s: int = _var(
        "MTA_VALIDITY_DEFAULT_S", 5 * _DAY_S, _int(1, 365 * _DAY_S), "Validity when none is asked"
    )
    validity_max_s: int = _var(
        "MTA_VALIDITY_MAX_S", 7 * _DAY_S // 2, _int(1, 365 * _DAY_S), "Cap on any validity"
    )
    quarantine_soft_threshold: int = _var(
        "MTA_QUARANTINE_SOFT_THRESHOLD", 5, _int(1, 1000), "Counted soft errors that quarantine"
    )
    quarantine_soft_spacing_s: int = _var(
        "MTA_QUARANTINE_SOFT_SPACING_S",
        _DAY_S,
        _int(0, 365 * _DAY_S),
        "Least time between two counted soft errors",
    )
    quarantine_reset_after_s: int = _var(
        "MTA_QUARANTINE_RESET_AFTER_S",
        10 * _DAY_S,
        _int(1, 365 * _DAY_S),
        "Error count resets after this long without error",
    )
    quarantine_mailbox_full_lift_s: int = _var(
        "MTA_QUARANTINE_MAILBOX_FULL_LIFT_S",
        30 * _DAY_S,
        _int(1, 3650 * _DAY_S),
        "A Mailbox full quarantine lifts after this long",
    )
    message_retention_s: int = _var(
        "MTA_MESSAGE_RETENTION_S",
        7 * _DAY_S,
        _int(1, 365 * _DAY_S),
        "Event time a final message stays tracked (late async bounces)",
    )
    address_retention_s: int = _var(
        "MTA_ADDRESS_RETENTION_S",
        30 * _DAY_S,
        _int(1, 3650 * _DAY_S),
        "Event time a valid, idle address stays tracked",
    )

    # The HTTP service (`mta-feedback serve`): webhook ingest and the KumoMTA TSA API.
    http_listen: str = _var(
        "MTA_HTTP_LISTEN", "127.0.0.1:8008", _listen, "HTTP service address (host:port)"
    )
    http_trusted_cidrs: str = _var(
        "MTA_HTTP_TRUSTED_CIDRS",
        "127.0.0.0/8,::1/128",
        _cidrs,
        "Callers allowed on the KumoMTA routes (comma-separated networks)",
    )
    http_token: str = _var(
        "MTA_HTTP_TOKEN", "", doc="Bearer token of the operator API", secret=True
    )
    webhook_user: str = _var("MTA_WEBHOOK_USER", "", doc="Basic auth user of SparkPost webhooks")
    webhook_password: str = _var(
        "MTA_WEBHOOK_PASSWORD", "", doc="Basic auth password of SparkPost webhooks", secret=True
    )
    http_max_body_bytes: int = _var(
        "MTA_HTTP_MAX_BODY_BYTES",
        32 * 1024 * 1024,
        _int(1024, 1024 * 1024 * 1024),
        "Largest request body the HTTP service reads (413 beyond)",
    )
    kumo_shaping_file: str = _var(
        "MTA_KUMO_SHAPING_FILE",
        "",
        _optional_path,
        "KumoMTA shaping.toml: its automation rules join the controller's; its limits cap "
        "what the KumoMTA TSA API publishes",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        settings = cls(**parse_env(cls, environ))
        settings._check()
        return settings

    def _check(self) -> None:
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ConfigError("MTA_SASL_MECHANISM must be set when MTA_SECURITY_PROTOCOL is SASL_*")
        if bool(self.schema_registry_user) != bool(self.schema_registry_password):
            raise ConfigError("SCHEMA_REGISTRY_USER and SCHEMA_REGISTRY_PASSWORD are set together")
        if self.schema_registry_user and "@" in self.schema_registry_url:
            raise ConfigError(
                "registry credentials go either in SCHEMA_REGISTRY_URL or in "
                "SCHEMA_REGISTRY_USER / SCHEMA_REGISTRY_PASSWORD, not both"
            )
        if bool(self.webhook_user) != bool(self.webhook_password):
            raise ConfigError("MTA_WEBHOOK_USER and MTA_WEBHOOK_PASSWORD are set together")
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ConfigError(
                "MTA_HEARTBEAT_INTERVAL_S must be at most a third of MTA_SESSION_TIMEOUT_S"
            )

    def rocksdb_options(self) -> dict[str, int]:
        """Faust's RocksDB options per table partition. The block cache is the worker's
        (streams/runtime/rocksdb_memory.py): Faust's own defaults, 2 GB of block cache and
        three 64 MB memtables per table partition, let a worker's RSS grow with its state."""
        return {
            "write_buffer_size": self.rocksdb_write_buffer_mb << 20,
            "max_write_buffer_number": 2,
        }

    def pipeline_config(self) -> PipelineConfig:
        """The domain thresholds above, as the pipeline steps take them."""
        spacing, threshold = self.quarantine_soft_spacing_s, self.quarantine_soft_threshold
        return PipelineConfig(
            validity=ValidityPolicy(
                default_validity_s=self.validity_default_s, max_validity_s=self.validity_max_s
            ),
            quarantine=QuarantinePolicy(
                soft_spacing_s=spacing,
                soft_threshold=threshold,
                reset_after_s=self.quarantine_reset_after_s,
                mailbox_full_lift_s=self.quarantine_mailbox_full_lift_s,
                # The span the soft-error rules look back over (the policy's own default).
                horizon_s=self.quarantine_reset_after_s + spacing * threshold,
            ),
            message_retention_ms=self.message_retention_s * 1000,
            address_retention_ms=self.address_retention_s * 1000,
        )

    def mx_rules(self) -> MxRules:
        """The MX rules every worker and ``replay`` use: shipped, the operator's file, and
        the automation rules of the operator's KumoMTA shaping file."""
        return load_mx_rules(self.mx_rules_file or None, self.kumo_shaping_file or None)

    def topic(self, name: str) -> str:
        """Full topic name for a logical name such as ``send`` or ``status``."""
        return f"{self.topic_prefix}.{name}"

    def masked(self) -> list[tuple[str, Any, str]]:
        """(variable, effective value, doc) rows with every secret masked: secret settings
        whole, and passwords and secret-looking query parameters inside URLs."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = MASK
            elif isinstance(value, str):
                value = mask_secrets(value)
            rows.append((f.metadata["env"], value, f.metadata["doc"]))
        return rows

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, effective value, doc) rows as text, secrets masked."""
        return [(env, str(value), doc) for env, value, doc in self.masked()]

    def kafka_client_config(self) -> dict[str, Any]:
        """Security settings in librdkafka (confluent-kafka) spelling.

        With SASL, an error callback turns a failed authentication into a KafkaAuthError
        raised from the client's poll/flush/consume; without it librdkafka only logs and
        retries, and the caller sees "Message timed out" or nothing at all.
        """
        conf: dict[str, Any] = {"security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
            conf["error_cb"] = self._raise_on_auth_error
        if self.ssl_cafile:
            conf["ssl.ca.location"] = self.ssl_cafile
        return conf

    def _raise_on_auth_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            raise KafkaAuthError(
                f"Kafka authentication failed for user {self.sasl_username!r} with "
                f"{self.sasl_mechanism} (check MTA_SASL_USERNAME / MTA_SASL_PASSWORD / "
                f"MTA_SASL_MECHANISM): {err.str()}"
            )


def parse_env(
    cls: type, environ: Mapping[str, str] | None, mask: Callable[[str], str] = mask_secrets
) -> dict[str, Any]:
    """The values of ``cls``'s ``_var`` fields that ``environ`` (default: the process's) sets,
    parsed. A bad one raises ConfigError naming its variable, the value as ``mask`` shows it
    (a secret field's not at all), and the parser's message with the value's secrets masked."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = f.metadata["env"]
        raw = env.get(name)
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw.strip())
        except ValueError as exc:
            shown, detail = MASK if f.metadata["secret"] else mask(raw), str(exc)
            for secret in [raw] if f.metadata["secret"] else url_secrets(raw):
                detail = detail.replace(secret, MASK)
            raise ConfigError(f"{name}={shown!r}: {detail}") from None
    return values


class KafkaAuthError(ConfigError):
    """The broker rejected the configured Kafka credentials."""


ENV_VARS: frozenset[str] = frozenset(f.metadata["env"] for f in fields(Settings))
# Read with os.environ outside the settings object (docs/operations.md lists them).
OUTSIDE_VARS: frozenset[str] = frozenset(
    {
        "MTA_SCHEMA_DIR",
        "MTA_RELIABILITY",
        "MTA_FAUST_PATCH_CHECK",
        "MTA_CORPORA_DIR",
        "MTA_FUZZ_EXAMPLES",
        # sink-postgres (streams/serving/pg_config.py)
        "MTA_POSTGRES_DSN",
        "MTA_POSTGRES_GROUP",
        "MTA_POSTGRES_BATCH_ROWS",
        "MTA_POSTGRES_BATCH_WAIT_MS",
        "MTA_POSTGRES_RETRY_MAX_S",
    }
)
KNOWN_VARS: frozenset[str] = ENV_VARS | OUTSIDE_VARS


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``MTA_*`` variable in ``environ`` that nothing reads (a typo would
    otherwise be ignored), with the closest known name when one is close."""
    known = sorted(KNOWN_VARS)
    lines = []
    for name in sorted(environ):
        if not name.upper().startswith("MTA_") or name in KNOWN_VARS:
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{name} is not a known variable and is ignored{hint}")
    return lines
