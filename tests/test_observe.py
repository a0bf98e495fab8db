"""Every stage's /metrics, /healthz, /readyz, and the JSON log format."""

from __future__ import annotations

import json
import logging
import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.observe.endpoint import ObservabilityEndpoint
from pipeline.observe.logs import JsonFormatter
from pipeline.schema import encode
from pipeline.stage.loop import StageRunner
from tests.kafka_helpers import produce, wait_until
from tests.test_stage_loop import batch


def sample_value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.mark.integration
def test_stage_endpoint_reports_readiness_counts_and_dead_letters(
    kafka_cfg: MeshwatchConfig,
) -> None:
    cfg = kafka_cfg
    runner = StageRunner(cfg, DetectorProcessor(cfg), cfg.topics.golden, "detector")
    endpoint = ObservabilityEndpoint(
        "127.0.0.1:0", runner.metrics.registry, live=runner.live, ready=runner.is_ready
    ).start()
    try:
        ready = httpx.get(endpoint.url + "/readyz")
        assert ready.status_code == 503
        assert "waiting for partition assignment" in ready.text
        produce(
            cfg,
            cfg.topics.golden,
            [(b"w", encode(batch(1.0))), (b"w", b"not json"), (b"w", encode(batch(2.0)))],
        )
        t = threading.Thread(target=runner.run, daemon=True)
        t.start()
        wait_until(lambda: runner.stats.consumed >= 3, what="three records")
        assert httpx.get(endpoint.url + "/readyz").status_code == 200
        assert httpx.get(endpoint.url + "/healthz").text == "ok\n"
        text = httpx.get(endpoint.url + "/metrics").text
        assert sample_value(text, "meshwatch_messages_in_total", stage="detector") == 3
        assert sample_value(text, "meshwatch_dead_letters_total", reason="invalid message") == 1
        assert sample_value(text, "meshwatch_assigned_partitions", stage="detector") == 6
        assert sample_value(text, "meshwatch_batch_seconds_count", stage="detector") >= 1
        assert httpx.get(endpoint.url + "/config").status_code == 404
        runner.stop()
        t.join(15)
        assert httpx.get(endpoint.url + "/readyz").status_code == 503
    finally:
        runner.stop()
        endpoint.stop()


def test_a_failing_check_answers_503_without_details() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("secret detail")

    from prometheus_client import CollectorRegistry

    endpoint = ObservabilityEndpoint("127.0.0.1:0", CollectorRegistry(), live=broken).start()
    try:
        r = httpx.get(endpoint.url + "/healthz")
        assert r.status_code == 503
        assert "secret detail" not in r.text
        assert r.text == "check failed: RuntimeError\n"
    finally:
        endpoint.stop()


def test_json_logs_carry_route_key_and_fingerprint() -> None:
    record = logging.LogRecord(
        "meshwatch.alert", logging.WARNING, __file__, 1, "slow %s", ("x",), None
    )
    record.route_key = "shop/deploy/web/inbound/*"
    record.fingerprint = "abc"
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "slow x"
    assert out["level"] == "warning"
    assert out["route_key"] == "shop/deploy/web/inbound/*"
    assert out["fingerprint"] == "abc"
    assert out["ts"].endswith("Z")
