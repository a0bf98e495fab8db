"""Findings as metrics: route score and band gauges read at scrape time, bounded."""

from __future__ import annotations

import urllib.request

import numpy as np
from kafka import TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import MeshwatchConfig
from pipeline.detect.exporter import select_rows
from pipeline.detect.stage import DetectorProcessor
from pipeline.observe.endpoint import ObservabilityEndpoint
from pipeline.schema import encode
from pipeline.stage.loop import Inbound
from tests.test_detector_state import golden

TOPIC = "golden"


def processor(top: int = 100, max_open: int = 1000) -> DetectorProcessor:
    cfg = MeshwatchConfig().model_copy(deep=True)
    cfg.detector = cfg.detector.model_copy(
        update={
            "warmup_windows": 10,
            "state": cfg.detector.state.model_copy(update={"enabled": False}),
            "metrics": cfg.detector.metrics.model_copy(
                update={"top_routes": top, "max_open_routes": max_open}
            ),
        }
    )
    return DetectorProcessor(cfg)


def feed(proc: DetectorProcessor, workloads: list[str], windows: range, faults: dict[int, float],
         partition_of: dict[str, int]) -> None:  # fmt: skip
    for i in windows:
        items = [
            Inbound(
                TOPIC,
                partition_of[b.workload_key],
                i,
                b.workload_key.encode(),
                proc.decode(encode(b)),
                0,
            )
            for _, b in golden(workloads, range(i, i + 1), faults)
        ]
        list(proc.process(items))


def samples(proc: DetectorProcessor) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    text = generate_latest(proc.metrics.registry).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_a_fault_shows_as_score_observed_and_band_and_counts_findings() -> None:
    proc = processor()
    wks = ["shop/deploy/web", "shop/deploy/api"]
    list(proc.on_assign([TopicPartition(TOPIC, 0)]))
    feed(proc, wks, range(1, 31), {29: 8.0, 30: 8.0}, dict.fromkeys(wks, 0))
    got = samples(proc)
    route = "shop/deploy/web/inbound/GET /a"
    score = {(lb["kind"], lb["route_key"]): v for lb, v in got["meshwatch_route_score"]}
    assert score[("latency", route)] >= 0.999
    assert score[("error_rate", route)] < 0.999
    observed = {(lb["kind"], lb["route_key"]): v for lb, v in got["meshwatch_route_observed"]}
    low = {(lb["kind"], lb["route_key"]): v for lb, v in got["meshwatch_route_expected_low"]}
    high = {(lb["kind"], lb["route_key"]): v for lb, v in got["meshwatch_route_expected_high"]}
    # the observed p99 (~8x the usual ~50 ms) sits above its band
    assert observed[("latency", route)] > high[("latency", route)] > low[("latency", route)] > 0
    findings = {(lb["kind"], lb["status"]): v for lb, v in got["meshwatch_findings_total"]}
    assert findings[("latency", "firing")] == 4  # 2 workloads x 2 routes
    assert findings.get(("latency", "resolved"), 0) == 0
    info = {lb.get("name"): lb for lb, _ in got["meshwatch_model_info"]}
    assert info["robust-baseline"]["stage"] == "detector"


def test_cardinality_is_open_findings_plus_top_n_of_owned_partitions() -> None:
    proc = processor(top=3)
    wks = [f"shop/deploy/w{j}" for j in range(10)]
    part = {wk: j % 2 for j, wk in enumerate(wks)}
    list(proc.on_assign([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]))
    feed(proc, wks, range(1, 26), {}, part)
    # one workload on partition 0 gets slow: its two routes fire
    faulty = "shop/deploy/w4"
    feed(proc, [faulty], range(26, 29), {26: 8.0, 27: 8.0, 28: 8.0}, part)
    got = samples(proc)
    lat = [lb["route_key"] for lb, _ in got["meshwatch_route_score"] if lb["kind"] == "latency"]
    assert len(lat) == len(set(lat)) <= 2 + 3  # open ones, plus the top 3 others
    assert {f"{faulty}/inbound/GET /a", f"{faulty}/inbound/POST /b"} <= set(lat)
    for kind in ("error_rate", "traffic_drop"):
        assert len([1 for lb, _ in got["meshwatch_route_score"] if lb["kind"] == kind]) == 3
    # partition 1 goes to another replica: its routes leave this replica's metrics
    list(proc.on_revoke([TopicPartition(TOPIC, 1)]))
    keys = {lb["route_key"] for lb, _ in samples(proc)["meshwatch_route_score"]}
    assert keys and all(part["/".join(k.split("/")[:3])] == 0 for k in keys)


def test_top_n_selection_is_by_score_and_caps_open_findings() -> None:
    score = np.array([0.1, 0.9, np.nan, 0.5, 0.99, 0.2, 0.7])
    firing = np.array([False, False, False, False, True, True, False])
    owned = np.array([True, True, True, True, True, True, False])
    # open ones (4, 5) always, then the 2 best others among owned, judged rows
    assert select_rows(score, firing, owned, top=2, cap=10).tolist() == [1, 3, 4, 5]
    assert select_rows(score, firing, owned, top=0, cap=1).tolist() == [4]
    assert select_rows(score, firing, ~owned, top=5, cap=5).tolist() == [6]
    assert select_rows(score, firing, owned & False, top=5, cap=5).tolist() == []


def test_the_stage_endpoint_serves_the_route_metrics() -> None:
    proc = processor()
    wks = ["shop/deploy/web"]
    list(proc.on_assign([TopicPartition(TOPIC, 0)]))
    feed(proc, wks, range(1, 13), {}, {"shop/deploy/web": 0})
    endpoint = ObservabilityEndpoint("127.0.0.1:0", proc.metrics.registry).start()
    try:
        body = urllib.request.urlopen(f"{endpoint.url}/metrics", timeout=5).read().decode()
    finally:
        endpoint.stop()
    assert (
        'meshwatch_route_score{kind="latency",route_key="shop/deploy/web/inbound/GET /a"}' in body
    )
    assert "meshwatch_route_expected_high{" in body
