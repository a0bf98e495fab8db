"""The broker goes away for a while mid-incident; the stages wait, say so, and lose nothing.

The broker here is Tansu on S3 storage served by a local moto server
(:class:`DurableBroker`), so stopping it and starting it again on the same
port keeps topics, records and committed offsets — a real outage, not a
new empty cluster. ``meshwatch detect`` and ``meshwatch alert`` run as
child processes with their probes on. While a fault is firing, the calm
windows that resolve it are produced and the broker is stopped at once, so
the stages lose it with work in hand. What must hold:

- both stages stay up through the outage (no exit, no crash loop) and
  ``/readyz`` answers 503 naming the broker, then 200 again after it;
- afterwards the findings topic holds exactly the findings of an
  uninterrupted reference run, and every incident is notified firing and
  resolved exactly once.

``MESHWATCH_RELIABILITY_OUTAGE`` sets the outage in seconds (default 20;
``bench/reliability.py`` runs minutes).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.detect.engine import DetectionEngine
from pipeline.kafka.embedded import free_port
from pipeline.kafka.topics import ensure_topics
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding, decode, encode
from tests.kafka_helpers import produce, read_records
from tests.test_reliability_kill import detector_settings, stage_config
from tests.test_reliability_support import (
    DurableBroker,
    StageProcess,
    fresh_group,
    golden_stream,
    poll_until,
    write_stage_config,
)

pytestmark = pytest.mark.integration

NID = "x-meshwatch-notification-id"
WORKLOADS, ROUTES, WINDOWS = 2, 3, 26
FAULT_FROM, FAULT_UNTIL = 12, 16


def outage_seconds() -> float:
    return float(os.environ.get("MESHWATCH_RELIABILITY_OUTAGE", "20"))


def ready(stage: StageProcess) -> bool:
    return stage.probe()[0] == 200


def unready_for_broker(stage: StageProcess, seen: dict[str, str]) -> bool:
    code, body = stage.probe()
    if code == 503 and "broker" in body:
        seen[stage.stage] = body
        return True
    return False


def test_broker_outage_mid_incident_loses_nothing(tmp_path: Path) -> None:
    stream = golden_stream(
        WORKLOADS, ROUTES, WINDOWS, fault_from=FAULT_FROM, fault_until=FAULT_UNTIL, faulty_routes=1
    )
    with DurableBroker() as broker, ReceiverThread(WebhookReceiver()) as rx:
        cfg = load_config(
            None,
            {
                "kafka": {
                    "bootstrap_servers": [broker.bootstrap],
                    "session_timeout_ms": 6000,
                    "heartbeat_interval_ms": 1000,
                    "poll_timeout_ms": 100,
                    "linger_ms": 0,
                },
                "topics": {"prefix": "outage."},
            },
        )
        ensure_topics(cfg)
        reference = _reference(cfg, stream)
        assert reference
        data: dict[str, Any] = stage_config(cfg, rx.url)
        data["kafka"].update(session_timeout_ms=6000, heartbeat_interval_ms=1000)
        conf = write_stage_config(tmp_path / "stage.yaml", data)
        stages = [
            StageProcess(
                name,
                conf,
                tmp_path / f"{name}.log",
                metrics_port=free_port(),
                group=fresh_group(name),
            ).start()
            for name in ("detect", "alert")
        ]

        def told() -> Counter[tuple[str, str]]:
            out: Counter[tuple[str, str]] = Counter()
            for r in rx.accepted():
                fp, action, *_ = (r.header(NID) or "::").split(":")
                out[(fp, action)] += 1
            return out

        def window(w: int) -> list[tuple[bytes | None, bytes]]:
            return [
                (b.workload_key.encode(), encode(b))
                for b in stream[w * WORKLOADS : (w + 1) * WORKLOADS]
            ]

        firing = {(f.fingerprint, "firing") for f in reference.values()}
        everything = {(f.fingerprint, f.status) for f in reference.values()}
        seen_unready: dict[str, str] = {}
        try:
            for stage in stages:
                poll_until(partial(ready, stage), 90, f"{stage.stage} ready")
            for w in range(FAULT_UNTIL + 1):
                produce(cfg, cfg.topics.golden, window(w))
            poll_until(lambda: firing <= set(told()), 120, "the firing notices")
            # the calm windows, and the broker gone before they are handled
            calm = [r for w in range(FAULT_UNTIL + 1, WINDOWS) for r in window(w)]
            produce(cfg, cfg.topics.golden, calm)
            broker.stop()
            down_at = time.monotonic()
            assert broker.refuses_connections()
            for stage in stages:
                poll_until(
                    partial(unready_for_broker, stage, seen_unready),
                    max(outage_seconds(), 30),
                    f"{stage.stage} to report the broker unreachable",
                    step=0.5,
                )
            broker.restart_after(max(0.0, outage_seconds() - (time.monotonic() - down_at)))
            downtime = time.monotonic() - down_at
            for stage in stages:
                assert stage.alive(), stage.log_tail()
                poll_until(partial(ready, stage), 120, f"{stage.stage} ready again", step=0.5)
            poll_until(lambda: everything <= set(told()), 180, "every notice after the outage")
            records = read_records(
                cfg,
                cfg.topics.findings,
                lambda rs: {decode(Finding, r.value).id for r in rs} >= set(reference),
                timeout=60,
            )
        finally:
            codes = [s.stop() for s in stages]
        on_topic = {decode(Finding, r.value).id for r in records}
        assert on_topic == set(reference)
        counts = told()
        assert set(counts) == everything
        assert max(counts.values()) == 1, counts  # no kill here: not even in-flight copies
        assert codes == [0, 0], [s.log_tail() for s in stages]
        assert set(seen_unready) == {"detect", "alert"}
        print(
            f"\nbroker down {downtime:.0f}s mid-incident: /readyz said {seen_unready}; "
            f"{len(reference)} findings, {sum(counts.values())} notices, none lost or repeated"
        )


def _reference(cfg: Any, stream: list[Any]) -> dict[str, Finding]:
    engine = DetectionEngine(
        cfg.detector.model_copy(update={"warmup_windows": detector_settings()["warmup_windows"]})
    )
    out: dict[str, Finding] = {}
    for w in range(WINDOWS):
        for f in engine.process(stream[w * WORKLOADS : (w + 1) * WORKLOADS]):
            out[f.id] = f
    return out
