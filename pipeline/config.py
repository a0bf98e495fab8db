"""Configuration: one YAML file plus ``MESHWATCH_*`` environment overrides.

Precedence, highest first: explicit overrides passed in code, environment
variables (``MESHWATCH_KAFKA__BOOTSTRAP_SERVERS=...``; nested fields use
``__``), the YAML file, then the defaults below — which are also what
``config/default.yaml`` spells out. Secrets are ``SecretStr`` so that every
printout (``meshwatch config check``, logs, reprs) masks them; they can also
come from files (``*_file`` fields) so Kubernetes Secrets can be mounted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "MESHWATCH_"
CONFIG_ENV = "MESHWATCH_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaConfig(_Section):
    # NoDecode: from the environment this is "host:port,host:port", not JSON.
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:9092"], min_length=1
    )
    client_id: str = "meshwatch"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_records: int = Field(500, ge=1)
    poll_timeout_ms: int = Field(500, ge=1)
    linger_ms: int = Field(10, ge=0)
    compression_type: Literal["lz4", "zstd", "gzip", "snappy"] | None = "lz4"
    acks: Literal["all", "1", "0"] = "all"
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed through verbatim to kafka-python clients.",
    )

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, v: list[str]) -> list[str]:
        for server in v:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return v

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        return self


class TopicSpec(_Section):
    partitions: int = Field(ge=1)
    compacted: bool = False
    retention_ms: int | None = None


def _default_topics() -> dict[str, TopicSpec]:
    return {
        "golden": TopicSpec(partitions=6),
        "findings": TopicSpec(partitions=3),
        "detector-state": TopicSpec(partitions=6, compacted=True),
        "incidents": TopicSpec(partitions=3, compacted=True),
        "models": TopicSpec(partitions=1, compacted=True),
        "dlq": TopicSpec(partitions=1, retention_ms=14 * 24 * 3600 * 1000),
    }


TOPIC_ROLES = ("golden", "findings", "detector-state", "incidents", "models", "dlq")


class TopicsConfig(_Section):
    prefix: str = "meshwatch."
    version: str = "v1"
    replication_factor: int = Field(1, ge=1)
    specs: dict[str, TopicSpec] = Field(default_factory=_default_topics)

    @field_validator("specs")
    @classmethod
    def _known_roles(cls, v: dict[str, TopicSpec]) -> dict[str, TopicSpec]:
        unknown = set(v) - set(TOPIC_ROLES)
        if unknown:
            raise ValueError(f"unknown topic roles {sorted(unknown)}; known: {list(TOPIC_ROLES)}")
        return {**_default_topics(), **v}

    @model_validator(mode="after")
    def _co_partitioned(self) -> TopicsConfig:
        # The alerter restores incidents partition p when it is given
        # findings partition p; that only works with equal counts.
        if self.specs["incidents"].partitions != self.specs["findings"].partitions:
            raise ValueError("incidents and findings need the same number of partitions")
        return self

    def name(self, role: str) -> str:
        if role not in TOPIC_ROLES:
            raise KeyError(role)
        return f"{self.prefix}{role}.{self.version}"

    @property
    def golden(self) -> str:
        return self.name("golden")

    @property
    def findings(self) -> str:
        return self.name("findings")

    @property
    def incidents(self) -> str:
        return self.name("incidents")

    @property
    def dlq(self) -> str:
        return self.name("dlq")

    @property
    def detector_state(self) -> str:
        return self.name("detector-state")

    @property
    def models(self) -> str:
        return self.name("models")


class WindowConfig(_Section):
    seconds: float = Field(10.0, gt=0, le=3600)
    scrape_timeout_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _timeout_fits(self) -> WindowConfig:
        if self.scrape_timeout_seconds > self.seconds:
            raise ValueError("scrape_timeout_seconds must not exceed the window length")
        return self


class StaticTarget(_Section):
    """One proxy's admin endpoint and the workload it belongs to."""

    url: str = Field(pattern=r"^https?://", description="e.g. http://10.0.0.1:4191/metrics")
    namespace: str = Field(min_length=1)
    workload: str = Field(min_length=1)
    kind: str = "deployment"
    pod: str | None = None


class CollectorConfig(_Section):
    source: Literal["scrape", "simulated"] = "scrape"
    targets: list[StaticTarget] = Field(default_factory=list)
    exclude_ports: list[int] = Field(
        default_factory=lambda: [4191],
        description="Inbound target ports left out of golden metrics (admin port, probes).",
    )
    concurrency: int = Field(64, ge=1)
    gzip: bool = True
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)


