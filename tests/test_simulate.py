"""The simulated mesh: exposition per Linkerd era, traffic statistics, faults, HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from pipeline.simulate import (
    CallSpec,
    FaultSpec,
    FaultTarget,
    MeshSpec,
    RouteSpec,
    Scenario,
    ScenarioError,
    SimulatedMesh,
    WorkloadSpec,
    default_demo_mesh,
    generate_mesh,
    load_scenario,
)
from pipeline.simulate.render import MS_BUCKETS

T0 = 1_750_000_000.0
REPO = Path(__file__).resolve().parents[1]
VERSIONS = ["2.10", "2.12", "2.14", "2.15", "2.16", "2.18", "2.20"]


def fixed_clock() -> float:
    return T0


def make_mesh(version: str = "2.18", **kw: Any) -> SimulatedMesh:
    kw.setdefault("seed", 7)
    kw.setdefault("realtime", False)
    kw.setdefault("serve_http", False)
    kw.setdefault("clock", fixed_clock)
    return SimulatedMesh(default_demo_mesh(version), **kw)


def samples(text: str) -> list[Sample]:
    return [s for fam in parse_text(text) for s in fam.samples]


def split_sections(text: str) -> tuple[str, str]:
    """Legacy part and prometheus-client part (which starts with proxy_build_info)."""
    marker = "# HELP proxy_build_info "
    if "# EOF" not in text:
        return text, ""
    i = text.index(marker)
    return text[:i], text[i:]


def pod_of(mesh: SimulatedMesh, workload: str, index: int = 0) -> str:
    return next(p.name for p in mesh.pods if p.workload == workload and p.ordinal == index)


def scrape(mesh: SimulatedMesh, workload: str) -> list[Sample]:
    out: list[Sample] = []
    for p in mesh.pods:
        if p.workload == workload and p.meshed:
            out += samples(mesh.render(p.name))
    return out


def total(ss: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in ss
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# -- exposition per era ------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_exposition_matches_era(version: str) -> None:
    minor = int(version.split(".")[1])
    mesh = make_mesh(version)
    mesh.advance(120)
    text = mesh.render(pod_of(mesh, "web"))
    legacy, om = split_sections(text)

    # The whole body must parse as the 0.0.4 text format (what Prometheus does with text/plain).
    fams = {f.name: f for f in parse_text(text)}
    legacy_names = {f.name for f in parse_text(legacy)}
    ss = [s for f in fams.values() for s in f.samples]

    inbound = [s for s in ss if s.name == "request_total" and s.labels["direction"] == "inbound"]
    assert inbound
    app = [s for s in inbound if s.labels["target_addr"].endswith(":8080")]
    assert app
    assert all(("authority" in s.labels) == (minor < 18) for s in inbound)
    assert all(("target_ip" in s.labels) == (minor >= 11) for s in inbound)
    assert all(("srv_kind" in s.labels) == (minor >= 12) for s in inbound)
    assert all(("srv_port" in s.labels) == (minor >= 18) for s in inbound)
    assert any(s.labels.get("tls") == "true" and s.labels.get("client_id") for s in app)
    probes = [s for s in inbound if s.labels["target_addr"] == "0.0.0.0:4191"]
    assert probes
    assert all(s.labels["no_tls_reason"] == "no_tls_from_remote" for s in probes)

    outbound = [s for s in ss if s.name == "request_total" and s.labels["direction"] == "outbound"]
    assert outbound
    for s in outbound:
        assert s.labels["authority"].endswith(".svc.cluster.local:8080")
        assert {"dst_namespace", "dst_deployment", "dst_service", "dst_pod"} <= set(s.labels)
        assert s.labels["tls"] == "true"
        assert s.labels["server_id"].endswith(".cluster.local")

    rsp = [s for s in ss if s.name == "response_total"]
    assert rsp
    for s in rsp:
        assert s.labels["classification"] == (
            "failure" if s.labels["status_code"].startswith("5") else "success"
        )
        assert ("grpc_status" in s.labels) == (minor >= 13)
        assert ("error" in s.labels) == (minor >= 13)

    routes = [s for s in ss if s.name == "route_request_total"]
    assert {s.labels["direction"] for s in routes} == {"inbound", "outbound"}
    assert "GET /products/{id}" in {s.labels["rt_route"] for s in routes}

    assert {"tcp_open", "tcp_open_connections", "tcp_read_bytes", "tcp_close"} <= set(fams)
    closes = [s for s in ss if s.name == "tcp_close_total"]
    assert closes
    assert all("errno" in s.labels for s in closes)
    assert ("# TYPE inbound_tcp_errors_total counter" in legacy) == (minor >= 11)

    # Legacy histograms: integer le, buckets then _count then _sum.
    assert 'le="50"' in legacy
    assert 'le="50.0"' not in legacy
    first_bucket = legacy.index("response_latency_ms_bucket{")
    assert (
        first_bucket
        < legacy.index("response_latency_ms_count{")
        < legacy.index("response_latency_ms_sum{")
    )

    if minor <= 14:
        assert {
            "identity_cert_expiration_timestamp_seconds",
            "identity_cert_refresh_count",
        } <= legacy_names
        assert "process_start_time_seconds" in legacy_names
        assert "# UNIT" not in text
        assert "# EOF" not in text
        assert "proxy_build_info" in legacy_names
        return

    # 2.15+: a prometheus-client section closes the body with '# EOF'.
    assert text.endswith("# EOF\n")
    assert text.splitlines()[-1] == "# EOF"
    assert text.count("# EOF") == 1
    om_fams = {f.name: f for f in parse_openmetrics(om)}
    prefix = "control_" if minor >= 16 else ""
    assert f"{prefix}identity_cert_expiration_timestamp_seconds" in om_fams
    assert om_fams[f"{prefix}identity_cert_refreshes"].type == "counter"
    assert f"# TYPE {prefix}identity_cert_refreshes counter" in om
    assert f'{prefix}identity_cert_refreshes_total{{result="ok"}}' in om
    assert not any("identity_cert" in n for n in legacy_names)
    assert "process_uptime_seconds" in om_fams
    assert "process_threads" in om_fams
    assert "# UNIT process_start_time_seconds seconds" in om
    assert not any(n.startswith("process_") for n in legacy_names)
    if minor >= 16:
        assert "control_identity_cert_expiration_timestamp_seconds" in om_fams
        dur = om_fams["outbound_http_route_request_duration_seconds"]
        assert dur.unit == "seconds"
        buckets = [s for s in dur.samples if s.name.endswith("_bucket")]
        assert {s.labels["le"] for s in buckets} == {"0.05", "0.5", "1.0", "10.0", "+Inf"}
        assert all(("hostname" in s.labels) == (minor >= 17) for s in dur.samples)
        # prometheus-client order: _sum and _count before the buckets.
        assert om.index("outbound_http_route_request_duration_seconds_sum{") < om.index(
            "outbound_http_route_request_duration_seconds_bucket{"
        )
        assert "# TYPE outbound_http_route_request_statuses counter" in om
        stat = om_fams["outbound_http_route_request_statuses"]
        assert all(s.name.endswith("_total") for s in stat.samples)
        assert {"parent_name", "route_name", "http_status", "error"} <= set(stat.samples[0].labels)
    else:
        assert "outbound_http_route_request_statuses" not in om_fams


def test_label_values_are_written_raw() -> None:
    mesh = make_mesh(
        scenario=Scenario(
            faults=[
                FaultSpec(
                    kind="tls_handshake_failure",
                    target=FaultTarget(namespace="payments", workload="ledger"),
                    start=0,
                    duration=60,
                    magnitude=0.8,
                )
            ]
        )
    )
    mesh.advance(60)
    text = "".join(mesh.render(p.name) for p in mesh.pods if p.workload == "ledger")
    assert 'inbound_tcp_errors_total{error="tls detection timeout",target_addr=' in text
    assert 'inbound_tcp_errors_total{error="i/o",' in text
    assert 'rt_route="GET /ledger/balance/{account}"' in text


# -- traffic statistics ------------------------------------------------------------------


def _counter_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for s in samples(text):
        if s.name.endswith(("_total", "_bucket", "_count", "_sum")) or s.name.endswith(
            "refresh_count"
        ):
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_monotonic_and_histograms_consistent() -> None:
    mesh = make_mesh("2.16")
    names = [p.name for p in mesh.pods]
    previous: dict[str, dict[Any, float]] = {}
    for _ in range(6):
        mesh.advance(15)
        for name in names:
            text = mesh.render(name)
            now = _counter_values(text)
            for key, value in previous.get(name, {}).items():
                assert now.get(key, -1.0) >= value, (name, key)
            previous[name] = now
            _check_histograms(text)


def _check_histograms(text: str) -> None:
    legacy, om = split_sections(text)
    for fam in [*parse_text(legacy), *(parse_openmetrics(om) if om else [])]:
        if fam.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": []})
            if s.name.endswith("_bucket"):
                entry["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                entry["count"] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
        for entry in series.values():
            buckets = sorted(entry["buckets"])
            values = [v for _, v in buckets]
            assert values == sorted(values), "buckets must be cumulative"
            assert buckets[-1][0] == math.inf
            assert entry["count"] == values[-1]
            assert entry["sum"] >= 0
        if fam.name == "response_latency_ms":
            assert len(buckets) == len(MS_BUCKETS) + 1


def test_responses_match_requests_and_both_sides_of_an_edge_agree() -> None:
    mesh = make_mesh()
    mesh.advance(600)
    web = scrape(mesh, "web")
    catalog = scrape(mesh, "catalog")
    for direction in ("inbound", "outbound"):
        req = total(web, "request_total", direction=direction)
        rsp = total(web, "response_total", direction=direction)
        assert req > 1000
        assert abs(req - rsp) <= 5 * math.sqrt(req)
    # What web sends to catalog is what catalog receives from web, within Poisson noise.
    sent = total(web, "request_total", direction="outbound", dst_deployment="catalog")
    web_id = "web.shop.serviceaccount.identity.linkerd.cluster.local"
    received = total(catalog, "request_total", direction="inbound", client_id=web_id)
    assert sent > 1000
    assert abs(sent - received) <= 6 * math.sqrt(sent)
    route_sum = total(catalog, "route_request_total", direction="inbound")
    assert (
        abs(route_sum - total(catalog, "request_total", direction="inbound", target_port="8080"))
        < 1
    )


def test_daily_shape_peaks_in_the_afternoon() -> None:
    day = 240.0
    mesh = make_mesh(day_seconds=day, day_phase=0.0)

    def rate_between(a: float, b: float) -> float:
        mesh.advance(a - mesh.elapsed)
        before = total(
            scrape(mesh, "web"), "request_total", direction="inbound", target_port="8080"
        )
        mesh.advance(b - a)
        after = total(scrape(mesh, "web"), "request_total", direction="inbound", target_port="8080")
        return (after - before) / (b - a)

    trough = rate_between(day * 1 / 24, day * 3 / 24)  # around 02:00
    peak = rate_between(day * 13 / 24, day * 15 / 24)  # around 14:00
    assert peak > 2.0 * trough


def test_same_seed_same_bytes_however_driven() -> None:
    a, b, c = make_mesh(seed=11), make_mesh(seed=11), make_mesh(seed=12)
    a.advance(30)
    for _ in range(120):
        b.advance(0.25)
    c.advance(30)
    pod = pod_of(a, "cart")
    assert a.render(pod) == b.render(pod)
    assert a.render(pod) != c.render(pod_of(c, "cart"))


# -- faults ------------------------------------------------------------------------------


Pair = tuple[list[Sample], list[Sample]]


def _windows(mesh: SimulatedMesh, workloads: Iterable[str], seconds: float) -> dict[str, Pair]:
    """Scrape the workloads, advance once, scrape again."""
    names = list(workloads)
    before = {w: scrape(mesh, w) for w in names}
    mesh.advance(seconds)
    return {w: (before[w], scrape(mesh, w)) for w in names}


def _window(mesh: SimulatedMesh, workload: str, seconds: float) -> Pair:
    return _windows(mesh, [workload], seconds)[workload]


def _delta(pair: Pair, name: str, **labels: str) -> float:
    return total(pair[1], name, **labels) - total(pair[0], name, **labels)


def _mean_latency(pair: Pair, family: str, **labels: str) -> float:
    n = _delta(pair, f"{family}_count", **labels)
    return _delta(pair, f"{family}_sum", **labels) / n if n else math.nan


def _one_fault(tmp_path: Path, **fault: Any) -> tuple[SimulatedMesh, Path]:
    labels = tmp_path / "labels.jsonl"
    scenario = Scenario(name="t", faults=[FaultSpec(id="f1", start=60, duration=60, **fault)])
    return make_mesh(scenario=scenario, labels_path=labels), labels


def test_latency_spike_hits_the_target_route_and_its_callers_only(tmp_path: Path) -> None:
    route = "GET /api/products"
    mesh, labels = _one_fault(
        tmp_path,
        kind="latency_spike",
        target=FaultTarget(namespace="shop", workload="catalog", route=route),
        magnitude=8.0,
    )
    phases = {}
    for phase in ("before", "during", "after"):
        pairs = _windows(mesh, ("catalog", "web", "checkout"), 60)
        phases[phase] = {
            "target": _mean_latency(
                pairs["catalog"], "route_response_latency_ms", direction="inbound", rt_route=route
            ),
            "sibling": _mean_latency(
                pairs["catalog"],
                "route_response_latency_ms",
                direction="inbound",
                rt_route="GET /api/products/{id}",
            ),
            "caller": _mean_latency(
                pairs["web"], "route_response_latency_ms", direction="outbound", rt_route=route
            ),
            "caller_other": _mean_latency(
                pairs["web"],
                "route_response_latency_ms",
                direction="outbound",
                rt_route="GET /api/cart",
            ),
            "bystander": _mean_latency(
                pairs["checkout"], "route_response_latency_ms", direction="inbound"
            ),
        }
    before, during, after = phases["before"], phases["during"], phases["after"]
    assert during["target"] > 4 * before["target"]
    assert during["caller"] > 4 * before["caller"]
    assert after["target"] < 2 * before["target"]
    assert after["caller"] < 2 * before["caller"]
    for unaffected in ("sibling", "caller_other", "bystander"):
        assert 0.5 < during[unaffected] / before[unaffected] < 2.0, unaffected

    records = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "end"]
    start, end = records
    assert start["fault_id"] == "f1"
    assert start["kind"] == "latency_spike"
    assert start["start"] == pytest.approx(T0 + 60)
    assert end["end"] == pytest.approx(T0 + 120)
    assert end["start"] == start["start"]
    assert start["magnitude"] == 8.0
    assert set(start["route_keys"]) == {
        "shop/deploy/catalog/inbound/*",
        "shop/deploy/catalog/inbound/GET /api/products",
        "shop/deploy/web/outbound/catalog.shop.svc.cluster.local:8080",
        "shop/deploy/cart/outbound/catalog.shop.svc.cluster.local:8080",
        # 2.16+ callers also report the edge as the Service's default Gateway-API route
        "shop/deploy/web/outbound/catalog.shop:8080 [http]",
        "shop/deploy/cart/outbound/catalog.shop:8080 [http]",
    }
    assert mesh.ground_truth == records


def test_error_burst_raises_failures_during_its_window_only(tmp_path: Path) -> None:
    mesh, _ = _one_fault(
        tmp_path,
        kind="error_burst",
        target=FaultTarget(namespace="shop", workload="cart"),
        magnitude=0.4,
    )

    def failure_ratio(pair: Pair, **labels: str) -> float:
        bad = _delta(pair, "response_total", classification="failure", **labels)
        return bad / _delta(pair, "response_total", **labels)

    ratios = []
    for _ in range(3):
        cart = _window(mesh, "cart", 60)
        ratios.append(failure_ratio(cart, direction="inbound", target_port="8080"))
    assert ratios[0] < 0.02
    assert ratios[2] < 0.02
    assert 0.3 < ratios[1] < 0.5


def test_mtls_loss_moves_requests_to_plaintext(tmp_path: Path) -> None:
    mesh, labels = _one_fault(
        tmp_path,
        kind="mtls_loss",
        target=FaultTarget(namespace="shop", workload="cart"),
        magnitude=0.6,
    )
    shares = []
    for _ in range(3):
        pair = _window(mesh, "cart", 60)
        plain = _delta(
            pair, "request_total", direction="inbound", target_port="8080", tls="no_identity"
        )
        shares.append(
            plain / _delta(pair, "request_total", direction="inbound", target_port="8080")
        )
    assert shares[0] == 0.0
    assert 0.5 < shares[1] < 0.7
    assert shares[2] == 0.0
    record = json.loads(labels.read_text().splitlines()[0])
    assert record["route_keys"] == ["shop/deploy/cart/inbound/*"]


def test_tls_handshake_failure_counts_errors_and_fails_callers(tmp_path: Path) -> None:
    mesh, _ = _one_fault(
        tmp_path,
        kind="tls_handshake_failure",
        target=FaultTarget(namespace="payments", workload="ledger"),
        magnitude=0.5,
    )
    errors, bad_gateway, resets = [], [], []
    for _ in range(3):
        ledger = scrape(mesh, "ledger")
        api = scrape(mesh, "api")
        mesh.advance(60)
        ledger2, api2 = scrape(mesh, "ledger"), scrape(mesh, "api")
        errors.append(
            total(ledger2, "inbound_tcp_errors_total", error="tls detection timeout")
            - total(ledger, "inbound_tcp_errors_total", error="tls detection timeout")
        )
        bad_gateway.append(
            total(api2, "response_total", dst_statefulset="ledger", status_code="502")
            - total(api, "response_total", dst_statefulset="ledger", status_code="502")
        )
        resets.append(
            total(api2, "tcp_close_total", errno="ECONNRESET")
            - total(api, "tcp_close_total", errno="ECONNRESET")
        )
    assert errors[0] == errors[2] == 0 < errors[1]
    assert bad_gateway[0] == bad_gateway[2] == 0 < bad_gateway[1]
    assert resets[0] == resets[2] == 0 < resets[1]


def test_traffic_drop_cuts_rate_on_both_sides(tmp_path: Path) -> None:
    mesh, _ = _one_fault(
        tmp_path,
        kind="traffic_drop",
        target=FaultTarget(namespace="shop", workload="catalog"),
        magnitude=0.2,
    )
    inbound, from_web, cart_in = [], [], []
    for _ in range(3):
        pairs = _windows(mesh, ("catalog", "web", "cart"), 60)
        inbound.append(_delta(pairs["catalog"], "route_request_total", direction="inbound"))
        from_web.append(_delta(pairs["web"], "request_total", dst_deployment="catalog"))
        cart_in.append(_delta(pairs["cart"], "route_request_total", direction="inbound"))
    assert inbound[1] < 0.35 * inbound[0]
    assert inbound[2] > 0.7 * inbound[0]
    assert from_web[1] < 0.35 * from_web[0]
    assert from_web[2] > 0.7 * from_web[0]
    assert 0.7 < cart_in[1] / cart_in[0] < 1.4  # a bystander keeps its traffic


def test_scenario_files_load_and_fit_the_demo_mesh() -> None:
    for name in ("demo", "all-faults"):
        scenario = load_scenario(REPO / "config" / "scenarios" / f"{name}.yaml")
        scenario.check_against(default_demo_mesh())
    demo = load_scenario(REPO / "config" / "scenarios" / "demo.yaml")
    assert [f.kind for f in demo.faults] == ["latency_spike"]
    kinds = {
        f.kind for f in load_scenario(REPO / "config" / "scenarios" / "all-faults.yaml").faults
    }
    assert kinds == {
        "latency_spike",
        "error_burst",
        "tls_handshake_failure",
        "mtls_loss",
        "traffic_drop",
    }


_WHEN = "start: 1, duration: 1"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            f"faults: [{{kind: meltdown, target: {{namespace: a, workload: b}}, {_WHEN}, "
            "magnitude: 1}]",
            "faults.0.kind",
        ),
        (
            f"faults: [{{kind: error_burst, target: {{namespace: a, workload: b}}, {_WHEN}, "
            "magnitude: 3}]",
            "ratio",
        ),
        (
            f"faults: [{{kind: latency_spike, target: {{namespace: a}}, {_WHEN}, magnitude: 2}}]",
            "workload",
        ),
        (
            "faults: [{kind: mtls_loss, target: {namespace: a, workload: b, direction: outbound}, "
            f"{_WHEN}, magnitude: 0.5}}]",
            "inbound",
        ),
        ("faults: {", "cannot read"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ScenarioError, match=r"bad\.yaml") as err:
        load_scenario(path)
    assert needle in str(err.value)


def test_scenario_must_fit_the_mesh() -> None:
    bad = Scenario(
        faults=[
            FaultSpec(
                kind="latency_spike",
                target=FaultTarget(namespace="shop", workload="catalog", route="GET /nope"),
                start=0,
                duration=1,
                magnitude=2,
            )
        ]
    )
    with pytest.raises(ScenarioError, match="GET /nope"):
        make_mesh(scenario=bad)


# -- topology ----------------------------------------------------------------------------


def _wl(name: str, calls: list[str]) -> WorkloadSpec:
    return WorkloadSpec(
        namespace="ns",
        name=name,
        routes=[RouteSpec(name="GET /")],
        calls=[CallSpec(target=c, share=0.5) for c in calls],
    )


def test_topology_rejects_cycles_and_unknown_targets() -> None:
    with pytest.raises(ValueError, match="cycle"):
        MeshSpec(workloads=[_wl("a", ["b"]), _wl("b", ["a"])])
    with pytest.raises(ValueError, match="unknown"):
        MeshSpec(workloads=[_wl("a", ["zzz"])])
    with pytest.raises(ValueError, match="not simulated"):
        MeshSpec(proxy_version="2.3", workloads=[_wl("a", [])])


def test_generated_mesh_is_reproducible_and_renders() -> None:
    a = generate_mesh(40, 3, seed=5)
    assert a == generate_mesh(40, 3, seed=5)
    assert a != generate_mesh(40, 3, seed=6)
    mesh = SimulatedMesh(a, seed=1, realtime=False, serve_http=False, clock=fixed_clock)
    mesh.advance(20)
    for p in mesh.pods[:10]:
        assert samples(mesh.render(p.name))


def test_unmeshed_callers_show_up_as_plaintext() -> None:
    spec = default_demo_mesh()
    workloads = [
        w.model_copy(update={"meshed": False}) if w.name == "cart" else w for w in spec.workloads
    ]
    mesh = SimulatedMesh(
        spec.model_copy(update={"workloads": workloads}),
        seed=1,
        realtime=False,
        serve_http=False,
        clock=fixed_clock,
    )
    mesh.advance(60)
    assert not any(p.meshed for p in mesh.pods if p.workload == "cart")
    catalog = scrape(mesh, "catalog")
    assert (
        total(catalog, "request_total", direction="inbound", target_port="8080", tls="no_identity")
        > 0
    )
    web = scrape(mesh, "web")
    to_cart = [
        s for s in web if s.name == "request_total" and s.labels.get("dst_deployment") == "cart"
    ]
    assert to_cart
    assert all(s.labels["no_tls_reason"] == "not_provided_by_service_discovery" for s in to_cart)


# -- pods coming and going ---------------------------------------------------------------


def test_restart_resets_counters_and_rename_gives_a_new_pod() -> None:
    mesh = make_mesh()
    mesh.advance(60)
    pod = pod_of(mesh, "cart")
    before = total(samples(mesh.render(pod)), "request_total")
    mesh.restart_pod(pod)
    mesh.advance(1)
    after = total(samples(mesh.render(pod)), "request_total")
    assert 0 < after < before / 10

    other = pod_of(mesh, "cart", 1)
    kept = total(samples(mesh.render(other)), "request_total")
    new_name = mesh.restart_pod(other, rename=True)
    assert new_name != other
    with pytest.raises(KeyError):
        mesh.render(other)
    mesh.advance(10)
    assert 0 < total(samples(mesh.render(new_name)), "request_total") < kept / 3
    # The callers now talk to the new pod.
    assert f'dst_pod="{new_name}"' in mesh.render(pod_of(mesh, "web"))


def _proxy_state(text: str) -> dict[str, float]:
    """Start time, uptime and certificate state of one body, whatever the era's names."""
    out: dict[str, float] = {}
    for s in samples(text):
        if s.name.endswith("identity_cert_expiration_timestamp_seconds"):
            out["expiry"] = s.value
        elif s.name.endswith("identity_cert_refresh_timestamp_seconds"):
            out["refreshed_at"] = s.value
        elif "identity_cert_refresh" in s.name:  # the count (legacy) or ok + error (later)
            out["refreshes"] = out.get("refreshes", 0.0) + s.value
        elif s.name in ("process_start_time_seconds", "process_uptime_seconds_total"):
            out[s.name] = s.value
    return out


