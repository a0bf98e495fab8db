"""Where recorded golden history comes from, as GoldenSamples in time order.

- **golden JSONL**: one GoldenBatch or one GoldenSample per line (what the
  golden topic carries, or what a harness recorded).
- **golden CSV**: one GoldenSample per row, a column per scalar field;
  ``latency_buckets`` (and ``latency_bounds_ms``) as space-separated numbers.
- **topic range**: the golden topic between two times, located with the
  consumer's ``offsets_for_times`` on every partition.
- **plain CSV**: ``timestamp,value`` of one metric (extra columns such as a
  ``label`` are ignored); ``kind`` says what the value is and maps it onto a
  synthetic GoldenSample of one route:

  =============  ==================================================================
  kind           the value is ... and becomes
  =============  ==================================================================
  latency        a latency in ms → p50 = p95 = p99 = mean = value (no histogram,
                 so the detector judges log quantiles against their learned
                 spread); a nominal ``requests`` per window. A latency of 0
                 (or below) means nothing was measured: a window with no
                 requests, judged as *no traffic* like a silent mesh route
  error_rate     a failure ratio in [0, 1] (larger values are clipped to 1) →
                 failures = round(ratio × requests) of a nominal ``requests``;
                 but a ratio that is an exact fraction k/n of a smaller
                 denominator (1/8 = 0.125, to float32 precision) is read as
                 k failures of n requests, and a ratio of 0 keeps the
                 denominator last seen (see :func:`read_error_ratios`)
  errors         failures per window (a count, no denominator) → failures =
                 round(value) out of round(value) + the nominal ``requests``
  traffic        requests per window → requests = round(value)
  tls_failure    TLS failures per window → tls_failures = round(value)
  cert_ttl       certificate time to expiry in seconds → cert_ttl_seconds
  =============  ==================================================================

  The window length is the median spacing of the timestamps; empty or
  non-numeric values leave their window out.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pipeline.config import KafkaConfig
from pipeline.schema import GoldenBatch, GoldenSample

PlainKind = Literal["latency", "error_rate", "errors", "traffic", "tls_failure", "cert_ttl"]
PLAIN_KINDS: tuple[str, ...] = (
    "latency",
    "error_rate",
    "errors",
    "traffic",
    "tls_failure",
    "cert_ttl",
)
#: Detector kinds that judge each plain kind (what the outputs focus on).
PLAIN_DETECTOR_KINDS: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "traffic_drop"),
    "error_rate": ("error_rate",),
    "errors": ("error_rate",),
    "traffic": ("traffic_drop", "traffic_surge"),
    "tls_failure": ("tls_failure",),
    "cert_ttl": ("cert_expiry",),
}
NOMINAL_REQUESTS = 1000


class InputError(ValueError):
    """History that cannot be read, with the file and line."""


def parse_time(text: str) -> float:
    """Unix seconds from ISO-8601 (``Z`` or offset; naive means UTC) or a number."""
    t = text.strip().strip('"')
    try:
        return float(t)
    except ValueError:
        pass
    dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _by_time(samples: Iterable[GoldenSample]) -> list[GoldenSample]:
    return sorted(samples, key=lambda s: s.window_end)


def read_golden_jsonl(path: Path) -> list[GoldenSample]:
    out: list[GoldenSample] = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if isinstance(data, dict) and "samples" in data:
                    out.extend(GoldenBatch.model_validate(data).samples)
                else:
                    out.append(GoldenSample.model_validate(data))
            except ValueError as exc:
                raise InputError(f"{path}:{n}: not a GoldenBatch or GoldenSample: {exc}") from exc
    return _by_time(out)


_TUPLE_FIELDS = ("latency_buckets", "latency_bounds_ms")


def read_golden_csv(path: Path) -> list[GoldenSample]:
    out: list[GoldenSample] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        for n, row in enumerate(reader, 2):
            data: dict[str, Any] = {}
            for k, v in row.items():
                if k is None or v is None or v == "":
                    continue
                if k in _TUPLE_FIELDS:
                    data[k] = [x for x in v.replace(";", " ").split() if x]
                elif k in ("status_classes", "pods"):
                    data[k] = json.loads(v)
                else:
                    data[k] = v
            if "window_end" in data:
                data["window_end"] = parse_time(str(data["window_end"]))
            try:
                out.append(GoldenSample.model_validate(data))
            except ValueError as exc:
                raise InputError(f"{path}:{n}: not a GoldenSample: {exc}") from exc
    return _by_time(out)


def read_plain_csv(
    path: Path,
    kind: str,
    *,
    route: str | None = None,
    requests: int = NOMINAL_REQUESTS,
) -> tuple[list[GoldenSample], list[tuple[float, float, int | None]]]:
    """Synthetic GoldenSamples of one route, and the raw (time, value, label) rows."""
    if kind not in PLAIN_KINDS:
        raise InputError(f"unknown kind {kind!r}; one of {', '.join(PLAIN_KINDS)}")
    rows: list[tuple[float, float, int | None]] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file")
        lower = [h.strip().lower() for h in header]
        has_header = not _is_number(header[1] if len(header) > 1 else "")
        if not has_header:
            lower = ["timestamp", "value"]
            fh.seek(0)
            reader = csv.reader(fh)
        label_col = lower.index("label") if "label" in lower else None
        for n, rec in enumerate(reader, 2 if has_header else 1):
            if len(rec) < 2:
                continue
            try:
                t = parse_time(rec[0])
            except ValueError as exc:
                raise InputError(f"{path}:{n}: bad timestamp {rec[0]!r}") from exc
            v = _number(rec[1])
            label = None
            if label_col is not None and label_col < len(rec) and _is_number(rec[label_col]):
                label = int(float(rec[label_col].strip().strip('"')))
            rows.append((t, v, label))
    rows.sort(key=lambda r: r[0])
    if len(rows) < 2:
        raise InputError(f"{path}: fewer than two points")
    gaps = sorted(b[0] - a[0] for a, b in pairwise(rows) if b[0] > a[0])
    window = gaps[len(gaps) // 2] if gaps else 60.0
    name = route or path.stem
    if kind == "error_rate":
        return read_error_ratios(rows, window, name, requests), rows
    samples = [plain_sample(kind, t, v, window, name, requests) for t, v, _ in rows if v == v]
    return samples, rows


#: Relative tolerance of an exact fraction: two float32 rounding steps (2**-23), the
#: precision real ratio series are often stored with (1/14 is written 0.0714285746).
FRACTION_TOLERANCE = 2.0**-23


def exact_fraction(ratio: float, max_denominator: int) -> tuple[int, int] | None:
    """``(k, n)`` with ``k / n == ratio`` to float32 precision and the smallest such
    ``n <= max_denominator``; None for ratios outside (0, 1) or not such a fraction."""
    if not 0.0 < ratio < 1.0:
        return None
    frac = Fraction(ratio).limit_denominator(max_denominator)
    if abs(frac.numerator / frac.denominator - ratio) > FRACTION_TOLERANCE * ratio:
        return None
    return frac.numerator, frac.denominator


def read_error_ratios(
    rows: Sequence[tuple[float, float, int | None]], window: float, route: str, requests: int
) -> list[GoldenSample]:
    """GoldenSamples of an error-ratio series, each with the evidence its value carries.

    A failure ratio is a count over a count. Read as ``round(ratio x requests)``
    of a nominal ``requests``, 1 failure of 8 requests (0.125) became 125 of
    1,000: a certain incident to a binomial test, where it is one failed
    request of a quiet hour (on the real series, a low-volume service drew an
    alert every few days that way). Where the value is an exact fraction k/n
    with n at most ``requests`` (to float32 precision, so 1/14 = 0.0714285746
    counts, and a ratio measured over thousands of requests stays nominal), it
    becomes k failures of n requests: the detector's binomial test and its
    ``min_requests`` guard then see how little evidence a window of a quiet
    service holds. A ratio of 0 says nothing about its denominator; it keeps
    the last one seen (the nominal one until then, and after a value that is
    not such a fraction), which uses no later value.
    """
    out: list[GoldenSample] = []
    last_n = requests
    for t, v, _ in rows:
        if v != v:
            continue
        sample = plain_sample("error_rate", t, v, window, route, requests)
        frac = exact_fraction(v, requests)
        if frac is not None:
            k, n = frac
            last_n = n
        elif v == 0.0:
            k, n = 0, last_n
        else:  # not a fraction of a small denominator: the nominal one, as it was
            last_n = requests
            out.append(sample)
            continue
        out.append(sample.model_copy(update={"requests": n, "successes": n - k, "failures": k}))
    return out


def plain_sample(
    kind: str, t: float, value: float, window: float, route: str, requests: int
) -> GoldenSample:
    """One plain value as a GoldenSample of route ``plain/deploy/<route>/inbound/*``."""
    base: dict[str, Any] = {
        "window_end": t,
        "window_seconds": window,
        "cluster": "backtest",
        "namespace": "plain",
        "workload_kind": "deploy",
        "workload": _safe(route),
        "direction": "inbound",
        "route": "*",
    }
    v = max(value, 0.0)
    if kind == "latency" and v <= 0.0:
        return GoldenSample(**base, requests=0, successes=0)
    if kind == "latency":
        return GoldenSample(
            **base,
            requests=requests,
            successes=requests,
            p50_ms=v,
            p95_ms=v,
            p99_ms=v,
            mean_ms=v,
            latency_sum_ms=v * requests,
        )
    if kind == "error_rate":
        f = round(min(v, 1.0) * requests)
        return GoldenSample(**base, requests=requests, successes=requests - f, failures=f)
    if kind == "errors":
        f = round(v)
        return GoldenSample(**base, requests=f + requests, successes=requests, failures=f)
    if kind == "traffic":
        n = round(v)
        return GoldenSample(**base, requests=n, successes=n)
    if kind == "tls_failure":
        return GoldenSample(**base, requests=requests, successes=requests, tls_failures=round(v))
    if kind == "cert_ttl":
        return GoldenSample(**base, requests=requests, successes=requests, cert_ttl_seconds=value)
    raise InputError(f"unknown kind {kind!r}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "series"


def _number(text: str) -> float:
    t = text.strip().strip('"')
    try:
        return float(t) if t else math.nan
    except ValueError:
        return math.nan


def _is_number(text: str) -> bool:
    return math.isfinite(_number(text))


def read_topic(
    cfg: KafkaConfig, topic: str, start: float, end: float, *, timeout_s: float = 60.0
) -> list[GoldenSample]:
    """GoldenSamples of the records of ``topic`` with timestamps in [start, end).

    Each partition is positioned with ``offsets_for_times(start)``; records are
    then read until one is stamped at or after ``end`` or the partition has
    nothing more (some brokers answer ``offsets_for_times`` only to the
    batch, so records are also filtered by their own timestamps).
    """
    import time as _time

    from kafka import TopicPartition

    from pipeline.kafka.clients import make_consumer

    lo, hi = int(start * 1000), int(end * 1000)
    consumer = make_consumer(cfg, "backtest", group_id=None)
    out: list[GoldenSample] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            raise InputError(f"topic {topic} has no partitions (does it exist?)")
        consumer.assign(tps)
        begin = consumer.offsets_for_times(dict.fromkeys(tps, lo))
        todo = set()
        for tp in tps:
            b = begin.get(tp)
            if b is not None:  # None: nothing at or after start
                consumer.seek(tp, b.offset)
                todo.add(tp)
        deadline = _time.monotonic() + timeout_s
        quiet = 0
        while todo:
            if _time.monotonic() > deadline:
                raise InputError(
                    f"could not read {topic} to the end of the range in {timeout_s:g}s"
                )
            polled = consumer.poll(timeout_ms=300, max_records=5000)
            quiet = 0 if polled else quiet + 1
            for tp, records in polled.items():
                for rec in records:
                    if rec.timestamp >= hi:
                        todo.discard(tp)
                        break
                    if rec.timestamp >= lo:
                        out.extend(_decode_record(rec.value))
            if quiet >= 3:  # three empty polls in a row: every partition read to its end
                break
            consumer.pause(*[tp for tp in tps if tp not in todo])
    finally:
        consumer.close(autocommit=False)
    return _by_time(out)


def _decode_record(raw: bytes) -> Sequence[GoldenSample]:
    data = json.loads(raw)
    if isinstance(data, dict) and "samples" in data:
        return GoldenBatch.model_validate(data).samples
    return [GoldenSample.model_validate(data)]


def iter_windows(samples: Sequence[GoldenSample]) -> Iterator[list[GoldenSample]]:
    """Samples grouped by window end, in time order."""
    group: list[GoldenSample] = []
    current: float | None = None
    for s in samples:
        if current is not None and s.window_end != current:
            yield group
            group = []
        current = s.window_end
        group.append(s)
    if group:
        yield group
