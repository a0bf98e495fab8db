"""Detector rate: the detector stage end to end against a plain consumer.

Loads W windows × N routes as GoldenBatches (K routes per workload message)
onto the golden topic of an embedded broker (not timed), then measures in
this one process, on the same messages, alternating:

  (a)  reference  a plain kafka-python group consumer that polls and decodes
                  every poll batch exactly as the stage does (msgspec per
                  message, then the batch-wide columns and checks of
                  ``pipeline.detect.columnar``), nothing else;
  (a') reference  the same consumer decoding with pydantic
                  (``decode(GoldenBatch, raw)``), the stage's decoder before;
  (b)  detector   the real ``StageRunner`` + ``DetectorProcessor`` in a fresh
                  group: decode, detect, produce findings, flush, commit;
  (c)  engine     ``DetectionEngine.process_columns`` alone on pre-decoded
                  columns of the poll batches the first (b) run received (same
                  messages per batch, so the same rounds: a batch holding several
                  windows of a route is judged one window per route at a time);
  (d)  decode     the stage's decoding alone (no Kafka) of the same batches,
                  next to pydantic and a bare ``orjson.loads``.

Both consumers pause the cyclic GC while a poll batch is in hand, as the
stage loop does. Rates are route-samples per second; (b)/(a) is the number
that carries to other machines. A run is timed from the first non-empty poll
to the last record handled, so the consumer-group join is left out.

    python bench/detector_rate.py                        # N=5000, W=20, K=20
    python bench/detector_rate.py --routes 20000 --windows 10 --routes-per-batch 50
    python bench/detector_rate.py --profile /tmp/det.prof   # cProfile of (b)
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from common import (
    MeshShape,
    bench_broker,
    bench_config,
    fmt_rate,
    generate_records,
    machine_line,
    produce_all,
    rss_mib,
)

from pipeline.config import MeshwatchConfig
from pipeline.detect import columnar
from pipeline.detect.engine import DetectionEngine
from pipeline.detect.scoring import ModelScoring
from pipeline.detect.stage import DetectorProcessor
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.topics import ensure_topics
from pipeline.schema import GoldenBatch, decode
from pipeline.stage.loop import StageRunner


@dataclass
class Run:
    seconds: float
    messages: int
    samples: int
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: this process's CPU seconds (all threads) over the same span; less
    #: sensitive than wall time to other work on a shared machine
    cpu: float = float("nan")

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_rate(self) -> float:
        return self.samples / self.cpu if self.cpu > 0 else float("nan")


# -- (a) the reference ------------------------------------------------------------


def reference_consume(cfg: MeshwatchConfig, expected: int, timeout: float, *, fast: bool) -> Run:
    """A plain group consumer, same client settings and poll size, that only decodes.

    ``fast``: the stage's own decoding (per message, then the poll batch into
    columns); otherwise pydantic per message.
    """
    consumer = make_consumer(cfg.kafka, "bench-ref", f"bench-ref-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([cfg.topics.golden])
    seen = samples = polls = 0
    first: float | None = None
    cpu0 = 0.0
    deadline = time.monotonic() + timeout
    gc.collect()
    gc.freeze()
    try:
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reference read {seen}/{expected} messages")
            polled = consumer.poll(
                timeout_ms=cfg.kafka.poll_timeout_ms, max_records=cfg.detector.max_poll_records
            )
            if not polled:
                continue
            if first is None:
                first = time.perf_counter()
                cpu0 = time.process_time()
            polls += 1
            gc.disable()
            try:
                records = [r for batch in polled.values() for r in batch]
                if fast:
                    cols, _ = columnar.columns([columnar.decode_golden(r.value) for r in records])
                    samples += len(cols)
                else:
                    for r in records:
                        samples += len(decode(GoldenBatch, r.value).samples)
                seen += len(records)
                del records
            finally:
                gc.enable()
        took = time.perf_counter() - (first or 0.0)
        cpu = time.process_time() - cpu0
    finally:
        gc.unfreeze()
        consumer.close(autocommit=False)
    return Run(took, seen, samples, polls, cpu=cpu)


# -- (b) the detector stage ----------------------------------------------------------


class GcClock:
    """Time spent in the cyclic garbage collector while ``on``, per generation."""

    def __init__(self) -> None:
        self.on = False
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._t = time.perf_counter()
        else:
            gen = info["generation"]
            self.seconds[gen] += time.perf_counter() - self._t
            self.count[gen] += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class _Timed:
    """The real loop, clocked from its first batch to the batch that ends the data."""

    expected = 0
    first: float | None = None
    last: float | None = None
    cpu0 = 0.0
    cpu = float("nan")
    gc_clock: GcClock
    batch_sizes: list[int]
    #: the raw values of every poll batch handled, in order (for (c) and (d))
    polls: list[list[bytes]]
    #: seconds inside ``consumer.poll`` after the first batch (fetch waits included)
    poll_seconds = 0.0
    stats: Any

    def _handle(self, records: Sequence[Any]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.cpu0 = time.process_time()
            self.gc_clock.on = True
        self.batch_sizes.append(len(records))
        self.polls.append([r.value for r in records])
        super()._handle(records)  # type: ignore[misc]
        if self.stats.consumed >= self.expected:
            self.last = time.perf_counter()
            self.cpu = time.process_time() - self.cpu0
            self.gc_clock.on = False
            self.stop()  # type: ignore[attr-defined]


class _TimedRunner(_Timed, StageRunner):
    pass


def detector_stage(cfg: MeshwatchConfig, expected: int, timeout: float) -> Run:
    processor = DetectorProcessor(cfg)
    runner = _TimedRunner(
        cfg, processor, cfg.topics.golden, f"bench-detector-{uuid.uuid4().hex[:6]}"
    )
    runner.expected = expected
    runner.batch_sizes = []
    runner.polls = []
    make = runner._consumer_factory

    def timed_consumer() -> Any:
        consumer = make()
        poll = consumer.poll

        def timed_poll(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return poll(*args, **kwargs)
            finally:
                if runner.first is not None and runner.last is None:
                    runner.poll_seconds += time.perf_counter() - t

        consumer.poll = timed_poll
        return consumer

    runner._consumer_factory = timed_consumer
    timer = threading.Timer(timeout, runner.stop)
    timer.daemon = True
    timer.start()
    try:
        with GcClock() as clock:
            runner.gc_clock = clock
            runner.run()  # in this thread: no monitor thread competing for the GIL
    finally:
        timer.cancel()
    if runner.last is None or runner.first is None:
        raise TimeoutError(f"detector handled {runner.stats.consumed}/{expected} messages")
    engine = processor.engine
    det = engine.detector
    return Run(
        runner.last - runner.first,
        runner.stats.consumed,
        engine.samples_seen,
        runner.stats.batches,
        cpu=runner.cpu,
        extra={
            "findings": runner.stats.produced,
            "dead_lettered": runner.stats.dead_lettered,
            "routes": len(det.keys),
            "state_bytes_per_route": det.state_bytes_per_route(),
            "state_capacity": int(det.windows.shape[0]),
            "mean_batch": sum(runner.batch_sizes) / max(len(runner.batch_sizes), 1),
            "gc_seconds": clock.seconds,
            "gc_count": clock.count,
            "polls": runner.polls,
            "poll_seconds": runner.poll_seconds,
        },
    )


# -- (c), (d) in memory --------------------------------------------------------------


def engine_only(cfg: MeshwatchConfig, polls: list[list[bytes]], *, trained: bool = True) -> Run:
    """DetectionEngine.process_columns on pre-decoded poll batches, same order
    (``trained=False``: without the trained-model layer, baselines only)."""
    engine = DetectionEngine(cfg.detector)
    if not trained:
        engine.scoring = ModelScoring(use_default=False)
    took = cpu = 0.0
    findings = 0
    for batch in polls:
        cols, _ = columnar.columns([columnar.decode_golden(r) for r in batch])
        t, c = time.perf_counter(), time.process_time()
        findings += len(engine.process_columns(cols))
        took += time.perf_counter() - t
        cpu += time.process_time() - c
    n = sum(map(len, polls))
    return Run(took, n, engine.samples_seen, cpu=cpu, extra={"findings": findings})


def rounds_of(polls: list[list[bytes]]) -> int:
    """Detector rounds the batches take: per batch, the most windows any one
    route has in it (each round advances every route in it by one window)."""
    total = 0
    for batch in polls:
        cols, _ = columnar.columns([columnar.decode_golden(r) for r in batch])
        total += max(Counter(cols.keys).values(), default=0)
    return total


def decode_only(polls: list[list[bytes]], samples: int) -> tuple[Run, Run, Run]:
    """(stage's decoding, pydantic, orjson.loads) of the poll batches, GC paused
    per batch as in the loop."""
    n = sum(map(len, polls))

    def timed(fn: Any) -> Run:
        gc.disable()
        try:
            t, c = time.perf_counter(), time.process_time()
            for batch in polls:
                fn(batch)
            return Run(time.perf_counter() - t, n, samples, cpu=time.process_time() - c)
        finally:
            gc.enable()

    return (
        timed(lambda rs: columnar.columns([columnar.decode_golden(r) for r in rs])),
        timed(lambda rs: [decode(GoldenBatch, r) for r in rs]),
        timed(lambda rs: [orjson.loads(r) for r in rs]),
    )


# -- main ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=int, default=5_000, help="N routes (default 5000)")
    ap.add_argument("--windows", type=int, default=20, help="W windows (default 20)")
    ap.add_argument(
        "--routes-per-batch", type=int, default=20, help="K routes per message (default 20)"
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="detector warm-up windows (default 5, so that findings fire within W windows)",
    )
    ap.add_argument("--fault-share", type=float, default=0.01, help="share of faulty routes")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="alternate every measurement this many times (default 3)",
    )
    ap.add_argument(
        "--max-poll-records",
        type=int,
        help="detector.max_poll_records, for both consumers (default: the project's)",
    )
    ap.add_argument("--bootstrap", help="use this broker instead of starting Tansu")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the detector stage run into FILE")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)

    shape = MeshShape(
        routes=args.routes,
        windows=args.windows,
        routes_per_batch=args.routes_per_batch,
        fault_share=args.fault_share,
        fault_from=max(args.warmup + 2, args.windows // 2),
    )
    print(f"detector rate — {machine_line()}")
    print(
        f"N={shape.routes} routes × W={shape.windows} windows, K={shape.routes_per_batch} "
        f"routes/message, {shape.pods_per_workload} pods/workload, "
        f"{shape.fault_share:.1%} faulty routes from window {shape.fault_from}"
    )
    t = time.perf_counter()
    records = list(generate_records(shape))
    raws = [v for _, v in records]
    n_msgs = len(records)
    n_samples = shape.routes * shape.windows
    size = sum(len(v) for v in raws)
    print(
        f"data: {n_msgs} messages, {n_samples} route-samples, "
        f"{size / n_msgs / 1024:.1f} KiB/message avg, {size / 2**20:.1f} MiB "
        f"(generated in {time.perf_counter() - t:.1f} s)"
    )

    with bench_broker(args.bootstrap) as bootstrap:
        cfg = bench_config(bootstrap, warmup_windows=args.warmup)
        if args.max_poll_records:
            cfg.detector.max_poll_records = args.max_poll_records
        print(f"detector.max_poll_records {cfg.detector.max_poll_records} (both consumers)")
        ensure_topics(cfg)
        took = produce_all(cfg, cfg.topics.golden, records)
        del records
        print(
            f"loaded {cfg.topics.golden} ({cfg.topics.specs['golden'].partitions} partitions) "
            f"in {took:.1f} s (not counted)"
        )
        gc.collect()
        rss_before, _ = rss_mib()

        refs: list[Run] = []
        pyds: list[Run] = []
        dets: list[Run] = []
        engs: list[Run] = []
        bases: list[Run] = []
        decs: list[tuple[Run, Run, Run]] = []
        load = [os.getloadavg()[0]]
        for rep in range(args.repeat):
            # Alternate every measurement, so drift on a shared machine hits all alike.
            refs.append(reference_consume(cfg, n_msgs, args.timeout, fast=True))
            if args.profile and rep == 0:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
                dets.append(detector_stage(cfg, n_msgs, args.timeout))
                prof.disable()
                prof.dump_stats(args.profile)
            else:
                dets.append(detector_stage(cfg, n_msgs, args.timeout))
            pyds.append(reference_consume(cfg, n_msgs, args.timeout, fast=False))
            if rep:  # only the first run's batches are kept (85 MiB of values each)
                dets[-1].extra.pop("polls", None)
            polls = dets[0].extra["polls"]
            engs.append(engine_only(cfg, polls))
            bases.append(engine_only(cfg, polls, trained=False))
            decs.append(decode_only(polls, n_samples))
            load.append(os.getloadavg()[0])
        _, peak = rss_mib()

    ref = max(refs, key=lambda r: r.rate)
    pyd_ref = max(pyds, key=lambda r: r.rate)
    det = max(dets, key=lambda r: r.rate)
    eng = max(engs, key=lambda r: r.rate)
    base = max(bases, key=lambda r: r.rate)
    dec = max((d[0] for d in decs), key=lambda r: r.rate)
    pyd = max((d[1] for d in decs), key=lambda r: r.rate)
    js = max((d[2] for d in decs), key=lambda r: r.rate)

    def line(label: str, run: Run, note: str = "") -> None:
        print(
            f"  {label:<48} {fmt_rate(run.rate):>9}/s wall {fmt_rate(run.cpu_rate):>9}/s CPU  "
            f"{run.seconds:6.2f} s  {note}"
        )

    print()
    print(
        f"route-samples per second (best of {args.repeat}; per wall second, "
        "and per CPU second of this process, all threads):"
    )
    line("(a)  reference: consume + decode (stage's)", ref, f"{ref.polls} polls")
    line("(a') reference: consume + decode (pydantic)", pyd_ref, f"{pyd_ref.polls} polls")
    line(
        "(b)  detector stage end to end",
        det,
        f"{det.polls} batches of ~{det.extra['mean_batch']:.0f} msgs, "
        f"{det.extra['findings']} findings, {det.extra['dead_lettered']} DLQ",
    )
    rounds = rounds_of(polls)
    line(
        f"(c)  engine alone ({len(polls)} calls, (b)'s batches: {rounds} rounds, "
        f"~{n_samples / max(rounds, 1):,.0f} routes wide)",
        eng,
        f"{eng.extra['findings']} findings",
    )
    line(
        "(c0) engine alone, baselines only (no trained layer)",
        base,
        f"{base.extra['findings']} findings",
    )
    line("(d)  decode alone (msgspec + columns)", dec)
    line("     decode alone (pydantic)", pyd)
    line("     json parse alone (orjson.loads)", js)
    if args.repeat > 1:

        def rates(runs: Sequence[Run]) -> str:
            return ", ".join(fmt_rate(r.rate) for r in runs)

        print(
            f"  all runs (a): {rates(refs)}  (a'): {rates(pyds)}  (b): {rates(dets)}  "
            f"(c): {rates(engs)}  (d): {rates([d[0] for d in decs])}"
        )
    us = 1e6 / n_samples
    stage_us = det.seconds * us
    kafka_us = det.extra["poll_seconds"] * us
    ref_kafka_us = max(0.0, ref.seconds * us - dec.seconds * us)
    gc_us = sum(det.extra["gc_seconds"]) * us
    rest = stage_us - dec.seconds * us - eng.seconds * us - kafka_us - gc_us
    print()
    print(
        f"where (b)'s {stage_us:.1f} µs/sample goes: decode {dec.seconds * us:.1f}, "
        f"engine {eng.seconds * us:.1f}, cyclic GC {gc_us:.1f}, "
        f"inside poll {kafka_us:.1f} (fetch, unpack, waits; (a) − (d) ≈{ref_kafka_us:.1f}), "
        f"rest (admission/produce/commit/loop/frees) ≈{rest:.1f}"
    )
    print(
        f"engine per sample: {eng.seconds * us:.1f} µs, of which the trained-model layer "
        f"≈{(eng.seconds - base.seconds) * us:.1f} (c − c0)"
    )
    print(
        f"decode per sample: stage's {dec.seconds * us:.1f} µs, pydantic {pyd.seconds * us:.1f} µs "
        f"({pyd.seconds / dec.seconds:.1f}×), orjson.loads alone {js.seconds * us:.1f} µs"
    )
    per_route = det.extra["state_bytes_per_route"]
    routes, capacity = det.extra["routes"], det.extra["state_capacity"]
    print(
        f"detector state: {per_route:.0f} bytes per allocated row "
        f"(RouteDetector.state_bytes_per_route()); {routes} routes in {capacity} rows "
        f"= {per_route * capacity / 2**20:.1f} MiB (bench/detector_memory.py measures 100k routes)"
    )
    print(
        f"RSS: {rss_before:.0f} MiB before the runs (holds the {size / 2**20:.0f} MiB of raw "
        f"messages), peak {peak:.0f} MiB"
    )
    if args.profile:
        print(f"cProfile of (b) written to {args.profile}")

    ratio = det.rate / ref.rate
    print()
    print("SUMMARY (issue 4 targets: (b) >= 100,000 route-samples/s and (b)/(a) >= 0.70)")
    print(f"  load average during the runs: {', '.join(f'{x:.1f}' for x in load)} on {cpus()} CPUs")
    print(
        f"  (b) detector end to end      {fmt_rate(det.rate):>10} route-samples/s  "
        f"{'PASS' if det.rate >= 100_000 else 'FAIL'}"
    )
    print(
        f"  (b)/(a)  vs consume+decode as the stage decodes   {ratio:5.2f}  "
        f"{'PASS' if ratio >= 0.7 else 'FAIL'}"
    )
    print(f"  (b)/(a') vs consume+decode with pydantic          {det.rate / pyd_ref.rate:5.2f}")
    print(
        f"  per CPU second (less load-sensitive): (b) {fmt_rate(det.cpu_rate)}/s, "
        f"(b)/(a) {det.cpu_rate / ref.cpu_rate:.2f}"
    )
    return 0


def cpus() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())
