"""The collector against the simulated mesh, over real HTTP.

Every check compares the collector's GoldenSamples with the simulator's
true increments, derived independently: the exact ``/metrics`` body each
pod serves is rendered before and after a window, parsed with
prometheus_client (not meshwatch's parser) and folded by hand into golden
numbers per route. The mesh never runs on its own (``realtime=False``):
time moves only through ``advance()``, and windows end at ``mesh.now``, so
nothing here sleeps and every count is exact.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.collect.collector import Collector, CycleReport
from pipeline.collect.deltas import DeltaTracker
from pipeline.collect.exposition import parse
from pipeline.collect.extract import extract
from pipeline.collect.scrape import ScrapeResult, make_scrape_client
from pipeline.collect.targets import Target
from pipeline.config import MeshwatchConfig, load_config
from pipeline.keys import ALL_ROUTES, workload_key
from pipeline.schema import LINKERD_LATENCY_BOUNDS_MS, GoldenBatch, GoldenSample, decode
from pipeline.simulate import (
    FaultSpec,
    FaultTarget,
    MeshSpec,
    Scenario,
    SimulatedMesh,
    default_demo_mesh,
)

T0 = 1_750_000_000.0  # a multiple of the window, like real window ends
WINDOW = 10.0
VERSIONS = ["2.10", "2.12", "2.14", "2.15", "2.16", "2.18", "2.20"]
CLUSTER = "sim-test"
ADMIN_PORT = "4191"
STAR_IN = ("inbound", ALL_ROUTES)
CERT_GAUGES = (
    "identity_cert_expiration_timestamp_seconds",
    "control_identity_cert_expiration_timestamp_seconds",
)
TLS_ERRORS = ("tls detection timeout", "i/o", "tls_detect_timeout", "io")  # 2.11+, v2.149-154
#: Gateway-API route families (2.16+), in seconds: one route per parent Service and route.
OUTBOUND_ROUTE_FAMILIES = (
    "outbound_http_route_request_statuses_total",
    "outbound_http_route_request_duration_seconds_bucket",
    "outbound_http_route_request_duration_seconds_sum",
)

WEB = "shop/deploy/web"
CATALOG = "shop/deploy/catalog"
CART = "shop/deploy/cart"
CHECKOUT = "shop/deploy/checkout"
API = "payments/deploy/api"
LEDGER = "payments/sts/ledger"
DEMO_WORKLOADS = {WEB, CATALOG, CART, CHECKOUT, API, LEDGER}


def fault(kind: str, ns: str, wl: str, magnitude: float, route: str | None = None) -> FaultSpec:
    return FaultSpec(
        kind=kind,  # type: ignore[arg-type]
        target=FaultTarget(namespace=ns, workload=wl, route=route),
        start=0,
        duration=100_000,
        magnitude=magnitude,
    )


#: Faults active from the first tick, so that every golden number has
#: something to count: 5xx, 502s at callers, plaintext, TLS failures.
EVERYTHING = Scenario(
    name="everything-at-once",
    faults=[
        fault("tls_handshake_failure", "payments", "ledger", 0.3),
        fault("mtls_loss", "shop", "cart", 0.5),
        fault("error_burst", "shop", "catalog", 0.2, route="GET /api/categories"),
    ],
)


# -- ground truth, from the bodies the pods serve ---------------------------------------

SeriesId = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class PodSnap:
    """One pod's body at one instant, as prometheus_client reads it."""

    workload_key: str
    series: dict[SeriesId, float]
    cert_expiry: float | None


#: Series text (name and labels) → parsed identity. A series' text is the same in
#: every body, so prometheus_client parses each one once; only values change.
_SERIES: dict[str, SeriesId] = {}


def read_body(text: str) -> tuple[dict[SeriesId, float], float | None]:
    series: dict[SeriesId, float] = {}
    expiry: float | None = None
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")  # the simulator writes no timestamps
        sid = _SERIES.get(head)
        if sid is None:
            (fam,) = text_string_to_metric_families(f"{head} 0\n")
            (s,) = fam.samples
            sid = _SERIES[head] = (s.name, frozenset(s.labels.items()))
        v = float(value)
        assert sid not in series, f"series printed twice: {head}"
        series[sid] = v
        if sid[0] in CERT_GAUGES:
            expiry = v if expiry is None else min(expiry, v)
    return series, expiry


def snapshot(mesh: SimulatedMesh, skip: Iterable[str] = ()) -> dict[str, PodSnap]:
    """Every served pod's body right now (what a scrape at this instant returns)."""
    out = {}
    skipped = set(skip)
    for t in mesh.targets:
        if t.pod in skipped:
            continue
        series, expiry = read_body(mesh.render(t.pod))
        out[t.pod] = PodSnap(workload_key(t.namespace, t.kind, t.workload), series, expiry)
    return out


@dataclass
class RouteTruth:
    requests: int = 0
    successes: int = 0
    failures: int = 0
    mtls: int = 0
    plaintext: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    cum: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    latency_sum: float = 0.0
    per_pod: dict[str, list[float]] = field(default_factory=dict)  # requests, failures, sum


@dataclass
class WorkloadTruth:
    pods: list[str] = field(default_factory=list)
    routes: dict[tuple[str, str], RouteTruth] = field(default_factory=dict)
    tls_failures: int = 0
    tcp_in: Counter[str] = field(default_factory=Counter)
    tcp_out: Counter[str] = field(default_factory=Counter)
    cert_expiry: float | None = None


def _admin(labels: Mapping[str, str]) -> bool:
    port = labels.get("target_port") or labels.get("target_addr", "").rpartition(":")[2]
    return port == ADMIN_PORT


