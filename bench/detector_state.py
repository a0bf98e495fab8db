"""Detector checkpoints: size and time per 10,000 routes, and restore time.

    python bench/detector_state.py [--routes 10000] [--windows 40]

Builds a RouteDetector with ``--routes`` warmed-up routes, then measures:

- checkpoint: ``export_state`` + ``checkpoint.build_chunks`` (npz chunks of
  at most ``detector.state.chunk_bytes``), its bytes raw and lz4-compressed
  (what the producer sends with the default ``compression_type: lz4``);
- produce: the chunks to a topic on the embedded broker (flushed);
- restore: ``read_state`` + ``select`` + ``decode_chunk`` + ``load_state`` into
  a fresh detector, from the same broker;
- the reference, same run: judging one window of every route
  (``RouteDetector.process``), so the cost reads as "N windows' worth".
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from models.detector import Observations, RouteDetector
from pipeline.config import MeshwatchConfig, load_config
from pipeline.detect import checkpoint
from pipeline.kafka.clients import make_producer
from pipeline.kafka.embedded import EmbeddedBroker
from pipeline.kafka.topics import ensure_topics


def window(det: RouteDetector, keys: list[str], i: int, rng: np.random.Generator) -> Observations:
    n = len(keys)
    req = rng.poisson(200, n).astype(np.float64)
    p50 = rng.lognormal(np.log(20), 0.1, n)
    return Observations(
        rows=det.rows_for(keys),
        window_end=np.full(n, 1.7e9 + 10.0 * i),
        requests=req,
        failures=rng.binomial(req.astype(np.int64), 0.01).astype(np.float64),
        p50_ms=p50,
        p95_ms=p50 * 2.5,
        p99_ms=p50 * 4,
        tls_failures=np.zeros(n),
        plaintext=np.zeros(n),
        mtls=req,
        cert_ttl=np.full(n, 80_000.0),
        window_seconds=np.full(n, 10.0),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--windows", type=int, default=40)
    args = ap.parse_args()
    cfg0 = MeshwatchConfig()
    rng = np.random.default_rng(1)
    keys = [
        f"ns{i % 50}/deploy/w{i // 20}/inbound/GET /api/v1/items/{i}" for i in range(args.routes)
    ]
    det = RouteDetector()
    judge = []
    for i in range(args.windows):
        obs = window(det, keys, i, rng)
        t = time.perf_counter()
        det.process(obs)
        judge.append(time.perf_counter() - t)
    one_window = float(np.median(judge))

    t = time.perf_counter()
    rows = np.arange(len(keys), dtype=np.int64)
    chunks = checkpoint.build_chunks(
        keys,
        det.export_state(rows),
        partition=0,
        offset=1,
        slot=0,
        generation="bench",
        max_bytes=cfg0.detector.state.chunk_bytes,
    )
    build_s = time.perf_counter() - t
    raw = sum(len(v) for _, v in chunks)
    try:
        import lz4.frame

        packed = sum(len(lz4.frame.compress(v)) for _, v in chunks)
    except ImportError:  # pragma: no cover - lz4 comes with kafka-python[lz4]
        packed = -1

    with EmbeddedBroker() as broker:
        cfg = load_config(
            None,
            {
                "kafka": {"bootstrap_servers": [broker.bootstrap], "session_timeout_ms": 2000},
                "topics": {"prefix": "bench."},
            },
        )
        ensure_topics(cfg)
        producer = make_producer(cfg.kafka, "bench")
        t = time.perf_counter()
        for key, value in chunks:
            producer.send(cfg.topics.detector_state, key=key, value=value, partition=0)
        producer.flush()
        produce_s = time.perf_counter() - t
        producer.close()

        t = time.perf_counter()
        records = checkpoint.read_state(cfg.kafka, cfg.topics.detector_state, [0])
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        fresh = RouteDetector()
        for value in checkpoint.select(records, 0):
            c = checkpoint.decode_chunk(value)
            fresh.load_state(c.keys, c.arrays)
        load_s = time.perf_counter() - t
    assert len(fresh.keys) == len(keys)
    np.testing.assert_array_equal(
        fresh.baseline.level[: len(keys)], det.baseline.level[: len(keys)]
    )

    per10k = 10_000 / len(keys)
    print(
        f"routes {len(keys):,}, chunks {len(chunks)}, "
        f"state {det.state_bytes_per_route():.0f} B/route in memory"
    )
    print(
        f"checkpoint bytes per 10k routes: raw {raw * per10k / 1e6:.2f} MB, "
        f"lz4 {packed * per10k / 1e6:.2f} MB"
    )
    print(f"build (export + npz) per 10k routes: {build_s * per10k * 1e3:.0f} ms")
    print(f"produce + flush per 10k routes:      {produce_s * per10k * 1e3:.0f} ms")
    print(f"restore per 10k routes: read {read_s * per10k * 1e3:.0f} ms (incl. ~300 ms quiet poll) "
          f"+ decode/load {load_s * per10k * 1e3:.0f} ms")  # fmt: skip
    print(f"reference: judging one window of all routes {one_window * 1e3:.1f} ms")
    print(
        "ratio checkpoint build+produce / one window judged: "
        f"{(build_s + produce_s) / one_window:.1f}x"
    )
    print(f"ratio restore decode+load / one window judged:      {load_s / one_window:.1f}x")


if __name__ == "__main__":
    main()
