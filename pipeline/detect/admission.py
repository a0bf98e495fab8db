"""What the detector lets through to the engine, decided once per poll batch.

Outcomes (also in docs/architecture.md, "Bad input"):

- NaN / ±inf where a number must be finite, or a negative count: the schema
  already rejects these at decode (DLQ, reason ``invalid message``); this
  check repeats it on the decoded columns so a faster, non-validating
  decoder cannot let them into the baselines. DLQ, reason ``invalid value``.
- A window ending more than ``max_future_seconds`` after this host's clock
  (a collector whose clock runs ahead): DLQ, reason ``window in the future``.
  Accepting it would move the workload's "last window" ahead and make every
  later, correct window look old.
- A window ending long before now (``late_after_seconds``): judged as usual
  (catching up a backlog after an outage is normal) and counted as late.
- A window of a workload not newer than the last one seen (replay,
  re-delivery: *duplicate*; older: *out of order*): ignored and counted. It
  is neither learned twice nor judged twice, so it makes no finding twice.

The per-workload "last window" is one dictionary lookup per message (a
GoldenBatch carries a whole workload); the value checks are numpy over all
samples of the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from pipeline.config import AdmissionConfig
from pipeline.schema import encode
from pipeline.stage.loop import Inbound, Output, dead_letter

#: Sample fields that must be finite (None is not allowed for them).
_REQUIRED = ("window_end", "requests", "successes", "failures", "tls_failures",
             "mtls_requests", "plaintext_requests", "latency_sum_ms")  # fmt: skip
#: Optional fields: None is fine, NaN/inf are not.
_OPTIONAL = ("p50_ms", "p95_ms", "p99_ms", "cert_ttl_seconds")
#: Of all those, the ones that must not be negative (TTL may be: expired).
_NON_NEGATIVE = tuple(
    f for f in _REQUIRED + _OPTIONAL if f not in ("window_end", "cert_ttl_seconds")
)
_ROW = operator.attrgetter(*(_REQUIRED + _OPTIONAL))
_NON_NEGATIVE_COLS = [(_REQUIRED + _OPTIONAL).index(f) for f in _NON_NEGATIVE]

DROP_REASONS = ("duplicate_window", "out_of_order_window")
REJECT_REASONS = ("invalid value", "window in the future")


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "meshwatch_detector_windows_dropped",
            "Windows ignored before judging, by reason (duplicate_window, out_of_order_window).",
            ["reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "meshwatch_detector_windows_rejected",
            "Windows sent to the DLQ before judging, by reason.",
            ["reason"],
            registry=registry,
        )
        self.late = Counter(
            "meshwatch_detector_windows_late",
            "Windows judged although they ended long before now (backlog, slow clock).",
            registry=registry,
        )


@dataclass
class Admitted:
    batch: list[Inbound[Any]]
    rejected: list[Output] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


class Admission:
    """Per-batch gate in front of the engine; owns the per-workload last window."""

    def __init__(
        self,
        cfg: AdmissionConfig,
        *,
        dlq_topic: str,
        stage: str = "detector",
        clock: Callable[[], float],
        metrics: AdmissionMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.dlq_topic = dlq_topic
        self.stage = stage
        self.clock = clock
        self.metrics = metrics
        #: workload key -> window end of the newest window admitted
        self.last_window: dict[str, float] = {}

    def admit(self, batch: Sequence[Inbound[Any]]) -> Admitted:
        if not batch:
            return Admitted([])
        values = [batch_of(item.value) for item in batch]
        bad = _invalid_values(values)
        ends = np.fromiter((v.window_end for v in values), dtype=np.float64, count=len(values))
        now = self.clock()
        future = ends > now + self.cfg.max_future_seconds
        late = ends < now - self.cfg.late_after_seconds
        out = Admitted([])
        last = self.last_window
        dup = ooo = n_late = 0
        for i, item in enumerate(batch):
            if bad[i] or future[i]:
                reason = "invalid value" if bad[i] else "window in the future"
                error = (
                    _describe_invalid(values[i])
                    if bad[i]
                    else f"window ends {ends[i] - now:.0f} s after this host's clock "
                    f"(limit {self.cfg.max_future_seconds:.0f} s): collector clock skew?"
                )
                out.rejected.append(self._dead(item, reason, error))
                continue
            wk = values[i].workload_key
            seen = last.get(wk)
            end = float(ends[i])
            if seen is not None and end <= seen:
                if end == seen:
                    dup += 1
                else:
                    ooo += 1
                continue
            last[wk] = end
            n_late += bool(late[i])
            out.batch.append(item)
        out.dropped = {"duplicate_window": dup, "out_of_order_window": ooo}
        m = self.metrics
        if m is not None:
            for reason, n in out.dropped.items():
                if n:
                    m.dropped.labels(reason).inc(n)
            for o in out.rejected:
                m.rejected.labels(dict(o.headers)["meshwatch-reason"].decode()).inc()
            if n_late:
                m.late.inc(n_late)
        return out

    def _dead(self, item: Inbound[Any], reason: str, error: str) -> Output:
        value = item.value
        raw = getattr(value, "raw", None)  # the fast decoder keeps the bytes
        if raw is None:
            raw = encode(value) if isinstance(value, BaseModel) else repr(value).encode()
        return dead_letter(
            self.stage,
            self.dlq_topic,
            reason,
            error,
            raw=raw,
            key=item.key,
            topic=item.topic,
            partition=item.partition,
            offset=item.offset,
        )


def _invalid_values(values: Sequence[Any]) -> npt.NDArray[np.bool_]:
    """Per message: does any of its samples hold a non-finite or negative number?"""
    counts = np.fromiter((len(v.samples) for v in values), dtype=np.int64, count=len(values))
    ends = np.fromiter((v.window_end for v in values), dtype=np.float64, count=len(values))
    batch_bad = ~np.isfinite(ends)
    if counts.sum() == 0:
        return batch_bad
    x = np.array([_ROW(s) for v in values for s in v.samples], dtype=np.float64)  # None: NaN
    n_req = len(_REQUIRED)
    bad = ~np.isfinite(x[:, :n_req]).all(axis=1)
    # an optional NaN is what None becomes in the engine's columns: "missing"
    bad |= np.isinf(x[:, n_req:]).any(axis=1)
    bad |= (np.nan_to_num(x[:, _NON_NEGATIVE_COLS], nan=0.0) < 0).any(axis=1)
    owner = np.repeat(np.arange(len(values)), counts)
    per_message = np.zeros(len(values), dtype=np.bool_)
    np.logical_or.at(per_message, owner, bad)
    return np.asarray(batch_bad | per_message, dtype=np.bool_)


def batch_of(value: Any) -> Any:
    """The GoldenBatch-shaped part of a decoded value (pydantic or msgspec)."""
    inner = getattr(value, "batch", None)
    return value if inner is None else inner


def _describe_invalid(value: Any) -> str:
    """Which sample and field, for the person reading the DLQ (rare path)."""
    if not np.isfinite(value.window_end):
        return f"window_end: {value.window_end!r} is not a finite number"
    for i, s in enumerate(value.samples):
        for name in _REQUIRED + _OPTIONAL:
            x = getattr(s, name)
            if x is None or (name in _OPTIONAL and np.isnan(x)):
                continue
            if not np.isfinite(x):
                return f"samples.{i}.{name}: {x!r} is not a finite number"
            if name in _NON_NEGATIVE and x < 0:
                return f"samples.{i}.{name}: {x!r} is negative"
    return "invalid value"
