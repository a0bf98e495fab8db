"""The harness's simulated mesh and how its golden history is recorded.

A small mesh built to carry every scenario: callers and dependencies (so a
fault shows on both sides of an edge), a six-replica worker pool (one bad
pod among many), and a low-traffic route whose quantiles are noisy. Golden
history is produced exactly as in production — the simulated proxies'
``/metrics`` bodies go through the real collector (``Collector.build``) —
and recorded as JSON lines of GoldenBatches, the format ``meshwatch
backtest`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.collect.collector import Collector
from pipeline.collect.scrape import ScrapeResult
from pipeline.collect.targets import Target
from pipeline.config import load_config
from pipeline.schema import encode
from pipeline.simulate import (
    CallSpec,
    MeshSpec,
    RouteSpec,
    Scenario,
    SimulatedMesh,
    TrafficConfig,
    WorkloadSpec,
)

WINDOW = 10.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a window boundary


def _r(name: str, share: float, p50: float, sigma: float = 0.5, err: float = 0.001) -> RouteSpec:
    return RouteSpec(
        name=name, share=share, base_latency_ms=p50, latency_sigma=sigma, base_error_ratio=err
    )


def quality_mesh() -> MeshSpec:
    return MeshSpec(
        cluster="quality",
        workloads=[
            WorkloadSpec(
                namespace="shop",
                name="front",
                replicas=2,
                base_rps=25.0,
                routes=[_r("GET /", 3, 20), _r("GET /items", 2, 40), _r("POST /buy", 0.6, 120)],
                calls=[CallSpec(target="api", share=1.0), CallSpec(target="auth", share=0.4)],
            ),
            WorkloadSpec(
                namespace="shop",
                name="api",
                replicas=2,
                routes=[_r("GET /api/items", 3, 15), _r("POST /api/orders", 1, 60, err=0.002)],
                calls=[CallSpec(target="data/db", share=0.8)],
            ),
            WorkloadSpec(
                namespace="shop",
                name="auth",
                replicas=2,
                routes=[_r("POST /auth/check", 1, 8)],
            ),
            WorkloadSpec(
                namespace="data",
                name="db",
                kind="statefulset",
                replicas=2,
                routes=[_r("GET /rows", 2, 5, 0.4), _r("PUT /rows", 1, 12)],
            ),
            WorkloadSpec(
                namespace="pool",
                name="worker",
                replicas=6,
                base_rps=30.0,
                routes=[_r("POST /jobs", 1, 30, 0.45)],
            ),
            WorkloadSpec(
                namespace="edge",
                name="rare",
                replicas=1,
                base_rps=3.0,
                routes=[_r("GET /rare", 1, 50, 1.0, err=0.01), _r("GET /rarer", 0.3, 80, 1.2)],
            ),
        ],
    )


def record(
    scenario: Scenario,
    windows: int,
    out: Path,
    *,
    seed: int,
    warmup_seconds: float,
    day_seconds: float = 86400.0,
    day_phase: float = 0.45,
    cert_lifetime_seconds: float = 86400.0,
) -> dict[str, Any]:
    """Run the mesh for ``windows`` windows; write GoldenBatches (JSONL) and labels."""
    mesh = SimulatedMesh(
        quality_mesh(),
        scenario=scenario,
        seed=seed,
        realtime=False,
        serve_http=False,
        clock=lambda: T0,
        tick_seconds=2.5,
        day_seconds=day_seconds,
        day_phase=day_phase,
        warmup_seconds=warmup_seconds,
        traffic=TrafficConfig(cert_lifetime_seconds=cert_lifetime_seconds),
    )
    cfg = load_config(None, {"cluster": "quality", "window": {"seconds": WINDOW}})
    targets = [
        Target(f"http://sim/{p.name}", p.namespace, p.workload, p.kind, p.name)
        for p in mesh.pods
        if p.meshed
    ]
    collector = Collector(cfg, lambda: targets, None)
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        for _ in range(windows):
            mesh.advance(WINDOW)
            results = [ScrapeResult(t, mesh.render_bytes(t.pod), None, 0.0) for t in targets]
            _, batches = collector.build(results, mesh.now)
            for b in batches:
                fh.write(encode(b) + b"\n")
    mesh.schedule.close(mesh.now)
    tmp.replace(out)
    labels = merge_labels(mesh.ground_truth)
    out.with_suffix(".labels.json").write_text(json.dumps(labels, indent=1))
    return {"labels": labels}


def merge_labels(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per fault (its end record), with start, end and route keys."""
    ends = [r for r in records if r["event"] == "end"]
    return sorted(ends, key=lambda r: r["start"])
