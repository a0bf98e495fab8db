"""The collector as ``meshwatch collect`` runs it: discovery, deadlines, worker parsing, /metrics.

Counts are checked against the simulator's truth with the helpers of
``test_collector`` (same mesh, same exactness); the collector's own metrics
are read the way Prometheus would: an HTTP GET of its endpoint, parsed with
prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.collect.collector import Collector, CycleReport
from pipeline.collect.discovery.file_sd import FileSD
from pipeline.collect.parsing import (
    BodyError,
    InlineProcessor,
    PodState,
    WorkerProcessor,
    cgroup_cpu_limit,
    decode_body,
    resolve_workers,
    shard_of,
)
from pipeline.collect.scrape import make_scrape_client
from pipeline.collect.service import CollectorService
from pipeline.config import MeshwatchConfig, load_config
from pipeline.schema import GoldenBatch
from pipeline.simulate import SimulatedMesh, default_demo_mesh
from tests.test_collector import (
    CATALOG,
    CLUSTER,
    DEMO_WORKLOADS,
    EVERYTHING,
    LEDGER,
    T0,
    WEB,
    WINDOW,
    assert_exact,
    live_targets,
    pod_names,
    snapshot,
    window_truth,
)

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def file_sd_groups(mesh: SimulatedMesh) -> list[dict[str, Any]]:
    """The mesh's proxies as file_sd groups, one per pod, as a generator script would write them."""
    groups = []
    for t in mesh.targets:
        host_port = t.url.removeprefix("http://").removesuffix("/metrics")
        labels = {"namespace": t.namespace, t.kind: t.workload, "pod": t.pod}
        groups.append({"targets": [host_port], "labels": labels})
    return groups


def write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def cfg_for(
    sd_file: Path, *, timeout: float = 2.0, workers: int = 0, **collector: Any
) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "cluster": CLUSTER,
            "window": {"seconds": WINDOW, "scrape_timeout_seconds": timeout},
            "collector": {
                "concurrency": 16,
                "discovery": {"kind": "file_sd", "files": [str(sd_file)]},
                "parse_workers": workers,
                "metrics_address": "127.0.0.1:0",
                **collector,
            },
        },
    )


async def read_metrics(url: str) -> Metrics:
    async with httpx.AsyncClient() as client:
        resp = await client.get(url)
    assert resp.status_code == 200
    out: Metrics = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def m(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, *, scenario: Any = None, **cfg_kw: Any
) -> AsyncIterator[tuple[SimulatedMesh, CollectorService, httpx.AsyncClient, Path]]:
    mesh = SimulatedMesh(
        default_demo_mesh("2.18"), scenario=scenario, seed=11, realtime=False, clock=lambda: T0
    )
    sd = tmp_path / "mesh.json"
    async with mesh:
        write_json(sd, file_sd_groups(mesh))
        cfg = cfg_for(sd, **cfg_kw)
        # the collector's clock reads 1.5 s after each window's end
        svc = CollectorService(cfg, None, clock=lambda: mesh.now + 1.5)
        async with svc, make_scrape_client(16, True) as client:
            yield mesh, svc, client, sd


async def cycle(
    svc: CollectorService, client: httpx.AsyncClient, now: float
) -> tuple[CycleReport, dict[str, GoldenBatch]]:
    got: list[GoldenBatch] = []
    svc.collector.on_batches = got.extend
    report = await svc.collector.cycle(client, now)
    return report, {b.workload_key: b for b in got}


# -- the collector's own /metrics ---------------------------------------------------------


