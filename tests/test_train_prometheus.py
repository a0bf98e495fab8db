"""``meshwatch train --source prometheus``: history from range queries to a real Prometheus.

The real Prometheus (Debian package ``prometheus``) scrapes a realtime
simulated mesh every half second for about a minute and a half (one-second
windows keep it short). Then:

- the range-query reader builds, window for window, the very GoldenBatches
  the collector's Prometheus source builds with its instant queries, in
  several time chunks and in namespace shards;
- windows before Prometheus had data are gaps, never zeros;
- ``meshwatch train --source prometheus`` trains, publishes, and the model
  loads and scores;
- an unreachable Prometheus is a clear error (exit 1, retried by the CronJob) after its retries.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from prometheus_api_client.exceptions import PrometheusApiClientException

from models.registry import Registry
from pipeline.cli import main
from pipeline.collect.prometheus_source import PrometheusSource
from pipeline.config import MeshwatchConfig, load_config
from pipeline.schema import GoldenBatch
from pipeline.simulate import SimulatedMesh
from pipeline.simulate.prometheus import LocalPrometheus, PrometheusError, find_prometheus
from pipeline.simulate.topology import default_demo_mesh
from pipeline.train import simulated
from pipeline.train.dataset import DatasetBuilder
from pipeline.train.job import EXIT_ERROR, EXIT_PUBLISHED
from pipeline.train.prometheus_history import HistoryUnavailableError, PrometheusHistory

WINDOW = 1.0
SPEED = 4.0  # simulated seconds per wall second: enough requests in a one-second window
HISTORY_SECONDS = 90.0


def _settings(url: str, tmp: Path, **models: Any) -> dict[str, Any]:
    return {
        "cluster": "prom-train",
        "window": {"seconds": WINDOW, "scrape_timeout_seconds": WINDOW},
        "prometheus": {"url": url, "query_delay_seconds": 0.0, "timeout_seconds": 10.0},
        "detector": {"warmup_windows": 5, "min_requests": 5},
        "models": {
            "registry_dir": str(tmp / "registry"),
            "reports_dir": str(tmp / "reports"),
            "min_training_windows": 200,
            "prometheus_history": {"chunk_seconds": 20.0, "backoff_seconds": 0.05},
            **models,
        },
    }


def _config(url: str, tmp: Path, **models: Any) -> tuple[Path, MeshwatchConfig]:
    path = tmp / "meshwatch.yaml"
    path.write_text(yaml.safe_dump(_settings(url, tmp, **models)))
    return path, load_config(path)


@dataclass
class Scraped:
    prometheus: LocalPrometheus
    started: float  # wall time of Prometheus' first complete scrape of every target
    until: float  # the last window end with history


def _mesh_thread(prom: LocalPrometheus, ready: threading.Event, stop: threading.Event) -> None:
    """The realtime mesh on its own event loop, until ``stop``."""
    t_wall = time.time()

    def clock() -> float:
        return t_wall + SPEED * (time.time() - t_wall)

    async def run() -> None:
        async with SimulatedMesh(default_demo_mesh(), seed=3, clock=clock, realtime=True) as mesh:
            await asyncio.to_thread(prom.set_targets, mesh.targets)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(run())


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = find_prometheus()
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (.ci/run does)")
    prom = LocalPrometheus(tmp_path_factory.mktemp("prom-train"), binary=binary,
                           scrape_interval=0.5)  # fmt: skip
    try:
        prom.start()
    except PrometheusError as exc:
        pytest.skip(f"prometheus does not start here: {exc}")
    ready, stop = threading.Event(), threading.Event()
    mesh = threading.Thread(target=_mesh_thread, args=(prom, ready, stop), daemon=True)
    mesh.start()
    try:
        assert ready.wait(60), f"mesh never started:\n{prom.log_tail()}"
        n = len(default_demo_mesh().workloads)
        deadline = time.time() + 30
        started = None
        while time.time() < deadline:
            rows = prom.query('count(up{job="linkerd-proxy"} == 1)')
            if rows and int(float(rows[0]["value"][1])) >= n:
                started = time.time()
                break
            time.sleep(0.2)
        assert started is not None, f"Prometheus never scraped the mesh:\n{prom.log_tail()}"
        # a couple of minutes of history would be the words; 90 s of 1 s windows
        # gives the detector 85 judged windows per route after its warm-up
        end = started + HISTORY_SECONDS
        while time.time() < end + 1.0:
            time.sleep(min(1.0, max(0.05, end + 1.0 - time.time())))
        yield Scraped(prom, started, float(int(end)))
    finally:
        stop.set()
        mesh.join(30)
        prom.stop()


def _dump(batches: list[GoldenBatch]) -> dict[str, Any]:
    """Batches by workload, samples by route: a range query's matrix is sorted by
    labels where an instant vector is not, so routes come in another order."""
    out = {}
    for b in batches:
        d = b.model_dump(mode="json")
        d["samples"] = sorted(d["samples"], key=lambda s: (s["direction"], s["route"]))
        out[b.workload_key] = d
    return out


def _differences(got: list[GoldenBatch], want: list[GoldenBatch]) -> list[str]:
    """Sample by sample, what differs (readable where ``==`` on dumps is not)."""
    g = {(b.workload_key, s.direction, s.route): s.model_dump() for b in got for s in b.samples}
    w = {(b.workload_key, s.direction, s.route): s.model_dump() for b in want for s in b.samples}
    out = [f"only {'range' if k in g else 'instant'}: {k}" for k in sorted(set(g) ^ set(w))]
    gb = {b.workload_key: b.model_dump(exclude={"samples"}) for b in got}
    wb = {b.workload_key: b.model_dump(exclude={"samples"}) for b in want}
    out += [f"{k}: {gb.get(k)} vs {wb.get(k)}" for k in sorted(set(gb) | set(wb))
            if gb.get(k) != wb.get(k)]  # fmt: skip
    for k in sorted(set(g) & set(w)):
        diff = {f: (g[k][f], w[k][f]) for f in g[k] if g[k][f] != w[k][f]}
        if diff:
            out.append(f"{k}: {diff}")
    return out


@pytest.mark.integration
def test_range_queries_build_what_the_collector_source_builds(
    scraped: Scraped, tmp_path: Path
) -> None:
    _, cfg = _config(scraped.prometheus.url, tmp_path, prometheus_history={"chunk_seconds": 6.0})
    # the first half minute: rarer routes still bring new latency series then
    since = float(int(scraped.started)) + 1.0
    until = since + 30.0
    hist = PrometheusHistory(cfg, name="collector")
    try:
        got = list(hist.batches(since, until))
    finally:
        hist.close()
    assert [e for e, _ in got] == [since + k + 1 for k in range(30)]  # every window, in order
    assert hist.stats.skipped == 0 and hist.stats.built == 30
    assert hist.stats.new_series >= 1, "no window with new series: the union path is untested"
    assert hist.stats.rebuilt <= 3, hist.stats  # only pods at an edge need the instant path
    # range queries: a chunk of six windows costs about what one window does with instant ones
    per_window = 2 + len(PrometheusSource(cfg).plan(PrometheusSource(cfg).window(until)))
    assert hist.stats.requests < 5 * (per_window + 10), hist.stats

    async def instant() -> list[list[GoldenBatch]]:
        src = PrometheusSource(cfg, name="collector")
        try:
            out = []
            for end, _ in got:
                report, batches = await src.build_window(end)
                assert report.skipped is None, report.skipped
                out.append(batches)
            return out
        finally:
            await src.aclose()

    want = asyncio.run(instant())
    samples = 0
    for (end, g), w in zip(got, want, strict=True):
        assert _dump(g) == _dump(w), f"window ending {end}: {_differences(g, w)[:6]}"
        samples += sum(len(b.samples) for b in g)
    assert samples > 30 * 20
    assert sum(s.requests for _, g in got for b in g for s in b.samples) > 1000

    # namespace shards: the same windows, in two halves that add up to the whole
    _, sharded_cfg = _config(
        scraped.prometheus.url,
        tmp_path,
        prometheus_history={"chunk_seconds": 6.0, "pods_per_query": 1},
    )
    sharded = PrometheusHistory(sharded_cfg, name="collector")
    try:
        parts = list(sharded.batches(since, until))
    finally:
        sharded.close()
    assert sharded.stats.shards == 2  # shop, payments
    merged: dict[float, dict[str, Any]] = {}
    for end, batches in parts:
        merged.setdefault(end, {}).update(_dump(batches))
    assert merged == {end: _dump(g) for end, g in got}


@pytest.mark.integration
def test_windows_before_prometheus_had_data_are_gaps_not_zeros(
    scraped: Scraped, tmp_path: Path
) -> None:
    _, cfg = _config(scraped.prometheus.url, tmp_path)
    first = float(int(scraped.started))
    hist = PrometheusHistory(cfg)
    try:
        got = list(hist.batches(first - 30.0, first + 10.0))
    finally:
        hist.close()
    assert hist.stats.skipped >= 25, hist.stats  # nothing was scraped before `first`
    assert all(end > first - 5.0 for end, _ in got), "a window without data was built"
    assert got, "windows after the first scrapes are built"


@pytest.mark.integration
def test_train_from_prometheus_publishes_a_model_that_loads_and_scores(
    scraped: Scraped, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, cfg = _config(scraped.prometheus.url, tmp_path, history_source="golden")
    since = float(int(scraped.started)) + 2.0
    code = main(
        ["train", "-c", str(path), "--source", "prometheus",
         "--prometheus-url", scraped.prometheus.url, "--start", str(since),
         "--end", str(scraped.until), "--no-event", "--scenario-windows", "0",
         "--report", str(tmp_path / "report")]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == EXIT_PUBLISHED, out.out + out.err
    reg = Registry.at(tmp_path / "registry")
    manifest = reg.manifest("v0001")
    tr = manifest["training"]
    assert tr["source"] == "prometheus"
    assert tr["windows"] >= 80 and tr["routes"] >= 20, tr
    loaded = reg.load_production()
    assert loaded is not None and loaded.version == "v0001" and loaded.model.kinds
    hist = simulated.history(40, seed=9)
    builder = DatasetBuilder(cfg.detector)
    builder.add(hist.samples)
    ds = builder.finish()
    scores = loaded.model.score(ds.features, ds.judged)
    assert scores and all(((s >= 0) & (s <= 1)).all() for s in scores.values())
    assert any(np.any(s > 0) for s in scores.values())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_prometheus_is_an_error_after_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    path, _ = _config(url, tmp_path, prometheus_history={"max_attempts": 3,
                                                          "backoff_seconds": 0.05})  # fmt: skip
    t0 = time.monotonic()
    code = main(["train", "-c", str(path), "--source", "prometheus", "--since", "1000",
                 "--until", "1100", "--no-event", "--scenario-windows", "0"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == EXIT_ERROR
    assert url in out and "unreachable" in out and "after 3 attempts" in out, out
    assert time.monotonic() - t0 < 30


class SlowForLongRanges:
    """A Prometheus stand-in that times out on ranges of more than ``limit`` steps
    and has no data otherwise (unit test of the chunk halving)."""

    def __init__(self, limit: int, status: int | None = None) -> None:
        self.limit, self.status = limit, status
        self.ranges: list[int] = []

    def query_range(
        self, expr: str, start: float, end: float, step: float, timeout: float
    ) -> list[dict[str, Any]]:
        steps = round((end - start) / step) + 1
        self.ranges.append(steps)
        if self.status is not None:
            raise PrometheusApiClientException(f"HTTP Status Code {self.status} (b'bad query')")
        if steps > self.limit:
            raise requests.ReadTimeout("read timed out")
        return []

    def close(self) -> None:
        pass


def test_a_range_too_slow_for_prometheus_is_halved_until_it_answers(tmp_path: Path) -> None:
    _, cfg = _config("http://127.0.0.1:9", tmp_path, prometheus_history={"chunk_seconds": 16.0})
    client = SlowForLongRanges(limit=4)
    hist = PrometheusHistory(cfg, client=client)
    try:
        got = list(hist.batches(1000.0, 1032.0))
    finally:
        hist.close()
    assert got == []  # no data anywhere: every window a gap
    assert hist.stats.windows == 32 and hist.stats.skipped == 32
    # the first chunk (a probe of 6 windows) was halved once; later chunks start at 3
    assert hist.stats.chunk_windows == 3 and hist.stats.splits >= 1
    assert max(client.ranges[1:]) == 6 and max(client.ranges[-4:]) <= 3


class SeriesEverywhere:
    """``series`` series with a point at every step, for every query (no pod labels:
    every window is a gap, and only the info queries are sent)."""

    def __init__(self, series: int) -> None:
        self.series = series
        self.ranges: list[int] = []

    def query_range(
        self, expr: str, start: float, end: float, step: float, timeout: float
    ) -> list[dict[str, Any]]:
        n = round((end - start) / step) + 1
        self.ranges.append(n)
        values = [[start + k * step, "1"] for k in range(n)]
        return [{"metric": {"x": str(i)}, "values": values} for i in range(self.series)]

    def close(self) -> None:
        pass


def test_chunks_take_as_many_windows_as_fit_in_the_points_budget(tmp_path: Path) -> None:
    _, cfg = _config(
        "http://127.0.0.1:9", tmp_path, prometheus_history={"chunk_seconds": 3600.0,
                                                            "max_points": 1000}
    )  # fmt: skip
    client = SeriesEverywhere(10)  # 2 info queries x 10 series = 20 points per window
    hist = PrometheusHistory(cfg, client=client)
    try:
        assert list(hist.batches(1000.0, 1200.0)) == []
    finally:
        hist.close()
    assert hist.stats.windows == 200 and hist.stats.skipped == 200
    assert client.ranges[1:] == [6, 6, 50, 50, 50, 50, 50, 50, 44, 44]


def test_a_query_prometheus_rejects_is_not_retried(tmp_path: Path) -> None:
    _, cfg = _config("http://127.0.0.1:9", tmp_path)
    client = SlowForLongRanges(limit=100, status=400)
    hist = PrometheusHistory(cfg, client=client)
    try:
        with pytest.raises(HistoryUnavailableError, match=r"refused a query.*400"):
            list(hist.batches(1000.0, 1010.0))
    finally:
        hist.close()
    assert len(client.ranges) == 1
