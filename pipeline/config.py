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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
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

from pipeline.alert.settings import (
    GroupingConfig,
    MaintenanceWindow,
    OutboxConfig,
    RateLimitConfig,
    RouteConfig,
)

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
    sasl_plain_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_password_file: Path | None = None
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
        for name in ("sasl_plain_password", "ssl_password"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise ValueError(f"set at most one of {name} and {name}_file")
        # the password may arrive only in the pod's environment: checked when a client is built
        usernamed = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        if self.sasl_mechanism in usernamed and not self.sasl_plain_username:
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_plain_username")
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


class StaticDiscovery(_Section):
    """Scrape the proxies listed in ``collector.targets``."""

    kind: Literal["static"] = "static"


SD_FILE_SUFFIXES = (".json", ".yml", ".yaml")


class FileSDDiscovery(_Section):
    """Prometheus ``file_sd`` files, re-read whenever one changes."""

    kind: Literal["file_sd"] = "file_sd"
    files: list[str] = Field(
        min_length=1,
        description="Paths; the last path element may be a glob (targets/*.json).",
    )

    @field_validator("files")
    @classmethod
    def _suffixes(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if not f.endswith(SD_FILE_SUFFIXES)]
        if bad:
            raise ValueError(f"file_sd files must end in .json, .yml or .yaml: {bad}")
        return v


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class KubernetesDiscovery(_Section):
    """Meshed pods from the Kubernetes API: list, then watch."""

    kind: Literal["kubernetes"] = "kubernetes"
    namespaces: list[Annotated[str, Field(pattern=_DNS_LABEL)]] = Field(
        default_factory=list, description="Empty: every namespace (cluster-wide pod access)."
    )
    label_selector: str | None = Field(None, description="Extra selector, e.g. app in (web,api)")
    control_plane_namespace: str | None = Field(
        "linkerd",
        description="Keep pods whose linkerd.io/control-plane-ns is this (null: any meshed pod).",
    )
    kubeconfig: Path | None = Field(None, description="null: in-cluster service account.")
    context: str | None = Field(None, description="Kubeconfig context; null: current-context.")
    watch_timeout_seconds: int = Field(300, ge=10, le=3600)
    request_timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("namespaces")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("namespaces are listed twice")
        return v

    @model_validator(mode="after")
    def _context_needs_kubeconfig(self) -> KubernetesDiscovery:
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("context is a kubeconfig setting: set kubeconfig too")
        if self.label_selector is not None and not self.label_selector.strip():
            raise ValueError("label_selector is empty: leave it out instead")
        return self


Discovery = Annotated[
    StaticDiscovery | FileSDDiscovery | KubernetesDiscovery, Field(discriminator="kind")
]


class CollectorConfig(_Section):
    source: Literal["scrape", "simulated", "prometheus"] = "scrape"
    targets: list[StaticTarget] = Field(default_factory=list)
    discovery: Discovery = Field(default_factory=StaticDiscovery)
    exclude_ports: list[int] = Field(
        default_factory=lambda: [4191],
        description="Inbound target ports left out of golden metrics (admin port, probes).",
    )
    concurrency: int = Field(64, ge=1)
    gzip: bool = True
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    parse_workers: int | Literal["auto"] = Field(
        "auto",
        description="Processes parsing bodies; 0: on the event loop; auto: cores - 1, at most 4.",
    )
    metrics_address: str | None = Field(
        None,
        description="host:port of the collector's /metrics, /healthz, /readyz; "
        "null: observe.address (127.0.0.1:9464 unless changed).",
    )

    @field_validator("parse_workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v == "auto":
            return v
        text = v.strip() if isinstance(v, str) else v
        if isinstance(text, str) and text.lstrip("-").isdigit():
            text = int(text)
        if not isinstance(text, int) or isinstance(text, bool):
            raise ValueError(f"{v!r} is neither 'auto' nor a number of processes")
        if not 0 <= text <= 64:
            raise ValueError(f"{v!r}: use 'auto' or 0 (parse on the event loop) to 64 processes")
        return text

    @field_validator("metrics_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{v!r} is not host:port")
        return v

    @model_validator(mode="after")
    def _targets_are_static(self) -> CollectorConfig:
        if self.targets and self.discovery.kind != "static":
            raise ValueError(
                f"targets are only read with discovery kind static, not {self.discovery.kind}"
            )
        return self


_PROM_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
_PROM_MATCHER = r'[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"'
_PROM_SELECTOR = rf"^\s*(?:{_PROM_MATCHER}\s*(?:,\s*{_PROM_MATCHER}\s*)*,?)?\s*$"
PromLabel = Annotated[str, Field(pattern=_PROM_LABEL)]


def _linkerd_workload_labels() -> dict[str, str]:
    # linkerd-viz copies the pod's linkerd.io/proxy-<kind> label; proxy-job becomes k8s_job.
    kinds = ("deployment", "statefulset", "daemonset", "job", "replicaset", "replicationcontroller")
    return {k: "k8s_job" if k == "job" else k for k in kinds}


class PrometheusLabelsConfig(_Section):
    """Label names the scrape job puts on every proxy series (linkerd-viz's by default)."""

    namespace: PromLabel = "namespace"
    pod: PromLabel = "pod"
    workload: dict[str, PromLabel] = Field(
        default_factory=_linkerd_workload_labels,
        min_length=1,
        description="Workload kind -> label, in priority order: a pod's workload is the "
        "first one it carries (a pod with none is its own workload, kind pod).",
    )


class PrometheusSourceConfig(_Section):
    """The Prometheus that scrapes the proxies (``collector.source: prometheus``)."""

    url: HttpUrl = "http://prometheus.linkerd-viz.svc.cluster.local:9090"
    selector: str = Field(
        'job="linkerd-proxy"',
        description="Matchers of the proxies' scrape job, added to every query.",
    )
    labels: PrometheusLabelsConfig = Field(default_factory=PrometheusLabelsConfig)
    timeout_seconds: float = Field(5.0, gt=0, description="Per HTTP request.")
    max_attempts: int = Field(3, ge=1, description="Per query, within the window's time.")
    backoff_seconds: float = Field(0.25, gt=0, description="First retry delay, then doubled.")
    query_delay_seconds: float = Field(
        2.0, ge=0, description="Wait after a window ends for scrapes started before it to land."
    )
    stale_after_seconds: float = Field(
        30.0, gt=0, description="A sample older than this at a window edge is no data."
    )
    concurrency: int = Field(4, ge=1, le=64, description="Queries in flight at once.")
    recorded: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Read meshwatch's recording rules (deploy/prometheus/) instead of raw "
        "series: auto when they are loaded for this configuration, else raw queries.",
    )
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    tls_verify: bool = True
    ca_file: Path | None = None

    @field_validator("recorded", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: object) -> object:
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("selector")
    @classmethod
    def _matchers(cls, v: str) -> str:
        if not re.match(_PROM_SELECTOR, v):
            raise ValueError(f'{v!r} is not a list of PromQL matchers like job="linkerd-proxy"')
        return v.strip().rstrip(",").strip()

    @model_validator(mode="after")
    def _one_token(self) -> PrometheusSourceConfig:
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("set at most one of bearer_token and bearer_token_file")
        return self


class DetectorStateConfig(_Section):
    """Checkpoints of per-route state to the compacted detector-state topic."""

    enabled: bool = True
    checkpoint_interval_seconds: float = Field(
        30.0, gt=0, description="A partition whose state changed is checkpointed this often."
    )
    chunk_bytes: int = Field(
        900_000, ge=10_000, description="Largest checkpoint message (whole routes per message)."
    )
    max_replay_records: int = Field(
        200_000,
        ge=0,
        description="On takeover, input records after the checkpoint replayed at most; "
        "beyond this the gap is skipped (those windows are not learned).",
    )


class DetectorMetricsConfig(_Section):
    """Per-route score and band gauges on /metrics (bounded cardinality)."""

    enabled: bool = True
    top_routes: int = Field(
        100,
        ge=0,
        description="Routes exported per kind besides those with an open finding: "
        "the highest-scoring ones.",
    )
    max_open_routes: int = Field(
        1000, ge=0, description="Cap on routes exported per kind for having an open finding."
    )


class AdmissionConfig(_Section):
    """What the detector accepts before judging a window (see docs/architecture.md)."""

    max_future_seconds: float = Field(
        300.0,
        gt=0,
        description="Windows ending further ahead of this host's clock go to the DLQ.",
    )
    late_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="Windows ending this long before now are judged but counted as late.",
    )


