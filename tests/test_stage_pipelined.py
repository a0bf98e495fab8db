"""The pipelined stage loop against a real broker: outputs land, offsets
are committed only after them, and a restart resumes where it left off."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.schema import GoldenBatch, GoldenSample, encode
from pipeline.stage.loop import Output
from pipeline.stage.pipelined import PipelinedStageRunner
from tests.kafka_helpers import produce, read_records, wait_until

pytestmark = pytest.mark.integration


def batch(window_end: float, p99: float) -> GoldenBatch:
    s = GoldenSample(
        window_end=window_end,
        window_seconds=1.0,
        namespace="shop",
        workload_kind="deploy",
        workload="web",
        direction="inbound",
        route="*",
        requests=100,
        successes=100,
        p99_ms=p99,
        p95_ms=p99 * 0.8,
        p50_ms=p99 * 0.4,
        mtls_requests=100,
    )
    return GoldenBatch(
        workload_key=s.workload_key, window_end=window_end, window_seconds=1.0, samples=(s,)
    )


def run(
    cfg: MeshwatchConfig, processor: DetectorProcessor
) -> tuple[PipelinedStageRunner, threading.Thread]:
    runner = PipelinedStageRunner(cfg, processor, cfg.topics.golden, "detector")
    runner.max_in_flight = 2
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    return runner, t


def test_findings_land_and_offsets_follow_them(kafka_cfg: MeshwatchConfig) -> None:
    cfg = kafka_cfg.model_copy(
        update={"detector": kafka_cfg.detector.model_copy(update={"warmup_windows": 5})}
    )
    # a steady route, then a latency incident that must fire
    steady = [batch(float(i), 50.0 + (i % 3)) for i in range(1, 21)]
    incident = [batch(float(i), 2000.0) for i in range(21, 26)]
    produce(cfg, cfg.topics.golden, [(b"shop/deploy/web", encode(b)) for b in steady + incident])
    first = DetectorProcessor(cfg)
    runner, t = run(cfg, first)
    try:
        wait_until(lambda: runner.stats.consumed >= 25, what="25 records consumed")
    finally:
        runner.stop()
        t.join(20)
    assert not t.is_alive()
    findings = read_records(cfg, cfg.topics.findings, lambda r: len(r) >= 1)
    assert any(b'"kind":"latency"' in r.value for r in findings)
    assert runner.stats.produced >= first.fired >= 1
    # everything was committed on close: a restart reads only what is new
    produce(cfg, cfg.topics.golden, [(b"shop/deploy/web", encode(batch(26.0, 50.0)))])
    second = DetectorProcessor(cfg)
    runner2, t2 = run(cfg, second)
    try:
        wait_until(lambda: runner2.stats.consumed >= 1, what="the new record")
    finally:
        runner2.stop()
        t2.join(20)
    assert runner2.stats.consumed == 1


class _Future:
    def __init__(self, ok: bool) -> None:
        self.is_done = True
        self._ok = ok

    def failed(self) -> bool:
        return not self._ok

    def get(self, timeout: float | None = None) -> None:
        if not self._ok:
            raise KafkaTimeoutError("not acknowledged")


class _Producer:
    """Fails every send of the first ``fail`` calls; records what it was given."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.sent: list[bytes] = []

    def send(self, topic: str, **kw: Any) -> _Future:
        self.sent.append(kw["value"])
        ok = self.fail <= 0
        self.fail -= 1
        return _Future(ok)

    def flush(self, timeout: float | None = None) -> None:
        pass


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})


class _Record:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "golden", 0, offset


def test_a_failed_send_is_sent_again_before_its_offsets_are_committed(
    kafka_cfg: MeshwatchConfig,
) -> None:
    producer = _Producer(fail=1)
    runner = PipelinedStageRunner(
        kafka_cfg,
        DetectorProcessor(kafka_cfg),
        "golden",
        "g",
        producer=producer,
    )
    consumer = _Consumer()
    runner._consumer = consumer
    out = [Output("findings", b"k", b"first"), Output("findings", b"k", b"second")]
    runner._in_batch = True
    runner._produce(out)
    runner._commit([_Record(7), _Record(8)])
    runner._in_batch = False
    # the first send failed: both outputs went out again, then offset 9 was committed
    assert producer.sent == [b"first", b"second", b"first", b"second"]
    assert consumer.commits == [{TopicPartition("golden", 0): 9}]
