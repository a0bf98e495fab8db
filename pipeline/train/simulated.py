"""Labelled golden history from the simulated mesh, for training and evaluation.

Used three ways: to build the default artifact shipped with the package
(``meshwatch train --default``: quiet history, no labels needed), as the
labelled scenarios every candidate is evaluated on before it is published,
and by tests and benchmarks. History is produced the way production produces
it: the simulated proxies' ``/metrics`` bodies go through the real collector.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.collect.collector import Collector
from pipeline.collect.scrape import ScrapeResult
from pipeline.collect.targets import Target
from pipeline.config import load_config
from pipeline.schema import GoldenBatch, GoldenSample
from pipeline.simulate import (
    CallSpec,
    MeshSpec,
    RouteSpec,
    Scenario,
    SimulatedMesh,
    WorkloadSpec,
)

WINDOW = 10.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
WARMUP_SECONDS = 600.0

#: Simulator fault kinds → the finding kind that should catch them.
FAULT_KIND = {
    "latency_spike": "latency",
    "latency_creep": "latency",
    "network_slow": "latency",
    "bad_pod": "latency",
    "error_burst": "error_rate",
    "error_trickle": "error_rate",
    "tls_handshake_failure": "tls_failure",
    "mtls_loss": "mtls_regression",
    "traffic_drop": "traffic_drop",
    "cert_expiry": "cert_expiry",
}


def _r(name: str, share: float, p50: float, sigma: float = 0.5, err: float = 0.001) -> RouteSpec:
    return RouteSpec(
        name=name, share=share, base_latency_ms=p50, latency_sigma=sigma, base_error_ratio=err
    )


def training_mesh() -> MeshSpec:
    """A small mesh with callers, dependencies and a low-traffic route."""
    return MeshSpec(
        cluster="train",
        workloads=[
            WorkloadSpec(
                namespace="shop",
                name="front",
                replicas=2,
                base_rps=25.0,
                routes=[_r("GET /", 3, 20), _r("GET /items", 2, 40), _r("POST /buy", 0.6, 120)],
                calls=[CallSpec(target="api", share=1.0)],
            ),
            WorkloadSpec(
                namespace="shop",
                name="api",
                replicas=2,
                routes=[_r("GET /api/items", 3, 15), _r("POST /api/orders", 1, 60, err=0.002)],
                calls=[CallSpec(target="data/db", share=0.8)],
            ),
            WorkloadSpec(
                namespace="data",
                name="db",
                kind="statefulset",
                replicas=2,
                routes=[_r("GET /rows", 2, 5, 0.4), _r("PUT /rows", 1, 12)],
            ),
            WorkloadSpec(
                namespace="edge",
                name="rare",
                replicas=1,
                base_rps=3.0,
                routes=[_r("GET /rare", 1, 50, 1.0, err=0.01)],
            ),
        ],
    )


def _fault(kind: str, ns: str, wl: str, route: str, start: float, m: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "target": {"namespace": ns, "workload": wl, "route": route},
        "start": start,
        "duration": 150.0,
        "magnitude": m,
    }


def evaluation_scenario() -> Scenario:
    """One fault of each learned kind, 6 minutes apart (after a 10-minute warm-up)."""
    gap = 360.0
    faults = [
        _fault("latency_spike", "shop", "api", "GET /api/items", 0, 4.0),
        _fault("error_burst", "data", "db", "PUT /rows", gap, 0.2),
        _fault("tls_handshake_failure", "shop", "api", "POST /api/orders", 2 * gap, 0.3),
        _fault("mtls_loss", "shop", "front", "GET /", 3 * gap, 0.5),
        _fault("traffic_drop", "data", "db", "GET /rows", 4 * gap, 0.0),
        _fault("latency_spike", "shop", "front", "POST /buy", 5 * gap, 3.0),
    ]
    return Scenario.model_validate(
        {"name": "train-eval", "warmup_seconds": WARMUP_SECONDS, "faults": faults}
    )


@dataclass
class History:
    """Golden samples in time order, and the labelled fault spans among them."""

    samples: list[GoldenSample] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)

    def anomalous(self, kind: str, keys: list[str], window_end: np.ndarray) -> np.ndarray:
        """True where (route, window) lies inside a labelled fault of ``kind``."""
        out = np.zeros(len(keys), dtype=np.bool_)
        for rec in self.labels:
            if FAULT_KIND.get(rec["kind"]) != kind or rec.get("expect", "alert") != "alert":
                continue
            inside = (window_end > rec["start"]) & (window_end <= rec["end"] + WINDOW)
            named = set(rec["route_keys"])
            route = (rec.get("target") or {}).get("route") or ""
            # a caller's per-route outbound key is "<authority key> <route>"
            hit = np.fromiter(
                (k in named or (k.split(" ", 1)[0] in named and k.endswith(route)) for k in keys),
                np.bool_,
                len(keys),
            )
            out |= inside & hit
        return out


def batches(
    windows: int,
    *,
    scenario: Scenario | None = None,
    seed: int = 0,
    mesh: MeshSpec | None = None,
    day_seconds: float = 86400.0,
) -> Iterator[tuple[float, list[GoldenBatch], SimulatedMesh]]:
    """Run the mesh window by window, yielding each window's GoldenBatches."""
    sim = SimulatedMesh(
        mesh or training_mesh(),
        scenario=scenario or Scenario(name="quiet", warmup_seconds=WARMUP_SECONDS, faults=[]),
        seed=seed,
        realtime=False,
        serve_http=False,
        clock=lambda: T0,
        tick_seconds=2.5,
        day_seconds=day_seconds,
        warmup_seconds=WARMUP_SECONDS,
    )
    cfg = load_config(None, {"cluster": "train", "window": {"seconds": WINDOW}})
    targets = [
        Target(f"http://sim/{p.name}", p.namespace, p.workload, p.kind, p.name)
        for p in sim.pods
        if p.meshed
    ]
    collector = Collector(cfg, lambda: targets, None)
    for _ in range(windows):
        sim.advance(WINDOW)
        results = [ScrapeResult(t, sim.render_bytes(t.pod), None, 0.0) for t in targets]
        _, out = collector.build(results, sim.now)
        yield sim.now, out, sim
    sim.schedule.close(sim.now)


def history(windows: int, *, scenario: Scenario | None = None, seed: int = 0) -> History:
    """``windows`` windows of simulated golden history, with their fault labels."""
    h = History()
    last: SimulatedMesh | None = None
    for _, out, sim in batches(windows, scenario=scenario, seed=seed):
        h.samples.extend(s for b in out for s in b.samples)
        last = sim
    if last is not None:
        h.labels = [r for r in last.ground_truth if r["event"] == "end"]
    return h


__all__ = ["FAULT_KIND", "History", "batches", "evaluation_scenario", "history", "training_mesh"]
