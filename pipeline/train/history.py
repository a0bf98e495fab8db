"""Where training history comes from, as chunks of GoldenSamples.

- **The golden topic**, replayed from its start to its current end
  (:func:`pipeline.kafka.replay.read_to_end`) and filtered to the training
  range; or, for a long range, **time segments** of it (:func:`plan_segments`,
  :func:`segment_chunks`): each partition is positioned at a segment's
  warm-up start (:mod:`pipeline.train.positions`) and read to its end.
  Records stream through in chunks: nothing holds the whole range. Each
  workload's batches live on one partition in order, so every route still
  reaches the detector in time order, and a set of partitions can be read
  by a process of its own (:mod:`pipeline.train.parallel`).
- **A JSONL file** of GoldenBatches or GoldenSamples (what ``meshwatch
  backtest`` reads).
- (Prometheus range queries are not a source yet: see docs/models.md.)
- **The simulated mesh** (``--default``: the shipped artifact's history).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pipeline.backtest.inputs import read_golden_jsonl
from pipeline.config import MeshwatchConfig
from pipeline.detect.columnar import Decoded, decode_golden
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.replay import read_to_end
from pipeline.schema import GoldenSample
from pipeline.train.positions import (
    Prober,
    offsets_at,
    probing_kafka,
    topic_bounds,
    window_end_of,
)

log = logging.getLogger(__name__)
CHUNK = 20_000
POLL_RECORDS = 500
_HASH_SPACE = 1_000_000
Progress = Callable[[int], None]


def topic_chunks(
    cfg: MeshwatchConfig,
    since: float,
    until: float,
    *,
    progress: Progress | None = None,
    stats: dict[str, int] | None = None,
    timeout_s: float = 3600.0,
    workload_share: float = 1.0,
    partitions: Sequence[int] | None = None,
) -> Iterator[list[Decoded]]:
    """The golden topic's (or its ``partitions``') messages with
    ``since < window_end <= until``, decoded with the detector's fast decoder,
    in chunks of about ``CHUNK`` samples.

    ``workload_share`` < 1 keeps that share of the workloads, chosen by a hash
    of the record key (the workload key) before decoding: a workload's routes
    are all in or all out, so every kept route still has its whole history.
    The training sample is bounded anyway; this bounds the time to fill it.
    """
    cut = int(workload_share * _HASH_SPACE)
    topic = cfg.topics.golden
    parts = partitions if partitions is not None else range(cfg.topics.specs["golden"].partitions)
    chunk: list[Decoded] = []
    n = 0
    counts = stats if stats is not None else {}
    counts.setdefault("records", 0)
    counts.setdefault("invalid", 0)
    for record in read_to_end(cfg.kafka, topic, list(parts), timeout_s=timeout_s):
        counts["records"] += 1
        key = record.key
        if cut < _HASH_SPACE and key is not None and zlib.crc32(key) % _HASH_SPACE >= cut:
            counts["sampled_out"] = counts.get("sampled_out", 0) + 1
            continue
        try:
            batch = decode_golden(record.value)
        except ValidationError:
            counts["invalid"] += 1  # the detector sent it to the DLQ already; skip
            continue
        if not since < batch.window_end <= until:
            continue
        chunk.append(batch)
        n += len(batch.samples)
        if n >= CHUNK:
            if progress:
                progress(n)
            yield chunk
            chunk, n = [], 0
    if chunk:
        if progress:
            progress(n)
        yield chunk


@dataclass(frozen=True)
class Segment:
    """A stretch of history: windows ending in ``(start, keep_from]`` warm the
    baselines of a fresh detector, those in ``(keep_from, end]`` are sampled."""

    start: float
    keep_from: float
    end: float
    #: read the topic from its beginning (no seek): the whole range in one pass
    whole: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start


def plan_segments(
    lo: float, hi: float, *, segments: int, segment_s: float, warmup_s: float
) -> list[Segment]:
    """``segments`` segments of ``warmup_s`` + ``segment_s`` spread evenly over
    ``(lo, hi]``, the first starting at ``lo`` and the last ending at ``hi`` (the
    latest history is what the held-back evaluation uses). Evenly spread over
    days, consecutive segments fall at other hours of the day and on other
    weekdays, so the sample covers the daily and weekly cycle. When the segments
    would cover the whole range anyway (or ``segments`` is 0) it is one pass."""
    span = hi - lo
    length = warmup_s + segment_s
    if segments <= 0 or span <= 0 or segments * length >= span:
        return [Segment(lo, lo, hi, whole=True)]
    if segments == 1:
        starts = [hi - length]
    else:
        step = (span - length) / (segments - 1)
        starts = [lo + i * step for i in range(segments)]
    return [Segment(s, s + warmup_s, s + length) for s in starts]


def describe_plan(plan: Sequence[Segment], lo: float, hi: float) -> dict[str, Any]:
    """What a plan reads, for the summary, the manifest and the report."""
    span = max(hi - lo, 0.0)
    read = sum(s.seconds for s in plan)
    kept = sum(s.end - s.keep_from for s in plan)
    hours = {int((t % 86400) // 3600) for s in plan for t in np.arange(s.keep_from, s.end, 600)}
    days = {int((t // 86400 + 3) % 7) for s in plan for t in np.arange(s.keep_from, s.end, 600)}
    return {
        "range_start": lo,
        "range_end": hi,
        "range_hours": span / 3600.0,
        "segments": 0 if plan and plan[0].whole else len(plan),
        "segment_minutes": (plan[0].end - plan[0].keep_from) / 60.0 if plan else 0.0,
        "warmup_minutes": (plan[0].keep_from - plan[0].start) / 60.0 if plan else 0.0,
        "hours_read": read / 3600.0,
        "share_read": read / span if span > 0 else 1.0,
        "share_sampled": kept / span if span > 0 else 1.0,
        "hours_of_day_covered": len(hours),
        "weekdays_covered": len(days),
    }


def plan_text(info: dict[str, Any]) -> str:
    if not info["segments"]:
        return f"the whole range read ({info['range_hours']:.1f} h)"
    return (
        f"{info['segments']} segments of {info['warmup_minutes']:g} min warm-up + "
        f"{info['segment_minutes']:g} min sampled: {info['hours_read']:.1f} h of the "
        f"{info['range_hours']:.1f} h range read ({100 * info['share_read']:.1f} %), "
        f"{info['hours_of_day_covered']} of 24 hours of the day, "
        f"{info['weekdays_covered']} of 7 weekdays"
    )


def segment_chunks(
    cfg: MeshwatchConfig,
    partitions: Sequence[int],
    segment: Segment,
    since: float,
    until: float,
    *,
    stats: dict[str, int] | None = None,
    timeout_s: float = 3600.0,
    workload_share: float = 1.0,
    late_s: float = 60.0,
) -> Iterator[list[Decoded]]:
    """The messages of ``partitions`` whose window ends in the segment (and in
    ``(since, until]``), decoded, in chunks of about ``CHUNK`` samples.

    Each partition is positioned at the segment's start by window end
    (:func:`pipeline.train.positions.seek_to_time`) and read until a record
    whose window ends more than ``late_s`` after the segment's end; windows of
    several workloads interleave a little on a partition, so a record a bit
    past either edge neither starts nor stops the read. A whole-range segment
    is the plain replay.
    """
    if segment.whole:
        yield from topic_chunks(
            cfg, since, until, stats=stats, timeout_s=timeout_s,
            workload_share=workload_share, partitions=partitions,
        )  # fmt: skip
        return
    from kafka import TopicPartition

    lo, hi = max(since, segment.start), min(until, segment.end)
    stop = segment.end + late_s
    cut = int(workload_share * _HASH_SPACE)
    counts = stats if stats is not None else {}
    for name in ("records", "invalid", "out_of_segment"):
        counts.setdefault(name, 0)
    topic = cfg.topics.golden
    tps = [TopicPartition(topic, p) for p in partitions]
    probe = make_consumer(probing_kafka(cfg.kafka), "train-probe", group_id=None)
    try:
        probe.assign(tps)
        prober = Prober(probe, tps)
        start = offsets_at(prober, lo - late_s)
        ends = prober.end
    finally:
        probe.close(autocommit=False)
    counts["probe_rounds"] = counts.get("probe_rounds", 0) + prober.rounds
    consumer = make_consumer(cfg.kafka, "train", group_id=None)
    chunk: list[Decoded] = []
    n = 0
    # the latest window end read per partition still to read from (-inf: none yet)
    latest: dict[Any, float] = {tp: -math.inf for tp in tps if start[tp] < ends.get(tp, 0)}
    try:
        consumer.assign(tps)
        for tp, off in start.items():
            consumer.seek(tp, off)
        active = set(tps)
        deadline = time.monotonic() + timeout_s
        while active:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read segment {segment} of {topic} in {timeout_s:g}s")
            # a few hundred records a poll (batches of a whole workload are large:
            # thousands would hold a hundred MB of JSON and decoded objects at once)
            polled = consumer.poll(timeout_ms=300, max_records=POLL_RECORDS)
            if not polled:
                done = {tp for tp in active if consumer.position(tp) >= ends.get(tp, 0)}
                active -= done
                for tp in done:
                    latest.pop(tp, None)
                continue
            for tp, records in polled.items():
                if tp not in active:
                    continue
                for record in records:
                    counts["records"] += 1
                    key = record.key
                    if (
                        cut < _HASH_SPACE
                        and key is not None
                        and zlib.crc32(key) % _HASH_SPACE >= cut
                    ):
                        counts["sampled_out"] = counts.get("sampled_out", 0) + 1
                        continue
                    end = window_end_of(record)  # from the head: decode only what is kept
                    if end > stop:  # past the segment (and the little interleaving)
                        active.discard(tp)
                        break
                    if not lo < end <= hi:
                        counts["out_of_segment"] += 1
                        continue
                    try:
                        batch = decode_golden(record.value)
                    except ValidationError:
                        counts["invalid"] += 1
                        continue
                    chunk.append(batch)
                    n += len(batch.samples)
                    latest[tp] = max(latest.get(tp, end), end)
                if tp not in active:
                    consumer.pause(tp)
                    latest.pop(tp, None)
            if n >= CHUNK:
                ready, chunk = _aligned(chunk, latest, hold=n < 3 * CHUNK)
                n -= sum(len(b.samples) for b in ready)
                if ready:
                    yield ready
    finally:
        consumer.close(autocommit=False)
    if chunk:
        yield chunk


def _aligned(
    chunk: list[Decoded], latest: dict[Any, float], *, hold: bool
) -> tuple[list[Decoded], list[Decoded]]:
    """Split a chunk into the windows every reading partition has passed and the
    rest, so that a window reaches the detector in one piece: the detector's step
    costs about as much per call as per route at a few hundred routes (two
    calls per window measured 1.7x one). With ``hold`` False (the chunk has grown
    large: a partition lags far behind) only the latest window is kept back."""
    if not latest:
        return chunk, []
    mark = min(latest.values())
    if not hold:
        mark = max(mark, max(b.window_end for b in chunk))
    ready = [b for b in chunk if b.window_end < mark]
    rest = [b for b in chunk if b.window_end >= mark]
    return ready, rest


def file_chunks(path: Path, progress: Progress | None = None) -> Iterator[list[GoldenSample]]:
    samples = read_golden_jsonl(path)
    for i in range(0, len(samples), CHUNK):
        part = samples[i : i + CHUNK]
        if progress:
            progress(len(part))
        yield part


__all__ = [
    "Segment",
    "describe_plan",
    "file_chunks",
    "plan_segments",
    "plan_text",
    "segment_chunks",
    "topic_bounds",
    "topic_chunks",
]
