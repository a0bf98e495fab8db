"""Where training history comes from, as chunks of GoldenSamples.

- **The golden topic**, replayed from its start to its current end
  (:func:`pipeline.kafka.replay.read_to_end`) and filtered to the training
  range. Records stream through in chunks: nothing holds the whole range.
  Each workload's batches live on one partition in order, so every route
  still reaches the detector in time order.
- **A JSONL file** of GoldenBatches or GoldenSamples (what ``meshwatch
  backtest`` reads).
- (Prometheus range queries are not a source yet: see docs/models.md.)
- **The simulated mesh** (``--default``: the shipped artifact's history).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from pipeline.backtest.inputs import read_golden_jsonl
from pipeline.config import MeshwatchConfig
from pipeline.detect.columnar import Decoded, decode_golden
from pipeline.kafka.replay import read_to_end
from pipeline.schema import GoldenSample

log = logging.getLogger(__name__)
CHUNK = 20_000
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
) -> Iterator[list[Decoded]]:
    """The golden topic's messages with ``since < window_end <= until``, decoded
    with the detector's fast decoder, in chunks of about ``CHUNK`` samples.

    ``workload_share`` < 1 keeps that share of the workloads, chosen by a hash
    of the record key (the workload key) before decoding: a workload's routes
    are all in or all out, so every kept route still has its whole history.
    The training sample is bounded anyway; this bounds the time to fill it.
    """
    cut = int(workload_share * _HASH_SPACE)
    topic = cfg.topics.golden
    parts = range(cfg.topics.specs["golden"].partitions)
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


def file_chunks(path: Path, progress: Progress | None = None) -> Iterator[list[GoldenSample]]:
    samples = read_golden_jsonl(path)
    for i in range(0, len(samples), CHUNK):
        part = samples[i : i + CHUNK]
        if progress:
            progress(len(part))
        yield part


__all__ = ["file_chunks", "topic_chunks"]