def _route_of(name: str, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """Which golden route a series feeds, per the Linkerd metric semantics."""
    direction = labels.get("direction")
    if name.startswith("outbound_http_route_"):
        # {parent}.{namespace}:{port}, then the route; a synthesized one in brackets
        assert labels["route_kind"] == "default", labels
        parent = f"{labels['parent_name']}.{labels['parent_namespace']}:{labels['parent_port']}"
        return ("outbound", f"{parent} [{labels['route_name']}]")
    if name.startswith("route_response_"):
        rt = labels["rt_route"]
        return ("inbound", rt) if direction == "inbound" else ("outbound", f"{labels['dst']} {rt}")
    if direction == "inbound":
        return None if _admin(labels) else STAR_IN
    if direction == "outbound":
        return ("outbound", labels["authority"])
    return None


def _status_class(labels: Mapping[str, str]) -> str:
    if labels.get("error"):
        return "error"
    if labels.get("grpc_status"):
        return f"grpc_{labels['grpc_status']}"
    code = labels.get("status_code") or labels["http_status"]  # legacy, Gateway-API families
    return f"{code[0]}xx"


def _fold(wt: WorkloadTruth, pod: str, name: str, labels: Mapping[str, str], d: float) -> None:
    if name in ("inbound_tcp_errors_total", "inbound_tcp_accept_errors_total"):
        if labels["error"] in TLS_ERRORS and not _admin(labels):
            wt.tls_failures += int(d)
        return
    if name in ("tcp_open_total", "tcp_close_total"):
        what = "open" if name == "tcp_open_total" else "close"
        side = labels["direction"], labels["peer"]
        if side == ("inbound", "src") and not _admin(labels):
            tcp = wt.tcp_in
        elif side == ("outbound", "dst"):
            tcp = wt.tcp_out
        else:
            return
        tcp[what] += int(d)
        if labels.get("errno"):
            tcp["errors"] += int(d)
        return
    if name not in (
        "response_total",
        "response_latency_ms_bucket",
        "response_latency_ms_sum",
        "route_response_total",
        "route_response_latency_ms_bucket",
        "route_response_latency_ms_sum",
        *OUTBOUND_ROUTE_FAMILIES,
    ):
        return
    key = _route_of(name, labels)
    if key is None:
        return
    rt = wt.routes.setdefault(key, RouteTruth())
    mine = rt.per_pod.setdefault(pod, [0.0, 0.0, 0.0])
    if name.endswith("_total"):
        n = int(d)
        if name in OUTBOUND_ROUTE_FAMILIES:  # viz stat-outbound: 5xx or an error fails
            failed = labels["http_status"].startswith("5") or labels["error"] != ""
        else:
            failed = labels["classification"] != "success"
        rt.requests += n
        rt.failures += n if failed else 0
        rt.successes += 0 if failed else n
        rt.classes[_status_class(labels)] += n
        mine[0] += n
        mine[1] += n if failed else 0
        if name == "response_total":
            if labels["tls"] == "true":
                rt.mtls += n
            else:
                rt.plaintext += n
    elif name.endswith("_bucket"):
        le = float(labels["le"]) * (1000 if name in OUTBOUND_ROUTE_FAMILIES else 1)
        rt.cum[le] = rt.cum.get(le, 0.0) + d
    else:
        d *= 1000 if name in OUTBOUND_ROUTE_FAMILIES else 1
        rt.latency_sum += d
        mine[2] += d


def window_truth(
    before: Mapping[str, PodSnap],
    after: Mapping[str, PodSnap],
    restarted: Iterable[str] = (),
) -> dict[str, WorkloadTruth]:
    """What happened between two snapshots, per workload.

    A pod absent from ``before`` (new, renamed) or listed in ``restarted``
    counts from zero. Simulated counters only fall on a restart, so any
    other decrease is a simulator bug and fails here, not in the collector.
    """
    fresh = set(restarted)
    out: dict[str, WorkloadTruth] = {}
    for pod, snap in after.items():
        prev = {} if pod in fresh or pod not in before else before[pod].series
        wt = out.setdefault(snap.workload_key, WorkloadTruth())
        wt.pods.append(pod)
        if snap.cert_expiry is not None:
            e = snap.cert_expiry
            wt.cert_expiry = e if wt.cert_expiry is None else min(wt.cert_expiry, e)
        for (name, labels), v in snap.series.items():
            if name in CERT_GAUGES:
                continue
            d = v - prev.get((name, labels), 0.0)
            if name.endswith(("_total", "_bucket", "_sum")):
                assert d >= 0, f"simulated counter fell without a restart: {pod} {name}"
            _fold(wt, pod, name, dict(labels), d)
    return out


def add_truths(*parts: Mapping[str, WorkloadTruth]) -> dict[str, tuple[int, int, int]]:
    """(requests, failures, plaintext) per (workload, route), summed over windows."""
    out: Counter[tuple[str, str, str, str]] = Counter()
    for part in parts:
        for wk, wt in part.items():
            for (d, r), rt in wt.routes.items():
                out[(wk, d, r, "requests")] += rt.requests
                out[(wk, d, r, "failures")] += rt.failures
                out[(wk, d, r, "plaintext")] += rt.plaintext
    return _triples(out)


def add_samples(*cycles: Mapping[str, GoldenBatch]) -> dict[str, tuple[int, int, int]]:
    out: Counter[tuple[str, str, str, str]] = Counter()
    for batches in cycles:
        for wk, b in batches.items():
            for s in b.samples:
                out[(wk, s.direction, s.route, "requests")] += s.requests
                out[(wk, s.direction, s.route, "failures")] += s.failures
                out[(wk, s.direction, s.route, "plaintext")] += s.plaintext_requests
    return {k: v for k, v in _triples(out).items() if any(v)}


def _triples(c: Counter[tuple[str, str, str, str]]) -> dict[str, tuple[int, int, int]]:
    keys = {k[:3] for k in c}
    return {
        "/".join(k): (c[(*k, "requests")], c[(*k, "failures")], c[(*k, "plaintext")])
        for k in sorted(keys)
    }


# -- an independent histogram_quantile --------------------------------------------------


def histogram_quantile(q: float, cum: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``le`` counts, written out again."""
    bounds = sorted(cum)
    counts = [cum[b] for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    i = next(i for i, c in enumerate(counts) if c >= rank)
    if math.isinf(bounds[i]):
        return bounds[-2]
    lo, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    return lo + (bounds[i] - lo) * (rank - below) / (counts[i] - below)


def bucket_of(ms: float, bounds: tuple[float, ...] = LINKERD_LATENCY_BOUNDS_MS) -> int:
    return bisect.bisect_left(bounds, ms)


def per_bucket(cum: Mapping[float, float]) -> tuple[int, ...]:
    """Cumulative ``le`` counts → per-bucket counts, in the order of their bounds."""
    ordered = [cum[b] for b in sorted(cum)]
    return tuple(int(c - p) for c, p in zip(ordered, [0.0, *ordered[:-1]], strict=True))


def cumulative(buckets: Iterable[int]) -> dict[float, float]:
    out, run = {}, 0.0
    for b, n in zip(LINKERD_LATENCY_BOUNDS_MS, buckets, strict=True):
        run += n
        out[b] = run
    return out


# -- comparing a cycle's batches with the truth -----------------------------------------


def assert_exact(
    truth: Mapping[str, WorkloadTruth],
    batches: Mapping[str, GoldenBatch],
    window_end: float,
    *,
    down: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Every golden number of every route equals the truth of the window."""
    down = down or {}
    assert set(batches) == set(truth) | set(down)
    for wk, batch in batches.items():
        wt = truth.get(wk, WorkloadTruth())
        where = f"{wk} @ {window_end - T0:g}s"
        assert batch.window_end == window_end, where
        assert batch.window_seconds == WINDOW, where
        assert batch.pods_up == tuple(sorted(wt.pods)), where
        assert batch.pods_down == tuple(sorted(down.get(wk, ()))), where
        samples = {(s.direction, s.route): s for s in batch.samples}
        assert len(samples) == len(batch.samples), f"{where}: duplicate routes"
        assert STAR_IN in samples, f"{where}: no inbound aggregate"
        for key, rt in wt.routes.items():
            assert key in samples, f"{where}: no sample for {key}"
            _assert_route(samples[key], rt, f"{where} {key}")
        for key, s in samples.items():
            assert s.window_end == window_end and s.window_seconds == WINDOW
            assert s.cluster == CLUSTER and s.workload_key == wk
            if key not in wt.routes:
                # Only TCP-only outbound edges (and an idle '*') may have no HTTP truth.
                assert (s.requests, s.latency_buckets, s.pods) == (0, (), ()), f"{where} {key}"
                assert key == STAR_IN or s.direction == "outbound", f"{where} {key}"
        star = samples[STAR_IN]
        assert star.tls_failures == wt.tls_failures, where
        assert (star.tcp_open, star.tcp_close, star.tcp_errors) == (
            wt.tcp_in["open"],
            wt.tcp_in["close"],
            wt.tcp_in["errors"],
        ), where
        out = [s for s in batch.samples if s.direction == "outbound"]
        assert (
            sum(s.tcp_open for s in out),
            sum(s.tcp_close for s in out),
            sum(s.tcp_errors for s in out),
        ) == (wt.tcp_out["open"], wt.tcp_out["close"], wt.tcp_out["errors"]), where
        assert all(s.tls_failures == 0 for s in batch.samples if s is not star), where
        assert all(s.cert_ttl_seconds is None for s in batch.samples if s is not star), where
        if wt.cert_expiry is None:
            assert star.cert_ttl_seconds is None, where
        else:
            assert star.cert_ttl_seconds == round(wt.cert_expiry - window_end, 1), where
            assert star.cert_ttl_seconds > 0, where


def _assert_route(s: GoldenSample, rt: RouteTruth, where: str) -> None:
    got = (s.requests, s.successes, s.failures, s.mtls_requests, s.plaintext_requests)
    assert got == (rt.requests, rt.successes, rt.failures, rt.mtls, rt.plaintext), where
    assert s.status_classes == {k: v for k, v in rt.classes.items() if v}, where
    n = int(sum(per_bucket(rt.cum))) if rt.cum else 0
    assert n == rt.requests, f"{where}: simulator histogram count != responses"
    if n == 0:
        assert s.latency_buckets == (), where
        assert (s.p50_ms, s.p95_ms, s.p99_ms, s.mean_ms) == (None, None, None, None), where
    else:
        assert s.bounds_ms == tuple(sorted(rt.cum)), where
        legacy = s.bounds_ms == LINKERD_LATENCY_BOUNDS_MS
        assert (s.latency_bounds_ms is None) == legacy, where
        assert s.latency_buckets == per_bucket(rt.cum), where
        assert s.latency_sum_ms == pytest.approx(rt.latency_sum, abs=1e-3), where
        assert s.mean_ms == pytest.approx(rt.latency_sum / n, abs=1e-3), where
        for q, got_q in ((0.5, s.p50_ms), (0.95, s.p95_ms), (0.99, s.p99_ms)):
            want = histogram_quantile(q, rt.cum)
            assert want is not None and got_q is not None, where
            got_b, want_b = bucket_of(got_q, s.bounds_ms), bucket_of(want, s.bounds_ms)
            assert abs(got_b - want_b) <= 1, f"{where} q{q}: {got_q} {want}"
        assert s.p50_ms <= s.p95_ms <= s.p99_ms, where
    pods = {p.pod: (p.requests, p.failures, p.latency_sum_ms) for p in s.pods}
    want_pods = {
        pod: (int(r), int(f), pytest.approx(ls, abs=1e-3))
        for pod, (r, f, ls) in rt.per_pod.items()
        if r
    }
    assert pods == want_pods, where
    assert sum(p.requests for p in s.pods) == s.requests, where


# -- the rig: a served mesh and a collector scraping it ----------------------------------


def make_cfg(timeout: float = 2.0) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "cluster": CLUSTER,
            "window": {"seconds": WINDOW, "scrape_timeout_seconds": timeout},
            "collector": {"concurrency": 16, "gzip": True},
        },
    )


