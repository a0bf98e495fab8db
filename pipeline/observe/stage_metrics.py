"""The metrics every consumer stage exports, on a registry of its own.

A registry per stage (not prometheus_client's global one) keeps tests and
the demo, which run several stages in one process, from mixing numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class StageMetrics:
    def __init__(self, stage: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = {"stage": stage}
        self.messages_in = Counter(
            "meshwatch_messages_in", "Records consumed.", ["stage"], registry=r
        ).labels(**labels)
        self.messages_out = Counter(
            "meshwatch_messages_out", "Records produced, by topic.", ["stage", "topic"], registry=r
        )
        self.dead_letters = Counter(
            "meshwatch_dead_letters",
            "Records sent to the DLQ, by reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "meshwatch_batch_seconds",
            "Time to process, produce and commit one poll batch.",
            ["stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        ).labels(**labels)
        self.batch_size = Histogram(
            "meshwatch_batch_records",
            "Records per poll batch.",
            ["stage"],
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        ).labels(**labels)
        self.lag = Gauge(
            "meshwatch_consumer_lag",
            "Records behind the partition's high watermark.",
            ["stage", "topic", "partition"],
            registry=r,
        )
        self.assigned = Gauge(
            "meshwatch_assigned_partitions", "Partitions assigned.", ["stage"], registry=r
        ).labels(**labels)
        self.last_batch = Gauge(
            "meshwatch_last_batch_timestamp_seconds",
            "When the last batch was committed.",
            ["stage"],
            registry=r,
        ).labels(**labels)
        self.deliveries = Counter(
            "meshwatch_deliveries",
            "Notifications by destination and outcome (delivered, failed).",
            ["stage", "destination", "outcome"],
            registry=r,
        )
        self.model = Info("meshwatch_model", "Model in use.", ["stage"], registry=r)
        self.stage = stage

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        self.dead_letters.labels(stage=self.stage, reason=reason).inc(n)

    def produced(self, topic: str, n: int = 1) -> None:
        self.messages_out.labels(stage=self.stage, topic=topic).inc(n)

    def delivered(self, destination: str, ok: bool) -> None:
        outcome = "delivered" if ok else "failed"
        self.deliveries.labels(stage=self.stage, destination=destination, outcome=outcome).inc()