def test_metrics_endpoint_counts_targets_scrapes_samples_and_lag(tmp_path: Path) -> None:
    """Worker-process parsing, file_sd discovery and the endpoint, as `meshwatch collect` runs them."""

    async def run() -> None:
        async with served(tmp_path, timeout=0.5, workers=1) as (mesh, svc, client, _):
            assert isinstance(svc.collector.processor, WorkerProcessor)
            assert svc.endpoint is not None and svc.endpoint.port > 0
            url = svc.endpoint.url + "/metrics"
            mesh.advance(WINDOW)
            base, _ = await cycle(svc, client, mesh.now)
            got = await read_metrics(url)
            assert m(got, "meshwatch_collector_targets", state="up") == 13
            assert m(got, "meshwatch_collector_targets", state="down") == 0
            assert m(got, "meshwatch_collector_discovered_targets") == 13
            assert m(got, "meshwatch_collector_discovery_errors_total") == 0
            assert m(got, "meshwatch_collector_scrapes_total", result="ok") == 13
            assert m(got, "meshwatch_collector_scrape_duration_seconds_count") == 13
            assert m(got, "meshwatch_collector_cycles_total") == 1
            assert m(got, "meshwatch_collector_cycle_duration_seconds_count") == 1
            assert m(got, "meshwatch_collector_samples_total") == base.samples == 6
            assert m(got, "meshwatch_collector_batches_total") == 6
            assert m(got, "meshwatch_collector_window_lag_seconds") == 1.5
            assert m(got, "meshwatch_collector_last_cycle_timestamp_seconds") == mesh.now + 1.5
            assert m(got, "meshwatch_collector_parse_cpu_seconds_total") == pytest.approx(
                base.parse_cpu_seconds
            )
            assert base.parse_cpu_seconds > 0
            assert m(got, "process_cpu_seconds_total") > 0
            async with httpx.AsyncClient() as probe:
                health = await probe.get(svc.endpoint.url + "/healthz")
                ready = await probe.get(svc.endpoint.url + "/readyz")
            assert (health.status_code, health.text) == (200, "ok\n")
            assert (ready.status_code, ready.text) == (200, "ready, 13 target(s)\n")
            svc.collector.last_cycle_at = time.monotonic() - 100  # as if wedged since
            assert svc.live() == (False, "no cycle finished for 100s")
            svc.collector.last_cycle_at = time.monotonic()

            # three proxies go bad: one hangs, one answers 500, one answers garbage
            mesh.advance(WINDOW)
            before = snapshot(mesh)
            middle, _ = await cycle(svc, client, mesh.now)
            hung, failing, junk = (
                pod_names(mesh, "web")[0],
                pod_names(mesh, "catalog")[0],
                pod_names(mesh, "ledger")[1],
            )
            mesh.misbehave(hung, "hang")
            mesh.misbehave(failing, "error")
            mesh.misbehave(junk, "garbage")
            mesh.advance(WINDOW)
            after = snapshot(mesh, skip={hung, failing, junk})
            report, batches = await cycle(svc, client, mesh.now)
            assert_exact(
                window_truth(before, after),
                batches,
                mesh.now,
                down={WEB: [hung], CATALOG: [failing], LEDGER: [junk]},
            )
            got = await read_metrics(url)
            assert m(got, "meshwatch_collector_targets", state="up") == 10
            assert m(got, "meshwatch_collector_targets", state="down") == 3
            assert m(got, "meshwatch_collector_scrapes_total", result="ok") == 13 + 13 + 10
            assert m(got, "meshwatch_collector_scrapes_total", result="timeout") == 1
            assert m(got, "meshwatch_collector_scrapes_total", result="http") == 1
            assert m(got, "meshwatch_collector_scrapes_total", result="unparseable") == 1
            assert m(got, "meshwatch_collector_scrapes_total", result="connect") == 0
            assert m(got, "meshwatch_collector_parse_errors_total") == 3
            assert m(got, "meshwatch_collector_cycles_total") == 3
            assert m(got, "meshwatch_collector_samples_total") == sum(
                r.samples for r in (base, middle, report)
            )
            assert m(got, "meshwatch_collector_produce_errors_total") == 0
            assert m(got, "meshwatch_collector_scrape_duration_seconds_count") == 39
            # the hung scrape lasted the whole timeout
            assert m(got, "meshwatch_collector_scrape_duration_seconds_bucket", le="0.25") <= 38
            assert m(got, "meshwatch_collector_scrape_duration_seconds_sum") >= 0.5

        assert svc.endpoint is None  # closed on the way out

    asyncio.run(run())


