"""Shared pieces for the benchmarks: synthetic mesh data, broker, memory, timing.

Everything here is deterministic for a seed, so two runs with the same
arguments produce byte-identical messages and the numbers differ only by
machine noise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Runnable as ``python bench/x.py`` from the repository root without install.
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from models.histogram import quantiles  # noqa: E402
from pipeline.config import MeshwatchConfig, load_config  # noqa: E402
from pipeline.schema import (  # noqa: E402
    LINKERD_LATENCY_BOUNDS_MS,
    GoldenBatch,
    encode,
)

BOUNDS = np.asarray(LINKERD_LATENCY_BOUNDS_MS, dtype=np.float64)
N_BUCKETS = BOUNDS.size
NAMESPACES = (
    "shop", "payments", "identity", "search", "catalog", "checkout", "ads", "media",
    "notify", "ledger", "fraud", "reco", "inventory", "shipping", "support", "analytics",
)  # fmt: skip
INBOUND_ROUTES = (
    "GET /api/v1/items/{id}", "GET /api/v1/items", "POST /api/v1/items", "GET /healthz",
    "PUT /api/v1/items/{id}", "DELETE /api/v1/items/{id}", "GET /api/v1/users/{id}",
    "POST /api/v1/orders", "GET /api/v1/orders/{id}", "GET /metrics-export",
    "POST /grpc.health.v1.Health/Check", "GET /api/v2/search", "POST /api/v2/events",
)  # fmt: skip


# -- memory -------------------------------------------------------------------


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc."""
    cur = peak = float("nan")
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    if peak != peak:  # no /proc: fall back to getrusage (KiB on Linux)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return cur, peak


# -- broker -------------------------------------------------------------------


@contextlib.contextmanager
def bench_broker(bootstrap: str | None = None) -> Iterator[str]:
    """An embedded Tansu broker (or the given one) for the benchmark's lifetime."""
    if bootstrap:
        yield bootstrap
        return
    from pipeline.kafka.embedded import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap


def bench_config(
    bootstrap: str, *, golden_retention_ms: int | None = None, **detector: object
) -> MeshwatchConfig:
    """Project defaults, with a fresh topic prefix and a short session timeout.

    The session timeout only shortens the consumer-group join (about half of
    it on Tansu, see shared/reference/kafka.md); batch sizes, linger, acks
    and compression stay the project defaults, which is what is measured.
    ``golden_retention_ms`` sets ``retention.ms`` on the golden topic
    explicitly (Tansu describes only the configs set at creation, and Quix
    Streams reads the input topic's retention to size its changelog).
    """
    topics: dict[str, object] = {"prefix": f"bench{uuid.uuid4().hex[:6]}."}
    if golden_retention_ms is not None:
        topics["specs"] = {"golden": {"partitions": 6, "retention_ms": golden_retention_ms}}
    return load_config(
        None,
        {
            "kafka": {
                "bootstrap_servers": [bootstrap],
                "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 500,
                "poll_timeout_ms": 100,
            },
            "topics": topics,
            "detector": dict(detector),
        },
    )


