"""The shared stage loop against a real broker: DLQ, commit, restart."""

from __future__ import annotations

import threading

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.schema import DeadLetter, GoldenBatch, GoldenSample, decode, encode
from pipeline.stage.loop import StageRunner
from tests.kafka_helpers import produce, read_records, wait_until

pytestmark = pytest.mark.integration


def batch(window_end: float, workload: str = "web") -> GoldenBatch:
    s = GoldenSample(
        window_end=window_end,
        window_seconds=1.0,
        namespace="shop",
        workload_kind="deploy",
        workload=workload,
        direction="inbound",
        route="*",
        requests=100,
        successes=100,
        p99_ms=50.0,
        p95_ms=40.0,
        p50_ms=20.0,
        mtls_requests=100,
    )
    return GoldenBatch(
        workload_key=s.workload_key, window_end=window_end, window_seconds=1.0, samples=(s,)
    )


def start(
    cfg: MeshwatchConfig, processor: DetectorProcessor
) -> tuple[StageRunner, threading.Thread]:
    runner = StageRunner(cfg, processor, cfg.topics.golden, "detector")
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    return runner, t


def test_poison_messages_go_to_the_dlq_and_the_stage_carries_on(kafka_cfg: MeshwatchConfig) -> None:
    cfg = kafka_cfg
    good = [(b"shop/deploy/web", encode(batch(float(i)))) for i in range(1, 4)]
    poison = [
        (b"k1", b"\xff\x01 not json at all"),
        (b"k2", b'{"schema": "meshwatch.golden_batch/v1", "workload_key": "x"}'),
    ]
    produce(cfg, cfg.topics.golden, [good[0], poison[0], good[1], poison[1], good[2]])
    processor = DetectorProcessor(cfg)
    runner, t = start(cfg, processor)
    try:
        wait_until(lambda: runner.stats.consumed >= 5, what="5 records consumed")
    finally:
        runner.stop()
        t.join(10)
    assert processor.engine.samples_seen == 3
    assert runner.stats.dead_lettered == 2
    dlq = read_records(cfg, cfg.topics.dlq, lambda r: len(r) >= 2)
    letters = [decode(DeadLetter, r.value) for r in dlq]
    assert {lt.key for lt in letters} == {"k1", "k2"}
    by_key = {lt.key: lt for lt in letters}
    assert by_key["k1"].reason == "invalid message"
    assert "Invalid JSON" in by_key["k1"].error
    assert "window_end: Field required" in by_key["k2"].error
    assert by_key["k1"].value.startswith("\\xff\x01 not json")
    headers = dict(dlq[0].headers)
    assert headers["meshwatch-reason"] == b"invalid message"
    assert headers["meshwatch-stage"] == b"detector"


def test_a_restarted_stage_resumes_from_its_committed_offset(kafka_cfg: MeshwatchConfig) -> None:
    cfg = kafka_cfg
    produce(cfg, cfg.topics.golden, [(b"w", encode(batch(float(i)))) for i in range(1, 6)])
    first = DetectorProcessor(cfg)
    runner, t = start(cfg, first)
    wait_until(lambda: runner.stats.consumed >= 5, what="first five")
    runner.stop()
    t.join(10)
    produce(cfg, cfg.topics.golden, [(b"w", encode(batch(float(i)))) for i in range(6, 9)])
    second = DetectorProcessor(cfg)
    runner2, t2 = start(cfg, second)
    try:
        wait_until(lambda: runner2.stats.consumed >= 3, what="next three")
    finally:
        runner2.stop()
        t2.join(10)
    # only the three new batches: nothing before the committed offset again
    assert runner2.stats.consumed == 3
    assert second.engine.samples_seen == 3
