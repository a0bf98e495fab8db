"""Two alerter replicas on the real broker: a workload's group is told by one of them.

Findings are keyed by workload (``pipeline/detect/stage.py``), and incidents
and outbox entries follow their findings' partition, so every incident of
one workload lives with one replica and the default ``group_by`` (namespace,
kind, workload) makes one notification per workload. The routes chosen here
hash to different partitions by route key, so the test fails if findings go
back to being keyed by route: each replica would then send part of a group.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding
from pipeline.stage.loop import Output
from tests.kafka_helpers import produce, wait_until
from tests.test_alerter_support import RunningAlerter, configure, finding, webhook

pytestmark = pytest.mark.integration

ROUTES = [f"GET /api/v{i}" for i in range(12)]


def partition(key: str, partitions: int) -> int:
    """The Java client's (and kafka-python's) default partition for a key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def detector_outputs(cfg: MeshwatchConfig, findings: list[Finding]) -> list[Output]:
    """The findings as the detector stage produces them (its key choice included)."""
    detector = DetectorProcessor(cfg)
    # The engine is replaced by one that "detects" exactly these findings;
    # the stage's own code (its key choice) runs as it is.
    fakes: dict[str, Any] = {
        "process": lambda batches: list(findings),
        "process_decoded": lambda batches: (list(findings), []),
        "dead_letters": lambda *args, **kw: [],
    }
    for name, fake in fakes.items():
        setattr(detector.engine, name, fake)
    return [o for o in detector.process([]) if o.topic == cfg.topics.findings]


def test_a_workload_group_is_one_notification_with_two_replicas(
    kafka_cfg: MeshwatchConfig,
) -> None:
    n = kafka_cfg.topics.specs["findings"].partitions
    assert n >= 2
    with ReceiverThread(WebhookReceiver()) as rx:
        cfg = configure(
            kafka_cfg,
            [webhook("hook", rx.url)],
            grouping={"group_wait_seconds": 3, "group_interval_seconds": 600},
        )
        group = f"alerter-{cfg.topics.prefix}"  # not shared with other tests' members
        replicas = [RunningAlerter(cfg, group), RunningAlerter(cfg, group)]
        try:

            def settled() -> bool:
                owned = [set(r.runner.stats.assigned) for r in replicas]
                return (
                    all(owned)
                    and set().union(*owned) == set(range(n))
                    and not (owned[0] & owned[1])
                )

            wait_until(settled, timeout=60, what="both replicas own partitions")
            owned = [set(r.runner.stats.assigned) for r in replicas]
            # one workload on each replica's partitions, each with routes whose
            # route keys would scatter over several partitions
            chosen: dict[int, tuple[str, list[str]]] = {}
            for i in range(200):
                name = f"web{i}"
                p = partition(f"shop/deploy/{name}", n)
                who = 0 if p in owned[0] else 1
                routes = ROUTES[:4]
                spread = {partition(f"shop/deploy/{name}/inbound/{r}", n) for r in routes}
                if who not in chosen and len(spread) >= 2:
                    chosen[who] = (name, routes)
                if len(chosen) == 2:
                    break
            assert len(chosen) == 2, "no workload names fit the test's needs"
            findings = [finding(r, workload=w) for w, routes in chosen.values() for r in routes]
            outputs = detector_outputs(cfg, findings)
            assert {o.key for o in outputs} == {
                f"shop/deploy/{w}".encode() for w, _ in chosen.values()
            }
            produce(cfg, cfg.topics.findings, [(o.key, o.value) for o in outputs])

            got = rx.wait_for_count(2, timeout=60)
            wait_until(
                lambda: sum(r.runner.stats.consumed for r in replicas) >= len(findings),
                what="all findings consumed",
            )
            wait_until(lambda: all(r.processor.pending() == 0 for r in replicas), what="sent")
        finally:
            for r in replicas:
                r.stop()
        got = rx.accepted()
        by_workload: dict[str, list[Any]] = {}
        for record in got:
            body = record.payload
            by_workload.setdefault(body["groupLabels"]["workload"], []).append(body)
        assert sorted(by_workload) == sorted(w for w, _ in chosen.values())
        for w, routes in chosen.values():
            (body,) = by_workload[w]  # exactly one notification for the workload
            assert sorted(a["labels"]["route"] for a in body["alerts"]) == sorted(routes)
        # each replica told the workload on its own partitions
        assert all(r.processor.stats.delivered == 1 for r in replicas), [
            r.processor.stats for r in replicas
        ]
        assert rx.rejected() == ()
