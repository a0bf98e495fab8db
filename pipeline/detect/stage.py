"""The detector as a stage: decode GoldenBatches, judge, emit Findings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kafka import TopicPartition

from pipeline.config import MeshwatchConfig
from pipeline.detect.engine import DetectionEngine
from pipeline.schema import Finding, encode
from pipeline.stage.loop import Inbound, Output


class DetectorProcessor:
    name = "detector"

    def __init__(self, cfg: MeshwatchConfig) -> None:
        self.cfg = cfg
        self.engine = DetectionEngine(cfg.detector)
        self.findings: list[Finding] = []  # recent, for the demo's display
        self.fired = 0
        self.resolved = 0

    def decode(self, raw: bytes) -> Any:
        # msgspec into plain structs; pydantic for what that does not accept
        # (and for the precise error of an invalid message).
        return self.engine.decode(raw)

    def process(self, batch: Sequence[Inbound[Any]]) -> Iterable[Output]:
        findings, rejected = self.engine.process_decoded([item.value for item in batch])
        topic = self.cfg.topics.findings
        self.findings = (self.findings + findings)[-100:]
        self.fired += sum(f.status == "firing" for f in findings)
        self.resolved += sum(f.status == "resolved" for f in findings)
        out = [Output(topic, f.workload_key.encode(), encode(f)) for f in findings]
        return out + self.engine.dead_letters(self.name, self.cfg.topics.dlq, batch, rejected)

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        return ()

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        return ()

    def idle(self, now: float) -> Iterable[Output]:
        return ()