class DetectorConfig(_Section):
    """Detection: warm-up and guards, per-kind score thresholds, adaptation, persistence.

    Scores are calibrated in [0, 1] per kind (see ``models/detector.py``);
    the thresholds below turn a score into an anomalous window, and the
    persistence settings turn anomalous windows into a finding.
    """

    warmup_windows: int = Field(30, ge=1)
    min_requests: int = Field(20, ge=0, description="Below this a window is not judged.")
    latency_threshold: float = Field(0.999, gt=0, lt=1)
    error_threshold: float = Field(0.999, gt=0, lt=1)
    tls_threshold: float = Field(0.999, gt=0, lt=1)
    mtls_threshold: float = Field(0.999, gt=0, lt=1)
    traffic_threshold: float = Field(0.9999, gt=0, lt=1)
    learn_threshold: float = Field(
        0.99, gt=0, lt=1, description="Windows scoring above this are not learned."
    )
    latency_min_ratio: float = Field(
        1.5, ge=1.0, description="Observed/expected p95-p99 ratio below which nothing fires."
    )
    error_min_ratio: float = Field(0.01, ge=0, description="Error ratio floor to fire on.")
    error_min_factor: float = Field(
        2.0, ge=1.0, description="Error ratio must also reach this multiple of the usual one."
    )
    error_outlier_spread_clip: float = Field(
        0.0,
        ge=0,
        description="Windows left out of the error level (anomalous, incidents) still move "
        "the error ratio's spread, clipped at this many spreads (0: off; for series whose "
        "bursts are routine).",
    )
    error_pair_threshold: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Two error windows in a row scoring at least this (guards permitting) make "
        "the second anomalous (0: off; a raised ratio held, each window under error_threshold).",
    )
    traffic_min_expected: float = Field(
        20.0, ge=0, description="Drops are judged only where this many requests are expected."
    )
    traffic_drop_ratio: float = Field(0.5, gt=0, lt=1)
    traffic_surge_ratio: float = Field(
        3.0, gt=1, description="A surge is at least this multiple of the expected rate."
    )
    traffic_surge_held_ratio: float = Field(
        0.0,
        ge=0,
        description="... or at least this multiple once it has held traffic_surge_hold_seconds "
        "(0: off; brief bursts of a busy service stay under traffic_surge_ratio).",
    )
    traffic_surge_hold_seconds: float = Field(3600.0, gt=0)
    traffic_spike_ratio: float = Field(
        0.0,
        ge=0,
        description="A lone window at least this multiple of the expected rate, back under it "
        "in the next window, fires a surge (0: off; persistence filters it otherwise).",
    )
    cert_min_ttl_seconds: float = Field(4 * 3600.0, gt=0)
    cert_min_ttl_fraction: float = Field(
        0.25, gt=0, lt=1, description="... or this share of the certificate lifetime, if less."
    )
    spread_tail_dof: float = Field(
        5.0,
        ge=0,
        description="Student's t degrees of freedom for distances in learned spreads "
        "(heavy-tailed real series); 0 is the normal.",
    )
    adapt_half_life_windows: float = Field(60.0, gt=1)
    traffic_half_life_windows: float = Field(30.0, gt=1)
    rebaseline_windows: int = Field(
        60,
        ge=2,
        description="A latency/traffic shift that holds a stable level this many windows "
        "becomes the new normal.",
    )
    rebaseline_gap: int = Field(
        3,
        ge=0,
        description="Calm windows in a row that a shifted run survives (a noisy new level "
        "dips under the threshold now and then).",
    )
    rebaseline_max_ratio: float = Field(4.0, ge=1.0)
    season_period_seconds: float = Field(
        86400.0, ge=0, description="Daily profile of the request rate; 0 turns it off."
    )
    season_bins: int = Field(
        48,
        ge=1,
        le=288,
        description="Profile bins in all; with season_weekend, half for weekdays and half for "
        "weekend days (Saturday, Sunday UTC).",
    )
    season_half_life_periods: float = Field(3.0, gt=0)
    season_weekend: bool = True
    fire_after: int = Field(2, ge=1, description="Fire after this many anomalous windows ...")
    fire_window: int = Field(3, ge=1, description="... out of the last this many.")
    persist_seconds: float = Field(
        300.0,
        ge=0,
        description="... or fewer windows once they span this long (one hourly window is an "
        "hour of evidence); 0 counts windows only.",
    )
    resolve_after: int = Field(3, ge=1, description="Resolve after this many normal windows.")
    evidence_points: int = Field(12, ge=1, le=256)
    target_down_windows: int = Field(
        3, ge=1, description="Fire target_down after a workload's pods are down this many windows."
    )
    max_poll_records: int = Field(
        1000,
        ge=1,
        description="Most GoldenBatch messages per poll batch (instead of kafka.max_poll_records): "
        "the detector's per-batch work (rounds of the baselines, the trained layer) is "
        "cheaper per route-sample in wider batches.",
    )
    state: DetectorStateConfig = Field(default_factory=DetectorStateConfig)
    metrics: DetectorMetricsConfig = Field(default_factory=DetectorMetricsConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)

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


