"""Every stage's /metrics, /healthz, /readyz, and the JSON log format."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.kafka.embedded import free_port
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
        assert (sample_value(text, "meshwatch_batch_seconds_count", stage="detector") or 0) >= 1
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


# --- where the endpoint listens, and that it tells nothing about the config --------


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_endpoint_listens_only_on_the_configured_address() -> None:
    # 127.0.0.2 is loopback too (all of 127/8 is), but a different address
    endpoint = ObservabilityEndpoint("127.0.0.2:0", CollectorRegistry()).start()
    try:
        assert endpoint.url.startswith("http://127.0.0.2:")
        assert httpx.get(endpoint.url + "/healthz").status_code == 200
        assert _refused("127.0.0.1", endpoint.port)
    finally:
        endpoint.stop()


def test_unknown_paths_and_methods_reveal_nothing() -> None:
    endpoint = ObservabilityEndpoint("127.0.0.1:0", CollectorRegistry()).start()
    try:
        for path in ("/config", "/env", "/debug/vars", "/../../etc/passwd", "/metrics/../config"):
            r = httpx.get(endpoint.url + path)
            assert r.status_code == 404, path
            assert r.text == "not found\n", path
        for method in ("POST", "PUT", "DELETE"):
            r = httpx.request(method, endpoint.url + "/metrics", content=b"x")
            assert r.status_code == 501, method  # read-only: no handler for writes
        # the stdlib's default Server header would name the Python version
        assert httpx.get(endpoint.url + "/healthz").headers["server"] == "meshwatch"
    finally:
        endpoint.stop()


def test_an_ipv6_address_is_served_over_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6 stack")
    endpoint = ObservabilityEndpoint("[::1]:0", CollectorRegistry()).start()
    try:
        assert endpoint.url.startswith("http://[::1]:")
        assert httpx.get(endpoint.url + "/healthz").text == "ok\n"
    finally:
        endpoint.stop()


@pytest.mark.integration
def test_a_running_stage_serves_where_configured_and_leaks_no_config(
    broker: str, tmp_path: Path
) -> None:
    """``meshwatch detect`` as deployed: every response is read for config values and secrets."""
    marker = uuid.uuid4().hex[:10]
    secrets = {
        "sasl": f"sasl-pw-{marker}",
        "key": f"key-pw-{marker}",
        "webhook": f"hook-token-{marker}",
        "slack": f"T0/B0/slack-{marker}",
    }
    config_values = [f"client-{marker}", f"cluster-{marker}", broker, str(tmp_path)]
    cfg_file = tmp_path / "meshwatch.yaml"
    cfg_file.write_text(
        f"cluster: cluster-{marker}\n"
        f"kafka:\n  client_id: client-{marker}\n  session_timeout_ms: 2000\n"
        "  heartbeat_interval_ms: 500\n  poll_timeout_ms: 100\n"
        f"topics:\n  prefix: o{marker}.\n"
        "alerter:\n  sinks:\n"
        "    - type: webhook\n      name: hook\n      url: https://hooks.example.test/in\n"
        f"      bearer_token: {secrets['webhook']}\n"
        "    - type: slack\n      name: chat\n"
        f"      webhook_url: https://hooks.slack.com/services/{secrets['slack']}\n"
    )
    port = free_port("127.0.0.2")
    env = {
        **os.environ,
        "MESHWATCH_KAFKA__SASL_PLAIN_PASSWORD": secrets["sasl"],
        "MESHWATCH_KAFKA__SSL_PASSWORD": secrets["key"],
    }
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pipeline.cli", "detect",
            "-c", str(cfg_file), "--bootstrap", broker,
            "--metrics-address", f"127.0.0.2:{port}", "--group", f"g{marker}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.2:{port}"
    try:
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(url + "/readyz", timeout=2)
            except httpx.TransportError:
                ready = None
            if ready is not None and ready.status_code == 200:
                break
            threading.Event().wait(0.2)
        assert ready is not None and ready.status_code == 200, (
            proc.poll(),
            proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else "",
        )
        assert _refused("127.0.0.1", port)
        bodies = {
            path: httpx.get(url + path, timeout=5)
            for path in ("/metrics", "/healthz", "/readyz", "/config", "/")
        }
        assert bodies["/metrics"].status_code == 200
        assert "meshwatch_messages_in_total" in bodies["/metrics"].text
        for path, r in bodies.items():
            shown = r.text + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
            for value in [*secrets.values(), *config_values]:
                assert value not in shown, (path, value)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
