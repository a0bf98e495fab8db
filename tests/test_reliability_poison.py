"""A flood of poison on each stage's input topic, valid messages interleaved.

The detector (golden topic) and the alerter (findings topic) each get every
kind of bad record — invalid JSON, invalid UTF-8, the wrong message type,
wrong field types, a missing value (tombstone), and huge bodies (a 3 MB
string field; 3 MB of binary junk, whose escaped DLQ copy would exceed the
producer's request limit) — mixed in with a stream that must still produce
its findings or notices. What must hold:

- every poison record lands in the DLQ exactly once, with a reason header
  and its source offset, and nothing valid does;
- the valid messages are processed as if the poison were not there (the
  detector's findings equal an uninterrupted reference; every finding sent
  to the alerter is notified);
- the stage does not stall or exit: it is still alive and consuming after
  the flood.

The collector has no input topic: its untrusted input is the scraped body,
covered by ``tests/test_fuzz_exposition.py``.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.detect.engine import DetectionEngine
from pipeline.detect.stage import DetectorProcessor
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import DeadLetter, Finding, decode, encode
from pipeline.stage.loop import StageRunner
from tests.kafka_helpers import produce, read_records
from tests.test_alerter_support import NID, RunningAlerter, configure, webhook
from tests.test_reliability_support import fresh_group, golden_stream, poll_until, valid_finding

pytestmark = pytest.mark.integration

WORKLOADS, ROUTES, WINDOWS = 2, 2, 24
FAULT_FROM, FAULT_UNTIL = 12, 17
HUGE = 3 * 1024 * 1024


def poison(kind: str, rng: random.Random) -> list[tuple[str, bytes | None]]:
    """(label, value) of every bad record, a few of each; ``kind`` is the topic's type."""
    other = (
        encode(valid_finding())
        if kind == "golden"
        else (encode(golden_stream(1, 1, 1, fault_from=9, fault_until=9, faulty_routes=0)[0]))
    )
    wrong_types = json.loads(
        encode(
            valid_finding()
            if kind == "findings"
            else golden_stream(1, 1, 1, fault_from=9, fault_until=9, faulty_routes=0)[0]
        )
    )
    wrong_types["window_end"] = "yesterday"
    huge_field = dict(wrong_types, window_end=1.0)
    huge_field["workload_key" if kind == "golden" else "route_key"] = {"x": "y" * HUGE}
    out: list[tuple[str, bytes | None]] = []
    for i in range(3):
        out += [
            ("invalid json", b'{"schema": "meshwatch.' + bytes([rng.randrange(256)]) * i),
            ("invalid utf-8", b'{"schema":"\xff\xfe' + bytes(rng.randrange(256) for _ in range(9))),
            ("wrong message type", other),
            ("wrong field types", json.dumps(wrong_types).encode()),
            ("empty", b""),
            ("json but not an object", json.dumps([1, "two", None, i]).encode()),
        ]
    out += [
        ("tombstone", None),
        ("huge field", json.dumps(huge_field).encode()),
        ("huge binary", bytes(rng.randrange(256) for _ in range(1024)) * (HUGE // 1024)),
    ]
    return out


def interleave(
    valid: list[tuple[bytes, bytes]], bad: list[tuple[str, bytes | None]], rng: random.Random
) -> list[tuple[bytes | None, bytes | None, str | None]]:
    """Valid records in order, poison spread at random between them (key, value, label)."""
    slots: list[list[tuple[bytes | None, bytes | None, str | None]]] = [[] for _ in valid]
    for label, value in bad:
        slots[rng.randrange(len(valid))].append((b"poison", value, label))
    out: list[tuple[bytes | None, bytes | None, str | None]] = []
    for (k, v), extra in zip(valid, slots, strict=True):
        out += extra
        out.append((k, v, None))
    return out


def produce_mixed(
    cfg: MeshwatchConfig, topic: str, records: list[tuple[bytes | None, bytes | None, str | None]]
) -> None:
    # kafka_helpers.produce types values as bytes; a tombstone needs None
    produce(cfg, topic, [(k, v) for k, v, _ in records])  # type: ignore[misc]


def dead_letters(cfg: MeshwatchConfig, n: int) -> list[Any]:
    return read_records(cfg, cfg.topics.dlq, lambda rs: len(rs) >= n, timeout=120)


def check_dlq(records: list[Any], expected: int) -> dict[str, int]:
    assert len(records) == expected, f"{len(records)} DLQ records for {expected} poison"
    reasons: dict[str, int] = {}
    sources = set()
    for r in records:
        headers = dict(r.headers)
        reason = headers["meshwatch-reason"].decode()
        assert reason
        letter = decode(DeadLetter, r.value)
        assert letter.error and letter.reason == reason
        assert letter.source_offset is not None
        sources.add((letter.source_partition, letter.source_offset))
        reasons[reason] = reasons.get(reason, 0) + 1
        assert r.key in (b"poison", None)
    assert len(sources) == expected  # each poison record once
    # the two 3 MB bodies are forwarded cut, and say so
    cut = [r for r in records if "meshwatch-truncated" in dict(r.headers)]
    assert len(cut) == 2 and all(len(r.value) < 2 * 1024 * 1024 for r in cut)
    return reasons


@pytest.fixture
def rng() -> random.Random:
    return random.Random(int(os.environ.get("MESHWATCH_RELIABILITY_SEED", "20261127")))


class DetectorThread:
    def __init__(self, cfg: MeshwatchConfig) -> None:
        group = fresh_group("detector")  # nothing left in the group by other tests joins it
        processor = DetectorProcessor(cfg, group_id=group)
        self.runner = StageRunner(cfg, processor, cfg.topics.golden, group)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(30)


@pytest.fixture
def detector(kafka_cfg: MeshwatchConfig) -> Iterator[DetectorThread]:
    cfg = kafka_cfg.model_copy(
        update={"detector": kafka_cfg.detector.model_copy(update={"warmup_windows": 8})}
    )
    d = DetectorThread(cfg)
    yield d
    d.stop()


def test_detector_dead_letters_every_poison_and_keeps_detecting(
    kafka_cfg: MeshwatchConfig, detector: DetectorThread, rng: random.Random
) -> None:
    stream = golden_stream(
        WORKLOADS, ROUTES, WINDOWS, fault_from=FAULT_FROM, fault_until=FAULT_UNTIL, faulty_routes=1
    )
    engine = DetectionEngine(detector.runner.cfg.detector)
    reference = {
        f.id
        for w in range(WINDOWS)
        for f in engine.process(stream[w * WORKLOADS : (w + 1) * WORKLOADS])
    }
    assert reference
    bad = poison("golden", rng)
    records = interleave([(b.workload_key.encode(), encode(b)) for b in stream], bad, rng)
    produce_mixed(kafka_cfg, kafka_cfg.topics.golden, records)

    try:
        found = read_records(
            kafka_cfg,
            kafka_cfg.topics.findings,
            lambda rs: (
                {decode(Finding, r.value).id for r in rs} >= reference or detector.error is not None
            ),
            timeout=120,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the stage: {detector.error!r}") from None
    assert detector.error is None, repr(detector.error)
    assert {decode(Finding, r.value).id for r in found} == reference
    reasons = check_dlq(dead_letters(kafka_cfg, len(bad)), len(bad))
    assert detector.error is None and detector.thread.is_alive(), detector.error
    # still consuming after the flood: one more valid window is taken in
    before = detector.runner.stats.consumed
    produce(kafka_cfg, kafka_cfg.topics.golden, [(records[-1][0] or b"", records[-1][1] or b"")])
    poll_until(lambda: detector.runner.stats.consumed > before, 60, "the detector to go on")
    print(f"\ndetector: {len(bad)} poison records -> DLQ {reasons}; {len(reference)} findings")


def test_alerter_dead_letters_every_poison_and_keeps_notifying(
    kafka_cfg: MeshwatchConfig, rng: random.Random
) -> None:
    with ReceiverThread(WebhookReceiver()) as rx:
        cfg = configure(
            kafka_cfg,
            [webhook("hook", rx.url)],
            grouping={"group_by": ["..."], "group_wait_seconds": 0, "group_interval_seconds": 0},
            flap_damping_seconds=0,
            rate_limits={"hook": {"per_second": 500, "burst": 100}},
        )
        alerter = RunningAlerter(cfg, group=fresh_group("alerter"))
        try:
            base = valid_finding()
            findings = [
                base.model_copy(
                    update={
                        "route_key": f"shop/deploy/web/inbound/GET /p{i}",
                        "route": f"GET /p{i}",
                        "id": f"poison-test-{i}",
                    }
                )
                for i in range(20)
            ]
            bad = poison("findings", rng)
            records = interleave([(f.workload_key.encode(), encode(f)) for f in findings], bad, rng)
            produce_mixed(cfg, cfg.topics.findings, records)
            want = {f.fingerprint for f in findings}

            def told() -> set[str]:
                return {(r.header(NID) or "").split(":")[0] for r in rx.accepted()}

            poll_until(lambda: want <= told(), 120, "every valid finding to be notified")
            reasons = check_dlq(dead_letters(cfg, len(bad)), len(bad))
            assert alerter.error is None and alerter.thread.is_alive(), alerter.error
            assert told() == want
            assert rx.rejected() == ()
        finally:
            alerter.stop()
    print(f"\nalerter: {len(bad)} poison records -> DLQ {reasons}; {len(want)} notified")