class _SecretSink(_Section):
    """A sink entry whose secrets come inline, from a mounted file or from the environment.

    ``one_of`` lists groups of fields of which exactly one must be set; the
    ``*_env`` fields name an environment variable (read when the sink is
    built), so an example file can be committed without its secrets.
    """

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> Self:
        for group in self.one_of:
            given = [n for n in group if getattr(self, n) is not None]
            if len(given) != 1:
                raise ValueError(f"set exactly one of {', '.join(group)}")
        return self


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class SlackBotSink(_SecretSink):
    """Slack Web API with a bot token (``chat:write``): one message per incident.

    The first notice is a ``chat.postMessage``; updates and the resolve edit
    that message (``chat.update``) and add a reply in its thread.
    """

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (("token", "token_file", "token_env"),)
    type: Literal["slack_bot"] = "slack_bot"
    name: str = "slack-bot"
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    channel: str = Field(min_length=1, description="Channel ID (C…) or name; the ID is stored.")
    api_url: HttpUrl = "https://slack.com/api"
    thread_replies: bool = Field(True, description="Post updates and resolves in the thread too.")
    broadcast_resolve: bool = Field(True, description="Also show the resolve reply in the channel.")
    attach_chart: bool = Field(False, description="Upload a PNG chart (needs files:write).")


