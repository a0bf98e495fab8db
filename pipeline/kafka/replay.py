"""Reading a partition from its start to its current end (state restore).

A production broker's end offset is exact; the embedded broker's can be low
by up to one batch (see docs/kafka.md), so "the end" here is the later of
the reported end offset and the point where a poll comes back empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from kafka import TopicPartition

from pipeline.config import KafkaConfig
from pipeline.kafka.clients import make_consumer


def read_to_end(
    cfg: KafkaConfig,
    topic: str,
    partitions: Sequence[int],
    *,
    quiet_ms: int = 300,
    timeout_s: float = 60.0,
) -> Iterator[Any]:
    """Yield every record of ``partitions`` of ``topic`` that exists now."""
    if not partitions:
        return
    consumer = make_consumer(cfg, "restore", group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=quiet_ms, max_records=5000)
            if not polled:
                if all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps):
                    return
                continue
            for records in polled.values():
                yield from records
        raise TimeoutError(f"could not read {topic} {list(partitions)} to its end")
    finally:
        consumer.close(autocommit=False)
