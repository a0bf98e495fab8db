"""Batches balanced over partitions: the pure hand-out rules, then the stage
loop catching up on an uneven backlog on the real broker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.schema import encode
from pipeline.stage.batching import BalancedBatches
from pipeline.stage.loop import Inbound, Output, StageRunner
from tests.kafka_helpers import wait_until
from tests.test_stage_loop import batch


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int


def tp(p: int) -> TopicPartition:
    return TopicPartition("t", p)


def backlog(sizes: dict[int, int]) -> dict[TopicPartition, list[Rec]]:
    return {tp(p): [Rec(p, o) for o in range(n)] for p, n in sizes.items()}


def drain(held: BalancedBatches, assigned: int) -> list[list[Rec]]:
    batches = []
    while len(held):
        batches.append(held.take(assigned))
    return batches


def test_one_long_partition_does_not_fill_a_batch_while_others_have_records() -> None:
    held = BalancedBatches(limit=12)
    held.add(backlog({0: 30, 1: 5, 2: 2}))
    first = held.take(assigned=3)
    assert Counter(r.partition for r in first) == {0: 4, 1: 4, 2: 2}
    assert len(held) == 37 - 10
    assert held.held(tp(0)) == 26 and held.held(tp(1)) == 1 and held.held(tp(2)) == 0


def test_every_record_is_handed_out_once_in_offset_order_per_partition() -> None:
    held = BalancedBatches(limit=10)
    held.add(backlog({0: 23, 1: 7, 2: 0, 3: 11}))
    batches = drain(held, assigned=4)
    assert all(0 < len(b) <= 10 for b in batches)
    seen = [r for b in batches for r in b]
    assert len(seen) == len(set(seen)) == 41
    for p in (0, 1, 3):
        assert [r.offset for r in seen if r.partition == p] == sorted(
            r.offset for r in seen if r.partition == p
        )


def test_a_single_partition_fills_whole_batches() -> None:
    held = BalancedBatches(limit=10)
    held.add(backlog({4: 25}))
    assert [len(b) for b in drain(held, assigned=1)] == [10, 10, 5]


def test_a_live_stream_is_never_held_back() -> None:
    # about one window per partition per poll: all of it goes out at once
    held = BalancedBatches(limit=1000)
    held.add(backlog(dict.fromkeys(range(6), 40)))
    assert len(held.take(assigned=6)) == 240
    assert len(held) == 0 and held.take(assigned=6) == []


def test_a_limit_below_the_partition_count_still_makes_progress() -> None:
    held = BalancedBatches(limit=2)
    held.add(backlog({0: 3, 1: 3, 2: 3}))
    batches = drain(held, assigned=3)
    assert all(len(b) <= 2 for b in batches)
    assert sum(map(len, batches)) == 9


def test_revoked_partitions_are_forgotten() -> None:
    held = BalancedBatches(limit=8, hold=1)
    held.add(backlog({0: 5, 1: 4}))
    assert held.full
    assert held.drop([tp(0), tp(7)]) == 5
    assert len(held) == 4 and not held.full
    assert {r.partition for r in held.take(assigned=2)} == {1}


def test_more_is_polled_only_for_partitions_not_held_yet_and_within_the_hold() -> None:
    held = BalancedBatches(limit=10, hold=2)
    held.add(backlog({0: 12}))
    assert held.wants_more(assigned=3) and not held.full
    held.add(backlog({1: 4, 2: 1}))
    assert not held.wants_more(assigned=3)  # every assigned partition has records
    held = BalancedBatches(limit=10, hold=2)
    held.add(backlog({0: 20}))
    assert held.full and not held.wants_more(assigned=3)  # no room: hand out first


# -- the stage loop on the real broker --------------------------------------------


def _send(producer: KafkaProducer, topic: str, partition: int, n: int) -> None:
    workload = f"w{partition}"
    for i in range(n):
        producer.send(
            topic,
            key=workload.encode(),
            value=encode(batch(float(i + 1), workload=workload)),
            partition=partition,
        )


@pytest.mark.integration
def test_the_stage_catches_up_on_an_uneven_backlog_in_balanced_batches(
    kafka_cfg: MeshwatchConfig,
) -> None:
    detector = kafka_cfg.detector.model_copy(update={"max_poll_records": 12})
    cfg = kafka_cfg.model_copy(update={"detector": detector})
    topic = cfg.topics.golden
    partitions = cfg.topics.specs["golden"].partitions
    assert partitions >= 3
    sizes = {0: 60, 1: 6, 2: 6}
    producer = make_producer(cfg.kafka, "test")
    try:
        for p, n in sizes.items():
            _send(producer, topic, p, n)
        producer.flush()
    finally:
        producer.close()

    processor = DetectorProcessor(cfg)
    seen: list[list[tuple[int, int]]] = []
    inner = processor.process

    def process(items: Sequence[Inbound[Any]]) -> list[Output]:
        seen.append([(i.partition, i.offset) for i in items])
        return list(inner(items))

    setattr(processor, "process", process)  # noqa: B010 - an instance hook to see the batches
    runner = StageRunner(cfg, processor, topic, "balanced")
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: runner.stats.consumed >= 72, what="the whole backlog handled")
    finally:
        runner.stop()
        t.join(10)

    cap = 12 // partitions
    handled = [rec for b in seen for rec in b]
    assert len(handled) == len(set(handled)) == 72
    assert processor.engine.samples_seen == 72
    for b in seen:
        assert max(Counter(p for p, _ in b).values()) <= max(cap, 1)
    for p in sizes:
        assert [o for q, o in handled if q == p] == sorted(o for q, o in handled if q == p)
    # every handled record committed, nothing beyond
    checker = make_consumer(cfg.kafka, "test-offsets", "balanced")
    try:
        for p, n in sizes.items():
            committed = checker.committed(TopicPartition(topic, p))
            assert committed is not None
            assert committed - min(o for q, o in handled if q == p) == n
    finally:
        checker.close()