class TeamsSink(_SecretSink):
    """Microsoft Teams through a Workflows (Power Automate) webhook; the URL is the secret."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("webhook_url", "webhook_url_file", "webhook_url_env"),
    )
    type: Literal["teams"] = "teams"
    name: str = "teams"
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    webhook_url_env: str | None = None


class MattermostSink(_SecretSink):
    """Mattermost incoming webhook (Slack-compatible attachments)."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("webhook_url", "webhook_url_file", "webhook_url_env"),
    )
    type: Literal["mattermost"] = "mattermost"
    name: str = "mattermost"
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    webhook_url_env: str | None = None
    channel: str | None = Field(None, description="Override the webhook's channel.")
    username: str | None = "meshwatch"
    icon_url: str | None = None


class DiscordSink(_SecretSink):
    """Discord webhook: posted with ``?wait=true``, edited in place on update and resolve."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("webhook_url", "webhook_url_file", "webhook_url_env"),
    )
    type: Literal["discord"] = "discord"
    name: str = "discord"
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    webhook_url_env: str | None = None
    username: str | None = "meshwatch"
    attach_chart: bool = False


class GoogleChatSink(_SecretSink):
    """Google Chat incoming webhook; one thread per incident (``threadKey``)."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("webhook_url", "webhook_url_file", "webhook_url_env"),
    )
    type: Literal["google_chat"] = "google_chat"
    name: str = "google-chat"
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    webhook_url_env: str | None = None


