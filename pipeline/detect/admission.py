"""What the detector lets through to the engine, decided once per poll batch.

Outcomes (also in docs/architecture.md, "Bad input"):

- NaN / ±inf where a number must be finite, or a negative count: both
  decoders (msgspec and pydantic, see :mod:`pipeline.detect.columnar`)
  refuse these, so the stage loop sends the message to the DLQ with reason
  ``invalid message`` and the field. Re-checking every sample here cost
  ~18 % of the detector's batch time for nothing the decoders let through;
  only the window's own end time is re-checked (``invalid value``), since
  it drives the gate.
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
GoldenBatch carries a whole workload); the time checks are numpy over the
batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from pipeline.config import AdmissionConfig
from pipeline.schema import encode
from pipeline.stage.loop import Inbound, Output, dead_letter

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
        #: partition -> highest offset this gate has seen. The stage loop retries
        #: a failed batch message by message; a message at or below it is such a
        #: retry, not a duplicate (the engine's own per-route check still keeps
        #: any window it already learned from being learned twice).
        self.seen_through: dict[int, int] = {}

    def admit(self, batch: Sequence[Inbound[Any]]) -> Admitted:
        if not batch:
            return Admitted([])
        values = [batch_of(item.value) for item in batch]
        ends = np.fromiter((v.window_end for v in values), dtype=np.float64, count=len(values))
        now = self.clock()
        refused = ~np.isfinite(ends) | (ends > now + self.cfg.max_future_seconds)
        n_late = int(np.count_nonzero(ends < now - self.cfg.late_after_seconds))
        out = Admitted([])
        last = self.last_window
        through = self.seen_through
        dup = ooo = 0
        # one dictionary lookup per message, on plain Python values
        for item, v, end, no in zip(batch, values, ends.tolist(), refused.tolist(), strict=True):
            if no:
                out.rejected.append(self._refuse(item, end, now))
                continue
            p = item.partition
            retry = item.offset <= through.get(p, -1)
            if not retry:
                through[p] = item.offset
            wk = v.workload_key
            seen = last.get(wk)
            if seen is not None and end <= seen and not retry:
                if end == seen:
                    dup += 1
                else:
                    ooo += 1
                continue
            last[wk] = end
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

    def _refuse(self, item: Inbound[Any], end: float, now: float) -> Output:
        if not np.isfinite(end):
            return self._dead(item, "invalid value", f"window_end: {end!r} is not a finite number")
        return self._dead(
            item,
            "window in the future",
            f"window ends {end - now:.0f} s after this host's clock "
            f"(limit {self.cfg.max_future_seconds:.0f} s): collector clock skew?",
        )

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


def batch_of(value: Any) -> Any:
    """The GoldenBatch-shaped part of a decoded value (pydantic or msgspec)."""
    inner = getattr(value, "batch", None)
    return value if inner is None else inner
