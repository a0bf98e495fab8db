"""Where in a golden partition a time begins: offsets by window end.

Reading a segment of history means starting each partition at the first
record of the segment. Kafka's ``offsets_for_times`` answers that from the
records' timestamps, which the collector sets when it produces (just after
the window's end); but a topic filled by a replay carries the replay's
timestamps, and the embedded broker answers offset 0 whatever the time
(measured: Tansu 0.6). So the answer is checked against the window end of
the records themselves, and found by bisection on them when it is wrong.

Within a partition, window ends rise with the offset up to a little
interleaving between workloads (a window or two), so the search aims
``margin_s`` early and the reader skips the few records before its start.
One probe round seeks every partition and polls once: ~log2(records) rounds
per segment, each reading one fetch per partition.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from kafka import TopicPartition
from pydantic import ValidationError

from pipeline.config import KafkaConfig, MeshwatchConfig
from pipeline.detect.columnar import decode_golden
from pipeline.kafka.clients import make_consumer

INF = float("inf")


class Prober:
    """Window ends of the records at given offsets, on an assigned consumer."""

    def __init__(self, consumer: Any, tps: Sequence[TopicPartition]) -> None:
        self.consumer = consumer
        self.tps = list(tps)
        self.begin: dict[TopicPartition, int] = consumer.beginning_offsets(self.tps)
        self.end: dict[TopicPartition, int] = consumer.end_offsets(self.tps)
        self.rounds = 0

    def runs(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, list[Run]]:
        """The records fetched from each offset on, as (offset, window end) pairs
        (empty where there is none): one fetch, so a batch or so per partition."""
        c = self.consumer
        todo = dict(offsets)
        out: dict[TopicPartition, list[Run]] = {tp: [] for tp in offsets}
        if not todo:
            return out
        self.rounds += 1
        # only the probed partitions are assigned, so no fetch reads the others
        # (pause/resume instead: the embedded broker stopped answering for
        # resumed partitions, measured)
        c.assign(list(todo))
        for tp, off in todo.items():
            c.seek(tp, off)
        started = time.monotonic()
        while todo:
            waited = time.monotonic() - started
            if waited > 1.5:  # past the reported end: give it a moment (a small partition's
                # end may read 0 on the embedded broker), then take it as empty
                for tp in [tp for tp, off in todo.items() if off >= self.end.get(tp, 0)]:
                    del todo[tp]
            if waited > 30.0:
                raise TimeoutError(f"no record at offsets {todo} after 30 s")
            polled = c.poll(timeout_ms=200)
            for tp, records in polled.items():
                if tp not in todo or not records or records[0].offset < todo[tp]:
                    continue
                del todo[tp]
                out[tp] = [(r.offset, window_end_of(r)) for r in records]
        return out

    def window_ends(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, float]:
        """The window end of the record at each offset (``inf`` where there is none)."""
        return {tp: run[0][1] if run else INF for tp, run in self.runs(offsets).items()}

    def first_at_or_after(
        self, target: float, hint: dict[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose record's window end is >= ``target``
        (the end offset if none).

        Each probe fetches a run of records, which narrows the interval on both
        sides; the next probe is interpolated between the window ends known at
        the interval's edges (history is about evenly spread over offsets), with
        a bisection every third round so that uneven history still converges.
        ``hint`` (e.g. from ``offsets_for_times``) is the first probe.
        """
        lo = {tp: self.begin.get(tp, 0) for tp in self.tps}
        hi = {tp: max(self.end.get(tp, 0), lo[tp]) for tp in self.tps}
        t_lo: dict[TopicPartition, float] = {}
        t_hi: dict[TopicPartition, float] = {}

        def narrow(probes: dict[TopicPartition, int]) -> None:
            for tp, run in self.runs(probes).items():
                if not run:  # nothing from there on: the answer is before it
                    hi[tp] = min(hi[tp], probes[tp])
                    continue
                for off, end in run:
                    if end >= target:
                        if off < hi[tp]:
                            hi[tp], t_hi[tp] = off, end
                        break
                    if off + 1 > lo[tp]:
                        lo[tp], t_lo[tp] = off + 1, end

        if hint:
            narrow({tp: max(h - 1, lo[tp]) for tp, h in hint.items() if lo[tp] <= h < hi[tp]})
        step = 0
        while True:
            probes = {}
            for tp in self.tps:
                if lo[tp] >= hi[tp]:
                    continue
                guess = (lo[tp] + hi[tp]) // 2
                a, b = t_lo.get(tp), t_hi.get(tp)
                if step % 3 != 2 and a is not None and b is not None and b > a:
                    frac = min(max((target - a) / (b - a), 0.0), 1.0)
                    guess = lo[tp] + int(frac * (hi[tp] - lo[tp]))
                probes[tp] = min(max(guess, lo[tp]), hi[tp] - 1)
            if not probes:
                return lo
            narrow(probes)
            step += 1