class _Refused:
    def get(self, timeout: float) -> None:
        raise RuntimeError("NOT_ENOUGH_REPLICAS")


class RefusingProducer:
    """A producer whose every send fails, as a broker without enough replicas answers."""

    def send(self, topic: str, key: bytes, value: bytes) -> _Refused:
        return _Refused()

    def flush(self, timeout: float | None = None) -> None:
        return None


def test_produce_errors_are_counted_per_batch(tmp_path: Path) -> None:
    async def run() -> None:
        mesh = SimulatedMesh(default_demo_mesh("2.18"), seed=2, realtime=False, clock=lambda: T0)
        async with mesh, make_scrape_client(16, True) as client:
            c = Collector(
                cfg_for(tmp_path / "unused.json"), lambda: live_targets(mesh), RefusingProducer()
            )
            mesh.advance(WINDOW)
            report = await c.cycle(client, mesh.now)
            assert report.produce_errors == report.batches == len(DEMO_WORKLOADS)
            assert c.metrics.produce_errors._value.get() == len(DEMO_WORKLOADS)

    asyncio.run(run())


# -- worker processes ---------------------------------------------------------------------


def test_worker_processes_and_the_loop_build_the_same_batches(tmp_path: Path) -> None:
    """Two collectors scrape the same bodies each window: one parses inline, one in processes."""

    async def run() -> None:
        mesh = SimulatedMesh(
            default_demo_mesh("2.16"), scenario=EVERYTHING, seed=3, realtime=False, clock=lambda: T0
        )
        cfg = cfg_for(tmp_path / "unused.json")
        async with mesh, make_scrape_client(16, True) as client:
            inline = Collector(cfg, lambda: live_targets(mesh), None)
            pooled = Collector(cfg, lambda: live_targets(mesh), None)
            workers = pooled.processor = WorkerProcessor(2, *pooled._processor_args)
            await pooled.start()
            assert len(set(workers.pids)) == 2 and os.getpid() not in workers.pids
            try:
                for i in range(4):
                    if i == 2:
                        mesh.restart_pod(pod_names(mesh, "cart")[0])
                    mesh.advance(WINDOW)
                    a: list[GoldenBatch] = []
                    b: list[GoldenBatch] = []
                    inline.on_batches, pooled.on_batches = a.extend, b.extend
                    ra = await inline.cycle(client, mesh.now)
                    rb = await pooled.cycle(client, mesh.now)
                    assert a == b
                    assert (ra.up, ra.down, ra.samples) == (rb.up, rb.down, rb.samples)
                    assert sum(s.requests for x in a for s in x.samples) > 0 or i == 0
            finally:
                await pooled.close()
            assert isinstance(pooled.processor, InlineProcessor)

    asyncio.run(run())


def test_auto_workers_leave_a_core_to_the_loop() -> None:
    assert [resolve_workers("auto", n) for n in (1, 2, 3, 8, 64)] == [1, 1, 2, 4, 4]
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3


