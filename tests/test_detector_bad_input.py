"""Bad input to the detector, each with its defined outcome (docs/architecture.md,
"Bad input"): NaN/inf and negative counts, duplicate and out-of-order windows,
clock skew, and a workload whose pods stop answering (target_down)."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import MeshwatchConfig
from pipeline.detect.stage import DetectorProcessor
from pipeline.schema import DeadLetter, Finding, GoldenBatch, decode, encode
from pipeline.stage.loop import Inbound, Output, StageRunner
from tests.kafka_helpers import produce, read_records, wait_until
from tests.test_detector_state import T0, WINDOW, golden

WK = "shop/deploy/web"
NOW = T0 + 3600.0  # the processor's clock in unit tests


def processor(cfg: MeshwatchConfig | None = None, now: float = NOW) -> DetectorProcessor:
    cfg = (cfg or MeshwatchConfig()).model_copy(deep=True)
    cfg.detector = cfg.detector.model_copy(
        update={
            "warmup_windows": 10,
            "state": cfg.detector.state.model_copy(update={"enabled": False}),
        }
    )
    proc = DetectorProcessor(cfg, clock=lambda: now)
    list(proc.on_assign([TopicPartition("golden", 0)]))
    return proc


def item(proc: DetectorProcessor, b: GoldenBatch, offset: int = 0) -> Inbound[Any]:
    return Inbound("golden", 0, offset, b.workload_key.encode(), proc.decode(encode(b)), 0)


def run(proc: DetectorProcessor, batches: list[GoldenBatch]) -> list[Output]:
    """Append ``batches`` to the partition (each at a new offset) and process them."""
    start = proc.admission.seen_through.get(0, -1) + 1
    return list(proc.process([item(proc, b, start + i) for i, b in enumerate(batches)]))


def counters(proc: DetectorProcessor) -> dict[tuple[str, str], float]:
    out = {}
    text = generate_latest(proc.metrics.registry).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("meshwatch_detector_windows_") and s.name.endswith("_total"):
                out[(s.name, s.labels.get("reason", ""))] = s.value
    return out


def findings(outputs: list[Output]) -> list[Finding]:
    return [decode(Finding, o.value) for o in outputs if ".findings." in o.topic]


def state(proc: DetectorProcessor) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in proc.engine.detector.state_arrays().items()}


def windows(n: int, faults: dict[int, float] | None = None) -> list[GoldenBatch]:
    return [b for _, b in golden([WK], range(1, n + 1), faults or {})]


# -- NaN, inf, negative counts: refused at decode, DLQ with the field ---------------


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d["samples"][0].update(p99_ms=float("nan")), "samples.0.p99_ms"),
        (lambda d: d.update(window_end=float("inf")), "window_end"),
        (lambda d: d["samples"][1].update(requests=-5), "samples.1.requests"),
        (lambda d: d["samples"][0].update(latency_sum_ms=float("-inf")), "latency_sum_ms"),
    ],
)
def test_non_finite_and_negative_values_are_refused_with_the_field(change: Any, error: str) -> None:
    proc = processor()
    d = json.loads(encode(windows(1)[0]))
    change(d)
    raw = json.dumps(d).encode()  # Python writes NaN / Infinity literals
    with pytest.raises(Exception, match=error.replace(".", r"\.")):
        proc.decode(raw)


def test_a_non_finite_window_end_a_lenient_decoder_let_through_is_dead_lettered() -> None:
    """The gate re-checks the one value it relies on, the window's end time."""
    proc = processor()
    good = windows(2)
    bad = GoldenBatch.model_construct(**{**dict(good[1]), "window_end": float("nan")})
    items = [item(proc, good[0], 0), Inbound("golden", 0, 1, WK.encode(), bad, 0)]
    out = list(proc.process(items))
    dlq = [o for o in out if ".dlq." in o.topic]
    assert len(dlq) == 1
    assert dict(dlq[0].headers)["meshwatch-reason"] == b"invalid value"
    assert "window_end: nan is not a finite number" in decode(DeadLetter, dlq[0].value).error
    assert proc.engine.samples_seen == 2  # only the good window's two routes
    assert counters(proc)[("meshwatch_detector_windows_rejected_total", "invalid value")] == 1


