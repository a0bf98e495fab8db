"""The whole path on the real broker: simulated fault → alert → resolve.

The mesh runs on simulated time (no sleeping): the test advances it one
window at a time and runs a collector cycle, while the detector and the
alerter consume on their own threads exactly as in production.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from pipeline.alert.stage import AlerterProcessor
from pipeline.collect.collector import Collector
from pipeline.collect.scrape import make_scrape_client
from pipeline.collect.targets import Target
from pipeline.config import MeshwatchConfig, WebhookSink
from pipeline.demo.run import demo_mesh
from pipeline.detect.stage import DetectorProcessor
from pipeline.kafka.clients import make_producer
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.simulate import FaultSpec, FaultTarget, Scenario, SimulatedMesh
from pipeline.stage.loop import StageRunner
from tests.kafka_helpers import wait_until

pytestmark = pytest.mark.integration

WINDOW = 1.0
FAULT_ROUTE = "shop/deploy/catalog/inbound/GET /api/products"


def scenario() -> Scenario:
    return Scenario(
        name="e2e",
        warmup_seconds=30,
        faults=[
            FaultSpec(
                id="spike",
                kind="latency_spike",
                target=FaultTarget(namespace="shop", workload="catalog", route="GET /api/products"),
                start=10,
                duration=15,
                magnitude=10.0,
            )
        ],
    )


class Stage:
    def __init__(self, cfg: MeshwatchConfig, processor: object, topic: str, group: str) -> None:
        self.runner = StageRunner(cfg, processor, topic, group)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(15)


@pytest.fixture
def webhook() -> Iterator[ReceiverThread[WebhookReceiver]]:
    with ReceiverThread(WebhookReceiver()) as rx:
        yield rx


def firing_routes(rx: ReceiverThread[WebhookReceiver]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for r in rx.accepted():
        alert = r.payload["alerts"][0]
        out[(r.payload["status"], alert["labels"]["route_key"])] += 1
    return out


def test_fault_is_alerted_once_and_resolved_across_an_alerter_restart(
    kafka_cfg: MeshwatchConfig, webhook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = kafka_cfg.model_copy(
        update={
            "window": kafka_cfg.window.model_copy(
                update={"seconds": WINDOW, "scrape_timeout_seconds": 0.8}
            ),
            "detector": kafka_cfg.detector.model_copy(update={"warmup_windows": 20}),
            "alerter": kafka_cfg.alerter.model_copy(
                update={"sinks": [WebhookSink(name="webhook", url=webhook.url)]}
            ),
        }
    )
    detector = DetectorProcessor(cfg)
    det = Stage(cfg, detector, cfg.topics.golden, "detector")
    alerter = AlerterProcessor(cfg)
    al = Stage(cfg, alerter, cfg.topics.findings, "alerter")
    producer = make_producer(cfg.kafka, "collector")
    restarted: list[AlerterProcessor] = []

    async def drive() -> None:
        mesh = SimulatedMesh(demo_mesh(), scenario=scenario(), realtime=False, seed=11)
        async with mesh, make_scrape_client(16, True) as client:
            targets = [Target(t.url, t.namespace, t.workload, t.kind, t.pod) for t in mesh.targets]
            collector = Collector(cfg, lambda: targets, producer)
            for _ in range(90):  # 30 s warm-up, fault at 40–55 s, then calm
                mesh.advance(WINDOW)
                await collector.cycle(client, mesh.now)
                # wait for the detector to keep up, so the alerter restart below
                # happens between the firing and the resolve
                await asyncio.to_thread(
                    wait_until,
                    lambda: detector.engine.samples_seen >= collector.stats.samples,
                    30,
                    "detector to catch up",
                )
                if not restarted and firing_routes(webhook)[("firing", FAULT_ROUTE)]:
                    # restart the alerter mid-incident (same group: it resumes
                    # from its committed offset and restores incidents)
                    await asyncio.to_thread(al_restart)
            assert mesh.ground_truth[0]["route_keys"]

    def al_restart() -> None:
        nonlocal al
        al.stop()
        alerter.close()
        fresh = AlerterProcessor(cfg)
        restarted.append(fresh)
        al = Stage(cfg, fresh, cfg.topics.findings, "alerter")

    try:
        asyncio.run(drive())
        wait_until(lambda: firing_routes(webhook)[("resolved", FAULT_ROUTE)] >= 1, 30, "resolve")
    finally:
        det.stop()
        al.stop()
        producer.close()
        for p in restarted:
            p.close()

    counts = firing_routes(webhook)
    assert restarted, "the alerter was never restarted mid-incident"
    assert counts[("firing", FAULT_ROUTE)] == 1
    assert counts[("resolved", FAULT_ROUTE)] == 1
    # every alert concerns the fault: nothing fired on untouched routes
    fault_workload = "shop/deploy/catalog"
    for (_, route), n in counts.items():
        assert n == 1, route
        assert fault_workload in route or "catalog.shop" in route, route
    assert webhook.rejected() == ()