def _counters(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every cumulative series of a body but the certificate refresh count."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for s in samples(text)
        if s.name.endswith(("_total", "_bucket", "_count", "_sum"))
        and "identity_cert_refresh" not in s.name
    }


@pytest.mark.parametrize("version", ["2.10", "2.18"])
@pytest.mark.parametrize("workload", ["cart", "ledger"])  # a Deployment and a StatefulSet
@pytest.mark.parametrize("rename", [False, True], ids=["in-place", "replacement"])
def test_restarted_proxy_is_fresh_in_what_it_serves(
    version: str, workload: str, rename: bool
) -> None:
    """Both kinds of restart serve a proxy that started now: start time, counters, cert."""
    mesh = make_mesh(version)
    mesh.advance(60)
    old = pod_of(mesh, workload, 1 if workload == "cart" else 0)
    old_info = next(p for p in mesh.pods if p.name == old)
    before_body = mesh.render(old)
    before = _proxy_state(before_body)
    assert before["process_start_time_seconds"] < T0  # running since before the mesh
    assert total(samples(before_body), "request_total") > 100

    at = mesh.now
    name = mesh.restart_pod(old, rename=rename)
    info = next(p for p in mesh.pods if p.name == name)
    if rename:
        assert info.uid != old_info.uid and info.ordinal == old_info.ordinal
        assert (name == old) == (workload == "ledger")  # a StatefulSet pod keeps its name
        if name != old:
            with pytest.raises(KeyError):
                mesh.render(old)
    else:
        assert (name, info.uid) == (old, old_info.uid)

    # right at the restart: nothing counted yet, a start time and certificate of now
    body = mesh.render(name)
    state = _proxy_state(body)
    assert state["process_start_time_seconds"] == at
    assert state.get("process_uptime_seconds_total", 0.0) == 0.0
    assert state["expiry"] == at + mesh.cfg.cert_lifetime_seconds
    assert state.get("refreshed_at", at) == at
    assert state["refreshes"] == 1
    assert not {k: v for k, v in _counters(body).items() if v}, "a counter survived the restart"

    # a little later the same proxy has counted only what it served since
    mesh.advance(10)
    body = mesh.render(name)
    state = _proxy_state(body)
    assert state["process_start_time_seconds"] == at
    assert state.get("process_uptime_seconds_total", 10.0) == 10.0
    assert state["expiry"] == at + mesh.cfg.cert_lifetime_seconds
    assert 0 < total(samples(body), "request_total") < total(samples(before_body), "request_total")
    for other in mesh.pods:
        if other.workload == workload and other.name != name:  # its siblings did not restart
            assert _proxy_state(mesh.render(other.name))["process_start_time_seconds"] < T0


