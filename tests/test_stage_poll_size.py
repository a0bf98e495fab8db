"""The detector polls its own batch size (``detector.max_poll_records``), not the
``kafka`` section's, against a real broker."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.schema import encode
from pipeline.stage.loop import Inbound, Output, StageRunner
from tests.kafka_helpers import produce, wait_until
from tests.test_stage_loop import batch

pytestmark = pytest.mark.integration


def test_the_detector_polls_at_most_its_own_batch_size(kafka_cfg: MeshwatchConfig) -> None:
    detector = kafka_cfg.detector.model_copy(update={"max_poll_records": 2})
    kafka = kafka_cfg.kafka.model_copy(update={"max_poll_records": 500})
    cfg = kafka_cfg.model_copy(update={"detector": detector, "kafka": kafka})
    # all seven are there before the stage starts: one poll of 500 would take them all
    produce(cfg, cfg.topics.golden, [(b"w", encode(batch(float(i)))) for i in range(1, 8)])
    processor = DetectorProcessor(cfg)
    sizes: list[int] = []
    inner = processor.process

    def process(items: Sequence[Inbound[Any]]) -> list[Output]:
        sizes.append(len(items))
        return list(inner(items))

    setattr(processor, "process", process)  # noqa: B010 - an instance hook to see the batches
    runner = StageRunner(cfg, processor, cfg.topics.golden, "detector")
    assert runner.max_poll_records == 2
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: runner.stats.consumed >= 7, what="seven records consumed")
    finally:
        runner.stop()
        t.join(10)
    assert sum(sizes) == 7
    assert max(sizes) <= 2
    assert processor.engine.samples_seen == 7