def test_the_container_cpu_limit_counts_not_the_node(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_a_dead_worker_costs_its_pods_a_baseline_and_nothing_is_double_counted(
    tmp_path: Path,
) -> None:
    """Bodies in flight to the dead worker fail; its pods restart from a baseline in a new one."""

    async def run() -> None:
        mesh = SimulatedMesh(default_demo_mesh("2.18"), seed=2, realtime=False, clock=lambda: T0)
        async with mesh, make_scrape_client(16, True) as client:
            c = Collector(cfg_for(tmp_path / "unused.json"), lambda: live_targets(mesh), None)
            workers = c.processor = WorkerProcessor(2, *c._processor_args)
            await c.start()
            shard = {t.pod: shard_of(Collector.pod_key(t), 2) for t in live_targets(mesh)}
            lost = {p for p, s in shard.items() if s == 0}
            assert 0 < len(lost) < 13
            got: list[GoldenBatch] = []
            c.on_batches = got.extend
            try:
                for _ in range(2):
                    mesh.advance(WINDOW)
                    assert (await c.cycle(client, mesh.now)).up == 13
                os.kill(workers.pids[0], signal.SIGKILL)
                mesh.advance(WINDOW)
                got.clear()
                report = await c.cycle(client, mesh.now)
                failed = {d.split(":")[0] for d in report.down}
                assert failed and failed <= lost
                assert all(": parser failed: BrokenProcessPool(" in d for d in report.down)
                counted = {p.pod for b in got for s in b.samples for p in s.pods}
                assert not counted & lost  # the others went to a fresh worker: baselines
                assert counted  # the healthy worker's pods still count

                mesh.advance(WINDOW)
                report = await c.cycle(client, mesh.now)
                assert (report.up, report.down) == (13, [])
                before = snapshot(mesh)
                mesh.advance(WINDOW)
                after = snapshot(mesh)
                got.clear()
                await c.cycle(client, mesh.now)
                assert_exact(
                    window_truth(before, after), {b.workload_key: b for b in got}, mesh.now
                )
            finally:
                await c.close()

    asyncio.run(run())


# -- timing: the window is cut on time ----------------------------------------------------


def test_scrapes_waiting_for_a_slot_time_out_at_the_shared_deadline(tmp_path: Path) -> None:
    """Two hung proxies hold both slots: everything else times out unstarted, on time."""
    timeout = 0.5

    async def run() -> None:
        async with served(tmp_path, timeout=timeout, concurrency=2) as (mesh, svc, client, _):
            targets = svc.discovery.targets()
            first, second = targets[0], targets[1]
            mesh.misbehave(first.pod, "hang")
            mesh.misbehave(second.pod, "hang")
            mesh.advance(WINDOW)
            started = time.perf_counter()
            report, batches = await cycle(svc, client, mesh.now)
            took = time.perf_counter() - started
            assert timeout <= took < timeout + 1.0, took
            assert report.down == [
                f"{first.pod}: timeout after 0.5s",
                f"{second.pod}: timeout after 0.5s",
            ] + [
                f"{t.pod}: timeout after 0.5s (never started: all 2 slots busy)"
                for t in targets[2:]
            ]
            # every workload's batch says which pods are down, and nothing else
            by_workload: dict[str, list[str]] = {}
            for t in targets:
                by_workload.setdefault(t.workload_key, []).append(t.pod)
            assert set(batches) == set(by_workload) == DEMO_WORKLOADS
            for wk, b in batches.items():
                assert (b.pods_up, b.pods_down, b.samples) == (
                    (),
                    tuple(sorted(by_workload[wk])),
                    (),
                )

    asyncio.run(run())


def test_a_scrape_that_started_late_is_cut_at_the_shared_deadline(tmp_path: Path) -> None:
    """The deadline is the cycle's, not each scrape's: a late starter gets only what is left."""
    timeout = 1.0

    async def run() -> None:
        async with served(tmp_path, timeout=timeout, concurrency=2) as (mesh, svc, client, _):
            t = svc.discovery.targets()
            mesh.misbehave(t[0].pod, "slow", delay=0.3)  # frees its slot at 0.3 s
            mesh.misbehave(t[1].pod, "hang")
            mesh.misbehave(t[2].pod, "slow", delay=0.9)  # starts at 0.3 s: in time on its own
            mesh.advance(WINDOW)
            started = time.perf_counter()
            report, batches = await cycle(svc, client, mesh.now)
            took = time.perf_counter() - started
            assert timeout <= took < timeout + 1.0, took
            assert report.up == 1
            assert report.down == [
                f"{t[1].pod}: timeout after 1s",
                f"{t[2].pod}: timeout after 1s",
            ] + [f"{x.pod}: timeout after 1s (never started: all 2 slots busy)" for x in t[3:]]
            assert batches[t[0].workload_key].pods_up == (t[0].pod,)

    asyncio.run(run())


def test_a_slow_proxy_counts_if_it_answers_in_time_and_is_down_if_not(tmp_path: Path) -> None:
    async def run() -> None:
        async with served(tmp_path, timeout=1.0) as (mesh, svc, client, _):
            mesh.advance(WINDOW)
            await cycle(svc, client, mesh.now)
            mesh.advance(WINDOW)
            before = snapshot(mesh)
            await cycle(svc, client, mesh.now)
            late, in_time = pod_names(mesh, "web")[0], pod_names(mesh, "web")[1]
            mesh.misbehave(late, "slow", delay=3.0)
            mesh.misbehave(in_time, "slow", delay=0.2)
            mesh.advance(WINDOW)
            after = snapshot(mesh, skip={late})
            report, batches = await cycle(svc, client, mesh.now)
            assert report.down == [f"{late}: timeout after 1s"]
            assert batches[WEB].pods_down == (late,)
            assert_exact(window_truth(before, after), batches, mesh.now, down={WEB: [late]})

    asyncio.run(run())


def test_overrun_windows_are_skipped_and_counted(tmp_path: Path) -> None:
    """A cycle that runs past the next boundary: the collector moves on to the next free window."""
    now = [1000.0 - 0.001]
    cfg = cfg_for(tmp_path / "unused.json")
    c = Collector(cfg, lambda: [], None, clock=lambda: now[0])
    stop = asyncio.Event()
    ran: list[float] = []

    async def fake_cycle(client: httpx.AsyncClient, window_end: float) -> CycleReport:
        ran.append(window_end)
        if len(ran) == 1:
            now[0] = window_end + 2 * WINDOW + 9.999  # this one overran two boundaries
        else:
            now[0] = window_end + 9.999
            stop.set()
        return CycleReport(window_end=window_end)

    c.cycle = fake_cycle  # type: ignore[method-assign]
    asyncio.run(c.run(stop))
    assert ran == [1000.0, 1030.0]
    assert c.metrics.windows_missed._value.get() == 2


# -- discovery feeding the collector ------------------------------------------------------


def test_file_sd_churn_and_duplicates_never_double_count(tmp_path: Path) -> None:
    async def run() -> None:
        async with served(tmp_path, scenario=EVERYTHING) as (mesh, svc, client, sd):
            assert isinstance(svc.discovery, FileSD)

            async def window(twice: bool = False) -> dict[str, GoldenBatch]:
                nonlocal before
                groups = file_sd_groups(mesh)
                write_json(sd, groups + groups if twice else groups)
                mesh.advance(WINDOW)
                after = snapshot(mesh)
                report, batches = await cycle(svc, client, mesh.now)
                assert report.down == []
                assert_exact(window_truth(before, after, restarted), batches, mesh.now)
                before = after
                return batches

            restarted: set[str] = set()
            mesh.advance(WINDOW)
            await cycle(svc, client, mesh.now)  # baseline
            mesh.advance(WINDOW)
            before = snapshot(mesh)
            await cycle(svc, client, mesh.now)

            await mesh.scale("payments", "ledger", 4)  # up: a new pod, new file
            batches = await window()
            assert len(batches[LEDGER].pods_up) == 4
            await mesh.scale("shop", "catalog", 1)  # down: the file drops it
            await window()
            new = mesh.restart_pod(pod_names(mesh, "cart")[1], rename=True)  # same URL, new name
            batches = await window()
            assert new in batches["shop/deploy/cart"].pods_up
            # a generator bug lists every proxy twice: kept once, every count still exact
            batches = await window(twice=True)
            assert len(svc.discovery.current) == len(svc.discovery._duplicates) == 13  # +1 -1
            assert all(len(set(b.pods_up)) == len(b.pods_up) for b in batches.values())

    asyncio.run(run())


# -- `meshwatch collect`, end to end --------------------------------------------------------


@pytest.mark.integration
def test_meshwatch_collect_serves_metrics_and_produces(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    """The CLI with file_sd discovery against a live simulated mesh and the real broker."""
    import yaml

    from pipeline.schema import decode
    from tests.kafka_helpers import read_records

    window = 1.0

    async def run() -> None:
        async with SimulatedMesh(default_demo_mesh("2.18"), seed=4, tick_seconds=0.1) as mesh:
            sd = tmp_path / "mesh.yaml"
            sd.write_text(yaml.safe_dump(file_sd_groups(mesh)))
            conf = tmp_path / "collector.yaml"
            conf.write_text(
                yaml.safe_dump(
                    {
                        "cluster": CLUSTER,
                        "kafka": {"bootstrap_servers": kafka_cfg.kafka.bootstrap_servers},
                        "topics": {"prefix": kafka_cfg.topics.prefix},
                        "window": {"seconds": window, "scrape_timeout_seconds": 0.8},
                        "collector": {
                            "discovery": {"kind": "file_sd", "files": [str(sd)]},
                            "parse_workers": 1,
                        },
                    }
                )
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pipeline.cli",
                "collect",
                "-c",
                str(conf),
                "--metrics-address=127.0.0.1:0",  # the flag every stage takes
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stderr is not None
            try:
                url = None
                lines: list[str] = []
                async with asyncio.timeout(60):
                    while url is None:
                        line = (await proc.stderr.readline()).decode()
                        assert line, "meshwatch collect exited:\n" + "".join(lines)
                        lines.append(line)
                        found = re.search(r"collector metrics on (http://\S+)", line)
                        url = found.group(1) if found else None
                drain = asyncio.create_task(proc.stderr.read())
                # readiness of another process: poll its endpoint until two cycles are in
                async with asyncio.timeout(60):
                    while True:
                        got = await read_metrics(url)
                        if m(got, "meshwatch_collector_cycles_total") >= 2:
                            break
                        await asyncio.sleep(0.2)
                assert m(got, "meshwatch_collector_targets", state="up") == 13
                assert m(got, "meshwatch_collector_discovered_targets") == 13
                assert m(got, "meshwatch_collector_produce_errors_total") == 0
                assert m(got, "meshwatch_collector_batches_total") >= 2 * len(DEMO_WORKLOADS)
                assert 0 < m(got, "meshwatch_collector_window_lag_seconds") < window
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
                await drain
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    asyncio.run(run())
    records = read_records(
        kafka_cfg, kafka_cfg.topics.golden, until=lambda rs: len(rs) >= 2 * len(DEMO_WORKLOADS)
    )
    batches = [decode(GoldenBatch, r.value) for r in records]
    assert {b.workload_key for b in batches} == DEMO_WORKLOADS
    assert all(b.window_end % window == 0 and b.pods_down == () for b in batches)


# -- bodies: inflated by the parser, capped ---------------------------------------------------


def test_bodies_are_inflated_off_the_loop_and_capped() -> None:
    import gzip

    body = b'response_total{direction="inbound",classification="success"} 3\n' * 100
    packed = gzip.compress(body)
    assert decode_body(packed, "gzip", len(body)) == body
    assert decode_body(body, "identity", len(body)) == body
    cases = [
        (packed, "gzip", len(body) - 1, f"body larger than {len(body) - 1} bytes"),
        (body, "identity", 100, "body larger than 100 bytes"),
        (packed[: len(packed) // 2], "gzip", 10**6, "truncated gzip body"),
        (
            packed[:10] + b"\xff" * 20,
            "gzip",
            10**6,
            "broken gzip body: Error -3 while decompressing data: invalid block type",
        ),
        (body, "br", 10**6, "unsupported Content-Encoding 'br'"),
    ]
    for raw, encoding, cap, message in cases:
        with pytest.raises(BodyError) as err:
            decode_body(raw, encoding, cap)
        assert str(err.value) == message
    state = PodState((4191,), 100, 900.0)
    bad = state.process("p@u", packed, "gzip", T0)
    assert (bad.ok, bad.deltas, bad.error) == (False, None, "body larger than 100 bytes")
