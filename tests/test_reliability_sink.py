"""A sink that is down (nothing listening) while incidents open: everything arrives after.

``meshwatch alert`` runs as a child with a short retry policy (3 attempts,
backoff up to 2 s) and a webhook URL on a port where nothing listens yet. Findings for N routes arrive while the sink is down, longer
than the retry policy lasts; then the receiver starts on that port. Every
firing notice must arrive exactly once, and the resolves sent after the
recovery too — the outbox keeps what a sink has not taken.

``MESHWATCH_RELIABILITY_SINK_DOWN`` sets the downtime in seconds (default
15; ``bench/reliability.py`` runs 10 minutes).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.kafka.embedded import free_port
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding, encode, finding_id
from tests.kafka_helpers import produce
from tests.test_reliability_support import (
    StageProcess,
    fresh_group,
    kafka_section,
    poll_until,
    valid_finding,
    write_stage_config,
)

pytestmark = pytest.mark.integration

NID = "x-meshwatch-notification-id"
ROUTES = 12


def down_seconds() -> float:
    return float(os.environ.get("MESHWATCH_RELIABILITY_SINK_DOWN", "15"))


def findings(status: str) -> list[Finding]:
    base = valid_finding()
    out = []
    for i in range(ROUTES):
        route = f"GET /sink{i:02d}"
        rk = f"shop/deploy/web/inbound/{route}"
        end = base.window_end + (0 if status == "firing" else 60)
        out.append(
            base.model_copy(
                update={
                    "route_key": rk,
                    "route": route,
                    "status": status,
                    "window_end": end,
                    "id": finding_id(rk, base.kind, end, status),
                }
            )
        )
    return out


def ready(stage: StageProcess) -> bool:
    return stage.probe()[0] == 200


def test_sink_down_longer_than_retries_then_everything_delivered_once(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    port = free_port()
    conf = write_stage_config(
        tmp_path / "alert.yaml",
        {
            "kafka": kafka_section(list(kafka_cfg.kafka.bootstrap_servers)),
            "topics": {"prefix": kafka_cfg.topics.prefix},
            "log_level": "WARNING",
            "alerter": {
                "sinks": [
                    {
                        "type": "webhook",
                        "name": "hook",
                        "url": f"http://127.0.0.1:{port}{WebhookReceiver.default_path}",
                    }
                ],
                "grouping": {"group_by": ["..."], "group_wait_seconds": 0},
                "flap_damping_seconds": 0,
                "rate_limits": {"hook": {"per_second": 200, "burst": 50}},
                "retry": {
                    "max_attempts": 3,
                    "initial_backoff_seconds": 0.2,
                    "max_backoff_seconds": 2.0,
                },
            },
        },
    )
    alerter = StageProcess(
        "alert", conf, tmp_path / "alert.log", metrics_port=free_port(), group=fresh_group("alert")
    )
    alerter.start()
    firing, resolved = findings("firing"), findings("resolved")
    try:
        poll_until(partial(ready, alerter), 90, "the alerter ready")
        produce(kafka_cfg, kafka_cfg.topics.findings, [(b"web", encode(f)) for f in firing])
        # the sink stays down; the alerter must neither exit nor drop what it owes
        gate = threading.Event()
        gate.wait(down_seconds())  # the downtime itself is the condition under test
        assert alerter.alive(), alerter.log_tail()
        with ReceiverThread(WebhookReceiver(port=port)) as rx:

            def told() -> Counter[tuple[str, str]]:
                out: Counter[tuple[str, str]] = Counter()
                for r in rx.accepted():
                    fp, action, *_ = (r.header(NID) or "::").split(":")
                    out[(fp, action)] += 1
                return out

            want_firing = {(f.fingerprint, "firing") for f in firing}
            poll_until(lambda: want_firing <= set(told()), 120, "the owed firing notices")
            produce(kafka_cfg, kafka_cfg.topics.findings, [(b"web", encode(f)) for f in resolved])
            want = want_firing | {(f.fingerprint, "resolved") for f in resolved}
            poll_until(lambda: want <= set(told()), 120, "the resolves")
            counts = told()
            rejected = rx.rejected()
    finally:
        code = alerter.stop()
    assert set(counts) == want
    assert max(counts.values()) == 1, counts
    assert rejected == ()
    assert code == 0, alerter.log_tail()
    print(
        f"\nsink down {down_seconds():.0f}s: {len(firing)} firing owed, all delivered once after, "
        f"then {len(resolved)} resolves"
    )
