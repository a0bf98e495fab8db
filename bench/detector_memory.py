"""Detector memory per route at 100,000 routes (issue 4: ≤ 2 KB of state per route).

Feeds W windows × N routes (GoldenBatches of K routes, decoded as the stage
decodes them, in poll-sized chunks) through one ``DetectionEngine``, then
reports, per route:

- **state**: ``RouteDetector.state_arrays()`` — every per-route array a
  checkpoint carries — divided by the routes seen (spare rows of the
  table's growth included) and by the allocated rows;
- **held**: everything the engine keeps after the run, as traced by
  ``tracemalloc`` (state arrays, the route-key table and index, the key
  cache), with the decoded batches gone;
- **RSS growth**: the process's resident memory after the run minus before
  it, after a full collection (an upper bound: the allocator keeps freed
  pages of the decoded batches).

No Kafka: the broker's share is not the detector's state.

    python bench/detector_memory.py                   # N=100000, W=3, K=20
    python bench/detector_memory.py --routes 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from collections.abc import Sequence

from common import MeshShape, bench_config, fmt_rate, generate_records, machine_line, rss_mib

from pipeline.detect import columnar
from pipeline.detect.engine import DetectionEngine

TARGET_BYTES = 2048


def feed(engine: DetectionEngine, raws: list[bytes], chunk: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(raws), chunk):
        cols, rejected = columnar.columns([columnar.decode_golden(r) for r in raws[i : i + chunk]])
        assert not rejected
        engine.process_columns(cols)
    return time.perf_counter() - t


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=int, default=100_000, help="N routes (default 100000)")
    ap.add_argument("--windows", type=int, default=3, help="W windows (default 3)")
    ap.add_argument("--routes-per-batch", type=int, default=20, help="K (default 20)")
    ap.add_argument("--chunk", type=int, default=500, help="messages per poll (default 500)")
    args = ap.parse_args(argv)

    shape = MeshShape(
        routes=args.routes, windows=args.windows, routes_per_batch=args.routes_per_batch
    )
    print(f"detector memory — {machine_line()}, load average {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    raws = [v for _, v in generate_records(shape)]
    print(
        f"N={shape.routes} routes × W={shape.windows} windows, {len(raws)} messages "
        f"(generated in {time.perf_counter() - t:.1f} s)"
    )
    cfg = bench_config("127.0.0.1:9", warmup_windows=2).detector

    # (1) RSS growth, untraced
    gc.collect()
    rss0, _ = rss_mib()
    engine = DetectionEngine(cfg)
    took = feed(engine, raws, args.chunk)
    gc.collect()
    rss1, _ = rss_mib()
    det = engine.detector
    routes = len(det.keys)
    rows = int(det.windows.shape[0])
    state = sum(a.nbytes for a in det.state_arrays().values())
    print(
        f"fed {engine.samples_seen} route-samples in {took:.1f} s "
        f"({fmt_rate(engine.samples_seen / took)}/s, decode + engine)"
    )
    del engine, det

    # (2) what the engine holds, traced
    gc.collect()
    tracemalloc.start()
    engine = DetectionEngine(cfg)
    feed(engine, raws, args.chunk)
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(engine.detector.keys) == routes

    per_route = state / routes
    print()
    print(f"routes seen {routes:,}, table rows allocated {rows:,} ({rows / routes - 1:.0%} spare)")
    print("SUMMARY (issue 4 target: ≤ 2 KB of detector state per route at 100,000 routes)")
    print(
        f"  state arrays      {per_route:8,.0f} B/route seen ({state / rows:,.0f} B per row)  "
        f"{state / 2**20:7.1f} MiB  {'PASS' if per_route <= TARGET_BYTES else 'FAIL'}"
    )
    print(
        f"  held by engine    {held / routes:8,.0f} B/route  {held / 2**20:7.1f} MiB  "
        "(state + route keys, index and key cache; tracemalloc)"
    )
    print(
        f"  RSS growth        {(rss1 - rss0) * 2**20 / routes:8,.0f} B/route  "
        f"{rss1 - rss0:7.1f} MiB  (upper bound: includes freed batch memory kept by the allocator)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