def live_targets(mesh: SimulatedMesh) -> list[Target]:
    return [Target(t.url, t.namespace, t.workload, t.kind, t.pod) for t in mesh.targets]


@dataclass
class Rig:
    mesh: SimulatedMesh
    collector: Collector
    client: httpx.AsyncClient

    async def cycle(self) -> tuple[CycleReport, dict[str, GoldenBatch]]:
        got: list[GoldenBatch] = []
        self.collector.on_batches = got.extend
        report = await self.collector.cycle(self.client, self.mesh.now)
        batches = {b.workload_key: b for b in got}
        assert len(batches) == len(got), "two batches for one workload"
        assert report.batches == len(got)
        assert report.samples == sum(len(b.samples) for b in got)
        return report, batches

    async def baseline(self) -> dict[str, PodSnap]:
        """The first cycle: every pod is older than the collector, so nothing is counted."""
        self.mesh.advance(WINDOW)
        snap = snapshot(self.mesh)
        report, batches = await self.cycle()
        assert (report.up, report.down, report.parse_errors) == (len(snap), [], 0)
        assert set(batches) == {s.workload_key for s in snap.values()}
        for b in batches.values():
            assert [(s.route, s.requests) for s in b.samples] == [(ALL_ROUTES, 0)]
        return snap


