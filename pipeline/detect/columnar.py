"""GoldenBatches straight into numpy columns, for the detector's hot path.

Validating every message with pydantic built ~90k model objects per poll
batch and cost more than all of the detection maths. Here a message is
decoded by msgspec into plain structs that mirror the contract
(:mod:`pipeline.schema`): types, required fields, literals, ``ge``/``gt``
bounds, non-empty names, unknown fields and finiteness are all checked in C
while parsing. What a field-by-field decoder cannot see — the bucket count
against the bounds, ``successes + failures <= requests`` — is checked once
per poll batch with numpy over every sample at once (:func:`columns`).

The contract stays pydantic's. Any message the fast decoder does not accept
as-is (a type pydantic would coerce, custom bucket bounds, anything invalid)
is handed to :func:`pipeline.schema.decode`, which either accepts it (its
samples then join the batch as GoldenSamples) or raises the precise error
that sends it to the DLQ. The fast path only ever accepts a subset of what
pydantic accepts, with the same values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Annotated, Literal

import msgspec
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from pipeline.schema import (
    LINKERD_LATENCY_BOUNDS_MS,
    GoldenBatch,
    GoldenSample,
    decode,
    describe_error,
)
from pipeline.stage.loop import Inbound, Output, dead_letter

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
_NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
_Positive = Annotated[float, msgspec.Meta(gt=0.0)]
_Name = Annotated[str, msgspec.Meta(min_length=1)]
_N_BUCKETS = len(LINKERD_LATENCY_BOUNDS_MS)


class FastPod(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """:class:`pipeline.schema.PodSlice`, field for field."""

    pod: str
    requests: _NonNegInt = 0
    failures: _NonNegInt = 0
    latency_sum_ms: _NonNegFloat = 0.0


class FastSample(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """:class:`pipeline.schema.GoldenSample`, field for field (msgspec rejects
    NaN and infinities in JSON, so every float here is finite)."""

    window_end: float
    window_seconds: _Positive
    namespace: _Name
    workload_kind: _Name
    workload: _Name
    direction: Literal["inbound", "outbound"]
    route: _Name
    cluster: str = "local"
    peer: str | None = None
    requests: _NonNegInt = 0
    successes: _NonNegInt = 0
    failures: _NonNegInt = 0
    status_classes: dict[str, _NonNegInt] = {}
    # Any value other than null sends the message to pydantic (custom bounds
    # are rare; "+Inf" parsing and monotonicity live there).
    latency_bounds_ms: tuple[float | str, ...] | None = None
    latency_buckets: tuple[_NonNegInt, ...] = ()
    latency_sum_ms: _NonNegFloat = 0.0
    p50_ms: _NonNegFloat | None = None
    p95_ms: _NonNegFloat | None = None
    p99_ms: _NonNegFloat | None = None
    mean_ms: _NonNegFloat | None = None
    mtls_requests: _NonNegInt = 0
    plaintext_requests: _NonNegInt = 0
    tls_failures: _NonNegInt = 0
    cert_ttl_seconds: float | None = None
    cert_refresh_errors: _NonNegInt = 0
    tcp_open: _NonNegInt = 0
    tcp_close: _NonNegInt = 0
    tcp_errors: _NonNegInt = 0
    pods: tuple[FastPod, ...] = ()

    def to_model(self) -> GoldenSample:
        """The pydantic sample (for the few routes that produce a finding)."""
        return GoldenSample.model_validate(msgspec.to_builtins(self))


class FastBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """:class:`pipeline.schema.GoldenBatch`, field for field."""

    workload_key: _Name
    window_end: float
    window_seconds: _Positive
    samples: tuple[FastSample, ...]
    schema_: Literal["meshwatch.golden_batch/v1"] = msgspec.field(
        default="meshwatch.golden_batch/v1", name="schema"
    )
    collector: str = "collector"
    pods_up: tuple[str, ...] = ()
    pods_down: tuple[str, ...] = ()


_DECODER = msgspec.json.Decoder(FastBatch)


@dataclass(frozen=True, slots=True, repr=False)
class FastGolden:
    """A fast-decoded message and its bytes (to re-decode with pydantic if the
    batch-wide checks reject it)."""

    raw: bytes
    batch: FastBatch

    def __repr__(self) -> str:
        # The stage loop dead-letters a message that fails processing with
        # repr(value): let that be the message as it arrived.
        return self.raw.decode("utf-8", "backslashreplace")

    # Read like a GoldenBatch where a check needs only these.
    @property
    def workload_key(self) -> str:
        return self.batch.workload_key

    @property
    def window_end(self) -> float:
        return self.batch.window_end

    @property
    def window_seconds(self) -> float:
        return self.batch.window_seconds

    @property
    def samples(self) -> tuple[FastSample, ...]:
        return self.batch.samples

    @property
    def id(self) -> str:
        return f"{self.batch.workload_key}@{self.batch.window_end:.3f}"


Decoded = FastGolden | GoldenBatch


def decode_golden(raw: bytes) -> Decoded:
    """msgspec when it accepts the message as-is, else pydantic (which raises
    the precise :class:`pydantic.ValidationError` for an invalid one)."""
    try:
        return FastGolden(raw, _DECODER.decode(raw))
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec lets bad UTF-8 in keys escape
        return decode(GoldenBatch, raw)


#: Float columns, in this order, of :attr:`GoldenColumns.values`.
VALUE_FIELDS = (
    "window_end",
    "window_seconds",
    "requests",
    "failures",
    "successes",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "tls_failures",
    "plaintext_requests",
    "mtls_requests",
    "cert_ttl_seconds",
)
COL = {name: i for i, name in enumerate(VALUE_FIELDS)}
_values = attrgetter(*VALUE_FIELDS)
_key_parts = attrgetter("namespace", "workload_kind", "workload", "direction", "route")
_buckets_of = attrgetter("latency_buckets")
_bounds_of = attrgetter("latency_bounds_ms")
_samples_of = attrgetter("samples")

Sample = FastSample | GoldenSample
RouteParts = tuple[str, str, str, str, str]


@dataclass
class GoldenColumns:
    """Every route-sample of a poll batch as columns (one row per sample)."""

    samples: list[Sample]  # kept only to build the few Findings' details
    keys: list[RouteParts]  # (namespace, workload_kind, workload, direction, route)
    values: FloatArray  # (n, len(VALUE_FIELDS)); NaN where a value is absent
    buckets: FloatArray  # (n, b) per-bucket counts, zeros where absent
    bounds: FloatArray | None  # (n, b) upper bounds; None: the Linkerd layout for all
    #: sample count per message, in row order, when every sample came from
    #: a fast-decoded message (lets the engine find a message's rows once
    #: per message, see ``engine.RouteRows``)
    spans: list[int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def col(self, name: str) -> FloatArray:
        return self.values[:, COL[name]]

    def model(self, i: int) -> GoldenSample:
        s = self.samples[i]
        return s if isinstance(s, GoldenSample) else s.to_model()


@dataclass
class Rejected:
    """A message the batch-wide checks (then pydantic) refused."""

    position: int  # index into the decoded values handed to :func:`columns`
    error: BaseException


def columns(decoded: Sequence[Decoded]) -> tuple[GoldenColumns, list[Rejected]]:
    """One poll batch's messages → columns, vectorised over all samples.

    Fast-decoded messages failing a cross-field check are re-decoded with
    pydantic: accepted ones join as GoldenSamples, refused ones come back in
    the second element with pydantic's error (the caller dead-letters them).
    """
    fast: list[FastBatch] = []
    fast_pos: list[int] = []
    slow: list[GoldenBatch] = []
    for pos, d in enumerate(decoded):
        if isinstance(d, FastGolden):
            fast.append(d.batch)
            fast_pos.append(pos)
        else:
            slow.append(d)
    rejected: list[Rejected] = []
    cols: GoldenColumns | None = None
    while fast:  # a second pass only when some message failed a check
        samples: list[Sample] = list(chain.from_iterable(map(_samples_of, fast)))
        cols, bad_rows = _checked(samples)
        if not bad_rows.any():
            break
        cols = None
        per_msg = np.fromiter(map(len, map(_samples_of, fast)), np.int64, len(fast))
        bad = np.unique(np.repeat(np.arange(len(fast)), per_msg)[bad_rows]).tolist()
        for j in bad:
            raw = decoded[fast_pos[j]]
            assert isinstance(raw, FastGolden)
            try:
                slow.append(decode(GoldenBatch, raw.raw))
            except Exception as exc:  # pydantic's precise error, for the DLQ
                rejected.append(Rejected(fast_pos[j], exc))
        dropped = set(bad)
        fast_pos = [p for j, p in enumerate(fast_pos) if j not in dropped]
        fast = [b for j, b in enumerate(fast) if j not in dropped]
    if not slow:
        if cols is None:
            return from_samples([]), rejected
        cols.spans = list(map(len, map(_samples_of, fast)))
        return cols, rejected
    # Rare: some messages went through pydantic; build once over everything.
    everything: list[Sample] = list(chain.from_iterable(map(_samples_of, fast)))
    everything.extend(chain.from_iterable(map(_samples_of, slow)))
    return from_samples(everything), rejected


def _checked(samples: list[Sample]) -> tuple[GoldenColumns | None, npt.NDArray[np.bool_]]:
    """Columns of fast-decoded samples, and the rows breaking a cross-field rule
    (then the columns are None: the caller drops those messages and retries)."""
    n = len(samples)
    bounds_list = list(map(_bounds_of, samples))
    lists = list(map(_buckets_of, samples))
    lens = np.fromiter(map(len, lists), np.int64, n)
    bad = (lens != 0) & (lens != _N_BUCKETS)
    if bounds_list.count(None) != n:
        bad |= np.array([b is not None for b in bounds_list])
    if bad.any():
        return None, bad
    values = _value_matrix(samples)
    req, ok, failed = (values[:, COL[k]] for k in ("requests", "successes", "failures"))
    bad = ok + failed > req
    if bad.any():
        return None, bad
    keys: list[RouteParts] = list(map(_key_parts, samples))
    return GoldenColumns(samples, keys, values, _default_buckets(lists, lens), None), bad


def from_samples(samples: list[Sample]) -> GoldenColumns:
    """Columns of already validated samples (fast structs or GoldenSamples)."""
    values = _value_matrix(samples)
    keys: list[RouteParts] = list(map(_key_parts, samples))
    if list(map(_bounds_of, samples)).count(None) == len(samples):
        lists = list(map(_buckets_of, samples))
        lens = np.fromiter(map(len, lists), np.int64, len(lists))
        return GoldenColumns(samples, keys, values, _default_buckets(lists, lens), None)
    buckets, bounds = _custom_buckets(samples)
    return GoldenColumns(samples, keys, values, buckets, bounds)


def _value_matrix(samples: Sequence[Sample]) -> FloatArray:
    """(n, len(VALUE_FIELDS)) floats; numpy turns None (absent) into NaN."""
    return np.array(list(map(_values, samples)), dtype=np.float64).reshape(
        len(samples), len(VALUE_FIELDS)
    )


def _default_buckets(lists: list[tuple[int, ...]], lens: IntArray) -> FloatArray:
    """(n, 26) counts from per-sample tuples of 26 counts or none."""
    out = np.zeros((len(lists), _N_BUCKETS))
    filled = np.flatnonzero(lens)
    if filled.size:
        count = int(lens.sum())
        try:  # Python ints to int64 are ~30 % cheaper than to float64
            flat = np.fromiter(chain.from_iterable(lists), np.int64, count)
        except OverflowError:  # a count past 2**63 (valid JSON, absurd): as floats
            flat = np.fromiter(chain.from_iterable(lists), np.float64, count)
        out[filled] = flat.reshape(filled.size, _N_BUCKETS)
    return out


def _custom_buckets(samples: Sequence[Sample]) -> tuple[FloatArray, FloatArray]:
    """Per-row counts and bounds when some sample names its own layout (rare:
    a Python loop, padded on the right with empty +Inf buckets)."""
    width = max(
        [_N_BUCKETS]
        + [len(s.latency_bounds_ms) for s in samples if s.latency_bounds_ms and s.latency_buckets]
    )
    out = np.zeros((len(samples), width))
    bounds = np.full((len(samples), width), np.inf)
    bounds[:, :_N_BUCKETS] = LINKERD_LATENCY_BOUNDS_MS
    for i, s in enumerate(samples):
        if not s.latency_buckets:
            continue
        k = len(s.latency_buckets)
        out[i, :k] = s.latency_buckets
        if s.latency_bounds_ms is not None:
            bounds[i] = np.inf
            bounds[i, :k] = [math.inf if b == "+Inf" else float(b) for b in s.latency_bounds_ms]
    return out, bounds


def dead_letters(
    stage: str, dlq_topic: str, batch: Sequence[Inbound[Decoded]], rejected: list[Rejected]
) -> list[Output]:
    """DLQ records for messages refused by the batch-wide checks, as the stage
    loop writes them for messages refused while decoding."""
    out: list[Output] = []
    for r in rejected:
        item = batch[r.position]
        value = item.value
        raw = value.raw if isinstance(value, FastGolden) else repr(value).encode()
        out.append(
            dead_letter(
                stage,
                dlq_topic,
                "invalid message",
                describe_error(r.error)
                if isinstance(r.error, ValidationError)
                else f"{type(r.error).__name__}: {r.error}",
                raw=raw,
                key=item.key,
                topic=item.topic,
                partition=item.partition,
                offset=item.offset,
            )
        )
    return out