class PagerDutySink(_SecretSink):
    """PagerDuty Events API v2; ``dedup_key`` is the incident fingerprint."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("routing_key", "routing_key_file", "routing_key_env"),
    )
    type: Literal["pagerduty"] = "pagerduty"
    name: str = "pagerduty"
    routing_key: SecretStr | None = None
    routing_key_file: Path | None = None
    routing_key_env: str | None = None
    url: HttpUrl = Field(
        "https://events.pagerduty.com/v2/enqueue",
        description="events.eu.pagerduty.com for the EU service region.",
    )
    client: str = "meshwatch"
    client_url: str | None = None


class _JiraSink(_SecretSink):
    url: HttpUrl = Field(description="Site base URL, e.g. https://example.atlassian.net")
    project: str = Field(min_length=1, description="Project key, e.g. OPS")
    issue_type: str = "Task"
    labels: list[str] = Field(default_factory=lambda: ["meshwatch"])
    resolve_transition: str = Field(
        "Done", min_length=1, description="Transition name (any case) or id applied on resolve."
    )
    extra_fields: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the create call (required custom fields)."
    )

    @field_validator("labels")
    @classmethod
    def _no_spaces(cls, v: list[str]) -> list[str]:
        bad = [label for label in v if not label or any(c.isspace() for c in label)]
        if bad:
            raise ValueError(f"Jira labels cannot be empty or contain spaces: {bad}")
        return v


class JiraCloudSink(_JiraSink):
    """Jira Cloud, REST v3: Basic auth with the account e-mail and an API token."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("api_token", "api_token_file", "api_token_env"),
    )
    type: Literal["jira_cloud"] = "jira_cloud"
    name: str = "jira"
    email: str = Field(min_length=3)
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    api_token_env: str | None = None


class JiraDataCenterSink(_JiraSink):
    """Jira Data Center / Server 8.14+, REST v2: a personal access token as Bearer."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (("token", "token_file", "token_env"),)
    type: Literal["jira_dc"] = "jira_dc"
    name: str = "jira"
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None


class GitHubSink(_SecretSink):
    """GitHub Issues: one open issue per incident, found by a fingerprint label."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (("token", "token_file", "token_env"),)
    type: Literal["github"] = "github"
    name: str = "github"
    repository: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    api_url: HttpUrl = Field(
        "https://api.github.com", description="GitHub Enterprise: https://HOST/api/v3"
    )
    labels: list[str] = Field(default_factory=lambda: ["meshwatch"])


class ServiceNowSink(_SecretSink):
    """ServiceNow incident through the Table API; ``correlation_id`` is the fingerprint.

    State and close-code values differ between instances (reference §2.5), so
    they are settings; the defaults are the out-of-the-box ones.
    """

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("password", "password_file", "password_env", "token", "token_file", "token_env"),
    )
    type: Literal["servicenow"] = "servicenow"
    name: str = "servicenow"
    instance_url: HttpUrl = Field(description="e.g. https://example.service-now.com")
    username: str | None = Field(None, description="Basic auth user (with a password).")
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    token: SecretStr | None = Field(None, description="OAuth access token (Bearer).")
    token_file: Path | None = None
    token_env: str | None = None
    table: str = "incident"
    correlation_display: str = "meshwatch"
    resolved_state: str = "6"
    close_code: str = "Solution provided"
    urgency: dict[str, str] = Field(
        default_factory=lambda: {"critical": "1", "warning": "2", "info": "3"}
    )
    impact: dict[str, str] = Field(
        default_factory=lambda: {"critical": "1", "warning": "2", "info": "3"}
    )
    assignment_group: str | None = None
    caller_id: str | None = None
    category: str | None = None

    @model_validator(mode="after")
    def _user_with_password(self) -> ServiceNowSink:
        uses_password = any(
            v is not None for v in (self.password, self.password_file, self.password_env)
        )
        if uses_password and not self.username:
            raise ValueError("a password needs a username")
        return self


class OpsgenieSink(_SecretSink):
    """Opsgenie (end of life 2027-04-05) or Jira Service Management ops alerts by alias."""

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = (("api_key", "api_key_file", "api_key_env"),)
    type: Literal["opsgenie"] = "opsgenie"
    name: str = "opsgenie"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_key_env: str | None = None
    api_url: HttpUrl = Field(
        "https://api.opsgenie.com",
        description="EU: https://api.eu.opsgenie.com; JSM: https://api.atlassian.com/jsm/ops/integration",
    )
    tags: list[str] = Field(default_factory=lambda: ["meshwatch"])
    priorities: dict[str, str] = Field(
        default_factory=lambda: {"critical": "P1", "warning": "P3", "info": "P5"}
    )