Run = tuple[int, float]


_WINDOW_END = re.compile(rb'"window_end":\s*(-?[0-9][0-9.eE+-]*)')


def window_end_of(record: Any) -> float:
    """A record's window end: read from the head of its JSON (a GoldenBatch names
    it before its samples), so a probe does not decode whole batches; a
    record that does not look like one is decoded, or failing that, its stamp."""
    raw = record.value or b""
    found = _WINDOW_END.search(raw, 0, 512)
    if found is not None:
        try:
            return float(found.group(1))
        except ValueError:
            pass
    try:
        return decode_golden(raw).window_end
    except ValidationError:
        return float(record.timestamp) / 1000.0  # not decodable: its stamp


def probing_kafka(cfg: KafkaConfig) -> KafkaConfig:
    """The consumer settings for probing: a fetch returns at once instead of
    waiting up to 500 ms for data on partitions that have none (which would
    make every probe round last that long), and brings one batch or so, not a
    megabyte of records to parse for the one that is looked at."""
    extra = {**cfg.extra, "fetch_max_wait_ms": 20, "max_partition_fetch_bytes": 64 * 1024}
    return cfg.model_copy(update={"extra": extra})


def offsets_at(prober: Prober, target: float) -> dict[TopicPartition, int]:
    """Per partition, the offset of its first record with window end >= ``target``."""
    c = prober.consumer
    found = c.offsets_for_times(dict.fromkeys(prober.tps, max(int(target * 1000), 0)))
    hint = {tp: f.offset for tp, f in found.items() if f is not None}
    return prober.first_at_or_after(target, hint)


def partition_sizes(cfg: MeshwatchConfig) -> dict[int, int]:
    """Records per golden partition (from its offsets; near enough to share work out)."""
    topic = cfg.topics.golden
    consumer = make_consumer(probing_kafka(cfg.kafka), "train-sizes", group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in range(cfg.topics.specs["golden"].partitions)]
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
    finally:
        consumer.close(autocommit=False)
    return {tp.partition: max(end.get(tp, 0) - begin.get(tp, 0), 0) for tp in tps}


def topic_bounds(cfg: MeshwatchConfig, since: float, until: float) -> tuple[float, float] | None:
    """The earliest and latest window end the golden topic holds, clipped to
    ``(since, until]``; None if it holds none there. (On the embedded broker the
    end offset can be low by a batch or more; the upper bound is then the latest
    window end of what one fetch from there brings, which may still be short.)"""
    topic = cfg.topics.golden
    consumer = make_consumer(probing_kafka(cfg.kafka), "train-bounds", group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in range(cfg.topics.specs["golden"].partitions)]
        consumer.assign(tps)
        prober = Prober(consumer, tps)
        # every partition is probed at its beginning: a small one may report an end of 0
        first = prober.window_ends({tp: prober.begin.get(tp, 0) for tp in tps})
        # the latest of the run fetched from the last reported offset: when the
        # reported end is low, the fetch still brings the records past it
        tails = prober.runs({tp: prober.end[tp] - 1 for tp in tps if prober.end.get(tp, 0) > 0})
        last = {tp: max(end for _, end in run) for tp, run in tails.items() if run}
    finally:
        consumer.close(autocommit=False)
    ends = [t for t in (*first.values(), *last.values()) if t != INF]
    if not ends:
        return None
    lo, hi = max(since, min(ends) - 1e-3), min(until, max(ends))
    return (lo, hi) if hi > lo else None


__all__ = [
    "Prober",
    "offsets_at",
    "partition_sizes",
    "probing_kafka",
    "topic_bounds",
    "window_end_of",
]