@contextlib.asynccontextmanager
async def rig(
    spec: MeshSpec | None = None,
    *,
    scenario: Scenario | str | None = None,
    timeout: float = 2.0,
    cfg: MeshwatchConfig | None = None,
    producer: Any = None,
    seed: int = 11,
) -> AsyncIterator[Rig]:
    mesh = SimulatedMesh(
        spec or default_demo_mesh("2.18"),
        scenario=scenario,
        seed=seed,
        realtime=False,
        clock=lambda: T0,
    )
    cfg = cfg or make_cfg(timeout)
    async with mesh:
        collector = Collector(cfg, lambda: live_targets(mesh), producer)
        async with make_scrape_client(cfg.collector.concurrency, cfg.collector.gzip) as client:
            yield Rig(mesh, collector, client)


def pod_names(mesh: SimulatedMesh, workload: str) -> list[str]:
    return [p.name for p in mesh.pods if p.workload == workload]


# -- 1. exact counts, every simulated Linkerd release ------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_counts_equal_the_simulated_increments(version: str) -> None:
    async def run() -> None:
        async with rig(default_demo_mesh(version), scenario=EVERYTHING) as r:
            before = await r.baseline()
            assert {p.proxy_version for p in r.mesh.targets} == {version}
            seen: Counter[str] = Counter()
            for _ in range(2):
                r.mesh.advance(WINDOW)
                after = snapshot(r.mesh)
                report, batches = await r.cycle()
                assert (report.up, report.down, report.parse_errors) == (13, [], 0)
                assert_exact(window_truth(before, after), batches, r.mesh.now)
                for b in batches.values():
                    for s in b.samples:
                        seen["requests"] += s.requests
                        seen["failures"] += s.failures
                        seen["mtls"] += s.mtls_requests
                        seen["plaintext"] += s.plaintext_requests
                        seen["tls_failures"] += s.tls_failures
                        seen["5xx"] += s.status_classes.get("5xx", 0)
                        seen["4xx"] += s.status_classes.get("4xx", 0)
                        seen["rt_routes"] += s.route != ALL_ROUTES and s.direction == "inbound"
                        seen["cert"] += s.cert_ttl_seconds is not None
                before = after
            # The window really exercised every golden number (or the checks above are vacuous).
            for what in ("requests", "failures", "mtls", "plaintext", "4xx", "5xx", "rt_routes"):
                assert seen[what] > 0, what
            assert seen["cert"] == 2 * len(DEMO_WORKLOADS)
            # inbound_tcp_errors_total exists since 2.11; a 2.10 proxy cannot report TLS failures
            assert (seen["tls_failures"] > 0) == (version != "2.10")

    asyncio.run(run())


def test_plaintext_clients_count_as_plaintext_and_meshed_ones_as_mtls() -> None:
    """Unmeshed (plaintext) external clients count as plaintext; the rest stays mTLS."""
    spec = default_demo_mesh("2.18")
    data = spec.model_dump()
    for w in data["workloads"]:
        if w["name"] == "api":
            w["external_tls"] = False
    plain_api = MeshSpec.model_validate(data)

    async def run() -> None:
        async with rig(plain_api) as r:
            before = await r.baseline()
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            _, batches = await r.cycle()
            truth = window_truth(before, after)
            assert_exact(truth, batches, r.mesh.now)
            star = {
                wk: next(s for s in b.samples if s.route == ALL_ROUTES) for wk, b in batches.items()
            }
            assert star[API].plaintext_requests > 0 and star[API].mtls_requests > 0
            assert star[API].mtls_requests + star[API].plaintext_requests == star[API].requests
            for wk in DEMO_WORKLOADS - {API}:
                assert star[wk].plaintext_requests == 0, wk
                assert star[wk].mtls_requests == star[wk].requests > 0, wk

    asyncio.run(run())


# -- 2. faults land on their target and nowhere else -------------------------------------


@dataclass
class Agg:
    windows: int = 0
    requests: int = 0
    failures: int = 0
    mtls: int = 0
    plaintext: int = 0
    tls_failures: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LINKERD_LATENCY_BOUNDS_MS))

    @property
    def p99(self) -> float:
        q = histogram_quantile(0.99, cumulative(self.buckets))
        assert q is not None
        return q

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests

    @property
    def rate(self) -> float:
        return self.requests / self.windows