# -- HTTP --------------------------------------------------------------------------------


def test_http_serves_every_pod_with_and_without_gzip() -> None:
    async def run() -> None:
        async with make_mesh("2.16", serve_http=True) as mesh:
            mesh.advance(20)
            targets = mesh.targets
            assert len(targets) == len(mesh.pods)
            assert len({t.url for t in targets}) == len(targets)
            async with httpx.AsyncClient(timeout=5) as client:
                for t in targets:
                    plain = await client.get(t.url, headers={"Accept-Encoding": "identity"})
                    assert plain.status_code == 200
                    assert plain.headers["content-type"].startswith("text/plain")
                    assert "content-encoding" not in plain.headers
                    assert plain.text == mesh.render(t.pod)
                    zipped = await client.get(t.url, headers={"Accept-Encoding": "gzip"})
                    assert zipped.headers["content-encoding"] == "gzip"
                    assert zipped.text == plain.text
                    assert len(zipped.content) == len(plain.content)  # httpx decoded it
                    assert zipped.text.endswith("# EOF\n")
                    assert t.proxy_version == "2.16"
                    assert samples(plain.text)
                ready = await client.get(targets[0].url.replace("/metrics", "/ready"))
                assert ready.text == "ready\n"

    asyncio.run(run())


def test_misbehaving_pods_do_not_block_the_others() -> None:
    async def run() -> None:
        async with make_mesh(serve_http=True) as mesh:
            mesh.advance(5)
            t_hang, t_err, t_junk, t_ok = mesh.targets[:4]
            mesh.misbehave(t_hang.pod, "hang")
            mesh.misbehave(t_err.pod, "error")
            mesh.misbehave(t_junk.pod, "garbage")
            async with httpx.AsyncClient(timeout=1.0) as client:
                hang = asyncio.ensure_future(client.get(t_hang.url))
                err = await client.get(t_err.url)
                junk = await client.get(t_junk.url)
                ok = await client.get(t_ok.url)
                assert err.status_code == 500
                assert junk.status_code == 200
                with pytest.raises(ValueError, match=r"."):
                    samples(junk.text)
                assert ok.status_code == 200
                assert samples(ok.text)
                with pytest.raises(httpx.ReadTimeout):
                    await hang
                mesh.misbehave(t_hang.pod, "ok")
                assert (await client.get(t_hang.url)).status_code == 200

    asyncio.run(run())


