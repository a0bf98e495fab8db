"""Message contracts shared by every stage.

Every message on a meshwatch topic is one of these pydantic models serialised
as JSON. Each carries a ``schema`` literal naming its type and version, so a
consumer can reject a message meant for another topic (or another version)
with a precise error instead of half-processing it. Models are strict about
what they accept (``extra="forbid"``): a typo in a producer is a loud error
at the first consumer, not a silently missing field.
"""

from __future__ import annotations

import hashlib
import math
from itertools import pairwise
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from pipeline.keys import route_key as make_route_key
from pipeline.keys import workload_key as make_workload_key

Direction = Literal["inbound", "outbound"]
FindingKind = Literal[
    "latency",
    "error_rate",
    "tls_failure",
    "mtls_regression",
    "traffic_drop",
    "traffic_surge",
    "cert_expiry",
    "target_down",
]
Severity = Literal["info", "warning", "critical"]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

#: Upper bounds (ms) of the 26 buckets of the proxy's legacy ``*_latency_ms``
#: histograms; the last bucket is +Inf. GoldenSamples carry bucket deltas in
#: this layout unless they name other bounds.
LINKERD_LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000, math.inf,
)  # fmt: skip


def _bound_in(v: Any) -> Any:
    return math.inf if v == "+Inf" else v


def _bound_out(v: float) -> float | str:
    return "+Inf" if v == math.inf else v


#: A bucket upper bound in ms. JSON has no infinity, so the +Inf bound travels
#: as the string ``"+Inf"`` (as Prometheus writes ``le``).
BoundMs = Annotated[
    float,
    BeforeValidator(_bound_in),
    PlainSerializer(_bound_out, return_type=float | str, when_used="json"),
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PodSlice(_Message):
    """One pod's share of a route's window: enough to name the one bad pod."""

    pod: str
    requests: NonNegInt = 0
    failures: NonNegInt = 0
    latency_sum_ms: NonNegFloat = 0.0


class GoldenSample(_Message):
    """One route of one workload over one window (all pods merged)."""

    window_end: FiniteFloat = Field(description="Unix seconds at which the window closed.")
    window_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    cluster: str = "local"
    namespace: str = Field(min_length=1)
    workload_kind: str = Field(min_length=1, description="deploy, sts, ds, ...")
    workload: str = Field(min_length=1)
    direction: Direction
    route: str = Field(min_length=1, description="rt_route, authority, or '*' for all")
    peer: str | None = Field(default=None, description="Authority or destination workload.")

    requests: NonNegInt = 0
    successes: NonNegInt = 0
    failures: NonNegInt = 0
    status_classes: dict[str, NonNegInt] = Field(
        default_factory=dict, description="Counts by class: 2xx, 4xx, 5xx, grpc_<code>, error."
    )
    latency_bounds_ms: tuple[BoundMs, ...] | None = Field(
        default=None, description="Bucket upper bounds; None means LINKERD_LATENCY_BOUNDS_MS."
    )
    latency_buckets: tuple[NonNegInt, ...] = Field(
        default=(), description="Per-bucket (not cumulative) counts of this window."
    )
    latency_sum_ms: NonNegFloat = 0.0
    p50_ms: NonNegFloat | None = None
    p95_ms: NonNegFloat | None = None
    p99_ms: NonNegFloat | None = None
    mean_ms: NonNegFloat | None = None

    mtls_requests: NonNegInt = 0
    plaintext_requests: NonNegInt = 0
    tls_failures: NonNegInt = Field(
        0,
        description="Inbound: TLS detection timeouts and i/o errors. "
        "Outbound '*': connections refused for want of the peer's identity.",
    )
    cert_ttl_seconds: FiniteFloat | None = None
    cert_refresh_errors: NonNegInt = Field(
        0, description="Failed identity certificate refreshes (2.15+ proxies report them)."
    )

    tcp_open: NonNegInt = 0
    tcp_close: NonNegInt = 0
    tcp_errors: NonNegInt = 0

    pods: tuple[PodSlice, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> GoldenSample:
        b = self.latency_bounds_ms
        if b is not None and (
            not b or b[-1] != math.inf or b[0] <= 0 or any(x >= y for x, y in pairwise(b))
        ):
            raise ValueError("latency_bounds_ms must increase from above 0 and end with +Inf")
        if self.latency_buckets and len(self.latency_buckets) != len(self.bounds_ms):
            raise ValueError(
                f"latency_buckets has {len(self.latency_buckets)} counts "
                f"for {len(self.bounds_ms)} bucket bounds"
            )
        if self.successes + self.failures > self.requests:
            raise ValueError("successes + failures exceed requests")
        return self

    @property
    def workload_key(self) -> str:
        return make_workload_key(self.namespace, self.workload_kind, self.workload)

    @property
    def route_key(self) -> str:
        return make_route_key(self.workload_key, self.direction, self.route)

    @property
    def bounds_ms(self) -> tuple[float, ...]:
        return self.latency_bounds_ms or LINKERD_LATENCY_BOUNDS_MS


class GoldenBatch(_Message):
    """Every route of one workload for one window: one Kafka message.

    Batching per workload keeps all of a workload's routes on one partition
    (so one detector instance sees them in order) and pays the per-message
    cost of Kafka and decoding once per workload rather than once per route.
    """

    schema_: Literal["meshwatch.golden_batch/v1"] = Field(
        "meshwatch.golden_batch/v1", alias="schema"
    )
    workload_key: str = Field(min_length=1)
    window_end: FiniteFloat
    window_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    collector: str = "collector"
    pods_up: tuple[str, ...] = ()
    pods_down: tuple[str, ...] = ()
    samples: tuple[GoldenSample, ...]

    @property
    def id(self) -> str:
        return f"{self.workload_key}@{self.window_end:.3f}"


class EvidencePoint(_Message):
    t: FiniteFloat
    # A default, because encode() drops None: without it a window with no
    # data in the evidence made the whole Finding undecodable downstream.
    value: float | None = None


class Finding(_Message):
    """A detector's verdict on one route and one kind, at one window.

    The id is derived from (route, kind, window, status) so that a detector
    that replays input after a crash emits byte-identical findings, and the
    alerter can drop the repeats.
    """

    schema_: Literal["meshwatch.finding/v1"] = Field("meshwatch.finding/v1", alias="schema")
    id: str
    route_key: str
    namespace: str
    workload_kind: str
    workload: str
    direction: Direction
    route: str
    kind: FindingKind
    status: Literal["firing", "resolved"]
    severity: Severity = "warning"
    score: Annotated[float, Field(ge=0.0, le=1.0)]
    # Defaults for the same reason as EvidencePoint.value: encode() drops None.
    observed: float | None = None
    expected_low: float | None = None
    expected_high: float | None = None
    unit: str
    window_end: FiniteFloat
    started_at: FiniteFloat = Field(description="Window end at which the anomaly began.")
    evidence: tuple[EvidencePoint, ...] = ()
    suspect_pod: str | None = None
    model: str
    model_version: str
    #: Registry version of the trained model that scored this window (None: none
    #: loaded, or a message from before trained models existed).
    learned_model_version: str | None = None
    explanation: str

    @property
    def workload_key(self) -> str:
        return make_workload_key(self.namespace, self.workload_kind, self.workload)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.route_key, self.kind)


class Incident(_Message):
    """The alerter's memory of one fingerprint (route + kind).

    Kept on the compacted incidents topic so a restarted alerter knows what it
    already told each sink and where (message ts, ticket key, dedup key), and
    updates or resolves in place instead of posting again.
    """

    schema_: Literal["meshwatch.incident/v1"] = Field("meshwatch.incident/v1", alias="schema")
    fingerprint: str
    route_key: str
    kind: FindingKind
    status: Literal["firing", "resolved"]
    severity: Severity
    first_seen: FiniteFloat
    last_seen: FiniteFloat
    count: NonNegInt
    last_finding: Finding
    finding_ids: tuple[str, ...] = Field(
        default=(), description="Recent finding ids, to drop replayed duplicates."
    )
    notified: dict[str, str] = Field(
        default_factory=dict,
        description="Per sink: the last status told to it (delivered, or waiting in the outbox).",
    )
    sink_refs: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per sink: ids it gave us (message ts, ticket key)."
    )
    # Added with grouping, flap damping and reminders; all optional so older
    # records still load.
    resolved_at: FiniteFloat | None = Field(
        default=None,
        description="Alerter clock when the resolve arrived; its notice waits out flap damping.",
    )
    flaps: NonNegInt = Field(
        default=0, description="Re-fires within flap damping, folded into this incident."
    )
    revision: NonNegInt = Field(
        default=0, description="Bumped on changes sinks should hear of (severity escalation)."
    )
    notified_at: dict[str, FiniteFloat] = Field(
        default_factory=dict, description="Per sink: alerter clock of the last notice (reminders)."
    )
    notified_revision: dict[str, NonNegInt] = Field(
        default_factory=dict, description="Per sink: the revision it was last told about."
    )
    # Added for short incidents; optional so older records still load (as None).
    opened_by: Finding | None = Field(
        default=None,
        description=(
            "The finding that opened this occurrence: a sink never told it fired is told from"
            " it after the resolve. None in older records and once a silence covered the end."
        ),
    )