def merged(history: Mapping[float, Mapping[str, GoldenBatch]], windows: Iterable[float],
           wk: str, direction: str, route: str) -> Agg:  # fmt: skip
    a = Agg()
    for we in windows:
        s = next(s for s in history[we][wk].samples if (s.direction, s.route) == (direction, route))
        a.windows += 1
        a.requests += s.requests
        a.failures += s.failures
        a.mtls += s.mtls_requests
        a.plaintext += s.plaintext_requests
        a.tls_failures += s.tls_failures
        for i, n in enumerate(s.latency_buckets):
            a.buckets[i] += n
    return a


def test_all_faults_scenario_moves_the_targets_and_nothing_else() -> None:
    async def run() -> None:
        # gzip off: fifty cycles of 13 bodies, and compression is not what is tested here
        cfg = load_config(
            None,
            {
                "cluster": CLUSTER,
                "window": {"seconds": WINDOW, "scrape_timeout_seconds": 2.0},
                "collector": {"gzip": False},
            },
        )
        async with rig(scenario="all-faults", cfg=cfg) as r:
            await r.baseline()
            history: dict[float, dict[str, GoldenBatch]] = {}
            while r.mesh.elapsed < 500:
                r.mesh.advance(WINDOW)
                report, batches = await r.cycle()
                assert (report.up, report.down, report.parse_errors) == (13, [], 0)
                assert set(batches) == DEMO_WORKLOADS
                history[r.mesh.now] = batches
            faults = {rec["fault_id"]: rec for rec in r.mesh.ground_truth if rec["event"] == "end"}
        assert len(faults) == 5

        ends = sorted(history)
        spans = [(f["start"], f["end"]) for f in faults.values()]

        def inside(fid: str) -> list[float]:
            s, e = faults[fid]["start"], faults[fid]["end"]
            return [we for we in ends if we - WINDOW >= s and we <= e]

        quiet = [we for we in ends if all(we <= s or we - WINDOW >= e for s, e in spans)]
        assert len(quiet) >= 20
        for fid in faults:
            assert len(inside(fid)) == 4, fid

        # what the simulator says each fault touches, in route-key space
        touched = {fid: set(f["route_keys"]) for fid, f in faults.items()}
        assert f"{CATALOG}/inbound/GET /api/search" in touched["catalog-search-latency"]
        assert f"{CATALOG}/inbound/GET /api/products" not in touched["catalog-search-latency"]
        assert f"{CHECKOUT}/inbound/POST /api/checkout" in touched["checkout-errors"]
        assert f"{CHECKOUT}/inbound/GET /api/orders/{{id}}" not in touched["checkout-errors"]
        assert f"{LEDGER}/inbound/*" in touched["ledger-tls"]
        assert f"{API}/outbound/ledger.payments.svc.cluster.local:8080" in touched["ledger-tls"]
        assert touched["cart-plaintext"] == {f"{CART}/inbound/*"}
        assert f"{WEB}/inbound/*" in touched["web-traffic-drop"]

        def both(fid: str, wk: str, direction: str, route: str) -> tuple[Agg, Agg]:
            return (
                merged(history, inside(fid), wk, direction, route),
                merged(history, quiet, wk, direction, route),
            )

        # latency_spike x6 on catalog "GET /api/search"
        hit, calm = both("catalog-search-latency", CATALOG, "inbound", "GET /api/search")
        assert hit.p99 > 4 * calm.p99, (hit.p99, calm.p99)
        for we in inside("catalog-search-latency"):
            one = merged(history, [we], CATALOG, "inbound", "GET /api/search")
            assert one.p99 > 3 * calm.p99
        for route in ("GET /api/products", "GET /api/products/{id}", "GET /api/categories"):
            hit, calm = both("catalog-search-latency", CATALOG, "inbound", route)
            assert 0.6 < hit.p99 / calm.p99 < 1.6, (route, hit.p99, calm.p99)
        for wk in DEMO_WORKLOADS - {CATALOG, WEB, CART}:  # web and cart call catalog
            hit, calm = both("catalog-search-latency", wk, "inbound", ALL_ROUTES)
            assert 0.5 < hit.p99 / calm.p99 < 2.0, (wk, hit.p99, calm.p99)

        # error_burst 30 % on checkout "POST /api/checkout"
        hit, calm = both("checkout-errors", CHECKOUT, "inbound", "POST /api/checkout")
        assert hit.requests >= 20
        assert 0.15 < hit.error_ratio < 0.5, hit
        assert calm.error_ratio < 0.03, calm
        hit, _ = both("checkout-errors", CHECKOUT, "inbound", "GET /api/orders/{id}")
        assert hit.error_ratio < 0.05, hit
        for wk in DEMO_WORKLOADS - {CHECKOUT}:
            hit, _ = both("checkout-errors", wk, "inbound", ALL_ROUTES)
            assert hit.error_ratio < 0.03, (wk, hit)

        # tls_handshake_failure on ledger: TLS failures there, exactly none anywhere else
        hit, calm = both("ledger-tls", LEDGER, "inbound", ALL_ROUTES)
        assert calm.tls_failures == 0
        assert hit.tls_failures >= 40
        assert all(
            merged(history, [we], LEDGER, "inbound", ALL_ROUTES).tls_failures > 0
            for we in inside("ledger-tls")
        )
        for wk in DEMO_WORKLOADS - {LEDGER}:
            assert merged(history, ends, wk, "inbound", ALL_ROUTES).tls_failures == 0, wk
        # ... and api, ledger's only caller, sees the failed handshakes as 502s on that edge
        edge = "ledger.payments.svc.cluster.local:8080"
        hit, calm = both("ledger-tls", API, "outbound", edge)
        assert hit.error_ratio > 0.15 and calm.error_ratio < 0.03, (hit, calm)

        # mtls_loss 60 % on cart: plaintext there, exactly none anywhere else
        hit, calm = both("cart-plaintext", CART, "inbound", ALL_ROUTES)
        assert calm.plaintext == 0 and calm.mtls == calm.requests
        assert 0.45 < hit.plaintext / hit.requests < 0.75, hit
        assert hit.mtls + hit.plaintext == hit.requests
        for wk in DEMO_WORKLOADS - {CART}:
            every = merged(history, ends, wk, "inbound", ALL_ROUTES)
            assert every.plaintext == 0 and every.mtls == every.requests > 0, wk

        # traffic_drop to 20 % on web
        hit, calm = both("web-traffic-drop", WEB, "inbound", ALL_ROUTES)
        assert 0.1 < hit.rate / calm.rate < 0.3, (hit.rate, calm.rate)
        for wk in DEMO_WORKLOADS - {WEB}:
            hit, calm = both("web-traffic-drop", wk, "inbound", ALL_ROUTES)
            assert 0.75 < hit.rate / calm.rate < 1.3, (wk, hit.rate, calm.rate)

    asyncio.run(run())