def test_scaling_adds_and_removes_listeners() -> None:
    async def run() -> None:
        async with make_mesh(serve_http=True) as mesh:
            mesh.advance(5)
            n = len(mesh.targets)
            names = await mesh.scale("payments", "ledger", 5)
            assert names[:3] == ["ledger-0", "ledger-1", "ledger-2"]
            assert len(names) == 5
            assert len(mesh.targets) == n + 2
            mesh.advance(30)
            new = next(t for t in mesh.targets if t.pod == "ledger-4")
            async with httpx.AsyncClient(timeout=5) as client:
                body = (await client.get(new.url)).text
                assert total(samples(body), "request_total", direction="inbound") > 0
                await mesh.scale("payments", "ledger", 1)
                assert len(mesh.targets) == n - 2
            async with httpx.AsyncClient(timeout=5) as fresh:
                with pytest.raises(httpx.ConnectError):
                    await fresh.get(new.url)
            api = mesh.render(pod_of(mesh, "api"))
            assert 'dst_pod="ledger-4"' not in api

    asyncio.run(run())


def test_realtime_follows_the_injected_clock() -> None:
    now = [T0]

    async def run() -> None:
        mesh = SimulatedMesh(
            default_demo_mesh(), seed=1, clock=lambda: now[0], serve_http=False, realtime=True
        )
        async with mesh:
            await asyncio.sleep(0.01)
            assert mesh.ticks == 0
            now[0] += 2.0
            for _ in range(50):
                await asyncio.sleep(0.01)
                if mesh.ticks == 8:
                    break
            assert mesh.ticks == 8
            assert mesh.now == T0 + 2.0

    asyncio.run(run())


def test_shipped_scenarios_resolve_by_name() -> None:
    mesh = make_mesh(scenario="demo")
    assert mesh.scenario.name == "demo"
    fault = mesh.scenario.faults[0]
    assert mesh.schedule.items[0].start == T0 + mesh.scenario.warmup_seconds + fault.start
    override = make_mesh(scenario="demo", warmup_seconds=5)
    assert override.schedule.items[0].start == T0 + 5 + fault.start


def test_render_stays_cheap() -> None:
    """A budget guard with wide headroom: ~0.15 ms is typical for a 500-line pod."""
    mesh = SimulatedMesh(
        generate_mesh(40, 3, seed=2), seed=2, realtime=False, serve_http=False, clock=fixed_clock
    )
    mesh.advance(30)
    name = max((p.name for p in mesh.pods if p.meshed), key=lambda n: len(mesh.render(n)))
    lines = mesh.render(name).count("\n")
    start = time.perf_counter()
    for _ in range(50):
        mesh.render(name)
    per_render = (time.perf_counter() - start) / 50
    assert per_render < 10e-6 * lines  # 10 µs per line is ~15x the measured cost
