"""Per-pod deltas → one GoldenBatch per workload and window.

Pods of a workload are summed route by route; the per-pod share is kept on
each sample so a detector can name the one bad replica. Quantiles are
computed for every route of the cycle in one vectorised call per bucket
layout (the legacy 26 buckets, or a newer family's own bounds).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.histogram import cumulative_to_buckets, quantiles
from pipeline.collect.extract import PodCounters, RouteId
from pipeline.collect.targets import Target
from pipeline.keys import ALL_ROUTES
from pipeline.schema import LINKERD_LATENCY_BOUNDS_MS, GoldenBatch, GoldenSample, PodSlice

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class _RouteAcc:
    peer: str | None
    values: dict[str, float] = field(default_factory=dict)
    buckets: np.ndarray | None = None
    bounds: tuple[float, ...] | None = None  # None: LINKERD_LATENCY_BOUNDS_MS
    pods: dict[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass(slots=True)
class _WorkloadAcc:
    target: Target
    routes: dict[RouteId, _RouteAcc] = field(default_factory=dict)
    cert_expiry: float | None = None
    pods_up: list[str] = field(default_factory=list)
    pods_down: list[str] = field(default_factory=list)


def build_batches(
    pods: Sequence[tuple[Target, PodCounters | None]],
    down: Sequence[Target],
    *,
    window_end: float,
    window_seconds: float,
    cluster: str,
    collector: str,
) -> list[GoldenBatch]:
    """Merge one cycle's per-pod deltas (None = baseline-only scrape) into batches."""
    workloads: dict[str, _WorkloadAcc] = {}
    for target, counters in pods:
        acc = workloads.setdefault(target.workload_key, _WorkloadAcc(target))
        acc.pods_up.append(target.pod)
        # Every up workload reports its inbound aggregate, even at zero
        # traffic: "no requests" is a state the detector must see.
        acc.routes.setdefault(("inbound", ALL_ROUTES), _RouteAcc(None))
        if counters is None:
            continue
        if counters.cert_expiry is not None:
            acc.cert_expiry = (
                counters.cert_expiry
                if acc.cert_expiry is None
                else min(acc.cert_expiry, counters.cert_expiry)
            )
        for rid, rc in counters.routes.items():
            ra = acc.routes.get(rid)
            if ra is None:
                ra = acc.routes[rid] = _RouteAcc(rc.peer)
            # Pods of one route disagreeing on bucket bounds (a mesh mid-upgrade whose
            # proxies changed them): the first layout wins, the rest lose their latency.
            fits = rc.buckets is None or ra.buckets is None or ra.bounds == rc.bounds
            for k, v in rc.values.items():
                if fits or k != "latency_sum_ms":
                    ra.values[k] = ra.values.get(k, 0.0) + v
            if rc.buckets is not None and fits:
                b = np.asarray(rc.buckets, dtype=np.float64)
                if ra.buckets is None:
                    ra.buckets, ra.bounds = b, rc.bounds
                else:
                    ra.buckets = ra.buckets + b
            reqs = rc.values.get("successes", 0.0) + rc.values.get("failures", 0.0)
            if reqs:
                ra.pods[target.pod] = (
                    reqs,
                    rc.values.get("failures", 0.0),
                    rc.values.get("latency_sum_ms", 0.0),
                )
    for target in down:
        acc = workloads.setdefault(target.workload_key, _WorkloadAcc(target))
        acc.pods_down.append(target.pod)

    # One quantile computation per bucket layout for every route of every workload.
    order: list[tuple[str, RouteId]] = []
    per_bucket: list[np.ndarray] = []
    layouts: dict[tuple[float, ...] | None, list[int]] = defaultdict(list)
    empty = np.zeros(0, dtype=np.int64)
    for wk, acc in workloads.items():
        for rid, ra in acc.routes.items():
            if ra.buckets is None:
                per_bucket.append(empty)
            else:
                layouts[ra.bounds].append(len(order))
                per_bucket.append(cumulative_to_buckets(ra.buckets))
            order.append((wk, rid))
    qs = np.full((len(order), len(QUANTILES)), np.nan)
    for bounds, rows in layouts.items():
        block = np.vstack([per_bucket[i] for i in rows])
        qs[rows] = quantiles(block, bounds or LINKERD_LATENCY_BOUNDS_MS, QUANTILES)

    samples: dict[str, list[GoldenSample]] = defaultdict(list)
    for i, (wk, rid) in enumerate(order):
        acc = workloads[wk]
        ra = acc.routes[rid]
        samples[wk].append(
            _sample(
                acc,
                rid,
                ra,
                np.rint(per_bucket[i]).astype(np.int64),
                qs[i],
                window_end=window_end,
                window_seconds=window_seconds,
                cluster=cluster,
            )
        )
    return [
        GoldenBatch(
            workload_key=wk,
            window_end=window_end,
            window_seconds=window_seconds,
            collector=collector,
            pods_up=tuple(sorted(acc.pods_up)),
            pods_down=tuple(sorted(acc.pods_down)),
            samples=tuple(samples.get(wk, ())),
        )
        for wk, acc in workloads.items()
    ]


def _num(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 3)


def _sample(
    acc: _WorkloadAcc,
    rid: RouteId,
    ra: _RouteAcc,
    buckets: np.ndarray,
    q: np.ndarray,
    *,
    window_end: float,
    window_seconds: float,
    cluster: str,
) -> GoldenSample:
    v = ra.values
    successes = round(v.get("successes", 0.0))
    failures = round(v.get("failures", 0.0))
    requests = successes + failures
    lat_sum = v.get("latency_sum_ms", 0.0)
    n_lat = int(buckets.sum())
    bounds = ra.bounds if n_lat else None
    direction, route = rid
    cert_ttl = None
    if direction == "inbound" and route == ALL_ROUTES and acc.cert_expiry is not None:
        cert_ttl = round(acc.cert_expiry - window_end, 1)
    t = acc.target
    return GoldenSample(
        window_end=window_end,
        window_seconds=window_seconds,
        cluster=cluster,
        namespace=t.namespace,
        workload_kind=t.workload_key.split("/")[1],
        workload=t.workload,
        direction=direction,
        route=route,
        peer=ra.peer,
        requests=requests,
        successes=successes,
        failures=failures,
        status_classes={k[4:]: round(x) for k, x in v.items() if k.startswith("cls:") and x},
        latency_bounds_ms=bounds,
        latency_buckets=tuple(int(x) for x in buckets) if n_lat else (),
        latency_sum_ms=round(max(lat_sum, 0.0), 3),
        p50_ms=_num(q[0]),
        p95_ms=_num(q[1]),
        p99_ms=_num(q[2]),
        mean_ms=round(lat_sum / n_lat, 3) if n_lat else None,
        mtls_requests=round(v.get("mtls_requests", 0.0)),
        plaintext_requests=round(v.get("plaintext_requests", 0.0)),
        tls_failures=round(v.get("tls_failures", 0.0)),
        cert_ttl_seconds=cert_ttl,
        cert_refresh_errors=round(v.get("cert_refresh_errors", 0.0)),
        tcp_open=round(v.get("tcp_open", 0.0)),
        tcp_close=round(v.get("tcp_close", 0.0)),
        tcp_errors=round(v.get("tcp_errors", 0.0)),
        pods=tuple(
            PodSlice(pod=p, requests=round(r), failures=round(f), latency_sum_ms=round(s, 3))
            for p, (r, f, s) in sorted(ra.pods.items())
        ),
    )