def test_traffic_drop_to_zero_is_reported_as_zero_requests() -> None:
    """'No requests' is a state: the route is still reported, with exactly zero."""
    stop_api = Scenario(
        faults=[
            FaultSpec(
                kind="traffic_drop",
                target=FaultTarget(namespace="payments", workload="api"),
                start=20,
                duration=20,
                magnitude=0.0,
            )
        ]
    )

    async def run() -> None:
        async with rig(scenario=stop_api) as r:
            before = await r.baseline()
            counts = []
            for _ in range(4):  # windows (10,20] (20,30] (30,40] (40,50]
                r.mesh.advance(WINDOW)
                after = snapshot(r.mesh)
                _, batches = await r.cycle()
                assert_exact(window_truth(before, after), batches, r.mesh.now)
                star = next(s for s in batches[API].samples if s.route == ALL_ROUTES)
                edge = next(
                    s
                    for s in batches[CHECKOUT].samples
                    if s.route == "api.payments.svc.cluster.local:8080"
                )
                counts.append((star.requests, edge.requests))
                before = after
        (a0, e0), (a1, e1), (a2, e2), (a3, e3) = counts
        assert a0 > 0 and e0 > 0 and a3 > 0 and e3 > 0
        assert (a1, e1, a2, e2) == (0, 0, 0, 0)

    asyncio.run(run())


# -- 3. pods restarting, appearing, disappearing ----------------------------------------


def test_restarted_pod_counts_from_its_restart_without_negative_or_double_deltas() -> None:
    async def run() -> None:
        async with rig(scenario=EVERYTHING) as r:
            await r.baseline()
            cart0, _ = pod_names(r.mesh, "cart")
            ledger0 = pod_names(r.mesh, "ledger")[0]

            # restart on a window boundary: the window's count is exact
            r.mesh.advance(WINDOW)
            before = snapshot(r.mesh)
            await r.cycle()
            r.mesh.restart_pod(cart0)
            r.mesh.restart_pod(ledger0)
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            _, batches = await r.cycle()
            assert_exact(window_truth(before, after, {cart0, ledger0}), batches, r.mesh.now)

            # restart mid-window: what the proxy saw before it died is gone, but the
            # rest is counted exactly once (never the pre-restart total again)
            before = after
            r.mesh.advance(4)
            mid = snapshot(r.mesh)
            r.mesh.restart_pod(cart0)
            r.mesh.advance(WINDOW - 4)
            after = snapshot(r.mesh)
            _, batches = await r.cycle()
            assert_exact(window_truth(before, after, {cart0}), batches, r.mesh.now)
            lost = window_truth(before, mid)[CART].routes[STAR_IN].per_pod[cart0][0]
            assert lost > 0
            got = next(s for s in batches[CART].samples if s.route == ALL_ROUTES)
            since = window_truth({}, {cart0: after[cart0]})[CART].routes[STAR_IN].requests
            assert {p.pod: p.requests for p in got.pods}[cart0] == since

            # and the window after that is plain again
            before = after
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            _, batches = await r.cycle()
            assert_exact(window_truth(before, after), batches, r.mesh.now)

    asyncio.run(run())


def test_a_series_vanishing_from_a_route_is_neither_a_reset_nor_negative() -> None:
    """One edge, two destination pods behind it; one of them goes away between scrapes."""
    edge = "x.ns.svc.cluster.local:80"

    def body(pods: Mapping[str, int]) -> str:
        lines = ["process_start_time_seconds 100"]
        for pod, n in pods.items():
            labels = (
                f'direction="outbound",authority="{edge}",dst_deployment="x",'
                f'dst_namespace="ns",dst_pod="{pod}",tls="true",status_code="200"'
            )
            lines.append(f'response_total{{{labels},classification="success"}} {n}')
            for le in (*[str(int(b)) for b in LINKERD_LATENCY_BOUNDS_MS[:-1]], "+Inf"):
                lines.append(
                    f'response_latency_ms_bucket{{{labels},le="{le}"}} {n if le != "1" else 0}'
                )
            lines.append(f"response_latency_ms_sum{{{labels}}} {2 * n}")
        return "\n".join(lines) + "\n"

    def delta(pods: Mapping[str, int], now: float) -> tuple[float, float, list[float]]:
        parsed = parse(body(pods))
        assert not parsed.errors
        d = tracker.update("pod", extract(parsed.samples), now)
        assert d is not None
        rc = d.routes[("outbound", edge)]
        assert rc.buckets is not None
        return rc.values["successes"], rc.values["latency_sum_ms"], rc.buckets

    tracker = DeltaTracker()
    assert (
        tracker.update("pod", extract(parse(body({"x-a": 100, "x-b": 900})).samples), 1000) is None
    )
    # x-b is gone (its 900 must not make the route look reset), x-a grew by 30
    n, total, buckets = delta({"x-a": 130}, 1010)
    assert (n, total, buckets[0], buckets[1], buckets[-1]) == (30, 60, 0, 30, 30)
    # a new x-c starts from zero and counts in full; x-a grew by 20
    n, total, buckets = delta({"x-a": 150, "x-c": 5}, 1020)
    assert (n, total, buckets[0], buckets[-1]) == (25, 50, 0, 25)