def produce_all(cfg: MeshwatchConfig, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Produce (key, value) records with the project's producer; returns seconds."""
    from pipeline.kafka.clients import make_producer

    producer = make_producer(cfg.kafka, "bench-load")
    started = time.perf_counter()
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush()
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()
    return time.perf_counter() - started


# -- synthetic mesh -------------------------------------------------------------


@dataclass(frozen=True)
class MeshShape:
    routes: int = 5_000
    windows: int = 20
    routes_per_batch: int = 20
    pods_per_workload: int = 3
    window_seconds: float = 10.0
    fault_share: float = 0.01
    fault_from: int = 10  # first faulty window
    seed: int = 7


@dataclass
class Workload:
    namespace: str
    name: str
    pods: tuple[str, ...]
    routes: list[tuple[str, str, str | None]]  # (direction, route, peer)

    @property
    def key(self) -> str:
        return f"{self.namespace}/deploy/{self.name}"


def _pod_name(rng: np.random.Generator, workload: str) -> str:
    alnum = "bcdfghjklmnpqrstvwxz2456789"
    rs = "".join(rng.choice(list(alnum), 9))
    suffix = "".join(rng.choice(list(alnum), 5))
    return f"{workload}-{rs}-{suffix}"


def build_workloads(shape: MeshShape) -> list[Workload]:
    """``routes`` routes in workloads of ``routes_per_batch`` (the last may be short)."""
    rng = np.random.default_rng(shape.seed)
    n_workloads = -(-shape.routes // shape.routes_per_batch)
    out: list[Workload] = []
    left = shape.routes
    for w in range(n_workloads):
        ns = NAMESPACES[w % len(NAMESPACES)]
        name = f"svc-{w:04d}"
        k = min(shape.routes_per_batch, left)
        left -= k
        pods = tuple(_pod_name(rng, name) for _ in range(shape.pods_per_workload))
        routes: list[tuple[str, str, str | None]] = [("inbound", "*", None)]
        n_in = max(0, (k - 1) // 2)
        for i in range(n_in):
            base = INBOUND_ROUTES[i % len(INBOUND_ROUTES)]
            routes.append(("inbound", base if i < len(INBOUND_ROUTES) else f"{base}/{i}", None))
        while len(routes) < k:
            j = len(routes)
            dst = f"svc-{(w * 7 + j * 13) % max(n_workloads, 1):04d}"
            dns = NAMESPACES[(w + j) % len(NAMESPACES)]
            authority = f"{dst}.{dns}.svc.cluster.local:8080"
            routes.append(("outbound", f"{authority}#{j}", authority))
        out.append(Workload(ns, name, pods, routes[:k]))
    return out


def generate_records(shape: MeshShape) -> Iterator[tuple[bytes, bytes]]:
    """W windows × N routes as encoded GoldenBatches (key, value), window by window.

    Each route has its own traffic level, error ratio and latency profile;
    every window draws requests, failures, per-request latencies (into the
    26 Linkerd buckets, with p50/p95/p99 from them like the collector), TLS
    counts and a per-pod split. ``fault_share`` of the routes get 4× latency
    and a 20 % error ratio from window ``fault_from`` on, so findings fire.
    """
    rng = np.random.default_rng(shape.seed + 1)
    workloads = build_workloads(shape)
    n = sum(len(w.routes) for w in workloads)
    rate = np.clip(rng.lognormal(np.log(200), 1.0, n), 5, 20_000)
    err = np.clip(rng.lognormal(np.log(0.003), 0.8, n), 0, 0.05)
    lat_mu = rng.normal(np.log(25.0), 0.7, n)
    lat_sigma = rng.uniform(0.4, 0.9, n)
    faulty = rng.random(n) < shape.fault_share
    n_pods = shape.pods_per_workload
    pod_share = rng.dirichlet(np.full(n_pods, 20.0), n)  # uneven load balancing
    t0 = 1_700_000_000.0
    cert_expiry = t0 + rng.uniform(20, 48, len(workloads)) * 3600
    for win in range(shape.windows):
        end = t0 + (win + 1) * shape.window_seconds
        fault_now = faulty & (win >= shape.fault_from)
        reqs = rng.poisson(rate)
        p_err = np.where(fault_now, 0.2, err)
        fails = rng.binomial(reqs, p_err)
        mu = lat_mu + np.where(fault_now, np.log(4.0), 0.0)
        # per-request latencies, vectorised over all routes of the window
        cap = np.minimum(reqs, 400)  # sample ≤400 latencies and scale counts
        owner = np.repeat(np.arange(n), cap)
        lat = np.exp(rng.normal(mu[owner], lat_sigma[owner]))
        bucket = np.minimum(np.searchsorted(BOUNDS, lat, side="left"), N_BUCKETS - 1)
        counts = np.zeros((n, N_BUCKETS))
        np.add.at(counts, (owner, bucket), 1.0)
        lat_sum = np.bincount(owner, weights=lat, minlength=n)
        scale = np.where(cap > 0, reqs / np.maximum(cap, 1), 0.0)
        counts = np.rint(counts * scale[:, None]).astype(np.int64)
        lat_sum = lat_sum * scale
        qs = quantiles(counts, LINKERD_LATENCY_BOUNDS_MS, (0.5, 0.95, 0.99))
        plain = rng.binomial(reqs, 0.001)
        tls_fail = rng.poisson(0.05, n)
        ok = reqs - fails
        c4xx = rng.binomial(ok, 0.01)
        pod_req = rng.multinomial(reqs, pod_share)
        pod_fail = rng.multinomial(fails, pod_share)
        row = 0
        for wi, wl in enumerate(workloads):
            samples = []
            for ri, (direction, route, peer) in enumerate(wl.routes):
                i = row + ri
                r, f, c4 = int(reqs[i]), int(fails[i]), int(c4xx[i])
                n_lat = int(counts[i].sum())
                share = pod_req[i] / max(r, 1)
                status = {k: v for k, v in (("2xx", r - f - c4), ("4xx", c4), ("5xx", f)) if v}
                s: dict[str, object] = {
                    "window_end": end,
                    "window_seconds": shape.window_seconds,
                    "cluster": "bench",
                    "namespace": wl.namespace,
                    "workload_kind": "deploy",
                    "workload": wl.name,
                    "direction": direction,
                    "route": route,
                    "peer": peer,
                    "requests": r,
                    "successes": r - f,
                    "failures": f,
                    "status_classes": status,
                    "latency_buckets": tuple(int(x) for x in counts[i]) if n_lat else (),
                    "latency_sum_ms": round(float(lat_sum[i]), 3),
                    "p50_ms": None if np.isnan(qs[i, 0]) else round(float(qs[i, 0]), 3),
                    "p95_ms": None if np.isnan(qs[i, 1]) else round(float(qs[i, 1]), 3),
                    "p99_ms": None if np.isnan(qs[i, 2]) else round(float(qs[i, 2]), 3),
                    "mean_ms": round(float(lat_sum[i]) / n_lat, 3) if n_lat else None,
                    "mtls_requests": r - int(plain[i]) if direction == "inbound" else r,
                    "plaintext_requests": int(plain[i]) if direction == "inbound" else 0,
                    "tls_failures": int(tls_fail[i]),
                    "tcp_open": int(r // 50),
                    "tcp_close": int(r // 50),
                    "tcp_errors": 0,
                    "pods": tuple(
                        {
                            "pod": p,
                            "requests": int(pod_req[i, j]),
                            "failures": int(pod_fail[i, j]),
                            "latency_sum_ms": round(float(lat_sum[i] * share[j]), 3),
                        }
                        for j, p in enumerate(wl.pods)
                    ),
                }
                if direction == "inbound" and route == "*":
                    s["cert_ttl_seconds"] = round(float(cert_expiry[wi] - end), 1)
                samples.append(s)
            row += len(wl.routes)
            batch = GoldenBatch.model_validate(
                {
                    "workload_key": wl.key,
                    "window_end": end,
                    "window_seconds": shape.window_seconds,
                    "collector": "bench",
                    "pods_up": tuple(sorted(wl.pods)),
                    "samples": tuple(samples),
                }
            )
            yield wl.key.encode(), encode(batch)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def machine_line() -> str:
    import platform

    return f"python {platform.python_version()}, {os.cpu_count()} CPU(s), {platform.machine()}"
