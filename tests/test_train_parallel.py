"""Training history in time segments and in worker processes, against the real broker."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_producer
from pipeline.schema import GoldenBatch, GoldenSample, encode
from pipeline.train.dataset import Dataset
from pipeline.train.history import describe_plan, plan_segments
from pipeline.train.job import EXIT_ERROR, TrainOptions, TrainResult, _read_golden, run
from pipeline.train.parallel import Progress as ReadProgress
from pipeline.train.parallel import ReadTask, read_partitions, split_partitions

WINDOW = 10.0
HOURS = 6
WORKLOADS = 8
ROUTES = 3  # per workload
DAY, WEEK = 86400.0, 7 * 86400.0


def test_segments_are_spread_over_the_range_and_cover_the_daily_and_weekly_cycle() -> None:
    lo, hi = 1_700_000_000.0, 1_700_000_000.0 + WEEK
    plan = plan_segments(lo, hi, segments=24, segment_s=1200.0, warmup_s=900.0)
    assert len(plan) == 24
    assert plan[0].start == lo and plan[-1].end == pytest.approx(hi)  # first to last
    steps = np.diff([s.start for s in plan])
    assert np.allclose(steps, steps[0]) and steps[0] > 2100.0  # even, no overlap
    for s in plan:
        assert s.keep_from - s.start == 900.0 and s.end - s.keep_from == 1200.0
        assert not s.whole
    info = describe_plan(plan, lo, hi)
    assert info["share_read"] == pytest.approx(24 * 2100.0 / WEEK)
    assert info["hours_of_day_covered"] >= 20 and info["weekdays_covered"] == 7
    # segments that would cover the range anyway: the whole range in one pass
    whole = plan_segments(lo, lo + 3600.0, segments=24, segment_s=1200.0, warmup_s=900.0)
    assert len(whole) == 1 and whole[0].whole and (whole[0].start, whole[0].end) == (lo, lo + 3600)
    assert plan_segments(lo, hi, segments=0, segment_s=1200.0, warmup_s=0.0)[0].whole


def test_partitions_are_dealt_to_disjoint_groups() -> None:
    groups = split_partitions(range(6), 4)
    assert sorted(p for g in groups for p in g) == list(range(6)) and len(groups) == 4
    assert split_partitions(range(2), 8) == [(0,), (1,)]
    # by size: the slowest worker gets as little as can be
    sizes = {0: 900, 1: 100, 2: 500, 3: 450, 4: 50, 5: 0}
    groups = split_partitions(range(6), 2, sizes)
    assert sorted(p for g in groups for p in g) == list(range(6))
    assert sorted(sum(sizes[p] for p in g) for g in groups) == [1000, 1000]


def test_default_workers_follow_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    from pipeline.train.parallel import _cgroup_cpus, default_workers

    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")
    assert _cgroup_cpus(str(limit)) == 2  # 1.5 CPUs: two workers
    limit.write_text("max 100000\n")
    assert _cgroup_cpus(str(limit)) is None
    assert _cgroup_cpus(str(tmp_path / "absent")) is None
    assert 1 <= default_workers() <= (os.cpu_count() or 1)


def _history(cfg: MeshwatchConfig) -> tuple[float, float]:
    """HOURS of 10 s windows of WORKLOADS × ROUTES steady routes, stamped like the
    collector stamps them (just after the window's end); returns (first, last) end."""
    rng = np.random.default_rng(3)
    t0 = (time.time() // 3600 - HOURS - 2) * 3600.0
    n = int(HOURS * 3600 / WINDOW)
    rate = rng.uniform(100, 400, (WORKLOADS, ROUTES))
    producer = make_producer(cfg.kafka, "test")
    try:
        for i in range(1, n + 1):
            end = t0 + i * WINDOW
            reqs = rng.poisson(rate)
            fails = rng.binomial(reqs, 0.01)
            p50 = rng.lognormal(np.log(20.0), 0.1, (WORKLOADS, ROUTES))
            for w in range(WORKLOADS):
                samples = tuple(
                    GoldenSample(
                        window_end=end,
                        window_seconds=WINDOW,
                        namespace=f"ns{w}",
                        workload_kind="deploy",
                        workload="api",
                        direction="inbound",
                        route=f"GET /r{r}",
                        requests=int(reqs[w, r]),
                        successes=int(reqs[w, r] - fails[w, r]),
                        failures=int(fails[w, r]),
                        p50_ms=float(p50[w, r]),
                        p95_ms=float(3 * p50[w, r]),
                        p99_ms=float(5 * p50[w, r]),
                        mtls_requests=int(reqs[w, r]),
                    )
                    for r in range(ROUTES)
                )
                b = GoldenBatch(workload_key=f"ns{w}/deploy/api", window_end=end,
                                window_seconds=WINDOW, samples=samples)  # fmt: skip
                producer.send(cfg.topics.golden, key=b.workload_key.encode(), value=encode(b),
                              timestamp_ms=int((end + 0.5) * 1000))  # fmt: skip
        producer.flush()
    finally:
        producer.close()
    return t0 + WINDOW, t0 + n * WINDOW


def _read(cfg: MeshwatchConfig, **opts: object) -> tuple[Dataset, TrainResult]:
    options = TrainOptions(since=0.0, until=4e9, **opts)  # type: ignore[arg-type]
    result = TrainResult(EXIT_ERROR)
    return _read_golden(cfg, options, lambda n: None, result), result


@pytest.fixture(scope="module")
def golden(broker: str) -> tuple[MeshwatchConfig, float, float]:
    """One topic of history shared by the tests below (producing it takes a while)."""
    import uuid

    from pipeline.config import load_config
    from pipeline.kafka.topics import ensure_topics

    cfg = load_config(
        None,
        {
            "kafka": {"bootstrap_servers": [broker], "session_timeout_ms": 2000,
                      "heartbeat_interval_ms": 500, "poll_timeout_ms": 100, "linger_ms": 5},
            "topics": {"prefix": f"t{uuid.uuid4().hex[:8]}."},
        },
    )  # fmt: skip
    ensure_topics(cfg)
    first, last = _history(cfg)
    return cfg, first, last


@pytest.mark.integration
def test_segments_read_only_their_windows_and_warm_the_baselines_first(
    golden: tuple[MeshwatchConfig, float, float],
) -> None:
    cfg, first, last = golden
    routes = WORKLOADS * ROUTES
    ds, result = _read(cfg, segments=3, segment_minutes=20, warmup_minutes=10, workers=1)
    lo, hi = result.history["range_start"], result.history["range_end"]
    # the range is the topic's history (the embedded broker's end offset may be a batch low)
    assert lo == pytest.approx(first, abs=0.01) and last - 300 <= hi <= last
    plan = plan_segments(lo, hi, segments=3, segment_s=1200.0, warmup_s=600.0)
    assert result.history["segments"] == 3
    assert result.history["share_read"] == pytest.approx(3 * 1800.0 / (hi - lo))
    # exactly the windows of the segments were judged, the warm-up ones not sampled
    assert ds.samples_seen == routes * 3 * 180
    assert ds.warmup_samples == routes * 3 * 60
    assert ds.windows_seen == 3 * 180
    inside = np.zeros(len(ds), dtype=bool)
    for s in plan:
        rows = (ds.window_end > s.keep_from) & (ds.window_end <= s.end)
        inside |= rows
        # warmed: the first sampled window of the segment is already judged
        assert ds.window_end[rows].min() <= s.keep_from + WINDOW
    assert inside.all() and len(ds) > 0
    # without a warm-up, the detector's own warm-up (30 windows) eats the start
    cold, _ = _read(cfg, segments=3, segment_minutes=20, warmup_minutes=0, workers=1)
    for s in plan_segments(lo, hi, segments=3, segment_s=1200.0, warmup_s=0.0):
        rows = (cold.window_end > s.keep_from) & (cold.window_end <= s.end)
        assert cold.window_end[rows].min() >= s.keep_from + 29 * WINDOW


@pytest.mark.integration
def test_two_workers_keep_exactly_the_rows_one_process_keeps(
    golden: tuple[MeshwatchConfig, float, float],
) -> None:
    cfg = golden[0]
    common = {"segments": 4, "segment_minutes": 15, "warmup_minutes": 10, "max_rows": 1500}
    one, r1 = _read(cfg, workers=1, **common)
    two, r2 = _read(cfg, workers=2, **common)
    assert r1.history["workers"] == 1 and r2.history["workers"] == 2
    judged_rows = WORKLOADS * ROUTES * 4 * 90
    assert len(one) == 1500 < judged_rows  # the reservoir really chose
    assert one.route == two.route
    assert np.array_equal(one.window_end, two.window_end)
    assert np.array_equal(one.features, two.features, equal_nan=True)
    for k in one.judged:
        assert np.array_equal(one.judged[k], two.judged[k])
        assert np.array_equal(one.baseline_score[k], two.baseline_score[k], equal_nan=True)
    assert (one.samples_seen, one.routes_seen, one.windows_seen) == (
        two.samples_seen, two.routes_seen, two.windows_seen,
    )  # fmt: skip
    # the seed decides the sample
    other, _ = _read(cfg, workers=1, seed=1, **common)
    assert list(zip(other.route, other.window_end, strict=True)) != list(
        zip(one.route, one.window_end, strict=True)
    )


def dying_reader(task: ReadTask, progress: ReadProgress | None) -> object:
    """A worker killed mid-read (as the kernel's OOM killer would) on partition 0."""
    if 0 in task.partitions:
        os.kill(os.getpid(), signal.SIGKILL)
    return read_partitions(task, progress)


def failing_reader(task: ReadTask, progress: ReadProgress | None) -> object:
    if 1 in task.partitions:
        raise OSError("disk on fire")
    return read_partitions(task, progress)


@pytest.mark.integration
def test_a_worker_that_dies_or_fails_fails_the_job_with_an_error(
    golden: tuple[MeshwatchConfig, float, float], tmp_path: Path
) -> None:
    cfg = golden[0]
    cfg = cfg.model_copy(update={"models": replace_models(cfg, tmp_path)})
    opts = TrainOptions(since=0.0, until=4e9, segments=2, segment_minutes=10, warmup_minutes=5,
                        workers=2, reader=dying_reader, scenario_windows=0)  # fmt: skip
    result = run(cfg, opts)
    assert result.exit_code == EXIT_ERROR
    assert result.dataset is None and result.version is None
    assert any("killed by SIGKILL" in r and "partitions 0" in r for r in result.reasons), (
        result.reasons
    )
    result = run(cfg, replace(opts, reader=failing_reader))
    assert result.exit_code == EXIT_ERROR
    assert any("OSError: disk on fire" in r for r in result.reasons), result.reasons
    # the same job with healthy workers gets past the history phase
    healthy = run(cfg, replace(opts, reader=None, report_dir=tmp_path / "report"))
    assert healthy.exit_code != EXIT_ERROR and healthy.dataset is not None, healthy.reasons
    # the report's summary says what share of the range was read, and by how many workers
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["history"]["segments"] == 2 and summary["history"]["workers"] == 2
    assert 0 < summary["history"]["share_read"] < 0.2


def test_bad_segment_and_worker_options_are_configuration_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli import main

    assert main(["train", "--segments", "-1", "--scenario-windows", "0"]) == 2
    assert "--segments must be >= 0" in capsys.readouterr().err
    assert main(["train", "--segment-minutes", "0", "--scenario-windows", "0"]) == 2
    assert main(["train", "--workers", "-2", "--scenario-windows", "0"]) == 2


def replace_models(cfg: MeshwatchConfig, tmp: Path) -> object:
    return cfg.models.model_copy(
        update={
            "registry_dir": str(tmp / "registry"),
            "reports_dir": str(tmp / "reports"),
            "min_training_windows": 100,
        }
    )