# -- duplicate and out-of-order windows: ignored, counted, idempotent -------------


def test_a_duplicate_window_is_ignored_and_neither_learned_nor_judged_twice() -> None:
    data = windows(30, {28: 8.0, 29: 8.0, 30: 8.0})
    proc = processor()
    first = findings(run(proc, data))
    assert [(f.kind, f.status) for f in first].count(("latency", "firing")) == 2
    before = state(proc)
    seen = proc.engine.samples_seen
    again = run(proc, data[-3:])  # re-delivered: the last three windows
    assert findings(again) == []
    assert proc.engine.samples_seen == seen
    after = state(proc)
    for name, a in before.items():
        np.testing.assert_array_equal(a, after[name], err_msg=name)
    c = counters(proc)
    # the newest one repeats the last window; the two before it are older than that
    assert c[("meshwatch_detector_windows_dropped_total", "duplicate_window")] == 1
    assert c[("meshwatch_detector_windows_dropped_total", "out_of_order_window")] == 2


def test_an_out_of_order_window_is_ignored_and_counted() -> None:
    data = windows(20)
    proc = processor()
    run(proc, data[:15] + data[16:18])  # 16 is late ...
    before = state(proc)
    assert findings(run(proc, [data[15]])) == []  # ... arrives after 17 and 18
    for name, a in before.items():
        np.testing.assert_array_equal(a, state(proc)[name], err_msg=name)
    assert counters(proc)[("meshwatch_detector_windows_dropped_total", "out_of_order_window")] == 1
    # and the stream goes on
    run(proc, data[18:])
    assert proc.engine.detector.last_window[0] == data[-1].window_end


def test_duplicates_inside_one_batch_are_taken_once() -> None:
    data = windows(12)
    proc = processor()
    run(proc, data + data[-1:] + data[-2:-1])
    assert proc.engine.samples_seen == 12 * 2
    c = counters(proc)
    assert c[("meshwatch_detector_windows_dropped_total", "duplicate_window")] == 1
    assert c[("meshwatch_detector_windows_dropped_total", "out_of_order_window")] == 1


def test_a_batch_retried_message_by_message_is_not_taken_for_duplicates() -> None:
    """The stage loop retries a failed batch one message at a time."""
    data = windows(12)
    proc = processor()
    inner = proc.engine.process_decoded
    calls = []

    def flaky(values: Any) -> Any:
        calls.append(len(values))
        if len(calls) == 1:
            raise RuntimeError("engine failed on the whole batch")
        return inner(values)

    proc.engine.process_decoded = flaky  # type: ignore[method-assign]
    items = [item(proc, b, i) for i, b in enumerate(data)]
    with pytest.raises(RuntimeError):
        list(proc.process(items))
    for it in items:  # what StageRunner._process does next
        list(proc.process([it]))
    assert proc.engine.samples_seen == 12 * 2
    assert (
        counters(proc).get(("meshwatch_detector_windows_dropped_total", "duplicate_window"), 0) == 0
    )


# -- clock skew ------------------------------------------------------------------


def test_a_window_from_the_future_goes_to_the_dlq_and_does_not_block_later_windows() -> None:
    data = windows(12)
    proc = processor(now=data[5].window_end)
    # a collector whose clock runs an hour ahead stamps this window
    end = data[5].window_end + 3600
    ahead = data[5].model_copy(
        update={
            "window_end": end,
            "samples": tuple(x.model_copy(update={"window_end": end}) for x in data[5].samples),
        }
    )
    out = run(proc, [*data[:5], ahead])
    dlq = [o for o in out if ".dlq." in o.topic]
    assert [dict(o.headers)["meshwatch-reason"] for o in dlq] == [b"window in the future"]
    letter = decode(DeadLetter, dlq[0].value)
    assert "clock skew" in letter.error
    assert letter.value == encode(ahead).decode()  # nothing lost: the message as it came
    # the refused window did not move the workload's clock: the next ones are judged
    run(proc, data[5:])
    assert proc.engine.samples_seen == 12 * 2
    c = counters(proc)
    assert c[("meshwatch_detector_windows_rejected_total", "window in the future")] == 1


