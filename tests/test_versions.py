"""Every Linkerd era the collector must read, simulated and real.

Part 1 drives the simulated mesh of every modelled proxy (stable 2.10 to
2.20, plus an edge proxy of the v2.149-v2.154 window) through
``Collector.build`` and checks, on top of the whole-batch exact comparison
of ``tests/test_collector.py``, the numbers that come from each era's own
families: the Gateway-API outbound routes (seconds, their own buckets), the
inbound route families (which must not double count), certificate TTL and
refresh failures from the era's identity metric, TLS failures from the era's
error counter. Truth is read from the bodies with prometheus_client.

Part 2 feeds hand-written bodies for what the simulator does not produce
(gRPC, traffic splits, explicit routes, old TLS reasons, outbound identity
errors). Part 3 runs the real captures in ../shared/fixtures/proxy-metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.collect.collector import Collector
from pipeline.collect.deltas import route_delta
from pipeline.collect.exposition import parse_strict
from pipeline.collect.extract import PodCounters, RouteCounters, extract
from pipeline.collect.golden import build_batches
from pipeline.collect.scrape import ScrapeResult
from pipeline.collect.targets import Target
from pipeline.keys import ALL_ROUTES
from pipeline.schema import LINKERD_LATENCY_BOUNDS_MS, GoldenBatch, GoldenSample, decode, encode
from pipeline.simulate import SimulatedMesh, TrafficConfig, default_demo_mesh
from pipeline.simulate.versions import ProxyVersion
from tests.test_collector import (
    DEMO_WORKLOADS,
    EVERYTHING,
    STAR_IN,
    T0,
    WINDOW,
    PodSnap,
    assert_exact,
    make_cfg,
    read_body,
    window_truth,
)

ALL_VERSIONS = [f"2.{m}" for m in range(10, 21)] + ["v2.150.0"]
ROUTE_BOUNDS = (50.0, 500.0, 1000.0, 10000.0, math.inf)
FINE_BOUNDS = (25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 10000.0, math.inf)
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "proxy-metrics"

Snap = Mapping[str, PodSnap]


# -- part 1: the simulated eras -----------------------------------------------------------


class Run:
    """A mesh scraped through Collector.build, without HTTP; time moves only on advance()."""

    def __init__(
        self, version: str, traffic: TrafficConfig | None = None, *, faults: bool = True
    ) -> None:
        self.mesh = SimulatedMesh(
            default_demo_mesh(version),
            scenario=EVERYTHING if faults else None,
            seed=13,
            realtime=False,
            serve_http=False,
            clock=lambda: T0,
            traffic=traffic,
        )
        self.targets = [
            Target(f"http://sim/{p.name}", p.namespace, p.workload, p.kind, p.name)
            for p in self.mesh.pods
        ]
        self.collector = Collector(make_cfg(), lambda: self.targets, None)

    def bodies(self) -> dict[str, str]:
        return {t.pod: self.mesh.render(t.pod) for t in self.targets}

    def snap(self, bodies: Mapping[str, str]) -> dict[str, PodSnap]:
        return {t.pod: PodSnap(t.workload_key, *read_body(bodies[t.pod])) for t in self.targets}

    def cycle(self) -> tuple[dict[str, str], dict[str, PodSnap], dict[str, GoldenBatch]]:
        self.mesh.advance(WINDOW)
        bodies = self.bodies()
        results = [ScrapeResult(t, bodies[t.pod].encode(), None, 0.0) for t in self.targets]
        report, batches = self.collector.build(results, self.mesh.now)
        assert (report.up, report.down, report.parse_errors) == (len(self.targets), [], 0)
        return bodies, self.snap(bodies), {b.workload_key: b for b in batches}


def deltas(
    before: Snap, after: Snap, wk: str, name: str, **match: str
) -> list[tuple[dict[str, str], float]]:
    """(labels, increase) of every series ``name`` of workload ``wk`` matching ``match``."""
    out = []
    for pod, snap in after.items():
        if snap.workload_key != wk:
            continue
        prev = before[pod].series if pod in before else {}
        for (n, labels), v in snap.series.items():
            d = dict(labels)
            if n == name and all(d.get(k) == val for k, val in match.items()):
                out.append((d, v - prev.get((n, labels), 0.0)))
    return out


def total(before: Snap, after: Snap, wk: str, name: str, **match: str) -> int:
    return round(sum(d for _, d in deltas(before, after, wk, name, **match)))


def samples_of(batch: GoldenBatch) -> dict[tuple[str, str], GoldenSample]:
    return {(s.direction, s.route): s for s in batch.samples}


def era_identity_metric(v: ProxyVersion) -> str:
    return (
        "control_identity_cert_expiration_timestamp_seconds"
        if v.minor >= 16
        else "identity_cert_expiration_timestamp_seconds"
    )


def era_tls_counter(v: ProxyVersion) -> tuple[str, tuple[str, ...]] | None:
    if 149 <= v.proxy <= 154:
        return "inbound_tcp_accept_errors_total", ("tls_detect_timeout", "io")
    if v.minor >= 11:
        return "inbound_tcp_errors_total", ("tls detection timeout", "i/o")
    return None


def check_body_era(v: ProxyVersion, bodies: Mapping[str, str]) -> None:
    """The distinguishing families of the era are in the bodies, the others are not."""
    om = v.minor >= 15
    for body in bodies.values():  # headers: every proxy prints them
        assert body.endswith("# EOF\n") == om
        assert ("# UNIT " in body) == om
        for family, since in (
            ("outbound_http_route_request_statuses", v.minor >= 16),
            ("outbound_http_route_backend_response_statuses", v.minor >= 16),
            ("inbound_http_requests", v.minor >= 19),
            ("inbound_http_statuses", v.minor >= 20),
            ("inbound_tcp_accept_errors_total", 149 <= v.proxy <= 154),
            ("inbound_tcp_errors_total", v.minor >= 11),
        ):
            assert (f"# TYPE {family} counter\n" in body) == since, family
        ident = era_identity_metric(v)
        assert f"\n{ident} " in body
        assert ("\nidentity_cert_expiration_timestamp_seconds " in body) == (v.minor <= 15)
        assert ("identity_cert_refresh_count" in body) == (v.minor <= 14)
        assert ("identity_cert_refreshes_total{" in body) == (v.minor >= 15)
    text = "".join(bodies.values())  # samples: some proxies call nobody
    assert ('outbound_http_route_request_duration_seconds_bucket{le="0.05",' in text) == (
        v.minor >= 16
    )
    assert ("outbound_http_route_backend_response_statuses_total{" in text) == (v.minor >= 16)
    assert ("inbound_http_requests_total{" in text) == (v.minor >= 19)
    assert ('inbound_http_request_duration_seconds_bucket{le="0.025",' in text) == (v.minor >= 20)
    for line in text.splitlines():
        if line.startswith("response_total{"):
            # ≤ 2.12: only the relevant classification labels; 2.13+: all three
            assert ("grpc_status=" in line) == (v.minor >= 13), line
            assert ("error=" in line) == (v.minor >= 13), line
        if line.startswith('request_total{direction="inbound"'):
            assert ("authority=" in line) == (v.minor < 18), line  # gone in 2.18


def check_gateway_routes(
    v: ProxyVersion, before: Snap, after: Snap, wk: str, batch: GoldenBatch
) -> int:
    """2.16+ outbound route families → '{svc}.{ns}:{port} [http]' routes, in ms buckets."""
    got = samples_of(batch)
    gateway = {r: s for (d, r), s in got.items() if d == "outbound" and " [" in r}
    assert not any(" -> " in r for _, r in got), "backend == parent must not make a route"
    if v.minor < 16:
        assert gateway == {}
        return 0
    authorities = {
        r: s
        for (d, r), s in got.items()
        if d == "outbound" and r.endswith(".svc.cluster.local:8080")
    }
    assert {r.split(".svc.")[0] for r in authorities} == {r.split(":")[0] for r in gateway}, (
        "every called Service is also reported as its default route"
    )
    seen = 0
    for route, s in gateway.items():
        parent, _, rt = route.partition(" ")
        assert rt == "[http]"
        host, _, port = parent.partition(":")
        name, _, ns = host.partition(".")
        match = {"parent_name": name, "parent_namespace": ns, "parent_port": port}
        statuses = deltas(before, after, wk, "outbound_http_route_request_statuses_total", **match)
        ok = sum(d for lab, d in statuses if not lab["http_status"].startswith("5"))
        bad = sum(d for lab, d in statuses if lab["http_status"].startswith("5"))
        assert (s.requests, s.successes, s.failures) == (round(ok + bad), round(ok), round(bad))
        assert s.status_classes == {
            c: n
            for c in ("2xx", "4xx", "5xx")
            if (n := round(sum(d for lab, d in statuses if lab["http_status"][0] == c[0])))
        }
        assert s.peer == parent
        assert (s.mtls_requests, s.plaintext_requests) == (0, 0)  # these families have no tls
        # the same requests, seen through the legacy family of the same proxy
        legacy = authorities[f"{name}.{ns}.svc.cluster.local:{port}"]
        assert (s.requests, s.failures) == (legacy.requests, legacy.failures)
        cum: dict[float, float] = {}
        for lab, d in deltas(
            before, after, wk, "outbound_http_route_request_duration_seconds_bucket", **match
        ):
            le = float(lab["le"]) * 1000
            cum[le] = cum.get(le, 0.0) + d
        if s.requests:
            assert s.latency_bounds_ms == ROUTE_BOUNDS
            want = [cum[b] for b in ROUTE_BOUNDS]
            per = [round(c - p) for c, p in zip(want, [0.0, *want[:-1]], strict=True)]
            assert list(s.latency_buckets) == per
            assert sum(per) == s.requests
            lat = 1000 * sum(
                d
                for _, d in deltas(
                    before, after, wk, "outbound_http_route_request_duration_seconds_sum", **match
                )
            )
            assert s.latency_sum_ms == pytest.approx(lat, abs=1e-3)
            assert s.p50_ms is not None and s.p99_ms is not None
            assert 0 < s.p50_ms <= s.p99_ms <= 10000
        seen += s.requests
    return seen


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_every_era_counts_exactly_from_its_own_families(version: str) -> None:
    v = ProxyVersion.parse(version)
    run = Run(version)
    _, before, _ = run.cycle()  # baseline: every pod predates the collector
    gateway_requests = tls_failures = 0
    for _ in range(2):
        bodies, after, batches = run.cycle()
        now = run.mesh.now
        assert set(batches) == DEMO_WORKLOADS
        assert_exact(window_truth(before, after), batches, now)  # every route, every number
        check_body_era(v, bodies)
        for wk, batch in batches.items():
            got = samples_of(batch)
            star = got[STAR_IN]
            # certificate TTL from the era's identity gauge, nothing else
            ident = era_identity_metric(v)
            expiry = min(
                val
                for snap in after.values()
                if snap.workload_key == wk
                for (name, _), val in snap.series.items()
                if name == ident
            )
            assert star.cert_ttl_seconds == round(expiry - now, 1)
            # TLS failures from the era's error counter, nothing else
            era = era_tls_counter(v)
            want = 0
            if era is not None:
                family, errors = era
                want = sum(total(before, after, wk, family, error=e) for e in errors)
            assert star.tls_failures == want, wk
            tls_failures += want
            # inbound route families (2.19+) are read but map to nothing here: the
            # simulated Servers only have the synthesized default route, which repeats '*'
            inbound = {r for d, r in got if d == "inbound"}
            assert inbound <= {ALL_ROUTES} | {
                r.name for w in run.mesh.spec.workloads if w.key == wk for r in w.routes
            }
            if v.inbound_route_outcomes:
                statuses = total(before, after, wk, "inbound_http_statuses_total")
                assert statuses == star.requests  # same requests: mapping them would double
            gateway_requests += check_gateway_routes(v, before, after, wk, batch)
        before = after
    assert (gateway_requests > 0) == (v.minor >= 16)
    assert (tls_failures > 0) == (era_tls_counter(v) is not None)


@pytest.mark.parametrize("version", ["2.14", "2.15", "2.16", "2.20"])
def test_cert_refresh_failures_come_from_the_eras_refresh_counter(version: str) -> None:
    v = ProxyVersion.parse(version)
    # 40 s certificates: refreshes fall due within the test, and every one fails
    run = Run(version, TrafficConfig(cert_lifetime_seconds=40.0), faults=False)
    run.mesh.model.mods.cert_refresh_fails[:] = True  # no scenario: nothing resets them
    _, before, _ = run.cycle()
    errors = 0
    for _ in range(3):
        _, after, batches = run.cycle()
        name = (
            "control_identity_cert_refreshes_total"
            if v.minor >= 16
            else "identity_cert_refreshes_total"
        )
        for wk, batch in batches.items():
            star = samples_of(batch)[STAR_IN]
            want = total(before, after, wk, name, result="error")
            assert star.cert_refresh_errors == want, wk
            assert all(s.cert_refresh_errors == 0 for s in batch.samples if s is not star)
            errors += want
        before = after
    assert (errors > 0) == (v.minor >= 15)  # ≤ 2.14 proxies do not count failed refreshes


def test_an_edge_proxy_is_its_own_version() -> None:
    v = ProxyVersion.parse("v2.150.0")
    assert (v.minor, v.proxy, v.name, v.proxy_release) == (10, 150, "v2.150.0", "v2.150.0")
    assert (v.tcp_accept_error_counters, v.tcp_error_counters, v.target_ip_port) == (
        True,
        False,
        False,
    )
    assert ProxyVersion.parse("v2.161.0") == ProxyVersion.parse("2.11")
    assert not ProxyVersion.parse("2.10").tcp_accept_error_counters
    with pytest.raises(ValueError, match=r"v2\.149-v2\.154"):
        ProxyVersion.parse("v2.170.0")


# -- part 2: hand-written bodies ------------------------------------------------------------

PARENT = (
    'parent_group="core",parent_kind="Service",parent_namespace="shop",parent_name="web",'
    'parent_port="80",parent_section_name=""'
)
DEFAULT_GRPC = 'route_group="",route_kind="default",route_namespace="",route_name="grpc"'
CANARY = (
    'route_group="gateway.networking.k8s.io",route_kind="HTTPRoute",'
    'route_namespace="shop",route_name="canary"'
)
FOREIGN = (
    'route_group="gateway.networking.k8s.io",route_kind="HTTPRoute",'
    'route_namespace="team-b",route_name="orders"'
)


def backend(name: str) -> str:
    return (
        f'backend_group="core",backend_kind="Service",backend_namespace="shop",'
        f'backend_name="{name}",backend_port="80",backend_section_name=""'
    )


def om_histogram(name: str, labels: str, counts: Mapping[str, int], sum_s: float) -> list[str]:
    """prometheus-client layout: _sum, _count, then buckets with ``le`` first."""
    top = max(counts.values())
    lines = [f"{name}_sum{{{labels}}} {sum_s}", f"{name}_count{{{labels}}} {top}"]
    lines += [f'{name}_bucket{{le="{le}",{labels}}} {n}' for le, n in counts.items()]
    return lines


OUTBOUND_BODY = "\n".join(
    [
        "# HELP outbound_grpc_route_request_statuses Completed request-response streams.",
        "# TYPE outbound_grpc_route_request_statuses counter",
        f'outbound_grpc_route_request_statuses_total{{{PARENT},{DEFAULT_GRPC},hostname="",grpc_status="OK",error=""}} 90',
        f'outbound_grpc_route_request_statuses_total{{{PARENT},{DEFAULT_GRPC},hostname="",grpc_status="UNAVAILABLE",error=""}} 7',
        f'outbound_grpc_route_request_statuses_total{{{PARENT},{DEFAULT_GRPC},hostname="",grpc_status="NOT_FOUND",error=""}} 4',
        f'outbound_grpc_route_request_statuses_total{{{PARENT},{DEFAULT_GRPC},hostname="",grpc_status="",error="REQUEST_TIMEOUT"}} 3',
        "# HELP outbound_grpc_route_request_duration_seconds Request durations.",
        "# TYPE outbound_grpc_route_request_duration_seconds histogram",
        "# UNIT outbound_grpc_route_request_duration_seconds seconds",
        *om_histogram(
            "outbound_grpc_route_request_duration_seconds",
            f'{PARENT},{DEFAULT_GRPC},hostname=""',
            {"0.05": 60, "0.5": 100, "1.0": 103, "10.0": 104, "+Inf": 104},
            9.5,
        ),
        "# TYPE outbound_http_route_request_statuses counter",
        f'outbound_http_route_request_statuses_total{{{PARENT},{CANARY},hostname="",http_status="200",error=""}} 40',
        f'outbound_http_route_request_statuses_total{{{PARENT},{CANARY},hostname="a.example",http_status="200",error=""}} 2',
        f'outbound_http_route_request_statuses_total{{{PARENT},{CANARY},hostname="",http_status="404",error=""}} 5',
        f'outbound_http_route_request_statuses_total{{{PARENT},{CANARY},hostname="",http_status="503",error=""}} 6',
        f'outbound_http_route_request_statuses_total{{{PARENT},{CANARY},hostname="",http_status="",error="LOAD_SHED"}} 1',
        f'outbound_http_route_request_statuses_total{{{PARENT},{FOREIGN},hostname="",http_status="200",error=""}} 11',
        "# TYPE outbound_http_route_backend_response_statuses counter",
        f'outbound_http_route_backend_response_statuses_total{{{PARENT},{CANARY},{backend("web")},http_status="200",error=""}} 38',
        f'outbound_http_route_backend_response_statuses_total{{{PARENT},{CANARY},{backend("web-v2")},http_status="200",error=""}} 4',
        f'outbound_http_route_backend_response_statuses_total{{{PARENT},{CANARY},{backend("web-v2")},http_status="500",error=""}} 6',
        "# TYPE outbound_http_route_backend_response_duration_seconds histogram",
        *om_histogram(
            "outbound_http_route_backend_response_duration_seconds",
            f"{PARENT},{CANARY},{backend('web-v2')}",
            {
                "0.025": 1,
                "0.05": 3,
                "0.1": 6,
                "0.25": 9,
                "0.5": 10,
                "1.0": 10,
                "10.0": 10,
                "+Inf": 10,
            },
            1.25,
        ),
        *om_histogram(
            "outbound_http_route_backend_response_duration_seconds",
            f"{PARENT},{CANARY},{backend('web')}",
            {"0.025": 38, "0.05": 38, "0.1": 38, "0.25": 38, "0.5": 38, "1.0": 38, "10.0": 38},
            0.5,
        ),
        "# EOF",
        "",
    ]
)


def test_outbound_policy_routes_grpc_http_and_splits() -> None:
    pod = extract(parse_strict(OUTBOUND_BODY).samples)
    routes = {r: rc.values for (d, r), rc in pod.routes.items() if d == "outbound"}
    assert set(routes) == {
        "web.shop:80 [grpc]",
        "web.shop:80 canary",
        "web.shop:80 team-b/orders",
        "web.shop:80 canary -> web-v2.shop:80",
    }
    # gRPC: success only on OK without error; names become the legacy numeric classes
    assert routes["web.shop:80 [grpc]"] == {
        "successes": 90,
        "failures": 14,
        "cls:grpc_0": 90,
        "cls:grpc_14": 7,
        "cls:grpc_5": 4,
        "cls:error": 3,
        "latency_sum_ms": pytest.approx(9500.0),
    }
    grpc = pod.routes[("outbound", "web.shop:80 [grpc]")]
    assert grpc.bounds == ROUTE_BOUNDS and grpc.buckets == [60, 100, 103, 104, 104]
    assert grpc.peer == "web.shop:80"
    # HTTP: success unless 5xx or an error; hostnames are series of the same route
    assert routes["web.shop:80 canary"] == {
        "successes": 47,
        "failures": 7,
        "cls:2xx": 42,
        "cls:4xx": 5,
        "cls:5xx": 6,
        "cls:error": 1,
    }
    assert routes["web.shop:80 team-b/orders"] == {"successes": 11, "cls:2xx": 11}
    # the split's other backend has a route (statuses and its own finer buckets); the
    # parent's own leg does not, and its histogram without +Inf is dropped regardless
    split = pod.routes[("outbound", "web.shop:80 canary -> web-v2.shop:80")]
    assert split.values == {
        "successes": 4,
        "failures": 6,
        "cls:2xx": 4,
        "cls:5xx": 6,
        "latency_sum_ms": pytest.approx(1250.0),
    }
    assert split.bounds == FINE_BOUNDS and split.buckets == [1, 3, 6, 9, 10, 10, 10, 10]
    assert split.peer == "web-v2.shop:80"


def grpc_route_body(ok: int, cum: tuple[int, ...], sum_s: float) -> str:
    """One default gRPC route (plus an idle HTTP route), prometheus-client style."""
    labels = f'{PARENT},{DEFAULT_GRPC},hostname=""'
    return "\n".join(
        [
            "process_start_time_seconds 100",
            "# TYPE outbound_grpc_route_request_statuses counter",
            f'outbound_grpc_route_request_statuses_total{{{labels},grpc_status="OK",error=""}} {ok}',
            "# TYPE outbound_http_route_request_statuses counter",
            f'outbound_http_route_request_statuses_total{{{PARENT},{CANARY},hostname="",http_status="200",error=""}} 40',
            "# TYPE outbound_grpc_route_request_duration_seconds histogram",
            *om_histogram(
                "outbound_grpc_route_request_duration_seconds",
                labels,
                dict(zip(("0.05", "0.5", "1.0", "10.0", "+Inf"), cum, strict=True)),
                sum_s,
            ),
            "# EOF",
            "",
        ]
    )


def test_seconds_buckets_travel_with_their_bounds_through_deltas_and_json() -> None:
    target = Target("http://p/metrics", "shop", "web", "deployment", "web-1")
    collector = Collector(make_cfg(), lambda: [target], None)
    first = grpc_route_body(104, (60, 100, 103, 104, 104), 9.5)
    second = grpc_route_body(204, (100, 200, 203, 204, 204), 29.5)
    collector.build([ScrapeResult(target, first.encode(), None, 0.0)], T0)  # baseline
    report, (batch,) = collector.build(
        [ScrapeResult(target, second.encode(), None, 0.0)], T0 + WINDOW
    )
    assert report.parse_errors == 0
    s = samples_of(batch)[("outbound", "web.shop:80 [grpc]")]
    assert (s.requests, s.successes, s.failures) == (100, 100, 0)
    assert s.latency_bounds_ms == ROUTE_BOUNDS
    assert s.latency_buckets == (40, 60, 0, 0, 0)  # per bucket, ms bounds 50/500/1000/...
    assert s.latency_sum_ms == pytest.approx(20000.0)
    assert s.mean_ms == pytest.approx(200.0)
    assert s.p50_ms == pytest.approx(50 + 450 * (50 - 40) / 60, abs=1e-3)
    assert s.p99_ms == pytest.approx(50 + 450 * (99 - 40) / 60, abs=1e-3)
    # a route without new requests reports zero and no buckets
    idle = samples_of(batch)[("outbound", "web.shop:80 canary")]
    assert (idle.requests, idle.latency_buckets, idle.latency_bounds_ms) == (0, (), None)
    # and the batch survives the wire, +Inf included
    wire = encode(batch)
    assert b'"latency_bounds_ms":[50.0,500.0,1000.0,10000.0,"+Inf"]' in wire
    assert decode(GoldenBatch, wire) == batch


def test_a_histogram_changing_bounds_counts_afresh_and_never_mixes_layouts() -> None:
    bounds_a = (50.0, 500.0, math.inf)
    bounds_b = (25.0, 50.0, 500.0, math.inf)
    prev = RouteCounters(peer="p")
    assert prev.add_histogram(("h",), bounds_a, [5.0, 9.0, 10.0])
    cur = RouteCounters(peer="p")
    assert cur.add_histogram(("h",), bounds_b, [1.0, 2.0, 3.0, 4.0])
    assert not cur.add_histogram(("g",), bounds_a, [1.0, 1.0, 1.0])  # one layout per route
    d = route_delta(cur, prev, reset=False)
    assert (d.bounds, d.buckets) == (bounds_b, [1.0, 2.0, 3.0, 4.0])
    # legacy buckets never land on a route that has other bounds
    cur.add_bucket(0, 7.0, ("legacy",))
    assert cur.buckets == [1.0, 2.0, 3.0, 4.0]


INBOUND_SERVER = (
    'parent_group="policy.linkerd.io",parent_kind="Server",parent_name="books-http",'
    'parent_port="7000"'
)
INBOUND_ROUTE = (
    'route_group="gateway.networking.k8s.io",route_kind="HTTPRoute",route_name="get-books"'
)
INBOUND_BODY = "\n".join(
    [
        'response_total{direction="inbound",target_addr="10.0.0.5:7000",target_ip="10.0.0.5",'
        'target_port="7000",tls="true",client_id="web.shop.serviceaccount.identity.linkerd.'
        'cluster.local",srv_group="policy.linkerd.io",srv_kind="Server",srv_name="books-http",'
        'srv_port="7000",route_group="gateway.networking.k8s.io",route_kind="HTTPRoute",'
        'route_name="get-books",status_code="200",classification="success",grpc_status="",'
        'error=""} 50',
        "# TYPE inbound_http_requests counter",
        f"inbound_http_requests_total{{{INBOUND_SERVER},{INBOUND_ROUTE}}} 61",
        "# TYPE inbound_http_statuses counter",
        f'inbound_http_statuses_total{{{INBOUND_SERVER},{INBOUND_ROUTE},status="200"}} 50',
        f'inbound_http_statuses_total{{{INBOUND_SERVER},{INBOUND_ROUTE},status="503"}} 5',
        f'inbound_http_statuses_total{{{INBOUND_SERVER},{INBOUND_ROUTE},status=""}} 1',
        'inbound_http_statuses_total{parent_group="",parent_kind="default",parent_name='
        '"all-unauthenticated",parent_port="7000",route_group="",route_kind="default",'
        'route_name="default",status="200"} 900',
        'inbound_http_statuses_total{parent_group="",parent_kind="default",parent_name='
        '"admin",parent_port="4191",route_group="",route_kind="HTTPRoute",'
        'route_name="probes",status="200"} 300',
        "# TYPE inbound_grpc_statuses counter",
        'inbound_grpc_statuses_total{parent_group="policy.linkerd.io",parent_kind="Server",'
        'parent_name="books-grpc",parent_port="7001",route_group="gateway.networking.k8s.io",'
        'route_kind="GRPCRoute",route_name="list",status="0"} 10',
        'inbound_grpc_statuses_total{parent_group="policy.linkerd.io",parent_kind="Server",'
        'parent_name="books-grpc",parent_port="7001",route_group="gateway.networking.k8s.io",'
        'route_kind="GRPCRoute",route_name="list",status="14"} 2',
        "# TYPE inbound_http_request_duration_seconds histogram",
        *om_histogram(
            "inbound_http_request_duration_seconds",
            f"{INBOUND_SERVER},{INBOUND_ROUTE}",
            {
                "0.025": 20,
                "0.05": 40,
                "0.1": 50,
                "0.25": 55,
                "0.5": 56,
                "1.0": 56,
                "10.0": 56,
                "+Inf": 56,
            },
            2.75,
        ),
        "# TYPE inbound_http_response_duration_seconds histogram",
        *om_histogram(
            "inbound_http_response_duration_seconds",
            f"{INBOUND_SERVER},{INBOUND_ROUTE}",
            {"0.05": 1, "0.5": 2, "1.0": 3, "10.0": 4, "+Inf": 56},
            99.0,
        ),
        "# EOF",
        "",
    ]
)


def test_inbound_route_families_map_explicit_routes_only() -> None:
    pod = extract(parse_strict(INBOUND_BODY).samples)
    assert set(pod.routes) == {
        STAR_IN,
        ("inbound", "books-http:7000 get-books"),
        ("inbound", "books-grpc:7001 list"),
    }
    # '*' is response_total alone: the default route's 900 and the route's 50 are not added
    assert pod.routes[STAR_IN].values == {"successes": 50, "cls:2xx": 50, "mtls_requests": 50}
    http = pod.routes[("inbound", "books-http:7000 get-books")]
    assert http.values == {
        "successes": 51,  # status "" with no error is not a failure by the rules
        "failures": 5,
        "cls:2xx": 50,
        "cls:5xx": 5,
        "cls:unknown": 1,
        "latency_sum_ms": pytest.approx(2750.0),
    }
    # request durations (25 ms ... 10 s) only; the response-duration family is ignored
    assert http.bounds == FINE_BOUNDS and http.buckets == [20, 40, 50, 55, 56, 56, 56, 56]
    grpc = pod.routes[("inbound", "books-grpc:7001 list")]
    assert grpc.values == {"successes": 10, "failures": 2, "cls:grpc_0": 10, "cls:grpc_14": 2}
    assert http.peer is None and grpc.peer is None
    # the admin port stays excluded for these families too, unless asked otherwise
    with_admin = extract(parse_strict(INBOUND_BODY).samples, exclude_ports=())
    assert with_admin.routes[("inbound", "admin:4191 probes")].values["successes"] == 300


TLS_ERA_BODY = """\
inbound_tcp_accept_errors_total{error="tls_detect_timeout"} 3
inbound_tcp_accept_errors_total{error="io"} 2
inbound_tcp_accept_errors_total{error="other"} 5
inbound_tcp_errors_total{error="tls detection timeout",target_addr="10.0.0.5:8080",target_ip="10.0.0.5",target_port="8080"} 7
inbound_tcp_errors_total{error="i/o",target_addr="10.0.0.5:8080",target_ip="10.0.0.5",target_port="8080"} 11
inbound_tcp_errors_total{error="tls detection timeout",target_addr="0.0.0.0:4191",target_ip="0.0.0.0",target_port="4191"} 13
inbound_tcp_errors_total{error="loadshed",target_addr="10.0.0.5:8080",target_ip="10.0.0.5",target_port="8080"} 17
outbound_tcp_errors_total{target_addr="10.0.0.9:8080",target_ip="10.0.0.9",target_port="8080",error="identity required"} 4
outbound_tcp_errors_total{target_addr="10.0.0.9:8080",target_ip="10.0.0.9",target_port="8080",error="i/o"} 9
outbound_http_errors_total{error="identity required"} 2
outbound_http_errors_total{error="failfast"} 8
"""


def test_tls_error_counters_of_every_era() -> None:
    pod = extract(parse_strict(TLS_ERA_BODY).samples)
    assert pod.routes[STAR_IN].values == {"tls_failures": 3 + 2 + 7 + 11}  # not admin, not other
    assert pod.routes[("outbound", ALL_ROUTES)].values == {"tls_failures": 4 + 2}
    assert set(pod.routes) == {STAR_IN, ("outbound", ALL_ROUTES)}


def responses(fmt: str) -> str:
    """The same five outcomes in the ≤ 2.12 label sets ("old") and the 2.13+ ones ("new")."""
    base = 'response_total{direction="inbound",target_addr="10.0.0.5:8080",tls="true",client_id="a"'
    rows = [
        ('status_code="200",classification="success"', 'grpc_status="",error=""', 40),
        ('status_code="503",classification="failure"', 'grpc_status="",error=""', 3),
        ('status_code="200",classification="success",grpc_status="0"', 'error=""', 9),
        ('status_code="200",classification="failure",grpc_status="14"', 'error=""', 2),
        ('classification="failure",error="timeout"', 'grpc_status=""', 1),
    ]
    out = []
    for head, rest, n in rows:
        labels = head if fmt == "old" else f"{head},{rest}"
        out.append(f"{base},{labels}}} {n}")
    return "\n".join(out) + "\n"


def test_classification_label_sets_before_and_after_2_13_read_the_same() -> None:
    old = extract(parse_strict(responses("old")).samples).routes[STAR_IN].values
    new = extract(parse_strict(responses("new")).samples).routes[STAR_IN].values
    assert (
        old
        == new
        == {
            "successes": 49,
            "failures": 6,
            "cls:2xx": 40,
            "cls:5xx": 3,
            "cls:grpc_0": 9,
            "cls:grpc_14": 2,
            "cls:error": 1,
            "mtls_requests": 55,
        }
    )


@pytest.mark.parametrize(
    ("tls", "mtls"),
    [
        ('tls="no_identity",no_tls_reason="not_provided_by_remote"', False),  # ≤ 2.8
        ('tls="no_identity",no_tls_reason="no_authority_in_http_request"', False),  # ≤ 2.8
        ('tls="no_identity",no_tls_reason="no_peer_id_from_remote"', False),  # 2.9
        ('tls="no_identity",no_tls_reason="no_tls_from_remote"', False),  # 2.10+
        ('tls="disabled"', False),
        ('tls="true",client_id=""', True),
        ('tls="true",client_id="web.shop.serviceaccount.identity.linkerd.cluster.local"', True),
    ],
)
def test_tls_reasons_of_every_era(tls: str, mtls: bool) -> None:
    body = f'response_total{{authority="x:80",direction="inbound",{tls},status_code="200",classification="success"}} 8\n'
    values = extract(parse_strict(body).samples).routes[STAR_IN].values
    assert values == {
        "successes": 8,
        "cls:2xx": 8,
        ("mtls_requests" if mtls else "plaintext_requests"): 8,
    }


# -- part 3: real captures ------------------------------------------------------------------


def fixture(prefix: str) -> str:
    if not FIXTURES.is_dir():
        pytest.skip(f"real proxy captures not available ({FIXTURES} is absent)")
    (path,) = FIXTURES.glob(f"{prefix}-*.prom")
    return path.read_text()


def golden_of(pod: PodCounters) -> dict[tuple[str, str], GoldenSample]:
    """A capture as the first window of a pod seen from its start (whole counters)."""
    full = replace(pod, routes={rid: route_delta(rc, None, True) for rid, rc in pod.routes.items()})
    target = Target("http://p", "ns", "w", "deployment", "w-1")
    (batch,) = build_batches(
        [(target, full)], [], window_end=T0, window_seconds=WINDOW, cluster="c", collector="t"
    )
    return samples_of(batch)


def test_fixture_01_2022_inbound_responses_by_tls() -> None:
    ex = parse_strict(fixture("01"))
    # every inbound request of this capture hit the admin port: excluded by default
    pod = extract(ex.samples)
    assert pod.routes == {}
    assert (pod.cert_expiry, pod.start_time) == (1651053543, 1650967123)
    admin = extract(ex.samples, exclude_ports=())
    assert set(admin.routes) == {STAR_IN}  # the outbound TCP edge has no HTTP twin: dropped
    star = golden_of(admin)[STAR_IN]
    assert (star.requests, star.successes, star.failures) == (29, 29, 0)
    assert (star.plaintext_requests, star.mtls_requests) == (29, 0)  # no_tls_from_remote
    assert star.status_classes == {"2xx": 29}
    assert star.latency_buckets == (29,) + (0,) * 25 and star.latency_bounds_ms is None
    assert (star.tcp_open, star.tcp_close, star.tcp_errors) == (30, 29, 0)
    assert star.cert_ttl_seconds == 1651053543 - T0


def test_fixture_02_2021_policy_counters_are_not_golden_numbers() -> None:
    ex = parse_strict(fixture("02"))
    assert len(ex.samples) == 4
    assert extract(ex.samples, exclude_ports=()).routes == {}


def test_fixture_03_2019_old_reasons_label_order_and_removed_families() -> None:
    ex = parse_strict(fixture("03"))
    pod = extract(ex.samples)
    got = golden_of(pod)
    star = got[STAR_IN]
    # 'authority' before 'direction' still reads as inbound; not_provided_by_remote is plaintext
    assert (star.requests, star.plaintext_requests, star.mtls_requests) == (1433, 851, 582)
    assert star.status_classes == {"2xx": 1433}
    # tcp_connection_duration_ms (removed in proxy v2.135) feeds nothing; tcp_close{errno} does
    assert (star.tcp_open, star.tcp_close, star.tcp_errors) == (561 + 9, 556 + 1, 1)
    assert star.latency_sum_ms == 2314 and sum(star.latency_buckets) == 852
    prom = got[("outbound", "linkerd-prometheus.linkerd.svc.cluster.local:9090")]
    assert (prom.requests, prom.mtls_requests, prom.peer) == (
        16275,
        16275,
        "linkerd/deploy/linkerd-prometheus",
    )
    unknown = got[("outbound", "unknown")]  # no_authority_in_http_request: nothing to name it by
    assert (unknown.requests, unknown.plaintext_requests, unknown.tcp_open) == (6, 6, 10)
    assert pod.start_time == 1560322933 and pod.cert_expiry is None  # identity metrics: 2020+


def test_fixture_04_2025_outbound_route_families() -> None:
    text = fixture("04")
    ex = parse_strict(text)
    assert ex.types["outbound_http_route_request_statuses"] == "counter"
    assert ex.units["outbound_http_route_request_duration_seconds"] == "seconds"
    pod = extract(ex.samples)
    # the backend is the parent Service itself: one route, not two
    assert set(pod.routes) == {("outbound", "simple-app-v1.simple-app:80 [http]")}
    s = golden_of(pod)[("outbound", "simple-app-v1.simple-app:80 [http]")]
    assert (s.requests, s.successes, s.failures, s.status_classes) == (284, 284, 0, {"2xx": 284})
    assert s.peer == "simple-app-v1.simple-app:80"
    assert s.latency_bounds_ms == ROUTE_BOUNDS
    assert s.latency_buckets == (284, 0, 0, 0, 0)
    assert s.latency_sum_ms == pytest.approx(559.471, abs=1e-3)
    assert s.mean_ms == pytest.approx(1.97, abs=1e-3)
    assert (s.p50_ms, s.p95_ms, s.p99_ms) == (25.0, 47.5, 49.5)
    # the same capture with traffic split to another backend: that leg becomes a route
    split = extract(
        parse_strict(
            text.replace('backend_name="simple-app-v1"', 'backend_name="simple-app-v2"')
        ).samples
    )
    leg = golden_of(split)[
        ("outbound", "simple-app-v1.simple-app:80 [http] -> simple-app-v2.simple-app:80")
    ]
    assert (leg.requests, leg.successes, leg.peer) == (284, 284, "simple-app-v2.simple-app:80")
    assert leg.latency_bounds_ms == FINE_BOUNDS
    assert leg.latency_buckets == (284, 0, 0, 0, 0, 0, 0, 0)
    assert leg.latency_sum_ms == pytest.approx(462.685, abs=1e-3)


def test_fixture_05_2023_process_section() -> None:
    ex = parse_strict(fixture("05"))
    assert ex.eof
    pod = extract(ex.samples)
    assert pod.routes == {}
    assert pod.start_time == pytest.approx(1701829321.4647413)


def test_legacy_bounds_stay_implicit() -> None:
    """Routes fed by the legacy ms families carry no bounds (the default layout)."""
    pod = extract(parse_strict(fixture("03")).samples)
    assert pod.routes[STAR_IN].bounds is None
    star = golden_of(pod)[STAR_IN]
    assert star.latency_bounds_ms is None and star.bounds_ms == LINKERD_LATENCY_BOUNDS_MS