class DetectorConfig(_Section):
    warmup_windows: int = Field(30, ge=1)
    min_requests: int = Field(20, ge=0, description="Below this a window is not judged.")
    latency_threshold: float = Field(0.999, gt=0, lt=1)
    error_threshold: float = Field(0.999, gt=0, lt=1)
    tls_threshold: float = Field(0.999, gt=0, lt=1)
    mtls_threshold: float = Field(0.999, gt=0, lt=1)
    latency_min_ratio: float = Field(
        1.5, ge=1.0, description="Observed/expected p99 ratio below which nothing fires."
    )
    error_min_ratio: float = Field(0.02, ge=0, description="Error ratio floor to fire on.")
    adapt_half_life_windows: float = Field(60.0, gt=1)
    fire_after: int = Field(2, ge=1, description="Fire after this many anomalous windows ...")
    fire_window: int = Field(3, ge=1, description="... out of the last this many.")
    resolve_after: int = Field(3, ge=1, description="Resolve after this many normal windows.")
    evidence_points: int = Field(12, ge=1, le=256)

    @model_validator(mode="after")
    def _persistence(self) -> DetectorConfig:
        if self.fire_after > self.fire_window:
            raise ValueError("fire_after must be <= fire_window")
        if self.fire_window > 32:
            raise ValueError("fire_window must be <= 32")
        return self


class RetryConfig(_Section):
    max_attempts: int = Field(6, ge=1)
    initial_backoff_seconds: float = Field(0.5, gt=0)
    max_backoff_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)


class ConsoleSink(_Section):
    type: Literal["console"] = "console"
    name: str = "console"


class WebhookSink(_Section):
    """Generic webhook, Alertmanager webhook v4 payload."""

    type: Literal["webhook"] = "webhook"
    name: str = "webhook"
    url: str
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None


class SlackSink(_Section):
    """Slack incoming webhook; the URL itself is the secret."""

    type: Literal["slack"] = "slack"
    name: str = "slack"
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None

    @model_validator(mode="after")
    def _one_url(self) -> SlackSink:
        if (self.webhook_url is None) == (self.webhook_url_file is None):
            raise ValueError("set exactly one of webhook_url or webhook_url_file")
        return self


Sink = Annotated[ConsoleSink | WebhookSink | SlackSink, Field(discriminator="type")]


class AlerterConfig(_Section):
    sinks: list[Sink] = Field(default_factory=lambda: [ConsoleSink()])  # type: ignore[arg-type]
    retry: RetryConfig = Field(default_factory=RetryConfig)
    links: dict[str, str] = Field(
        default_factory=dict,
        description="Link templates, e.g. grafana: https://grafana/d/x?var-route={route_key}",
    )

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, v: list[Any]) -> list[Any]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique; repeated: {dupes}")
        return v


class MeshwatchConfig(BaseSettings):
    """The whole configuration of every stage."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    cluster: str = "local"
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    collector: CollectorConfig = Field(default_factory=CollectorConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    alerter: AlerterConfig = Field(default_factory=AlerterConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which load_config passes as init
        # kwargs at the lowest priority through _YamlDefaults.
        return (env_settings, init_settings)


class ConfigError(Exception):
    """A configuration that cannot be used, with one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def config_dir() -> Path:
    """The ``config/`` folder: the repo's in a checkout, the packaged copy in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "config", here / "_config"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("meshwatch's config/ folder is missing from this installation")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}invalid YAML: {problem}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["top level must be a mapping of sections"])
    return data


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def format_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling and the section)"
        lines.append(f"{loc}: {msg}")
    return lines


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> MeshwatchConfig:
    """Build the effective configuration, raising :class:`ConfigError` on any problem.

    ``path`` defaults to ``$MESHWATCH_CONFIG``; with neither, only defaults and
    the environment apply (``config/default.yaml`` restates those defaults).
    """
    chosen = path if path is not None else os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = _read_yaml(Path(chosen)) if chosen else {}
    if overrides:
        data = _deep_merge(data, overrides)
    source = str(chosen) if chosen else "<defaults>"
    try:
        return MeshwatchConfig(**data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from exc
    except SettingsError as exc:  # an environment variable that is not valid JSON
        raise ConfigError("environment", [f"{exc} (MESHWATCH_* variables)"]) from exc


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret's value from the inline field or the mounted file, never logged."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    return None


def effective_config(cfg: MeshwatchConfig) -> dict[str, Any]:
    """The configuration as printable data, with every secret masked."""
    return cfg.model_dump(mode="json")
