"""Training throughput: ``meshwatch train`` over history replayed from the broker.

    python bench/train_rate.py                      # 1,000 routes x 360 windows (1 h)
    python bench/train_rate.py --windows 1440       # 4 h of 10 s windows
    python bench/train_rate.py --overhead-only      # the trained layer's cost in the engine
    python bench/train_rate.py --workload-share 0.1 # train on 10 % of the workloads

The issue's target is 1,000 routes x 7 days of 10 s windows (60.5 M
route-windows) within 10 minutes. Producing that much synthetic history into
the embedded broker alone takes longer than the bench may run, so this
measures a fraction and extrapolates: reading + judging + features is linear
in the samples replayed (the kept training sample is bounded by
``max_rows``), fitting and calibrating work on that bounded sample, and the
scenario evaluation and the report are fixed costs. The extrapolation is
printed next to the measured parts.

The job runs as a real ``meshwatch train`` subprocess (its peak RSS is the
child's ``ru_maxrss``). Reference in the same run: the same broker replay
with only decoding (``read_to_end`` + the detector's fast decoder), whose rate bounds
what training can reach; the ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    MeshShape,
    bench_broker,
    bench_config,
    generate_records,
    machine_line,
    produce_all,
)

from pipeline.detect.columnar import decode_golden
from pipeline.kafka.clients import make_producer
from pipeline.kafka.replay import read_to_end
from pipeline.kafka.topics import ensure_topics

TARGET_WINDOWS = 7 * 24 * 360
TARGET_SECONDS = 600.0


def replay_decode_rate(cfg: object, topic: str, partitions: int) -> tuple[int, float]:
    started = time.perf_counter()
    n = 0
    for r in read_to_end(cfg.kafka, topic, list(range(partitions)), timeout_s=3600):  # type: ignore[attr-defined]
        n += len(decode_golden(r.value).samples)
    return n, time.perf_counter() - started


def reload_latency(cfg: Any, registry_dir: Path, detectors: int = 2, rounds: int = 5) -> None:
    """Promote → every running detector scoring with the new version, measured.

    ``detectors`` detector stages (follower + stage loop, as ``meshwatch
    detect`` runs them) consume a golden topic that receives a window every
    50 ms; each round promotes the other version and times until all of them
    have adopted it. Reference: the models event's own trip (send → a
    follower's consumer has it).
    """
    import threading

    from models.registry import Registry
    from pipeline.detect.stage import DetectorProcessor
    from pipeline.registry.events import ModelEvent, publish_event
    from pipeline.registry.follow import follow_models
    from pipeline.schema import GoldenBatch, GoldenSample, encode
    from pipeline.stage.loop import StageRunner

    cfg = cfg.model_copy(
        update={"models": cfg.models.model_copy(update={"registry_dir": str(registry_dir)})}
    )
    reg = Registry.at(registry_dir)
    if not reg.versions():  # the candidate was not published: use the shipped default
        from models.registry import DEFAULT_DIR, load_dir

        reg.publish(load_dir(DEFAULT_DIR).model, training={}, metrics={}, false_alert_budget=1e-4)
    first = reg.versions()[0]
    second = reg.publish(reg.load(first).model, training={}, metrics={}, false_alert_budget=1e-4)
    reg.promote(first)
    procs, runners, followers, threads = [], [], [], []
    for _ in range(detectors):
        proc = DetectorProcessor(cfg)
        followers.append(follow_models(cfg, proc.engine.scoring))
        runner = StageRunner(cfg, proc, cfg.topics.golden, "reload-bench")
        t = threading.Thread(target=runner.run, daemon=True)
        t.start()
        procs.append(proc)
        runners.append(runner)
        threads.append(t)
    stop = threading.Event()
    producer = make_producer(cfg.kafka, "bench-feed")

    def feed() -> None:
        base = time.time() - 86400.0  # a day ago: late windows, judged as usual
        i = 0
        while not stop.is_set():
            end = base + 10.0 * i
            for w in range(6):  # a few workloads, spread over the golden partitions
                s = GoldenSample(
                    window_end=end, window_seconds=10.0, namespace="bench",
                    workload_kind="deploy", workload=f"w{w}", direction="inbound",
                    route="GET /", requests=100, successes=100,
                )  # fmt: skip
                b = GoldenBatch(
                    workload_key=f"bench/deploy/w{w}", window_end=end, window_seconds=10.0,
                    samples=(s,),
                )  # fmt: skip
                producer.send(cfg.topics.golden, key=b.workload_key.encode(), value=encode(b))
            producer.flush()
            i += 1
            stop.wait(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        _until(lambda: all(p.engine.scoring.version == first for p in procs), 60)
        lat, trip = [], []
        for r in range(rounds):
            target = second if r % 2 == 0 else first
            before = [f.events for f in followers]
            seen = lambda before=before: all(  # noqa: E731
                f.events > b for f, b in zip(followers, before, strict=True)
            )
            t0 = time.perf_counter()
            reg.promote(target)
            publish_event(cfg, ModelEvent(action="promote", version=target, registry="bench"))
            _until(seen, 30)
            trip.append(time.perf_counter() - t0)
            _until(lambda target=target: all(p.engine.scoring.version == target for p in procs), 30)
            lat.append(time.perf_counter() - t0)
        lat.sort()
        trip.sort()
        print(f"promote -> all {detectors} detectors using it: median {lat[len(lat) // 2]:.2f} s, "
              f"max {lat[-1]:.2f} s over {rounds} promotions (target < 5 s); "
              f"event trip alone: median {trip[len(trip) // 2]:.2f} s "
              f"(ratio {lat[len(lat) // 2] / trip[len(trip) // 2]:.2f})")  # fmt: skip
    finally:
        stop.set()
        feeder.join(5)
        producer.close()
        for runner in runners:
            runner.stop()
        for t in threads:
            t.join(10)
        for f in followers:
            f.stop()


def _until(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def scoring_overhead(routes: int = 5000, windows: int = 40) -> None:
    """Share of the engine's time spent in the trained layer (prefilter, features,
    models), on synthetic windows where 1 % of the routes turn faulty at window 30.
    Reference in the same run: the same engine with ``combine: off``."""
    from pipeline.config import DetectorConfig
    from pipeline.detect import columnar
    from pipeline.detect.engine import DetectionEngine

    shape = MeshShape(routes=routes, windows=windows, fault_from=30)
    decoded = [columnar.decode_golden(v) for _, v in generate_records(shape)]
    per = len(decoded) // windows
    took: dict[str, float] = {}
    for combine in ("off", "max", "off", "max"):
        eng = DetectionEngine(DetectorConfig())
        eng.scoring.combine = combine
        t = time.perf_counter()
        for w in range(windows):
            eng.process_decoded(decoded[w * per : (w + 1) * per])
        took[combine] = min(took.get(combine, float("inf")), time.perf_counter() - t)
    n = routes * windows
    print(f"engine, {routes:,} routes x {windows} windows: combine=off {n / took['off']:,.0f} "
          f"samples/s, combine=max {n / took['max']:,.0f} samples/s "
          f"(ratio {took['off'] / took['max']:.2f}; model {eng.scoring.version})")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=360)
    ap.add_argument("--bootstrap", default=None, help="an existing broker (default: embedded)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default: a temp dir)")
    ap.add_argument("--no-reload", action="store_true", help="skip the promote→reload part")
    ap.add_argument("--workload-share", type=float, default=1.0, help="train --workload-share")
    ap.add_argument(
        "--overhead-only", action="store_true", help="only the trained layer's cost in the engine"
    )
    args = ap.parse_args()
    if args.overhead_only:
        scoring_overhead()
        return 0
    shape = MeshShape(routes=args.routes, windows=args.windows, fault_share=0.01, fault_from=200)
    print(f"machine: {machine_line()} (shared with other jobs: numbers are noisy)")
    with bench_broker(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(bootstrap)
        ensure_topics(cfg)
        t = time.perf_counter()
        records = list(generate_records(shape))
        gen = time.perf_counter() - t
        produce_secs = produce_all(cfg, cfg.topics.golden, records)
        del records
        samples_total = args.routes * args.windows
        print(f"history: {args.routes:,} routes x {args.windows:,} windows "
              f"(generated in {gen:.0f} s, produced in {produce_secs:.0f} s)")  # fmt: skip

        n_ref, ref_secs = replay_decode_rate(
            cfg, cfg.topics.golden, cfg.topics.specs["golden"].partitions
        )
        ref_rate = n_ref / ref_secs
        print(f"reference: replay + decode only: {n_ref:,} samples in {ref_secs:.1f} s "
              f"= {ref_rate:,.0f} samples/s")  # fmt: skip

        out = args.out or Path(tmp) / "report"
        config = Path(tmp) / "cfg.yaml"
        config.write_text(
            json.dumps(
                {
                    "kafka": {"bootstrap_servers": [bootstrap]},
                    "topics": {"prefix": cfg.topics.prefix},
                    "models": {"registry_dir": str(Path(tmp) / "registry")},
                }
            )
        )
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "train", "-c", str(config),
             "--since", "0", "--until", "4e9", "--report", str(out), "--no-event",
             "--workload-share", str(args.workload_share)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode not in (0, 3):
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            return 1
        summary = json.loads((out / "summary.json").read_text())
        phases = summary["timings_s"]
        seen = summary["training"]["samples"]
        # the history phase reads every record (a workload share skips only the
        # decoding and judging of the others): scale by the history produced
        hist_rate = samples_total / phases["history"]
        fixed = wall - phases["history"]  # start-up, fit, evaluation, report: not per sample
        target_samples = args.routes * TARGET_WINDOWS
        projected = target_samples / hist_rate + fixed
        print(f"train (exit {proc.returncode}): {wall:.1f} s wall, peak RSS {peak_mib:,.0f} MiB")
        for name, secs in phases.items():
            print(f"  {name:<9} {secs:7.1f} s")
        print(f"  history rate: {hist_rate:,.0f} samples of history/s "
              f"({hist_rate / ref_rate:.2f} x the replay+decode reference)")  # fmt: skip
        print(f"  samples read: {seen:,} of {samples_total:,} produced")
        print(f"projection for {args.routes:,} routes x 7 days ({target_samples:,} samples): "
              f"{projected / 60:.1f} min (target {TARGET_SECONDS / 60:.0f} min) — "
              f"{'within' if projected <= TARGET_SECONDS else 'OVER'} target")  # fmt: skip
        print(f"report: {out / 'index.html'}")
        if not args.no_reload:
            reload_latency(cfg, Path(tmp) / "registry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
