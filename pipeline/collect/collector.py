"""The collector stage: scrape every proxy each window, produce GoldenBatches.

Windows are cut on the clock (aligned to multiples of the window length),
not on "all scrapes finished": a slow proxy times out inside its window and
is reported down, and the rest of the mesh is on time. The batch for a
workload is keyed by its workload key so all its routes reach one partition.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from kafka import KafkaProducer

from pipeline.collect.deltas import DeltaTracker
from pipeline.collect.exposition import parse
from pipeline.collect.extract import PodCounters, extract
from pipeline.collect.golden import build_batches
from pipeline.collect.scrape import ScrapeResult, make_scrape_client, scrape_all
from pipeline.collect.targets import Target
from pipeline.config import MeshwatchConfig
from pipeline.schema import GoldenBatch, encode

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    window_end: float
    targets: int = 0
    up: int = 0
    down: list[str] = field(default_factory=list)
    parse_errors: int = 0
    batches: int = 0
    samples: int = 0
    produce_errors: int = 0
    seconds: float = 0.0


@dataclass
class CollectorStats:
    cycles: int = 0
    samples: int = 0
    batches: int = 0
    parse_errors: int = 0
    produce_errors: int = 0
    last: CycleReport | None = None


def next_boundary(now: float, window: float) -> float:
    return math.floor(now / window + 1e-9) * window + window


class Collector:
    def __init__(
        self,
        cfg: MeshwatchConfig,
        targets: Callable[[], Sequence[Target]],
        producer: KafkaProducer | None,
        *,
        clock: Callable[[], float] = time.time,
        name: str = "collector",
    ) -> None:
        self.cfg = cfg
        self.targets = targets
        self.producer = producer
        self.clock = clock
        self.name = name
        self.tracker = DeltaTracker(forget_after_seconds=max(900.0, 10 * cfg.window.seconds))
        self.stats = CollectorStats()
        self.on_batches: Callable[[list[GoldenBatch]], None] | None = None

    def build(
        self, results: Sequence[ScrapeResult], window_end: float
    ) -> tuple[CycleReport, list[GoldenBatch]]:
        """Parse and fold one cycle's scrapes; the pure part of a cycle."""
        report = CycleReport(window_end=window_end, targets=len(results))
        pods: list[tuple[Target, PodCounters | None]] = []
        down: list[Target] = []
        exclude = self.cfg.collector.exclude_ports
        for r in results:
            if r.body is None:
                down.append(r.target)
                report.down.append(f"{r.target.pod}: {r.error}")
                continue
            parsed = parse(r.body)
            if parsed.errors:
                report.parse_errors += len(parsed.errors)
                first = parsed.errors[0]
                log.warning(
                    "%s: %d unparseable line(s) from %s, first at line %d: %s",
                    self.name,
                    len(parsed.errors),
                    r.target.url,
                    first.line_no,
                    first.message,
                )
                if not parsed.samples:
                    down.append(r.target)
                    report.down.append(f"{r.target.pod}: no parseable samples")
                    continue
            counters = extract(parsed.samples, exclude)
            pods.append((r.target, self.tracker.update(r.target.url, counters, window_end)))
        report.up = len(pods)
        self.tracker.forget_stale(window_end)
        batches = build_batches(
            pods,
            down,
            window_end=window_end,
            window_seconds=self.cfg.window.seconds,
            cluster=self.cfg.cluster,
            collector=self.name,
        )
        report.batches = len(batches)
        report.samples = sum(len(b.samples) for b in batches)
        return report, batches

    async def cycle(self, client: httpx.AsyncClient, window_end: float) -> CycleReport:
        started = time.perf_counter()
        targets = list(self.targets())
        results = await scrape_all(
            client,
            targets,
            timeout=self.cfg.window.scrape_timeout_seconds,
            concurrency=self.cfg.collector.concurrency,
            max_bytes=self.cfg.collector.max_body_bytes,
        )
        report, batches = self.build(results, window_end)
        if self.producer is not None and batches:
            report.produce_errors = await asyncio.to_thread(self._produce, batches)
        if self.on_batches is not None:
            self.on_batches(batches)
        report.seconds = time.perf_counter() - started
        self._account(report)
        return report

    def _produce(self, batches: Sequence[GoldenBatch]) -> int:
        assert self.producer is not None
        topic = self.cfg.topics.golden
        futures = [
            self.producer.send(topic, key=b.workload_key.encode(), value=encode(b)) for b in batches
        ]
        self.producer.flush(timeout=max(self.cfg.window.seconds, 5.0))
        errors = 0
        for f in futures:
            try:
                f.get(timeout=0.1)
            except Exception as exc:
                errors += 1
                log.error("%s: could not produce a golden batch: %s", self.name, exc)
        return errors

    def _account(self, report: CycleReport) -> None:
        s = self.stats
        s.cycles += 1
        s.samples += report.samples
        s.batches += report.batches
        s.parse_errors += report.parse_errors
        s.produce_errors += report.produce_errors
        s.last = report
        if report.down:
            log.warning("%s: %d target(s) down: %s", self.name, len(report.down), report.down[:5])

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle on window boundaries until ``stop`` is set."""
        window = self.cfg.window.seconds
        async with make_scrape_client(
            self.cfg.collector.concurrency, self.cfg.collector.gzip
        ) as client:
            while not stop.is_set():
                boundary = next_boundary(self.clock(), window)
                delay = boundary - self.clock()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0))
                    break
                except TimeoutError:
                    pass
                await self.cycle(client, boundary)
