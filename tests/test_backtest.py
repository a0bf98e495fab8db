"""`meshwatch backtest` on every input format, with tiny files made here."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from models.detector import DEFAULT_BOUNDS_MS
from models.histogram import quantiles
from pipeline.backtest.inputs import read_golden_csv, read_plain_csv, read_topic
from pipeline.backtest.run import backtest
from pipeline.cli import main
from pipeline.config import DetectorConfig, MeshwatchConfig
from pipeline.schema import GoldenBatch, GoldenSample, encode

T0 = 1_767_225_600.0


def samples(n: int = 70, spike: tuple[int, int] = (50, 56)) -> list[GoldenSample]:
    """One route, 10 s windows, latency 6x slower during ``spike``."""
    rng = np.random.default_rng(7)
    edges = np.concatenate(([0.0], DEFAULT_BOUNDS_MS))
    out = []
    for i in range(n):
        median = 120.0 if spike[0] <= i < spike[1] else 20.0
        reqs = int(rng.poisson(200))
        counts = np.histogram(rng.lognormal(np.log(median), 0.5, reqs), bins=edges)[0]
        q = quantiles([counts], DEFAULT_BOUNDS_MS, [0.5, 0.95, 0.99])[0]
        fails = int(rng.binomial(reqs, 0.002))
        out.append(
            GoldenSample(
                window_end=T0 + 10 * (i + 1),
                window_seconds=10.0,
                namespace="shop",
                workload_kind="deploy",
                workload="api",
                direction="inbound",
                route="GET /items",
                requests=reqs,
                successes=reqs - fails,
                failures=fails,
                latency_buckets=tuple(int(c) for c in counts),
                p50_ms=float(q[0]),
                p95_ms=float(q[1]),
                p99_ms=float(q[2]),
                mtls_requests=reqs,
            )
        )
    return out


def _check(out: Path, kind: str) -> list[dict[str, object]]:
    for name in ("points.csv", "points.json", "findings.json", "chart-1.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "chart-1.png").read_bytes()[:4] == b"\x89PNG"
    findings = json.loads((out / "findings.json").read_text())
    assert [f["status"] for f in findings if f["kind"] == kind][:1] == ["firing"]
    with (out / "points.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    return findings


def test_jsonl_of_golden_batches(tmp_path: Path) -> None:
    src = tmp_path / "golden.jsonl"
    with src.open("wb") as fh:
        for s in samples():
            b = GoldenBatch(
                workload_key=s.workload_key,
                window_end=s.window_end,
                window_seconds=10.0,
                samples=(s,),
            )
            fh.write(encode(b) + b"\n")
    out = tmp_path / "out"
    assert main(["backtest", str(src), "--out", str(out)]) == 0
    findings = _check(out, "latency")
    first = next(f for f in findings if f["kind"] == "latency")
    assert first["window_end"] == T0 + 10 * 52  # second window of the spike


def test_jsonl_of_golden_samples(tmp_path: Path) -> None:
    src = tmp_path / "samples.jsonl"
    src.write_bytes(b"".join(encode(s) + b"\n" for s in samples()))
    out = tmp_path / "out"
    assert main(["backtest", str(src), "--out", str(out)]) == 0
    _check(out, "latency")


def test_csv_of_golden_samples(tmp_path: Path) -> None:
    src = tmp_path / "samples.csv"
    cols = ["window_end", "window_seconds", "namespace", "workload_kind", "workload", "direction",
            "route", "requests", "successes", "failures", "latency_buckets", "p50_ms", "p95_ms",
            "p99_ms", "mtls_requests"]  # fmt: skip
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for s in samples():
            d = s.model_dump()
            d["latency_buckets"] = " ".join(str(c) for c in s.latency_buckets)
            w.writerow([d[c] for c in cols])
    assert read_golden_csv(src) == samples()
    out = tmp_path / "out"
    assert main(["backtest", str(src), "--out", str(out)]) == 0
    _check(out, "latency")


def test_plain_csv_of_one_metric(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    src = tmp_path / "rps.csv"
    with src.open("w") as fh:
        fh.write("TimeStamp,Value,Label\n")
        for i in range(80):
            v = 0.0 if 60 <= i < 64 else float(rng.poisson(300))
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60 * i))
            fh.write(f"{stamp},{v},{int(60 <= i < 64)}\n")
    got, rows = read_plain_csv(src, "traffic")
    assert len(got) == 80 and got[0].window_seconds == 60.0 and rows[60][2] == 1
    out = tmp_path / "out"
    assert main(["backtest", str(src), "--kind", "traffic", "--out", str(out)]) == 0
    findings = _check(out, "traffic_drop")
    assert {f["kind"] for f in findings} <= {"traffic_drop", "traffic_surge"}
    assert findings[0]["explanation"].startswith("no traffic")


def test_plain_csv_needs_a_kind_and_bad_files_say_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.csv"
    src.write_text("timestamp,value\n2026-01-01T00:00:00Z,1\nnot-a-time,2\n")
    assert main(["backtest", str(src), "--out", str(tmp_path / "o")]) == 2
    assert main(["backtest", str(src), "--kind", "latency", "--out", str(tmp_path / "o")]) == 1
    assert "x.csv:3" in capsys.readouterr().err


def test_backtest_matches_the_live_engine_window_by_window() -> None:
    res = backtest(samples(), DetectorConfig())
    fired = [f.window_end for f in res.alerts()]
    assert fired == [T0 + 10 * 52]
    firing = [p["window_end"] for p in res.points if p["kind"] == "latency" and p["firing"]]
    assert firing[0] == T0 + 10 * 52


@pytest.mark.integration
def test_a_time_range_of_the_golden_topic(kafka_cfg: MeshwatchConfig, tmp_path: Path) -> None:
    from pipeline.kafka.clients import make_producer

    topic = kafka_cfg.topics.golden
    producer = make_producer(kafka_cfg.kafka, "test")
    try:
        for s in samples():
            b = GoldenBatch(
                workload_key=s.workload_key, window_end=s.window_end, window_seconds=10.0,
                samples=(s,),
            )  # fmt: skip
            producer.send(topic, key=b"shop/deploy/api", value=encode(b),
                          timestamp_ms=int(s.window_end * 1000))  # fmt: skip
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)
    got = read_topic(kafka_cfg.kafka, topic, T0 + 100, T0 + 600)
    assert [s.window_end for s in got] == [T0 + 10 * i for i in range(10, 60)]
    out = tmp_path / "out"
    boot = kafka_cfg.kafka.bootstrap_servers[0]
    prefix = kafka_cfg.topics.prefix
    rc = main(["backtest", "--bootstrap", boot, "--topic", topic, "--from", str(T0),
               "--to", "2026-01-01T00:20:00Z", "--out", str(out)])  # fmt: skip
    assert rc == 0, prefix
    _check(out, "latency")


def test_plain_latency_of_zero_is_no_traffic_and_one_hour_of_it_fires(tmp_path: Path) -> None:
    """A dependency latency of 0 means no calls were measured: one hourly window of it
    is an hour without traffic (a silent route), not a fast request."""
    rng = np.random.default_rng(9)
    src = tmp_path / "latency.csv"
    with src.open("w") as fh:
        fh.write("TimeStamp,Value,Label\n")
        for i in range(80):
            v = 0.0 if i == 60 else float(rng.lognormal(np.log(50.0), 0.05))
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 3600 * i))
            fh.write(f"{stamp},{v},{int(i == 60)}\n")
    got, _ = read_plain_csv(src, "latency")
    assert got[60].requests == 0 and got[60].p99_ms is None and got[59].requests > 0
    res = backtest(got, DetectorConfig(), kinds=("latency", "traffic_drop"))
    fired = [(f.kind, f.window_end) for f in res.alerts()]
    assert fired == [("traffic_drop", T0 + 3600 * 60)]
