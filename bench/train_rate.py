"""Training time: ``meshwatch train`` over a 7-day range of the golden topic.

    python bench/train_rate.py                      # 250 routes, the 7-day plan, defaults
    python bench/train_rate.py --routes 500 --workers 1
    python bench/train_rate.py --overhead-only      # the trained layer's cost in the engine

The issue's target: 1,000 routes x 7 days of 10 s windows (60.5 M
route-windows, ~50 GB of JSON) trained within 10 minutes. The job reads
``models.train_segments`` time segments of the range (warm-up + sampled
minutes each), so its work is set by the segments, not by the range: this
bench produces exactly what those segments (and a margin of 5 minutes on
either side, more than the reader looks past an edge) would find in a full
7-day topic, stamped with their 7-day times, and nothing in between — the
job sees a 7-day range and plans the same segments. Only the positioning
works on fewer records (a few probe rounds fewer per segment than a full
topic; probing is a small part of the run).

Projection for 1,000 routes: the history phase scales with the routes read
(x 1000/routes: pessimistic, since per-window costs are shared by more
routes); start-up, fit + calibration (on the bounded sample, full here too),
evaluation and report are fixed costs, taken as measured.

The job runs as a real ``meshwatch train`` subprocess. Peak memory: the sum
of the resident sets of the job and its worker processes, sampled every
0.2 s from /proc, and the largest single process's ``ru_maxrss``. Reference
in the same run: replaying the same topic with only the detector's fast
decoder (one process), whose rate bounds what one reader can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import (
    MeshShape,
    bench_broker,
    bench_config,
    generate_records,
    machine_line,
)

from pipeline.detect.columnar import decode_golden
from pipeline.kafka.clients import make_producer
from pipeline.kafka.replay import read_to_end
from pipeline.kafka.topics import ensure_topics

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


class TreeRss:
    """Peak of the summed resident set of a process and its descendants (from /proc)."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import threading

        self.pid, self.every = pid, every
        self.peak_mib = 0.0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        parent: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, todo = [self.pid], [self.pid]
        while todo:
            p = todo.pop()
            kids = [c for c, pp in parent.items() if pp == p]
            tree += kids
            todo += kids
        return tree

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            total = 0.0
            procs = self._tree()
            for p in procs:
                try:
                    with open(f"/proc/{p}/status") as fh:
                        for line in fh:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) / 1024
                except OSError:
                    continue
            if total > self.peak_mib:
                self.peak_mib, self.peak_procs = total, len(procs)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def produce_plan(
    cfg: Any, shape: MeshShape, plan: list[Any], t0: float, days: float, margin_s: float
) -> tuple[int, int, float]:
    """The records a full topic would hold around each segment of ``plan``: one
    segment's worth of synthetic windows, generated once and re-stamped per
    segment (window ends in the JSON, record timestamps just after them, as the
    collector stamps them). Returns (records, samples, seconds producing)."""
    n_windows = int((plan[0].end - plan[0].start + 2 * margin_s) // shape.window_seconds)
    base = list(generate_records(replace(shape, windows=n_windows)))
    per_window = len(base) // n_windows
    base_t0 = 1_700_000_000.0  # generate_records' first window ends at base_t0 + 10
    producer = make_producer(cfg.kafka, "bench-load")
    records = samples = 0
    started = time.perf_counter()
    samples_per_window = shape.routes
    try:
        for seg in plan:
            first = max(t0, (seg.start - margin_s) // 10 * 10)
            for w in range(n_windows):
                end = first + (w + 1) * shape.window_seconds
                if end > t0 + days * 86400:
                    break
                old = b'"window_end":%.1f' % (base_t0 + (w + 1) * shape.window_seconds)
                new = b'"window_end":%.1f' % end
                for key, value in base[w * per_window : (w + 1) * per_window]:
                    producer.send(cfg.topics.golden, key=key, value=value.replace(old, new),
                                  timestamp_ms=int(end * 1000) + 500)  # fmt: skip
                records += per_window
                samples += samples_per_window
        producer.flush()
    finally:
        producer.close()
    return records, samples, time.perf_counter() - started


def main() -> int:
    from pipeline.train.history import describe_plan, plan_segments, plan_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=250)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--segments", type=int, default=None, help="train --segments")
    ap.add_argument("--segment-minutes", type=float, default=None)
    ap.add_argument("--warmup-minutes", type=float, default=None)
    ap.add_argument("--workers", type=int, default=None, help="train --workers")
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
    shape = MeshShape(routes=args.routes, windows=1, fault_share=0.01, fault_from=200)
    print(f"machine: {machine_line()}; load average {os.getloadavg()[0]:.1f} "
          f"(shared with other jobs: numbers are noisy)")  # fmt: skip
    with bench_broker(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(bootstrap)
        ensure_topics(cfg)
        m = cfg.models
        seg_n = m.train_segments if args.segments is None else args.segments
        seg_min = m.train_segment_minutes if args.segment_minutes is None else args.segment_minutes
        warm_min = m.train_warmup_minutes if args.warmup_minutes is None else args.warmup_minutes
        t0 = 1_790_000_000.0
        hi = t0 + args.days * 86400
        plan = plan_segments(t0 + 10, hi, segments=seg_n, segment_s=seg_min * 60,
                             warmup_s=warm_min * 60)  # fmt: skip
        info = describe_plan(plan, t0, hi)
        records, produced, produce_secs = produce_plan(cfg, shape, plan, t0, args.days, 300.0)
        print(f"plan: {plan_text(info)}")
        print(f"history: {args.routes:,} routes, {records:,} records = {produced:,} samples "
              f"around the segments of a {args.days:g}-day range (produced in "
              f"{produce_secs:.0f} s)")  # fmt: skip

        n_ref, ref_secs = replay_decode_rate(
            cfg, cfg.topics.golden, cfg.topics.specs["golden"].partitions
        )
        ref_rate = n_ref / ref_secs
        print(f"reference: replay + decode only (1 process): {n_ref:,} samples in "
              f"{ref_secs:.1f} s = {ref_rate:,.0f} samples/s")  # fmt: skip

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
        cmd = [sys.executable, "-m", "pipeline.cli", "train", "-c", str(config),
               "--since", "0", "--until", "4e9", "--report", str(out), "--no-event",
               "--workload-share", str(args.workload_share)]  # fmt: skip
        for flag, value in (("--segments", args.segments), ("--workers", args.workers),
                            ("--segment-minutes", args.segment_minutes),
                            ("--warmup-minutes", args.warmup_minutes)):  # fmt: skip
            if value is not None:
                cmd += [flag, str(value)]
        load_before = os.getloadavg()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss = TreeRss(proc.pid)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t
        rss.stop()
        load_after = os.getloadavg()
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        largest_mib = cpu_after.ru_maxrss / 1024
        job_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        if proc.returncode not in (0, 3):
            print(stdout[-3000:], stderr[-3000:])
            return 1
        summary = json.loads((out / "summary.json").read_text())
        phases = summary["timings_s"]
        hist = summary.get("history", {})
        seen = summary["training"]["samples"]
        hist_rate = seen / phases["history"]
        fixed = wall - phases["history"]  # start-up, fit, evaluation, report
        scale = 1000 / args.routes
        projected = phases["history"] * scale + fixed
        print(f"train (exit {proc.returncode}): {wall:.1f} s wall; load average "
              f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
        for name, secs in phases.items():
            print(f"  {name:<9} {secs:7.1f} s")
        print(f"  history: {seen:,} samples judged ({hist.get('records', {})}), "
              f"{hist_rate:,.0f} samples/s with {hist.get('workers')} worker(s) = "
              f"{hist_rate / ref_rate:.2f} x the 1-process replay+decode reference; "
              f"{hist_rate / max(hist.get('workers') or 1, 1):,.0f} per worker")  # fmt: skip
        print(f"  range read: {plan_text(hist) if hist.get('range_hours') else hist}")
        print(f"  peak RSS: job + workers summed {rss.peak_mib:,.0f} MiB "
              f"({rss.peak_procs} processes); largest single process {largest_mib:,.0f} MiB; "
              f"workers' own peaks {hist.get('worker_peak_rss_mib')} MiB")  # fmt: skip
        print(f"projection for 1,000 routes x {args.days:g} days: history "
              f"{phases['history']:.0f} s x {scale:.1f} + fixed {fixed:.0f} s = "
              f"{projected / 60:.1f} min (target {TARGET_SECONDS / 60:.0f} min) — "
              f"{'within' if projected <= TARGET_SECONDS else 'OVER'} target")  # fmt: skip
        worker_cpu = hist.get("worker_cpu_s") or []
        if worker_cpu:
            # what the run would take with the CPUs to itself: the workers run side
            # by side (the slowest sets the pace), the rest of the job is serial
            idle = max(worker_cpu) * scale + (job_cpu - sum(worker_cpu))
            print(f"CPU time: job {job_cpu:.0f} s, history workers {worker_cpu} s; "
                  f"estimate for 1,000 routes on an otherwise idle machine (CPU time, "
                  f"not measured wall): {idle / 60:.1f} min")  # fmt: skip
        print(f"report: {out / 'index.html'}")
        if not args.no_reload:
            reload_latency(cfg, Path(tmp) / "registry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