class AlertmanagerSink(_SecretSink):
    """Prometheus Alertmanager API v2 (``POST /api/v2/alerts``).

    Firing alerts expire at ``endsAt`` unless posted again, so the alerter
    must re-post open incidents every ``resend_interval_seconds``; ``endsAt``
    is set four intervals ahead, as Prometheus does.
    """

    one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()
    type: Literal["alertmanager"] = "alertmanager"
    name: str = "alertmanager"
    url: HttpUrl = Field(description="Alertmanager base URL, e.g. http://alertmanager:9093")
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    bearer_token_env: str | None = None
    resend_interval_seconds: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _at_most_one_token(self) -> AlertmanagerSink:
        given = [
            v
            for v in (self.bearer_token, self.bearer_token_file, self.bearer_token_env)
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError("set at most one of bearer_token, bearer_token_file, bearer_token_env")
        return self


SinkConfig = (
    ConsoleSink
    | WebhookSink
    | SlackSink
    | SlackBotSink
    | TeamsSink
    | MattermostSink
    | DiscordSink
    | GoogleChatSink
    | PagerDutySink
    | JiraCloudSink
    | JiraDataCenterSink
    | GitHubSink
    | ServiceNowSink
    | OpsgenieSink
    | AlertmanagerSink
)
#: One configured destination, told apart by its ``type``.
Sink = Annotated[SinkConfig, Field(discriminator="type")]


class AlerterConfig(_Section):
    sinks: list[Sink] = Field(default_factory=lambda: [ConsoleSink()])  # type: ignore[arg-type]
    retry: RetryConfig = Field(default_factory=RetryConfig)
    links: dict[str, str] = Field(
        default_factory=dict,
        description="Link templates, e.g. grafana: https://grafana/d/x?var-route={route_key}",
    )
    # Grouping, routing, silences and delivery policy (models in pipeline/alert/settings.py).
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    routes: list[RouteConfig] = Field(
        default_factory=list, description="Tried in order; first match wins unless continue."
    )
    default_sinks: list[str] | None = Field(
        None, description="Sinks for incidents no route matches; null: every sink."
    )
    flap_damping_seconds: float | None = Field(
        None,
        ge=0,
        description="Hold a resolve this long; a re-fire meanwhile continues the incident. "
        "null: three windows.",
    )
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list)
    rate_limits: dict[str, RateLimitConfig] = Field(
        default_factory=dict, description="Per sink name; unset: the sink type's default."
    )
    delivery_budget_seconds: float = Field(
        2.0, gt=0, description="Longest a batch or timer spends delivering; the rest waits."
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    resolved_retention_seconds: float = Field(
        3600.0, ge=0, description="Keep resolved incidents this long (replayed findings)."
    )
    silence_refresh_seconds: float = Field(2.0, gt=0)

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, v: list[Any]) -> list[Any]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _known_sinks(self) -> AlerterConfig:
        names = {s.name for s in self.sinks}
        named = [
            *(f"routes.{i}.sinks" for i, r in enumerate(self.routes) if set(r.sinks) - names),
            *(["default_sinks"] if set(self.default_sinks or ()) - names else []),
            *(["rate_limits"] if set(self.rate_limits) - names else []),
        ]
        if named:
            raise ValueError(f"{', '.join(named)} name sinks not in alerter.sinks {sorted(names)}")
        return self


class PrometheusHistoryConfig(_Section):
    """``meshwatch train --source prometheus``: range queries to the ``prometheus`` server.

    See ``pipeline/train/prometheus_history.py``: each query covers
    ``chunk_seconds`` of windows for a shard of whole namespaces of at most
    ``pods_per_query`` pods, so memory stays bounded whatever the range.
    """

    chunk_seconds: float = Field(3600.0, gt=0, description="Time one range query covers.")
    max_points: int = Field(
        500_000,
        ge=1000,
        description="Points one chunk of one shard may return (about 350 bytes each in memory); "
        "fewer windows per chunk on larger meshes.",
    )
    pods_per_query: int = Field(
        500, ge=1, description="Namespaces are read in shards of at most this many pods."
    )
    timeout_seconds: float = Field(60.0, gt=0, description="Per HTTP request.")
    max_attempts: int = Field(4, ge=1, description="Per query, then training stops (exit 4).")
    backoff_seconds: float = Field(1.0, gt=0, description="First retry delay, then doubled.")


