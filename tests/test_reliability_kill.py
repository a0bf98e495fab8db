"""``meshwatch detect`` and ``meshwatch alert`` SIGKILLed at random points while a fault plays out.

A deterministic golden stream (steady routes, a latency-and-error fault on
some of them, then calm) is fed window by window while both stages run as
child processes; at seeded random windows one of them is killed with
SIGKILL and started again at once. The oracle is the same stream judged by
an uninterrupted in-process :class:`DetectionEngine`:

- no finding lost or invented: the distinct finding ids on the findings
  topic are exactly the reference's (state comes back from checkpoints and
  replay, so the detector judges every window once more as before);
- every finding reaches the webhook: a firing and a resolved notice per
  incident, nothing for healthy routes;
- no duplicate notice, except one the receiver had accepted in the last
  instant before an alerter kill (its HTTP answer or outbox tombstone lost
  with the process). Such a copy carries the same notification id, so a
  deduplicating target drops it; it is counted and reported.

``MESHWATCH_RELIABILITY_KILLS`` and ``MESHWATCH_RELIABILITY_SEED`` make the
same test a longer run (``bench/reliability.py`` uses them).
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.detect.engine import DetectionEngine
from pipeline.kafka.embedded import free_port
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding, GoldenBatch, decode, encode
from tests.kafka_helpers import produce, read_records
from tests.test_reliability_support import (
    StageProcess,
    fresh_group,
    golden_stream,
    kafka_section,
    poll_until,
    write_stage_config,
)

pytestmark = pytest.mark.integration

NID = "x-meshwatch-notification-id"
WORKLOADS, ROUTES, WINDOWS = 4, 4, 34
FAULT_FROM, FAULT_UNTIL, FAULTY = 14, 20, 2
#: How long before an alerter kill the first copy of a duplicate may have arrived.
IN_FLIGHT_WINDOW = 1.0


def kills_wanted() -> int:
    return int(os.environ.get("MESHWATCH_RELIABILITY_KILLS", "4"))


def seed() -> int:
    return int(os.environ.get("MESHWATCH_RELIABILITY_SEED", "20261127"))


def detector_settings() -> dict[str, Any]:
    return {
        "warmup_windows": 8,
        "state": {"checkpoint_interval_seconds": 1.0},
    }


def stage_config(cfg: MeshwatchConfig, hook: str) -> dict[str, Any]:
    return {
        "kafka": kafka_section(list(cfg.kafka.bootstrap_servers)),
        "topics": {"prefix": cfg.topics.prefix},
        "observe": {"enabled": True},
        "log_level": os.environ.get("MESHWATCH_RELIABILITY_LOG", "WARNING"),
        "detector": detector_settings(),
        "alerter": {
            "sinks": [{"type": "webhook", "name": "hook", "url": hook}],
            "grouping": {"group_by": ["..."], "group_wait_seconds": 0, "group_interval_seconds": 0},
            "flap_damping_seconds": 0,
            "rate_limits": {"hook": {"per_second": 500, "burst": 100}},
            "retry": {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
        },
    }


def reference_findings(cfg: MeshwatchConfig, stream: list[GoldenBatch]) -> dict[str, Finding]:
    """The same stream judged window by window without interruption."""
    warmup = detector_settings()["warmup_windows"]
    engine = DetectionEngine(cfg.detector.model_copy(update={"warmup_windows": warmup}))
    out: dict[str, Finding] = {}
    for w in range(WINDOWS):
        for f in engine.process(stream[w * WORKLOADS : (w + 1) * WORKLOADS]):
            out[f.id] = f
    return out


def run_with_kills(
    cfg: MeshwatchConfig, tmp_path: Path, rng: random.Random, kills: int
) -> dict[str, Any]:
    stream = golden_stream(
        WORKLOADS,
        ROUTES,
        WINDOWS,
        fault_from=FAULT_FROM,
        fault_until=FAULT_UNTIL,
        faulty_routes=FAULTY,
    )
    reference = reference_findings(cfg, stream)
    assert reference, "the stream must produce findings, or the test proves nothing"
    with ReceiverThread(WebhookReceiver()) as rx:
        conf = write_stage_config(tmp_path / "stage.yaml", stage_config(cfg, rx.url))
        stages = {
            name: StageProcess(
                name,
                conf,
                tmp_path / f"{name}.log",
                metrics_port=free_port(),
                group=fresh_group(name),
            ).start()
            for name in ("detect", "alert")
        }
        kill_at = sorted(rng.choices(range(1, WINDOWS), k=kills))  # repeats: kills in a row

        def told() -> set[tuple[str, str]]:
            got = set()
            for r in rx.accepted():
                fp, action, *_ = (r.header(NID) or "::").split(":")
                got.add((fp, action))
            return got

        pace = threading.Event()  # never set: a pause between windows, not a wait for an event
        try:
            for w in range(WINDOWS):
                window = stream[w * WORKLOADS : (w + 1) * WORKLOADS]
                produce(
                    cfg,
                    cfg.topics.golden,
                    [(b.workload_key.encode(), encode(b)) for b in window],
                )
                pace.wait(rng.uniform(0.02, 0.25))
                for _ in range(kill_at.count(w)):
                    victim = stages[rng.choice(sorted(stages))]
                    victim.kill()
                    victim.start()

            def findings_on_topic() -> dict[str, Finding]:
                records = read_records(
                    cfg,
                    cfg.topics.findings,
                    lambda rs: {decode(Finding, r.value).id for r in rs} >= set(reference),
                    timeout=180,
                )
                return {f.id: f for f in (decode(Finding, r.value) for r in records)}

            on_topic = findings_on_topic()
            want = {(f.fingerprint, f.status) for f in on_topic.values()}

            try:
                poll_until(lambda: want <= told(), 90, "every finding to be notified")
            except AssertionError as exc:
                ids = sorted(Counter(r.header(NID) for r in rx.accepted()).items())
                raise AssertionError(
                    f"{exc}; missing {sorted(want - told())}; got {ids}; "
                    f"all requests {[(r.status, r.reason) for r in rx.requests()][:5]}; "
                    + stages["alert"].log_tail()
                ) from None
            for stage in stages.values():  # a SIGTERM while still starting up is not a drain
                poll_until(partial(ready, stage), 60, f"{stage.stage} /readyz")
        finally:
            codes = {name: s.stop() for name, s in stages.items()}
        accepted = rx.accepted()
        alert_kills = stages["alert"].kills
        return {
            "reference": reference,
            "on_topic": on_topic,
            "want": want,
            "told": told(),
            "counts": Counter(r.header(NID) or "" for r in accepted),
            "accepted": accepted,
            "rejected": rx.rejected(),
            "alert_kills": alert_kills,
            "detect_kills": stages["detect"].kills,
            "codes": codes,
            "logs": {n: s.log_tail() for n, s in stages.items()},
        }


def ready(stage: StageProcess) -> bool:
    return stage.probe()[0] == 200


def check(result: dict[str, Any]) -> tuple[int, int]:
    """The assertions; returns (notices, in-flight duplicates) for the report."""
    logs = result["logs"]
    assert result["codes"] == {"detect": 0, "alert": 0}, (result["codes"], logs)
    assert set(result["on_topic"]) == set(result["reference"]), (
        "lost: "
        + str(sorted(set(result["reference"]) - set(result["on_topic"])))
        + " invented: "
        + str(sorted(set(result["on_topic"]) - set(result["reference"])))
    )
    faulty = {f"GET /r{r:03d}" for r in range(FAULTY)}
    assert {f.route for f in result["on_topic"].values()} <= faulty
    assert result["told"] == result["want"]
    assert result["rejected"] == ()
    counts: Counter[str] = result["counts"]
    dups = {nid: n for nid, n in counts.items() if n > 1}
    for nid, n in dups.items():
        first = min(r.at for r in result["accepted"] if r.header(NID) == nid)
        assert n == 2, (nid, n)
        assert any(0 <= k - first <= IN_FLIGHT_WINDOW for k in result["alert_kills"]), (
            f"{nid} sent twice, first at {first}, not just before an alerter kill"
        )
    assert len(dups) <= len(result["alert_kills"])
    return sum(counts.values()), len(dups)


def test_detector_and_alerter_sigkilled_at_random_lose_nothing(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    rng = random.Random(seed())
    result = run_with_kills(kafka_cfg, tmp_path, rng, kills_wanted())
    notices, dups = check(result)
    kills = len(result["alert_kills"]) + len(result["detect_kills"])
    assert kills == kills_wanted()
    print(
        f"\n{len(result['detect_kills'])} detector + {len(result['alert_kills'])} alerter "
        f"SIGKILLs; {len(result['reference'])} findings expected, "
        f"{len(result['on_topic'])} distinct on the topic; {notices} notices for "
        f"{len(result['counts'])} ids, {dups} in-flight duplicate(s)"
    )