async def _replace_a_cart_pod(
    r: Rig,
) -> tuple[str, str, dict[str, PodSnap], dict[str, PodSnap], dict[str, GoldenBatch]]:
    """Replace cart's second pod (new name and uid, same URL) between two cycles."""
    await r.baseline()
    r.mesh.advance(WINDOW)
    before = snapshot(r.mesh)
    await r.cycle()
    old = pod_names(r.mesh, "cart")[1]
    url = next(t.url for t in r.mesh.targets if t.pod == old)
    new = r.mesh.restart_pod(old, rename=True)
    assert new != old and next(t.url for t in r.mesh.targets if t.pod == new) == url
    r.mesh.advance(WINDOW)
    after = snapshot(r.mesh)
    _, batches = await r.cycle()
    # the callers of cart lost their series to the old pod and have new ones to the new pod
    web = pod_names(r.mesh, "web")
    assert not any(f'dst_pod="{old}"' in r.mesh.render(p) for p in web)
    assert all(f'dst_pod="{new}"' in r.mesh.render(p) for p in web)
    return old, new, before, after, batches


def test_callers_stay_exact_when_a_callee_pod_is_replaced() -> None:
    """Series that vanish from a caller (its old destination pod) cost nothing and add nothing."""

    async def run() -> None:
        async with rig() as r:
            old, new, before, after, batches = await _replace_a_cart_pod(r)
            assert new in batches[CART].pods_up and old not in batches[CART].pods_up
            truth = window_truth(before, after)
            del truth[CART], batches[CART]  # the replaced pod itself: see the next test
            assert_exact(truth, batches, r.mesh.now)

    asyncio.run(run())


def test_replacement_pod_behind_the_same_url_counts_from_zero() -> None:
    async def run() -> None:
        async with rig() as r:
            _, new, before, after, batches = await _replace_a_cart_pod(r)
            start = next(
                v
                for (name, _), v in after[new].series.items()
                if name == "process_start_time_seconds"
            )
            assert start >= T0 + 2 * WINDOW, "the replacement proxy reports the old start time"
            assert_exact(window_truth(before, after), batches, r.mesh.now)

    asyncio.run(run())


def test_scaled_up_pod_counts_from_its_start() -> None:
    async def run() -> None:
        async with rig() as r:
            await r.baseline()
            r.mesh.advance(WINDOW)
            before = snapshot(r.mesh)
            await r.cycle()
            names = await r.mesh.scale("payments", "ledger", 4)
            new = names[-1]
            assert new not in before
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            _, batches = await r.cycle()
            assert_exact(window_truth(before, after), batches, r.mesh.now)
            star = next(s for s in batches[LEDGER].samples if s.route == ALL_ROUTES)
            assert {p.pod for p in star.pods} == set(names)
            assert batches[LEDGER].pods_up == tuple(sorted(names))

    asyncio.run(run())


def test_removed_pod_is_down_while_still_listed_then_gone_and_nothing_else_breaks() -> None:
    async def run() -> None:
        async with rig() as r:
            await r.baseline()
            r.mesh.advance(WINDOW)
            before = snapshot(r.mesh)
            await r.cycle()
            listed = live_targets(r.mesh)  # a static target list that does not know yet
            r.collector.targets = lambda: listed
            names = await r.mesh.scale("payments", "ledger", 2)
            gone = "ledger-2"
            assert names == ["ledger-0", "ledger-1"] and gone in before

            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            report, batches = await r.cycle()
            assert report.up == 12 and len(report.down) == 1
            assert report.down[0].startswith(f"{gone}: ")
            assert_exact(window_truth(before, after), batches, r.mesh.now, down={LEDGER: [gone]})

            # once discovery catches up the pod is simply not there any more
            r.collector.targets = lambda: live_targets(r.mesh)
            before = after
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            report, batches = await r.cycle()
            assert (report.up, report.down) == (12, [])
            assert_exact(window_truth(before, after), batches, r.mesh.now)

    asyncio.run(run())


def test_churn_conserves_every_request() -> None:
    """Over a run with restarts, replacements and scaling, nothing is lost or counted twice."""

    async def run() -> None:
        async with rig(scenario=EVERYTHING) as r:
            await r.baseline()
            r.mesh.advance(WINDOW)
            start = snapshot(r.mesh)
            await r.cycle()
            truths, outputs = [], []
            before = start
            steps: list[tuple[str, Any]] = [
                ("restart", lambda: pod_names(r.mesh, "web")[0]),
                ("scale", ("shop", "catalog", 1)),  # its callers' series to it vanish
                ("scale", ("shop", "catalog", 2)),  # a new pod, new series at the callers
                ("restart", lambda: "ledger-1"),
                ("scale", ("shop", "cart", 3)),
                ("scale", ("payments", "ledger", 2)),
            ]
            for what, arg in steps:
                restarted: set[str] = set()
                if what == "restart":
                    restarted = {r.mesh.restart_pod(arg())}
                else:
                    await r.mesh.scale(*arg)
                r.mesh.advance(WINDOW)
                after = snapshot(r.mesh)
                _, batches = await r.cycle()
                truth = window_truth(before, after, restarted)
                assert_exact(truth, batches, r.mesh.now)
                truths.append(truth)
                outputs.append(batches)
                before = after
            want = {k: v for k, v in add_truths(*truths).items() if any(v)}
            assert add_samples(*outputs) == want

    asyncio.run(run())


# -- 4. bad proxies ---------------------------------------------------------------------


