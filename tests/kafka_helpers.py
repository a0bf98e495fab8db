"""Small helpers for integration tests against the real broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer

from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_consumer, make_producer


def produce(cfg: MeshwatchConfig, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(cfg.kafka, "test")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def read_records(
    cfg: MeshwatchConfig,
    topic: str,
    until: Callable[[list[Any]], bool],
    timeout: float = 30.0,
) -> list[Any]:
    """Read ``topic`` from the start until ``until(records)`` holds.

    Counts what was read rather than trusting end offsets (the embedded
    broker's are unreliable); raises AssertionError with what it saw on
    timeout, so a failing test says why.
    """
    consumer: KafkaConsumer = make_consumer(cfg.kafka, "test-reader", group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        from kafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                seen.extend(batch)
            if until(seen):
                return seen
        raise AssertionError(f"timed out on {topic}: read {len(seen)} record(s)")
    finally:
        consumer.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Wait for a condition driven by another thread (polls an in-memory flag)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        event.wait(0.02)