class ModelsConfig(_Section):
    """Trained models: the registry, how their scores join the baselines', retraining.

    See ``docs/models.md``. ``combine: max`` reports the larger of the two
    calibrated scores; fire/resolve decisions stay the baselines' (so a model
    can never make detection worse by default). ``off`` ignores the model.
    """

    registry_dir: str = Field(
        "meshwatch-models", description="Registry root; relative paths are under the cwd."
    )
    combine: Literal["max", "off"] = "max"
    prefilter_score: float = Field(
        0.99,
        ge=0,
        le=1,
        description="Only windows whose baseline score for a kind reaches this are scored "
        "by the model (keeps the detector's throughput).",
    )
    false_alert_budget: float = Field(
        1e-4, gt=0, lt=0.5, description="Share of normal windows a model may flag."
    )
    train_hours: float = Field(168.0, gt=0, description="History a training run reads.")
    train_segments: int = Field(
        24,
        ge=0,
        description="Golden-topic history is read in this many time segments spread over "
        "the range (warm-up + sampled minutes each); 0 reads the whole range.",
    )
    train_segment_minutes: float = Field(
        15.0, gt=0, description="Sampled minutes of each segment, after its warm-up."
    )
    train_warmup_minutes: float = Field(
        10.0, ge=0, description="Minutes judged before each segment to warm its baselines."
    )
    train_workers: int = Field(
        0, ge=0, description="Processes reading the golden topic's partitions; 0 = one per CPU."
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    min_training_windows: int = Field(1000, ge=1)
    reports_dir: str = "meshwatch-reports"
    history_source: Literal["golden", "prometheus"] = Field(
        "golden",
        description="Where train reads history without an input file: the golden topic "
        "or Prometheus range queries (--source overrides).",
    )
    prometheus_history: PrometheusHistoryConfig = Field(default_factory=PrometheusHistoryConfig)
    route_min_windows: int = Field(
        200,
        ge=10,
        description="Training windows a route needs (per kind) for its own score offset; "
        "others use their route class's.",
    )
    route_quantile: float = Field(
        0.9, gt=0.5, lt=1, description="Upper quantile a route's offset is fitted at."
    )


class ObserveConfig(_Section):
    """Where each stage serves /metrics, /healthz and /readyz, and how it logs."""

    address: str = Field(
        "127.0.0.1:9464",
        pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$",
        description="host:port; use 0.0.0.0:9464 in a cluster so probes reach it.",
    )
    enabled: bool = True
    log_format: Literal["text", "json"] = "text"


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
    prometheus: PrometheusSourceConfig = Field(default_factory=PrometheusSourceConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    alerter: AlerterConfig = Field(default_factory=AlerterConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
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
    except UnicodeDecodeError as exc:  # found by fuzzing: it escaped as a traceback
        raise ConfigError(str(path), [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
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
    odd = [repr(k) for k in data if not isinstance(k, str)]
    if odd:  # found by fuzzing: MeshwatchConfig(**data) raised TypeError
        raise ConfigError(str(path), [f"section names must be text, not {', '.join(odd)}"])
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


def read_secret(value: SecretStr | None, file: Path | None, env: str | None = None) -> str | None:
    """A secret's value from the inline field, the mounted file or the environment.

    A named environment variable that is unset or empty is an error here, at
    start-up, rather than a sink that fails every delivery later.
    """
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    if env is not None:
        found = os.environ.get(env, "").strip()
        if not found:
            raise ValueError(f"environment variable {env} is not set")
        return found
    return None


def effective_config(cfg: MeshwatchConfig) -> dict[str, Any]:
    """The configuration as printable data, with every secret masked."""
    return cfg.model_dump(mode="json")
