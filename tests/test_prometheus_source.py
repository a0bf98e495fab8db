"""The Prometheus source: its queries, its folding of answers, its failures, a real Prometheus.

1. Query building, pure: shapes, escaping, the families ``extract`` reads,
   and every query accepted by ``promtool`` (Prometheus' own parser).
2. Answers → GoldenBatches, pure: which pods a window counts, rows folded
   into samples, and a window recorded from a real Prometheus replayed
   against the direct scrape's batches of the same window.
3. Failures against local HTTP servers that refuse, hang, or answer 503 /
   400: the window is skipped with the reason, within its deadline, and
   nothing is produced.
4. The real Prometheus (Debian package ``prometheus``) scraping a realtime
   simulated mesh: the Prometheus source and the direct scrape agree on
   every GoldenSample of aligned windows; Prometheus stopped mid-run leaves
   gaps, never made-up windows, and the source resumes once it is back.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from pipeline.collect import promql
from pipeline.collect.collector import Collector, CycleReport
from pipeline.collect.extract import (
    CERT_REFRESHES,
    INBOUND_TLS_ERROR_FAMILIES,
    OUTBOUND_ERROR_FAMILIES,
    POLICY_FAMILIES,
)
from pipeline.collect.prometheus_source import (
    PromClient,
    PromCycleReport,
    PrometheusSource,
    QueryError,
)
from pipeline.collect.promql import Labels, Window, family_queries, golden_families, info_query
from pipeline.collect.promwindow import PodState, cover, fold, read_info
from pipeline.collect.scrape import make_scrape_client
from pipeline.collect.targets import Target
from pipeline.config import MeshwatchConfig, load_config
from pipeline.keys import ALL_ROUTES
from pipeline.schema import LINKERD_LATENCY_BOUNDS_MS, GoldenBatch, GoldenSample
from pipeline.simulate import (
    CallSpec,
    FaultSpec,
    FaultTarget,
    MeshSpec,
    RouteSpec,
    Scenario,
    SimulatedMesh,
    WorkloadSpec,
)
from pipeline.simulate.prometheus import LocalPrometheus, PrometheusError, find_prometheus

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "prometheus_window.json"
CLUSTER = "prom-test"
LABELS = Labels()
T1 = 1_750_000_010.0


def make_cfg(url: str = "http://127.0.0.1:9", window: float = 10.0, **prom: Any) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "cluster": CLUSTER,
            "window": {"seconds": window, "scrape_timeout_seconds": min(window, 2.0)},
            "collector": {"source": "prometheus"},
            # Raw series: the recorded mode has tests of its own (test_prometheus_recorded).
            "prometheus": {"url": url, "recorded": "off", **prom},
        },
    )


def window(**kw: Any) -> Window:
    args: dict[str, Any] = {
        "t1": T1,
        "seconds": 10.0,
        "selector": 'job="linkerd-proxy"',
        "labels": LABELS,
    }
    args.update(kw)
    return Window(**args)


def queries_of(name: str, w: Window | None = None) -> list[str]:
    fam = next(f for f in golden_families() if f.name == name)
    return family_queries(w or window(), fam)


# -- 1. query building -------------------------------------------------------------------


def test_literals_are_quoted_and_escaped() -> None:
    assert promql.quote('a"b\\c') == '"a\\"b\\\\c"'
    assert promql.regex_escape("web-0.x(1)") == r"web-0\.x\(1\)"
    assert promql.duration(10) == "10000ms"
    assert promql.duration(2.5) == "2500ms"
    with pytest.raises(ValueError, match="positive"):
        promql.duration(0)
    with pytest.raises(ValueError, match="label name"):
        Labels(namespace="kubernetes-namespace")


def test_inbound_counts_leave_out_the_admin_port_in_both_label_eras() -> None:
    assert promql.port_exclusion([4191, 9990]) == (
        'target_port!~"4191|9990"',
        'target_addr!~".*:(4191|9990)"',
    )
    assert promql.port_exclusion([4191], parent=True) == ('parent_port!~"4191"',)
    assert promql.port_exclusion([]) == ()


def test_response_total_is_one_delta_query_per_part_summed_per_pod() -> None:
    inbound, by_authority, fallback = queries_of("response_total")
    # Linkerd viz's shape: a sum by the pod and the labels the golden numbers need ...
    assert inbound.startswith(
        "sum by (namespace, pod, direction, classification, status_code, grpc_status, error, tls) ("
    )
    # ... of the per-series increase between the window's two instants.
    sel = (
        'response_total{job="linkerd-proxy", direction="inbound", '
        'target_port!~"4191", target_addr!~".*:(4191)"}'
    )
    # Aligned window: the two-point increase, plus the series new since t0 at full value.
    assert inbound.endswith(f"(increase({sel}[10000ms:10000ms]) or {sel})")
    assert "unless" not in inbound  # no restarted, excluded or bare pods this window
    # Not aligned: the difference of the two instants, with its joins.
    (unaligned, *_) = queries_of("response_total", window(t1=T1 + 1.5))
    assert f"(({sel} - {sel} offset 10000ms) >= 0) or {sel}" in unaligned
    assert "authority" in by_authority and 'authority!=""' in by_authority
    assert "target_port" not in by_authority  # outbound is never port-filtered
    assert 'authority=""' in fallback
    assert fallback.startswith("sum by (") and "dst_service, " in fallback.split(") (")[0]
    assert fallback.split(") (")[0].endswith("target_addr")


def test_restarted_and_left_out_pods_are_named_per_namespace() -> None:
    vec = promql.pods_vector(LABELS, 'job="p"', [("b", "web-1"), ("a", "x.y"), ("b", "web-0")])
    assert vec == (
        'up{job="p", namespace="a", pod=~"x\\\\.y"} or up{job="p", namespace="b", pod=~"web-0|web-1"}'
    )
    assert promql.pods_vector(LABELS, "", []) is None
    w = window(restarted=(("shop", "web-0"),), exclude=(("pay", "db-0"),))
    (q, *_) = queries_of("response_total", w)
    restarted = 'up{job="linkerd-proxy", namespace="shop", pod=~"web-0"}'
    excluded = 'up{job="linkerd-proxy", namespace="pay", pod=~"db-0"}'
    sel = (
        'response_total{job="linkerd-proxy", direction="inbound", '
        'target_port!~"4191", target_addr!~".*:(4191)"}'
    )
    # Both left out of the per-series increase; the restarted pod's series then count whole.
    assert f"or {sel}) unless on (namespace, pod) ({excluded} or {restarted})) or (" in q
    whole = sel.replace('target_addr!~".*:(4191)"}', 'target_addr!~".*:(4191)", pod=~"web-0"}')
    assert q.endswith(f"or ({whole} and on (namespace, pod) ({restarted})))")
    (unaligned, *_) = queries_of("response_total", dataclasses.replace(w, t1=T1 + 1.5))
    assert f">= 0) unless on (namespace, pod) ({restarted})) or " in unaligned
    assert unaligned.endswith(f") unless on (namespace, pod) ({excluded}))")


def test_bucket_families_sum_per_workload_and_return_only_moved_buckets() -> None:
    inbound, outbound = queries_of("route_response_latency_ms_bucket")
    sel = 'route_response_latency_ms_bucket{job="linkerd-proxy", direction="inbound"}'
    # The window starts on a multiple of its length: a two-point subquery, no join.
    assert inbound == (
        "sum by (namespace, deployment, statefulset, daemonset, k8s_job, replicaset, "
        f"replicationcontroller, direction, rt_route, le) (increase({sel}[10000ms:10000ms])) > 0"
    )
    assert "dst, rt_route, le)" in outbound
    # Not aligned: the plain delta expression.
    (unaligned, _) = queries_of("route_response_latency_ms_bucket", window(t1=T1 + 1.5))
    assert "increase(" not in unaligned and f"{sel} offset 10000ms" in unaligned


def test_bucket_families_add_new_series_restarts_and_bare_pods_by_pod() -> None:
    w = window(
        new_series=(("shop", "web-0"), ("shop", "web-1")),
        restarted=(("shop", "web-1"),),
        exclude=(("pay", "db-0"),),
        bare=(("tools", "debug"),),
    )
    main, new, whole, bare, *_ = queries_of("route_response_latency_ms_bucket", w)
    skip = (
        'unless on (namespace, pod) (up{job="linkerd-proxy", namespace="pay", pod=~"db-0"} '
        'or up{job="linkerd-proxy", namespace="shop", pod=~"web-1"})'
    )
    assert f"[10000ms:10000ms]) {skip})" in main
    # Series absent at t0, read from the pods that have any (web-1 is taken whole).
    only = (
        'route_response_latency_ms_bucket{job="linkerd-proxy", direction="inbound", pod=~"web-0"}'
    )
    assert f"(({only} unless {only} offset 10000ms) {skip}) > 0" in new
    assert 'pod=~"web-1"} and on (namespace, pod) (up{' in whole
    # A pod with no workload label: the delta expression, per pod.
    assert bare.startswith("sum by (namespace, pod, direction, rt_route, le) (")
    assert 'deployment="", statefulset="", daemonset="", k8s_job="", replicaset="", ' in bare
    assert 'pod=~"debug"' in bare


def test_many_metric_families_are_one_query_and_keep_the_name() -> None:
    (tcp,) = queries_of("tcp")
    # One sum per metric (increase() drops the name), named after summing: the
    # label is set on the summed rows only, not on every series read.
    assert "__name__" not in tcp
    assert (
        "label_replace(sum by (namespace, pod, direction, peer, errno) (increase(tcp_open_total{"
        in tcp
    )
    assert tcp.count('"mw_name", "tcp_open_total", "", "")') == 3
    assert tcp.count('"mw_name", "tcp_close_total", "", "")') == 3
    (policy,) = queries_of("policy")
    assert 'route_kind!="default"' in policy and 'parent_port!~"4191"' in policy


def test_many_metric_families_cannot_be_summed_per_workload() -> None:
    # Per-workload sums of one family overlap (main, new series, restarted): joined by
    # ``or`` in a shared query, one of two rows with the same labels would be lost.
    with pytest.raises(ValueError, match="summed per pod"):
        promql.Family("x", (promql.Part(("a_total", "b_total")),), level="workload")
    assert promql.Family("x", (promql.Part(("a_total", "b_total")),)).shared


def test_configured_label_names_and_selector_are_used_everywhere() -> None:
    cfg = make_cfg(
        selector='job="kubernetes-pods", cluster="eu"',
        labels={
            "namespace": "kubernetes_namespace",
            "pod": "kubernetes_pod_name",
            "workload": {"deployment": "app_deployment"},
        },
    )
    src = PrometheusSource(cfg, client=_NoClient())
    w = src.window(T1)
    every = [info_query(w)] + [q for f in src.families for q in family_queries(w, f)]
    for q in every:
        assert "namespace, pod" not in q
        assert "kubernetes_namespace" in q or "mw_info" in q
    assert all('job="kubernetes-pods", cluster="eu"' in q for q in every)
    assert "sum by (kubernetes_namespace, app_deployment, direction, le)" in " ".join(every)


def test_example_config_selects_the_prometheus_source() -> None:
    from pipeline.collect.service import CollectorService
    from pipeline.config import config_dir

    cfg = load_config(config_dir() / "collect" / "prometheus.yaml")
    assert cfg.collector.source == "prometheus"
    assert cfg.prometheus == MeshwatchConfig().prometheus  # it spells out the defaults
    service = CollectorService(cfg, None)
    assert isinstance(service.collector.source, PrometheusSource)
    asyncio.run(service.collector.source.aclose())


def test_info_query_asks_up_at_both_ends_start_times_and_cert_expiry() -> None:
    q = info_query(window())
    tags = [part.split('"mw_info", "')[1].split('"')[0] for part in q.split("label_replace(")[1:]]
    assert tags == ["up", "up_at", "up0", "up0_at", "start", "start0", "cert"]
    new = promql.new_series_query(window())
    assert new.startswith(
        'label_replace(count by (namespace, pod) ({__name__=~"response_latency_ms'
    )
    assert "unless" in new and new.endswith('"mw_info", "new_series", "", "")')
    assert 'timestamp(up{job="linkerd-proxy"} offset 10000ms)' in q
    assert "control_identity_cert_expiration_timestamp_seconds" in q


def test_every_family_extract_reads_is_queried() -> None:
    """A family the scrape path counts but no query asks for would silently read zero."""
    asked = {m for f in golden_families() for p in f.parts for m in p.metrics}
    legacy = {
        "response_total",
        "response_latency_ms_bucket",
        "response_latency_ms_sum",
        "route_response_total",
        "route_response_latency_ms_bucket",
        "route_response_latency_ms_sum",
        "tcp_open_total",
        "tcp_close_total",
    }
    read = (
        legacy
        | set(POLICY_FAMILIES)
        | INBOUND_TLS_ERROR_FAMILIES
        | OUTBOUND_ERROR_FAMILIES
        | CERT_REFRESHES
    )
    assert read <= asked, sorted(read - asked)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (package prometheus) absent")
def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Prometheus' own parser: each query as a recording rule, checked by ``promtool``."""
    exprs = []
    for w in (
        window(),
        window(t1=T1 + 1.5),
        window(
            restarted=(("a", "p-0"),),
            exclude=(("b", "p.1"),),
            new_series=(("a", "p-2"),),
            bare=(("c", "p-3"),),
        ),
    ):
        exprs += [info_query(w), promql.new_series_query(w)]
        exprs += [q for f in golden_families() for q in family_queries(w, f)]
    rules = [{"record": f"meshwatch:q{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- 2. answers → batches ----------------------------------------------------------------


def info_rows(pods: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Info answer rows: pods = {name: {"labels": {...}, "up": 1, "up_at": t, ...}}."""
    rows = []
    for pod, st in pods.items():
        ids = {"namespace": st.get("ns", "shop"), "pod": pod}
        for tag in ("up", "up_at", "up0", "up0_at", "start", "start0", "cert", "new_series"):
            if st.get(tag) is None:
                continue
            metric = {**ids, "mw_info": tag}
            if tag == "up":
                metric.update({"__name__": "up", "job": "linkerd-proxy", **st.get("labels", {})})
            rows.append({"metric": metric, "value": [T1, str(st[tag])]})
    return rows


def steady(**kw: Any) -> dict[str, Any]:
    """A pod scraped fine at both ends of the window, up for days."""
    st: dict[str, Any] = {
        "labels": {"deployment": "web", "instance": "10.0.0.1:4191"},
        "up": 1,
        "up_at": T1 - 1,
        "up0": 1,
        "up0_at": T1 - 11,
        "start": T1 - 86400,
        "start0": T1 - 86400,
        "cert": T1 + 3600,
    }
    st.update(kw)
    return st


def test_window_counts_pods_with_data_at_both_ends() -> None:
    states = read_info(
        info_rows(
            {
                "ok": steady(),
                "down": steady(up=0),
                "stale": steady(up_at=T1 - 45),
                "unknown": steady(up0=None, up0_at=None, start0=None),
                "failed-at-start": steady(up0=0),
                "born": steady(up0=None, up0_at=None, start0=None, start=T1 - 4),
                "restarted": steady(start=T1 - 3),
                "bare": steady(labels={}),
            }
        ),
        LABELS,
    )
    cov = cover(states, LABELS, t1=T1, window=10.0, stale=30.0)
    assert sorted(p for _, p in cov.counted) == ["bare", "born", "ok", "restarted"]
    assert [(t.pod, why) for t, why in cov.down] == [("down", "scrape failing (up=0)")]
    assert sorted(t.pod for t, _ in cov.left_out) == ["failed-at-start", "stale", "unknown"]
    assert cov.stale_at_end == 1
    assert sorted(p for _, p in cov.restarted) == ["born", "restarted"]
    assert cov.bare == [("shop", "bare")]
    bare = cov.counted[("shop", "bare")]
    assert (bare.kind, bare.workload, bare.workload_key) == ("pod", "bare", "shop/pod/bare")
    ok = cov.counted[("shop", "ok")]
    assert (ok.workload_key, ok.url) == ("shop/deploy/web", "10.0.0.1:4191")
    assert cov.skip_reason(T1, "") is None


@pytest.mark.parametrize(
    ("pods", "reason"),
    [
        ({}, "no scrape target matching"),
        (
            {"a": steady(up_at=T1 - 100), "b": steady(up_at=T1 - 40)},
            "no fresh sample at window end",
        ),
        ({"a": steady(up0=None, up0_at=None)}, "no sample at window start"),
    ],
)
def test_window_without_data_is_skipped_with_the_reason(
    pods: dict[str, dict[str, Any]], reason: str
) -> None:
    cov = cover(read_info(info_rows(pods), LABELS), LABELS, t1=T1, window=10.0, stale=30.0)
    assert not cov.counted
    got = cov.skip_reason(T1, 'job="linkerd-proxy"')
    assert got is not None and reason in got


def test_pods_that_are_all_down_still_make_a_batch() -> None:
    cov = cover(
        read_info(info_rows({"a": steady(up=0)}), LABELS), LABELS, t1=T1, window=10.0, stale=30.0
    )
    assert cov.skip_reason(T1, "") is None
    out = fold(cov, [], LABELS, **FOLD)
    (batch,) = out.batches
    assert (batch.pods_up, batch.pods_down, batch.samples) == ((), ("a",), ())


def row(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [T1, str(value)]}


def cumulative_le(per_bucket: Mapping[float, int]) -> list[tuple[str, int]]:
    """Legacy ``le`` labels and cumulative counts from {bound: count}, zeros left out."""
    out, run = [], 0
    for b in LINKERD_LATENCY_BOUNDS_MS:
        run += per_bucket.get(b, 0)
        if run:
            out.append(("+Inf" if math.isinf(b) else str(int(b)), run))
    return out


FOLD: dict[str, Any] = {
    "window_end": T1,
    "window_seconds": 10.0,
    "cluster": CLUSTER,
    "collector": "collector",
    "exclude_ports": (4191,),
}


def test_rows_fold_into_the_scrape_paths_samples() -> None:
    states = read_info(
        info_rows(
            {
                "web-a": steady(),
                "web-b": steady(),
                "solo": steady(labels={}),
                "gone": steady(up0=None, up0_at=None),
            }
        ),
        LABELS,
    )
    cov = cover(states, LABELS, t1=T1, window=10.0, stale=30.0)
    fams = {f.name: f for f in golden_families()}
    pod = {"namespace": "shop"}
    inbound = {"direction": "inbound", "grpc_status": ""}
    results = [
        (
            fams["response_total"],
            [
                row(
                    7,
                    **pod,
                    pod="web-a",
                    **inbound,
                    classification="success",
                    status_code="200",
                    tls="true",
                ),
                row(
                    2,
                    **pod,
                    pod="web-a",
                    **inbound,
                    classification="failure",
                    status_code="503",
                    tls="true",
                ),
                row(
                    1,
                    **pod,
                    pod="web-b",
                    **inbound,
                    classification="success",
                    status_code="200",
                    tls="no_identity",
                ),
                row(
                    0,
                    **pod,
                    pod="web-b",
                    **inbound,
                    classification="success",
                    status_code="404",
                    tls="true",
                ),
                row(
                    4,
                    **pod,
                    pod="solo",
                    **inbound,
                    classification="success",
                    status_code="200",
                    tls="true",
                ),
                row(
                    9,
                    **pod,
                    pod="gone",
                    **inbound,
                    classification="success",
                    status_code="200",
                    tls="true",
                ),
                row(
                    3,
                    **pod,
                    pod="web-b",
                    direction="outbound",
                    classification="success",
                    status_code="200",
                    tls="true",
                    authority="api.shop.svc.cluster.local:8080",
                    dst_namespace="shop",
                    dst_deployment="api",
                ),
            ],
        ),
        (fams["response_latency_ms_sum"], [row(120.5, **pod, pod="web-a", direction="inbound")]),
        (
            fams["response_latency_ms_bucket"],
            [
                # cumulative per le, as Prometheus returns them: zero rows left out
                *(
                    row(n, namespace="shop", deployment="web", direction="inbound", le=le)
                    for le, n in cumulative_le({20: 5, 50: 5})
                ),
                row(4, namespace="shop", pod="solo", direction="inbound", le="+Inf"),
                row(1, namespace="shop", direction="inbound", le="+Inf"),  # ambiguous: dropped
            ],
        ),
        (
            fams["errors"],
            [
                row(
                    2,
                    **pod,
                    pod="web-a",
                    error="tls detection timeout",
                    mw_name="inbound_tcp_errors_total",
                )
            ],
        ),
    ]
    out = fold(cov, results, LABELS, **FOLD)
    assert out.dropped_rows == 2  # the left-out pod's row and the namespace-only bucket row
    batches = {b.workload_key: b for b in out.batches}
    assert set(batches) == {"shop/deploy/web", "shop/pod/solo"}
    web = batches["shop/deploy/web"]
    assert web.pods_up == ("web-a", "web-b") and web.collector == "collector"
    s = {(x.direction, x.route): x for x in web.samples}
    star = s[("inbound", ALL_ROUTES)]
    assert (star.requests, star.successes, star.failures) == (10, 8, 2)
    assert star.status_classes == {"2xx": 8, "5xx": 2}
    assert (star.mtls_requests, star.plaintext_requests, star.tls_failures) == (9, 1, 2)
    assert star.latency_buckets == (0,) * 6 + (5, 0, 0, 5) + (0,) * 16
    assert star.latency_sum_ms == 120.5 and star.mean_ms == 12.05
    assert star.p50_ms is not None and 10 < star.p50_ms <= 20
    assert star.cert_ttl_seconds == 3600.0
    assert [(p.pod, p.requests, p.failures) for p in star.pods] == [
        ("web-a", 9, 2),
        ("web-b", 1, 0),
    ]
    out_ = s[("outbound", "api.shop.svc.cluster.local:8080")]
    assert (out_.requests, out_.peer) == (3, "shop/deploy/api")
    solo = batches["shop/pod/solo"].samples[0]
    assert (solo.requests, solo.latency_buckets[-1]) == (4, 4)


class _NoClient:
    def query(self, expr: str, at: float, timeout: float) -> list[dict[str, Any]]:
        raise AssertionError("no query expected")

    def close(self) -> None:
        pass


class ReplayClient:
    """Answers recorded from a real Prometheus, looked up by the plan that asked them."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def query(self, expr: str, at: float, timeout: float) -> list[dict[str, Any]]:
        self.asked.append(expr)
        if expr not in self.answers:
            raise AssertionError(f"not recorded (re-record, see the fixture's test): {expr[:200]}")
        return self.answers[expr]

    def close(self) -> None:
        pass


def plan_keys(src: PrometheusSource, w: Window, states: Mapping[Any, PodState]) -> dict[str, str]:
    """{query text: stable key} for the window, as the source will plan it."""
    cov = cover(states, src.labels, t1=w.t1, window=w.seconds, stale=src.pcfg.stale_after_seconds)
    w = dataclasses.replace(
        w,
        exclude=tuple(cov.excluded),
        restarted=tuple(cov.restarted),
        new_series=tuple(cov.new_series),
        bare=tuple(cov.bare),
    )
    keys = {info_query(w): "info", promql.new_series_query(w): "new_series"}
    for f in src.families:
        for i, q in enumerate(family_queries(w, f)):
            keys[q] = f"{f.name}[{i}]"
    return keys


def test_recorded_prometheus_window_replays_to_the_direct_scrape_batches() -> None:
    """A window answered by a real Prometheus, folded again offline (data recorded by test 4)."""
    if not RECORDED.exists():
        pytest.skip(f"{RECORDED.name} not recorded (MESHWATCH_RECORD_PROMETHEUS=1, test 4)")
    rec = json.loads(RECORDED.read_text())
    cfg = make_cfg(window=rec["window_seconds"], **rec["prometheus"])
    src = PrometheusSource(cfg, client=_NoClient())
    w = src.window(rec["window_end"])
    states = read_info([*rec["answers"]["info"], *rec["answers"]["new_series"]], src.labels)
    by_key = {k: rec["answers"][key] for k, key in plan_keys(src, w, states).items()}
    src.client = ReplayClient(by_key)

    report, batches = asyncio.run(src.build_window(rec["window_end"]))
    assert report.skipped is None
    assert report.queries == len(by_key)
    want = [GoldenBatch.model_validate(b) for b in rec["direct"]]
    assert_same_batches(batches, want)


# -- 3. failures -------------------------------------------------------------------------


class InfoClient:
    """Answers each window's info query from a script; every other query with no rows."""

    def __init__(self, pods_by_end: Mapping[float, Mapping[str, Mapping[str, Any]]]) -> None:
        self.pods_by_end = pods_by_end
        self.asked: list[str] = []

    def query(self, expr: str, at: float, timeout: float) -> list[dict[str, Any]]:
        self.asked.append(expr)
        if '"mw_info", "up"' not in expr:
            return []
        rows = info_rows(self.pods_by_end[at])
        for row in rows:  # info_rows stamps T1: move every time to this window
            m = row["metric"]
            if m["mw_info"] in ("up_at", "up0_at", "start", "start0", "cert"):
                row["value"] = [at, str(float(row["value"][1]) + at - T1)]
        return rows

    def close(self) -> None:
        pass


def test_family_queries_go_out_with_the_info_query_and_a_wrong_guess_pauses_guessing() -> None:
    """Sent on the last window's pod sets; after a restart (a wrong guess) the next waits."""
    ends = [T1 + 10 * k for k in range(4)]
    pods: dict[float, dict[str, dict[str, Any]]] = {
        e: {"web-0": steady(), "web-1": steady()} for e in ends
    }
    pods[ends[1]]["web-1"] = steady(start=T1 - 5, start0=T1 - 86400)  # restarted in window 1
    client = InfoClient(pods)
    src = PrometheusSource(make_cfg(), client=client)
    got = []
    guessed: list[int] = []
    for end in ends:
        report, _ = asyncio.run(src.build_window(end))
        assert report.skipped is None, report.skipped
        got.append((report.restarted, report.guessed_unused, report.queries))
        guessed.append(report.guessed)
    asyncio.run(src.aclose())
    plan = len(src.plan(src.window(T1)))
    # 0: guessed right; 1: web-1 restarted, so the guessed main queries were wasted and
    # sent again naming it; 2: no guess (waits for the info query); 3: guessing again.
    (r0, u0, q0), (r1, u1, q1), (r2, u2, q2), (r3, u3, q3) = got
    assert (r0, u0, q0) == (0, 0, 2 + plan)
    assert (
        r1 == 1
        and u1 > 0
        and q1
        == 2
        + plan
        + len(src.plan(dataclasses.replace(src.window(ends[1]), restarted=(("shop", "web-1"),))))
        - (plan - u1)
    )
    assert (r2, u2, q2) == (0, 0, 2 + plan)
    assert (r3, u3, q3) == (0, 0, 2 + plan)
    assert guessed == [plan, plan, 0, plan]


class FakePrometheus:
    """A local HTTP server standing in for Prometheus: ok, 503, 400, or hanging."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.requests = 0
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests += 1
                if fake.mode == "hang":
                    fake.release.wait(30)
                    return
                if fake.mode in ("503", "400"):
                    body = b'{"status":"error","error":"nope"}'
                    self.send_response(int(fake.mode))
                else:
                    q = parse_qs(urlparse(self.path).query)["query"][0]
                    result = fake.answers.get(q, [])
                    body = json.dumps(
                        {"status": "success", "data": {"resultType": "vector", "result": result}}
                    ).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def failing_source(url: str, window: float = 3.0, **prom: Any) -> PrometheusSource:
    opts: dict[str, Any] = {"timeout_seconds": 0.5, "max_attempts": 3, "backoff_seconds": 0.1}
    opts.update(prom)
    return PrometheusSource(make_cfg(url, window=window, **opts))


def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``cond`` until true or ``timeout``: requests of dropped queries finish on threads."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def skipped_window(src: PrometheusSource) -> tuple[PromCycleReport, float]:
    coll = Collector(src.cfg, list, None, source=src)
    got: list[GoldenBatch] = []
    coll.on_batches = got.extend
    started = time.monotonic()
    report = await coll.cycle_source(T1)
    elapsed = time.monotonic() - started
    await src.aclose()
    assert got == [], "a skipped window produced batches"
    assert report.skipped is not None and report.batches == report.samples == 0
    assert coll.stats.skipped == 1 and coll.stats.batches == 0
    assert isinstance(report, PromCycleReport)
    return report, elapsed


def test_unreachable_prometheus_skips_the_window(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    src = failing_source(closed_port())
    report, elapsed = asyncio.run(skipped_window(src))
    assert report.skipped is not None
    assert "unreachable" in report.skipped and "after 3 attempt(s)" in report.skipped
    assert elapsed < 3.0
    assert any("skipped, no batch produced" in r.getMessage() for r in caplog.records)


def test_hanging_prometheus_times_out_within_the_window() -> None:
    with FakePrometheus() as fake:
        fake.mode = "hang"
        src = failing_source(fake.url, window=2.0, timeout_seconds=0.6, max_attempts=5)
        report, elapsed = asyncio.run(skipped_window(src))
    assert report.skipped is not None and "no answer within" in report.skipped
    # Retries stop at the window's deadline, however many attempts were allowed.
    assert elapsed < 2.0 + 1.0
    # The info queries and the family queries the last window implies, sent together.
    assert report.queries == 2 + len(src.plan(src.window(T1)))
    assert src.pcfg.concurrency * 2 <= fake.requests <= report.attempts < report.queries * 5


def test_prometheus_answering_503_is_retried_then_skipped() -> None:
    with FakePrometheus() as fake:
        fake.mode = "503"
        src = failing_source(fake.url)
        report, _ = asyncio.run(skipped_window(src))
        # Requests of dropped queries may still be on their way: count them all.
        landed = eventually(lambda: fake.requests == report.attempts)
    assert report.skipped is not None and "HTTP 503" in report.skipped
    # The query that failed the window was tried max_attempts times; the others were
    # dropped with it, and every request sent is counted.
    assert "gave up after 3 attempt(s)" in report.skipped
    assert 3 <= report.attempts <= 3 * report.queries
    assert landed, (fake.requests, report.attempts)


def test_query_rejected_by_prometheus_is_not_retried() -> None:
    with FakePrometheus() as fake:
        fake.mode = "400"
        src = failing_source(fake.url)
        report, _ = asyncio.run(skipped_window(src))
        # Requests of dropped queries may still be on their way: count them all.
        landed = eventually(lambda: fake.requests == report.attempts)
    assert report.skipped is not None and "HTTP 400" in report.skipped
    assert report.attempts <= report.queries  # each sent once at most
    assert landed, (fake.requests, report.attempts)


def test_prometheus_recovering_between_attempts_gives_the_window() -> None:
    """503 then success: the retry within the window's deadline builds the window."""
    with FakePrometheus() as fake:
        src = failing_source(fake.url, max_attempts=3, backoff_seconds=0.3)
        fake.answers[info_query(src.window(T1))] = info_rows({"web-0": steady()})
        fake.mode = "503"
        threading.Timer(0.15, lambda: setattr(fake, "mode", "ok")).start()
        report, batches = asyncio.run(src.build_window(T1))
        asyncio.run(src.aclose())
    assert report.skipped is None and report.attempts > report.queries
    (batch,) = batches
    assert batch.pods_up == ("web-0",)
    assert [(s.route, s.requests) for s in batch.samples] == [(ALL_ROUTES, 0)]


def test_client_classifies_errors() -> None:
    with FakePrometheus() as fake:
        cfg = make_cfg(fake.url)
        client = PromClient(cfg.prometheus)
        fake.mode = "503"
        with pytest.raises(QueryError) as e503:
            client.query("up", T1, 1.0)
        fake.mode = "400"
        with pytest.raises(QueryError) as e400:
            client.query("up", T1, 1.0)
        fake.mode = "hang"
        with pytest.raises(QueryError) as hung:
            client.query("up", T1, 0.3)
        client.close()
    assert e503.value.retryable and not e400.value.retryable
    assert hung.value.retryable and "no answer within 0.3s" in hung.value.reason


def test_bearer_token_and_headers_are_sent_and_masked() -> None:
    seen: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.update(self.headers.items())
            body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = make_cfg(url, bearer_token="s3cret", headers={"X-Scope-OrgID": "tenant-1"})
        assert "s3cret" not in repr(cfg) and "tenant-1" not in repr(cfg)
        PromClient(cfg.prometheus).query("up", T1, 1.0)
    finally:
        server.shutdown()
        server.server_close()
    assert seen["Authorization"] == "Bearer s3cret" and seen["X-Scope-OrgID"] == "tenant-1"


# -- 4. the real Prometheus --------------------------------------------------------------


def _prometheus_or_skip() -> str:
    binary = find_prometheus()
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (.ci/run does)")
    return binary


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    """The real Prometheus for the session, scraping every second; tests set its targets."""
    binary = _prometheus_or_skip()
    prom = LocalPrometheus(
        tmp_path_factory.mktemp("prometheus"), binary=binary, scrape_interval=1.0
    )
    try:
        prom.start()
    except PrometheusError as exc:
        pytest.skip(f"prometheus does not start here: {exc}")
    try:
        yield prom
    finally:
        prom.stop()


class GateClock:
    """Wall time that can be held still: a realtime mesh on it stops between scrapes.

    ``hold()`` freezes the mesh (its ticks follow this clock); ``release()``
    resumes it where it stopped, so simulated time lags wall time by the time
    spent held.
    """

    def __init__(self) -> None:
        self._lag = 0.0
        self._held_at: float | None = None

    def __call__(self) -> float:
        if self._held_at is not None:
            return self._held_at - self._lag
        return time.time() - self._lag

    def hold(self) -> None:
        self._held_at = time.time()

    def release(self) -> None:
        assert self._held_at is not None
        self._lag += time.time() - self._held_at
        self._held_at = None


def mixed_mesh() -> MeshSpec:
    """Three workloads on three proxy eras: policy families (2.20, 2.16) and legacy (2.10)."""

    def r(name: str, share: float, ms: float, err: float = 0.002, c4xx: float = 0.0) -> RouteSpec:
        return RouteSpec(
            name=name,
            share=share,
            base_latency_ms=ms,
            base_error_ratio=err,
            client_error_ratio=c4xx,
        )

    return MeshSpec(
        cluster="mini",
        workloads=[
            WorkloadSpec(
                namespace="shop",
                name="web",
                replicas=2,
                base_rps=40.0,
                proxy_version="2.20",
                routes=[r("GET /", 3, 20), r("POST /buy", 1, 80, err=0.03, c4xx=0.02)],
                calls=[
                    CallSpec(target="api", share=1.0),
                    CallSpec(target="payments/ledger", share=0.3),
                ],
            ),
            WorkloadSpec(
                namespace="shop",
                name="api",
                replicas=2,
                proxy_version="2.16",
                routes=[r("GET /items", 2, 10), r("GET /items/{id}", 1, 5)],
                calls=[CallSpec(target="payments/ledger", share=0.5)],
            ),
            WorkloadSpec(
                namespace="payments",
                name="ledger",
                kind="statefulset",
                replicas=1,
                proxy_version="2.10",
                routes=[r("POST /entries", 1, 15)],
            ),
        ],
    )


def _fault(kind: str, ns: str, wl: str, magnitude: float) -> FaultSpec:
    return FaultSpec(
        kind=kind,  # type: ignore[arg-type,unused-ignore]
        target=FaultTarget(namespace=ns, workload=wl),
        start=0,
        duration=100_000,
        magnitude=magnitude,
    )


FAULTS = Scenario(
    name="faults-for-every-number",
    faults=[
        _fault("mtls_loss", "shop", "api", 0.4),
        _fault("tls_handshake_failure", "payments", "ledger", 0.3),
        _fault("error_burst", "shop", "web", 0.1),
    ],
)


def bucket_of(ms: float | None) -> int:
    assert ms is not None
    return bisect.bisect_left(LINKERD_LATENCY_BOUNDS_MS, ms)


def _comparable(s: GoldenSample) -> dict[str, Any]:
    d = s.model_dump()
    for k in ("latency_sum_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "pods"):
        d.pop(k)
    return d


def assert_same_batches(got: Sequence[GoldenBatch], want: Sequence[GoldenBatch]) -> None:
    """Same workloads, pods and routes; every count equal; quantiles within one bucket."""
    g = {b.workload_key: b for b in got}
    w = {b.workload_key: b for b in want}
    assert sorted(g) == sorted(w)
    for wk, wb in w.items():
        gb = g[wk]
        head = ("window_end", "window_seconds", "collector", "pods_up", "pods_down")
        assert [getattr(gb, k) for k in head] == [getattr(wb, k) for k in head], wk
        gs = {(s.direction, s.route): s for s in gb.samples}
        ws = {(s.direction, s.route): s for s in wb.samples}
        assert sorted(gs) == sorted(ws), wk
        for key, ws_ in ws.items():
            gs_ = gs[key]
            where = f"{wk} {key}"
            assert _comparable(gs_) == _comparable(ws_), where
            assert gs_.latency_sum_ms == pytest.approx(ws_.latency_sum_ms, abs=2e-3), where
            for q in ("p50_ms", "p95_ms", "p99_ms"):
                a, b = getattr(gs_, q), getattr(ws_, q)
                assert (a is None) == (b is None), where
                if a is not None:
                    assert abs(bucket_of(a) - bucket_of(b)) <= 1, f"{where} {q}: {a} vs {b}"
            gp = [(p.pod, p.requests, p.failures) for p in gs_.pods]
            assert gp == [(p.pod, p.requests, p.failures) for p in ws_.pods], where


@dataclass
class Recorder:
    """Keeps what the Prometheus source asked and got, to write the replay fixture."""

    inner: Any
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def query(self, expr: str, at: float, timeout: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.inner.query(expr, at, timeout)
        self.answers[expr] = rows
        return rows

    def close(self) -> None:
        self.inner.close()


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


def test_prometheus_source_agrees_with_the_direct_scrape(prometheus: LocalPrometheus) -> None:
    """Aligned windows: both sources see the very same samples, so every count must agree.

    Prometheus scrapes on its own wall-clock schedule, each target at its own
    phase, while a realtime mesh changes its counters every tick, so a
    window end is not a scrape instant of every target. The windows are
    therefore aligned to *quiet* instants: the mesh runs on a :class:`GateClock`
    that is held from ``hold`` (2.8) seconds before each window end until just after
    it. While held, every counter stands still and Prometheus scrapes every
    target at least once (scrape interval 1 s, checked: the oldest last scrape
    before the window end started after the hold). At the window end both
    sources therefore read the same values, the direct collector by scraping
    then and Prometheus through its last samples at or before that instant, and
    both windows span exactly the same increments. The mesh then runs freely for
    the rest of the window, Prometheus sampling it mid-flight as usual.
    """
    window, hold, n_windows = 5.0, 2.8, 4

    async def run() -> None:
        gate = GateClock()
        mesh = SimulatedMesh(mixed_mesh(), scenario=FAULTS, seed=5, clock=gate, realtime=True)
        async with mesh:
            await asyncio.to_thread(prometheus.set_targets, mesh.targets)
            cfg = make_cfg(prometheus.url, window=window, query_delay_seconds=0.0)
            direct = Collector(
                cfg,
                lambda: [
                    Target(t.url, t.namespace, t.workload, t.kind, t.pod) for t in mesh.targets
                ],
                None,
            )
            recorder = Recorder(PromClient(cfg.prometheus))
            source = PrometheusSource(cfg, client=recorder)
            # Wait for Prometheus' first scrape of every target, then a whole window.
            deadline = time.time() + 30
            while time.time() < deadline:
                up = await asyncio.to_thread(
                    prometheus.query, 'count(up{job="linkerd-proxy"} == 1)'
                )
                if up and int(float(up[0]["value"][1])) == len(mesh.targets):
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"Prometheus never scraped every target:\n{prometheus.log_tail()}")
            first = math.ceil(time.time() / window) * window + window
            compared = restarted = new_series = 0
            # Restarted while the mesh runs in windows 2 and 3: every series of the pod
            # counts from zero, and the next window sees its rarer series come back new.
            restart_after = {1: "web", 2: "api"}
            async with make_scrape_client(4, True) as client:
                for k in range(n_windows + 1):
                    end = first + k * window
                    await _sleep_until(end - hold)
                    gate.hold()
                    held_at = time.time()
                    await _sleep_until(end)
                    got: list[GoldenBatch] = []
                    direct.on_batches = got.extend
                    report = await direct.cycle(client, end)
                    assert report.down == [] and report.parse_errors == 0
                    await _sleep_until(end + 0.4)  # scrapes started before the end are served held
                    gate.release()
                    if k in restart_after:
                        mesh.restart_pod(
                            next(p for p in mesh.pods if p.workload == restart_after[k])
                        )
                    oldest = await asyncio.to_thread(prometheus.oldest_last_scrape, end)
                    assert oldest is not None and oldest >= held_at, (
                        f"a target was not scraped while the mesh was held ({oldest} < {held_at})"
                    )
                    if k == 0:
                        continue  # the direct collector's first cycle is its baseline
                    recorder.answers.clear()
                    prom_report, batches = await source.build_window(end)
                    assert prom_report.skipped is None, prom_report.skipped
                    assert prom_report.left_out == [] and prom_report.down == []
                    assert_same_batches(batches, got)
                    assert sum(s.requests for b in batches for s in b.samples) > 50
                    compared += 1
                    restarted += prom_report.restarted
                    new_series += prom_report.new_series
                    if k == n_windows and os.environ.get("MESHWATCH_RECORD_PROMETHEUS"):
                        _record(cfg, source, end, recorder.answers, got)
            await source.aclose()
            assert compared == n_windows
            assert restarted == 2, "both restarts counted in full, each in one window"
            assert new_series >= 1, "no window exercised the new-series path"

    asyncio.run(run())


def _record(
    cfg: MeshwatchConfig,
    src: PrometheusSource,
    end: float,
    answers: Mapping[str, list[dict[str, Any]]],
    direct: Sequence[GoldenBatch],
) -> None:
    w = src.window(end)
    info = [*answers[info_query(w)], *answers[promql.new_series_query(w)]]
    keys = plan_keys(src, w, read_info(info, src.labels))
    DATA.mkdir(exist_ok=True)
    rec = {
        "about": "one window of test_prometheus_source_agrees_with_the_direct_scrape: the "
        "real Prometheus' answers per query, and the direct scrape's batches",
        "window_end": end,
        "window_seconds": cfg.window.seconds,
        "prometheus": {"url": str(cfg.prometheus.url), "query_delay_seconds": 0.0},
        # Only the plan's answers: queries sent on the last window's guess and then
        # not needed are left out (the replay asks exactly the plan).
        "answers": {keys[q]: rows for q, rows in answers.items() if q in keys},
        "direct": [b.model_dump(mode="json", by_alias=True) for b in direct],
    }
    RECORDED.write_text(json.dumps(rec, separators=(",", ":")) + "\n")


def test_prometheus_outage_leaves_gaps_and_the_source_resumes(tmp_path: Path) -> None:
    """Prometheus stopped mid-run: skipped windows, no made-up ones, then windows again.

    Runs the collector's own loop on the Prometheus source (its own Prometheus:
    this one is stopped and started again, with its storage kept).
    """
    binary = _prometheus_or_skip()
    window = 1.0

    async def run() -> None:
        mesh = SimulatedMesh(mixed_mesh(), seed=9, realtime=True)
        async with mesh:
            prom = LocalPrometheus(tmp_path / "prom", binary=binary, scrape_interval=0.5)
            prom.set_targets(mesh.targets)
            await asyncio.to_thread(prom.start)
            try:
                cfg = make_cfg(
                    prom.url,
                    window=window,
                    query_delay_seconds=0.2,
                    timeout_seconds=0.4,
                    max_attempts=2,
                    backoff_seconds=0.1,
                    stale_after_seconds=1.5,
                )
                source = ReportingSource(PrometheusSource(cfg))
                reports = source.reports
                coll = Collector(cfg, list, None, source=source)
                built: dict[float, list[GoldenBatch]] = {}

                def keep(batches: list[GoldenBatch]) -> None:
                    built[batches[0].window_end] = batches

                coll.on_batches = keep
                stop = asyncio.Event()
                loop = asyncio.create_task(coll.run(stop))

                async def until(cond: Callable[[], bool], limit: float, what: str) -> None:
                    deadline = time.time() + limit
                    while not cond():
                        if time.time() > deadline:
                            pytest.fail(f"{what} within {limit}s; reports: {_reasons(reports)}")
                        await asyncio.sleep(0.1)

                await until(lambda: len(built) >= 2, 30, "two windows built")
                stopped_at = time.time()
                await asyncio.to_thread(prom.stop)
                await until(
                    lambda: (
                        sum(e > stopped_at and r.skipped is not None for e, r in reports.items())
                        >= 2
                    ),
                    15,
                    "two windows skipped",
                )
                restarted_at = time.time()
                await asyncio.to_thread(prom.start)
                await until(
                    lambda: any(e > restarted_at for e in built),
                    30,
                    "a window built after the restart",
                )
                stop.set()
                await loop
            finally:
                prom.stop()

        gaps = {e: r.skipped for e, r in reports.items() if r.skipped}
        # Nothing built for a window Prometheus could not cover ...
        assert not set(gaps) & set(built)
        assert all(e < stopped_at + window or e > restarted_at for e in built), sorted(built)
        down = [why for e, why in gaps.items() if stopped_at < e < restarted_at]
        assert down and all("unreachable: [Errno 111]" in str(why) for why in down), down
        # ... windows around the restart are skipped for want of fresh data, not zeros ...
        after = sorted(e for e in reports if e > restarted_at)
        assert after and after[-1] in built
        no_data = ("no fresh sample at window end", "no sample at window start")
        restart_gaps = [why for e, why in gaps.items() if e > restarted_at]
        assert restart_gaps and all(str(why).startswith(no_data) for why in restart_gaps), gaps
        # ... and every window built has traffic, before and after the outage.
        for e, batches in built.items():
            assert sum(s.requests for b in batches for s in b.samples) > 0, e
        assert coll.stats.skipped == len(gaps) and coll.stats.skipped >= 2

    asyncio.run(run())


class ReportingSource:
    """A window source that keeps every window's report."""

    def __init__(self, inner: PrometheusSource) -> None:
        self.inner = inner
        self.reports: dict[float, CycleReport] = {}

    @property
    def settle_seconds(self) -> float:
        return self.inner.settle_seconds

    async def build_window(self, window_end: float) -> tuple[CycleReport, list[GoldenBatch]]:
        report, batches = await self.inner.build_window(window_end)
        self.reports[window_end] = report
        return report, batches

    async def aclose(self) -> None:
        await self.inner.aclose()


def _reasons(reports: Mapping[float, CycleReport], last: int = 8) -> list[str]:
    return [f"{e:.0f}: {r.skipped or 'ok'}" for e, r in sorted(reports.items())][-last:]