class DeadLetter(_Message):
    """A message a stage could not use, with the reason, for a person to inspect."""

    schema_: Literal["meshwatch.dlq/v1"] = Field("meshwatch.dlq/v1", alias="schema")
    stage: str
    reason: str
    error: str
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    key: str | None = None
    value: str = Field(description="The original value, as text (undecodable bytes escaped).")
    failed_at: FiniteFloat


def fingerprint(route_key: str, kind: str) -> str:
    """Stable incident identity: the same route and kind is the same incident."""
    return hashlib.sha256(f"{route_key}|{kind}".encode()).hexdigest()[:20]


def finding_id(route_key: str, kind: str, window_end: float, status: str) -> str:
    digest = hashlib.sha256(f"{route_key}|{kind}|{window_end:.3f}|{status}".encode())
    return digest.hexdigest()[:24]


M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel) -> bytes:
    """JSON on the wire, with field aliases (``schema``) and no None-padding."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def decode(model: type[M], raw: bytes | str) -> M:
    """Validate one wire message; raises :class:`pydantic.ValidationError`."""
    return model.model_validate_json(raw)


def describe_error(exc: ValidationError) -> str:
    """One line per problem, with the path to the field, for logs and the DLQ."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<message>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def to_jsonable(message: BaseModel) -> dict[str, Any]:
    return message.model_dump(mode="json", by_alias=True, exclude_none=True)
