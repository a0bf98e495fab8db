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
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from pipeline.backtest.inputs import read_golden_jsonl
from pipeline.config import MeshwatchConfig
from pipeline.kafka.replay import read_to_end
from pipeline.schema import GoldenBatch, GoldenSample, decode

log = logging.getLogger(__name__)
CHUNK = 20_000
Progress = Callable[[int], None]


def topic_chunks(
    cfg: MeshwatchConfig,
    since: float,
    until: float,
    *,
    progress: Progress | None = None,
    stats: dict[str, int] | None = None,
    timeout_s: float = 3600.0,
) -> Iterator[list[GoldenSample]]:
    """The golden topic's samples with ``since < window_end <= until``, in chunks."""
    topic = cfg.topics.golden
    parts = range(cfg.topics.specs["golden"].partitions)
    chunk: list[GoldenSample] = []
    counts = stats if stats is not None else {}
    counts.setdefault("records", 0)
    counts.setdefault("invalid", 0)
    for record in read_to_end(cfg.kafka, topic, list(parts), timeout_s=timeout_s):
        counts["records"] += 1
        try:
            batch = decode(GoldenBatch, record.value)
        except ValidationError:
            counts["invalid"] += 1  # the detector sent it to the DLQ already; skip
            continue
        chunk.extend(s for s in batch.samples if since < s.window_end <= until)
        if len(chunk) >= CHUNK:
            if progress:
                progress(len(chunk))
            yield chunk
            chunk = []
    if chunk:
        if progress:
            progress(len(chunk))
        yield chunk


def file_chunks(path: Path, progress: Progress | None = None) -> Iterator[list[GoldenSample]]:
    samples = read_golden_jsonl(path)
    for i in range(0, len(samples), CHUNK):
        part = samples[i : i + CHUNK]
        if progress:
            progress(len(part))
        yield part


__all__ = ["file_chunks", "topic_chunks"]
