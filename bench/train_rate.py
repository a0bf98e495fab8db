"""Training throughput: ``meshwatch train`` over history replayed from the broker.

    python bench/train_rate.py                      # 1,000 routes x 360 windows (1 h)
    python bench/train_rate.py --windows 1440       # 4 h of 10 s windows

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

from common import (
    MeshShape,
    bench_broker,
    bench_config,
    generate_records,
    machine_line,
    produce_all,
)

from pipeline.detect.columnar import decode_golden
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=360)
    ap.add_argument("--bootstrap", default=None, help="an existing broker (default: embedded)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default: a temp dir)")
    args = ap.parse_args()
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
             "--since", "0", "--until", "4e9", "--report", str(out), "--no-event"],
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
        hist_rate = seen / phases["history"]
        fixed = wall - phases["history"]  # start-up, fit, evaluation, report: not per sample
        target_samples = args.routes * TARGET_WINDOWS
        projected = target_samples / hist_rate + fixed
        print(f"train (exit {proc.returncode}): {wall:.1f} s wall, peak RSS {peak_mib:,.0f} MiB")
        for name, secs in phases.items():
            print(f"  {name:<9} {secs:7.1f} s")
        print(f"  history rate: {hist_rate:,.0f} samples/s "
              f"({hist_rate / ref_rate:.2f} x the replay+decode reference)")  # fmt: skip
        print(f"  samples read: {seen:,} of {samples_total:,} produced")
        print(f"projection for {args.routes:,} routes x 7 days ({target_samples:,} samples): "
              f"{projected / 60:.1f} min (target {TARGET_SECONDS / 60:.0f} min) — "
              f"{'within' if projected <= TARGET_SECONDS else 'OVER'} target")  # fmt: skip
        print(f"report: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