def test_old_windows_are_judged_and_counted_as_late() -> None:
    data = windows(5)
    proc = processor(now=data[-1].window_end + 2 * 3600)  # a backlog two hours behind
    run(proc, data)
    assert proc.engine.samples_seen == 10
    text = generate_latest(proc.metrics.registry).decode()
    assert "meshwatch_detector_windows_late_total 5.0" in text


# -- target down ---------------------------------------------------------------------


def test_pods_down_for_n_windows_fire_target_down_and_resolve_when_back() -> None:
    proc = processor()
    n = proc.cfg.detector.target_down_windows
    base = windows(12)
    seq = []
    for i, b in enumerate(base):
        down = ("web-1",) if 3 <= i < 3 + n + 2 else ()
        seq.append(b.model_copy(update={"pods_up": ("web-0",), "pods_down": down}))
    got = [(f.kind, f.status, f.window_end) for f in findings(run(proc, seq))]
    fire_at = base[3 + n - 1].window_end
    resolve_at = base[3 + n + 2 + proc.cfg.detector.resolve_after - 1].window_end
    assert got == [("target_down", "firing", fire_at), ("target_down", "resolved", resolve_at)]
    f = findings(run(processor(), seq))[0]
    assert (f.route_key, f.suspect_pod, f.severity) == (f"{WK}/inbound/*", "web-1", "warning")
    assert f.started_at == base[3].window_end


def test_a_whole_workload_down_is_critical_even_without_samples() -> None:
    proc = processor()
    silent = [
        GoldenBatch(
            workload_key=WK,
            window_end=T0 + WINDOW * i,
            window_seconds=WINDOW,
            pods_down=("web-0", "web-1"),
            samples=(),
        )
        for i in range(1, 4)
    ]
    (f,) = findings(run(proc, silent))
    assert (f.kind, f.severity, f.observed) == ("target_down", "critical", 2.0)
    assert "no pod answers" in f.explanation


# -- through the real stage loop and broker ------------------------------------------


@pytest.mark.integration
def test_bad_messages_reach_the_dlq_with_reasons_and_good_ones_are_judged(
    kafka_cfg: MeshwatchConfig,
) -> None:
    cfg = kafka_cfg
    data = windows(4)
    nan = json.loads(encode(data[1]))
    nan["samples"][0]["p95_ms"] = float("nan")
    future = data[3].model_copy(update={"window_end": 4e9})
    records = [
        (WK.encode(), encode(data[0])),
        (WK.encode(), json.dumps(nan).encode()),
        (WK.encode(), encode(future)),
        (WK.encode(), encode(data[2])),
        (WK.encode(), encode(data[2])),  # duplicate
        (WK.encode(), encode(data[0])),  # out of order
    ]
    produce(cfg, cfg.topics.golden, records)
    proc = DetectorProcessor(cfg)
    runner = StageRunner(cfg, proc, cfg.topics.golden, "detector", metrics=proc.metrics)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: runner.stats.consumed >= len(records), what="all consumed")
    finally:
        runner.stop()
        t.join(10)
    dlq = read_records(cfg, cfg.topics.dlq, lambda r: len(r) >= 2)
    reasons = sorted(dict(r.headers)["meshwatch-reason"].decode() for r in dlq)
    assert reasons == ["invalid message", "window in the future"]
    assert proc.engine.samples_seen == 2 * 2  # windows 1 and 3, once each
    c = counters(proc)
    assert c[("meshwatch_detector_windows_dropped_total", "duplicate_window")] == 1
    assert c[("meshwatch_detector_windows_dropped_total", "out_of_order_window")] == 1