def test_hung_failing_and_garbage_proxies_are_down_and_the_rest_is_exact() -> None:
    timeout = 0.5

    async def run() -> None:
        async with rig(timeout=timeout) as r:
            await r.baseline()
            r.mesh.advance(WINDOW)
            before = snapshot(r.mesh)
            await r.cycle()
            hung = pod_names(r.mesh, "web")[0]
            failing = pod_names(r.mesh, "catalog")[0]
            junk = pod_names(r.mesh, "ledger")[1]
            r.mesh.misbehave(hung, "hang")
            r.mesh.misbehave(failing, "error")
            r.mesh.misbehave(junk, "garbage")

            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh, skip={hung, failing, junk})
            started = time.perf_counter()
            report, batches = await r.cycle()
            took = time.perf_counter() - started
            assert timeout <= took < timeout + 2.0, took
            assert report.up == 10
            assert sorted(report.down) == sorted(
                [
                    f"{hung}: timeout after {timeout:g}s",
                    f"{failing}: HTTP 500",
                    f"{junk}: no parseable samples",
                ]
            )
            assert report.parse_errors == 3  # the three lines of the simulator's garbage body
            down = {WEB: [hung], CATALOG: [failing], LEDGER: [junk]}
            assert_exact(window_truth(before, after), batches, r.mesh.now, down=down)
            assert r.collector.stats.parse_errors == 3

            # they recover: their next delta spans the whole outage, once
            for pod in (hung, failing, junk):
                r.mesh.misbehave(pod, "ok")
            outage_before = before
            before = after
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            report, batches = await r.cycle()
            assert (report.up, report.down, report.parse_errors) == (13, [], 0)
            assert all(b.pods_down == () for b in batches.values())
            back = {hung, failing, junk}
            healthy_before = {p: s for p, s in outage_before.items() if p in back} | before
            assert_exact(window_truth(healthy_before, after), batches, r.mesh.now)

    asyncio.run(run())


def test_a_few_garbled_lines_cost_those_lines_only() -> None:
    """Collector.build on real bodies, one of them with junk spliced in."""
    mesh = SimulatedMesh(
        default_demo_mesh("2.16"), seed=5, realtime=False, serve_http=False, clock=lambda: T0
    )
    targets = [
        Target(f"http://sim/{p.name}", p.namespace, p.workload, p.kind, p.name) for p in mesh.pods
    ]
    collector = Collector(make_cfg(), lambda: targets, None)
    victim = pod_names(mesh, "checkout")[0]

    def scrape(junk: bool) -> list[ScrapeResult]:
        out = []
        for t in targets:
            body = mesh.render(t.pod)
            if junk and t.pod == victim:
                lines = body.split("\n")
                at = next(i for i, line in enumerate(lines) if line.startswith("tcp_open_total"))
                lines[at:at] = ['response_total{direction="inbound" 7', "\x00\x01 }{ NaN"]
                body = "\n".join(lines)
            out.append(ScrapeResult(t, body.encode(), None, 0.0))
        return out

    mesh.advance(WINDOW)
    report, _ = collector.build(scrape(False), mesh.now)
    assert report.parse_errors == 0
    mesh.advance(WINDOW)
    before = {t.pod: PodSnap(t.workload_key, *read_body(mesh.render(t.pod))) for t in targets}
    collector.build(scrape(False), mesh.now)
    mesh.advance(WINDOW)
    after = {t.pod: PodSnap(t.workload_key, *read_body(mesh.render(t.pod))) for t in targets}
    report, batches = collector.build(scrape(True), mesh.now)
    assert (report.up, report.down, report.parse_errors) == (13, [], 2)
    assert_exact(window_truth(before, after), {b.workload_key: b for b in batches}, mesh.now)


# -- 5. end to end through Kafka ---------------------------------------------------------


@pytest.mark.integration
def test_one_message_per_workload_on_the_golden_topic(kafka_cfg: MeshwatchConfig) -> None:
    from pipeline.kafka.clients import make_producer
    from tests.kafka_helpers import read_records

    cfg = kafka_cfg.model_copy(update={"cluster": CLUSTER})
    producer = make_producer(cfg.kafka, "test")
    produced: list[list[GoldenBatch]] = []

    async def run() -> None:
        async with rig(cfg=cfg, producer=producer) as r:
            r.collector.on_batches = None
            r.mesh.advance(WINDOW)
            before = snapshot(r.mesh)
            report = await r.collector.cycle(r.client, r.mesh.now)  # baseline
            assert report.produce_errors == 0
            r.mesh.advance(WINDOW)
            after = snapshot(r.mesh)
            r.collector.on_batches = produced.append
            report = await r.collector.cycle(r.client, r.mesh.now)
            assert (report.batches, report.produce_errors) == (len(DEMO_WORKLOADS), 0)
            batches = {b.workload_key: b for b in produced[0]}
            assert_exact(window_truth(before, after), batches, r.mesh.now)

    try:
        asyncio.run(run())
    finally:
        producer.close(timeout=5)

    n = len(DEMO_WORKLOADS)
    records = read_records(cfg, cfg.topics.golden, until=lambda rs: len(rs) >= 2 * n)
    assert len(records) == 2 * n
    decoded = [(rec.key.decode(), decode(GoldenBatch, rec.value)) for rec in records]
    assert all(key == b.workload_key for key, b in decoded)
    by_window: dict[float, list[str]] = {}
    for key, b in decoded:
        by_window.setdefault(b.window_end, []).append(key)
    assert sorted(by_window) == [T0 + WINDOW, T0 + 2 * WINDOW]
    for keys in by_window.values():
        assert sorted(keys) == sorted(DEMO_WORKLOADS)  # one message per workload and window
    # what went over the wire is exactly what the collector built
    wire = {b.workload_key: b for _, b in decoded if b.window_end == T0 + 2 * WINDOW}
    assert wire == {b.workload_key: b for b in produced[0]}
    # and a workload's messages share a partition (keyed by workload)
    parts: dict[str, set[int]] = {}
    for rec in records:
        parts.setdefault(rec.key.decode(), set()).add(rec.partition)
    assert all(len(p) == 1 for p in parts.values())
