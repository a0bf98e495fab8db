"""A stage run as users run it (`meshwatch detect`) drains and commits on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_consumer
from pipeline.schema import encode
from tests.kafka_helpers import produce, wait_until
from tests.test_stage_loop import batch

pytestmark = pytest.mark.integration


def committed(cfg: MeshwatchConfig, group: str) -> int:
    from kafka import TopicPartition

    consumer = make_consumer(cfg.kafka, "probe", group_id=group)
    try:
        parts = consumer.partitions_for_topic(cfg.topics.golden) or set()
        total = 0
        for p in parts:
            off = consumer.committed(TopicPartition(cfg.topics.golden, p))
            total += off or 0
        return total
    finally:
        consumer.close()


def test_sigterm_drains_commits_and_exits_zero(kafka_cfg: MeshwatchConfig) -> None:
    cfg = kafka_cfg
    produce(cfg, cfg.topics.golden, [(b"w", encode(batch(float(i)))) for i in range(1, 11)])
    env = {
        **os.environ,
        "MESHWATCH_KAFKA__BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers[0],
        "MESHWATCH_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "MESHWATCH_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
        "MESHWATCH_KAFKA__POLL_TIMEOUT_MS": "100",
        "MESHWATCH_TOPICS__PREFIX": cfg.topics.prefix,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "detect", "--group", "sig"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: committed(cfg, "sig") >= 10, 60, "all ten batches committed")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM: draining and stopping" in err
    assert committed(cfg, "sig") == 10
