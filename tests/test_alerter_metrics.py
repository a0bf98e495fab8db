"""The alerter's own /metrics: open incidents and deliveries by destination.

The dashboard's incident and delivery panels read these; they are counted
from the incident book and the delivery notes, so a test drives real
deliveries to a local receiver and reads the registry back.
"""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from pipeline.alert.stage import AlerterProcessor
from pipeline.config import MeshwatchConfig
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from tests.test_alerter_support import FakeClock, configure, finding, inbound, resolved, webhook

pytestmark = pytest.mark.integration


def sample(p: AlerterProcessor, name: str, labels: dict[str, str]) -> float | None:
    value = p.metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_open_incidents_and_deliveries_follow_the_lifecycle(kafka_cfg: MeshwatchConfig) -> None:
    with ReceiverThread(WebhookReceiver()) as hook:
        cfg = configure(kafka_cfg, [webhook("hook", hook.url)], grouping={"group_wait_seconds": 0})
        clock = FakeClock()
        p = AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)
        try:
            firing = {"namespace": "shop", "kind": "latency", "severity": "critical"}
            assert sample(p, "meshwatch_open_incidents", firing) is None

            p.process(inbound([finding("GET /a"), finding("GET /b")]))
            p.idle(0)
            assert sample(p, "meshwatch_open_incidents", firing) == 2.0
            delivered = {"stage": "alerter", "destination": "hook", "outcome": "delivered"}
            sent = len(hook.accepted())
            assert sent >= 1
            assert sample(p, "meshwatch_deliveries_total", delivered) == float(sent)

            clock.advance(60)
            p.process(inbound([resolved("GET /a")]))
            p.idle(0)
            assert sample(p, "meshwatch_open_incidents", firing) == 1.0
            assert sample(p, "meshwatch_deliveries_total", delivered) == float(len(hook.accepted()))
            # the route never becomes a label: cardinality stays namespace × kind × severity
            assert b"GET /b" not in generate_latest(p.metrics.registry)
        finally:
            p.close()
