"""``meshwatch collect`` SIGKILLed at random windows while it scrapes a live simulated mesh.

The collector keeps per-series counters in memory only: a restarted one
needs one scrape to re-learn them, so the windows while it was down and its
first window back are not produced (that gap is by design: it cannot know
what happened while it was gone, and inventing a delta would be worse).
What must hold across SIGKILLs at seeded random moments:

- no GoldenBatch twice: each (workload, window) is produced at most once;
- no invented traffic: a restart does not turn the cumulative counters into
  one huge window (each route's requests stay within a few times its
  median window);
- every gap in the windows is a kill's (no other window is skipped), and
  the collector is producing again after every restart (its length is the
  restart time, reported, not asserted: it depends on the machine's load).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import threading
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import MeshwatchConfig
from pipeline.demo.run import demo_mesh
from pipeline.schema import GoldenBatch, decode
from pipeline.simulate import ScrapeTarget, SimulatedMesh
from tests.kafka_helpers import read_records
from tests.test_reliability_support import (
    StageProcess,
    kafka_section,
    write_stage_config,
)

pytestmark = pytest.mark.integration

WINDOW = 1.0


class MeshThread:
    """A realtime simulated mesh serving /metrics from its own event loop."""

    def __init__(self, seed: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.mesh = SimulatedMesh(demo_mesh(), realtime=True, seed=seed)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> list[ScrapeTarget]:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.mesh.start(), self.loop).result(30)
        return list(self.mesh.targets)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.mesh.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def batches(cfg: MeshwatchConfig, at_least: int) -> list[GoldenBatch]:
    records = read_records(cfg, cfg.topics.golden, lambda rs: len(rs) >= at_least, timeout=60)
    return [decode(GoldenBatch, r.value) for r in records]


def test_collector_sigkilled_at_random_never_duplicates_or_invents(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("MESHWATCH_RELIABILITY_SEED", "20261127")))
    kills = int(os.environ.get("MESHWATCH_RELIABILITY_COLLECTOR_KILLS", "3"))
    with MeshThread(seed=5) as targets:
        workloads = {(t.namespace, t.workload) for t in targets}
        data: dict[str, Any] = {
            "kafka": kafka_section(list(kafka_cfg.kafka.bootstrap_servers)),
            "topics": {"prefix": kafka_cfg.topics.prefix},
            "observe": {"enabled": False},
            "log_level": "WARNING",
            "window": {"seconds": WINDOW, "scrape_timeout_seconds": 0.8},
            "collector": {
                "targets": [
                    {
                        "url": t.url,
                        "namespace": t.namespace,
                        "workload": t.workload,
                        "kind": t.kind,
                        "pod": t.pod,
                    }
                    for t in targets
                ]
            },
        }
        conf = write_stage_config(tmp_path / "collect.yaml", data)
        collector = StageProcess("collect", conf, tmp_path / "collect.log").start()
        produced = 0
        try:
            for _ in range(kills):
                # run for a random number of windows, then SIGKILL mid-cycle
                want = produced + len(workloads) * rng.randint(3, 6)
                got = batches(kafka_cfg, want)
                produced = len(got)
                pause = threading.Event()
                pause.wait(rng.uniform(0.0, WINDOW))  # a random point within the window
                collector.kill()
                collector.start()
            # producing again after the last restart
            produced = len(batches(kafka_cfg, produced + 1)) + len(workloads) * 3
            got = batches(kafka_cfg, produced)
        finally:
            code = collector.stop()
    assert code == 0, collector.log_tail()

    ids = Counter(b.id for b in got)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]

    per_route: dict[str, list[int]] = defaultdict(list)
    for b in got:
        for s in b.samples:
            per_route[s.route_key].append(s.requests)
    for route, values in per_route.items():
        if len(values) < 5:
            continue
        median = statistics.median(values)
        assert max(values) <= 5 * max(median, 20), (route, median, max(values))

    windows = sorted({b.window_end for b in got})
    gaps = [round((b - a) / WINDOW) - 1 for a, b in pairwise(windows)]
    assert sum(1 for g in gaps if g > 0) <= kills, gaps
    print(
        f"\ncollector: {kills} SIGKILLs, {len(got)} batches over {len(windows)} windows, "
        f"gaps {[g for g in gaps if g]}, no duplicate, no invented traffic"
    )
