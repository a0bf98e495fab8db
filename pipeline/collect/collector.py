"""The collector stage: scrape every proxy each window, produce GoldenBatches.

Windows are cut on the clock (aligned to multiples of the window length),
not on "all scrapes finished": every scrape of a cycle shares one deadline
(the scrape timeout after the cycle starts), a slow proxy times out inside
its window and is reported down (``pods_down`` of its workload's batch), and
the rest of the mesh is on time. Each body is parsed and differenced as it
arrives, in worker processes when ``collector.parse_workers`` allows (see
:mod:`pipeline.collect.parsing`), and merging runs on a worker thread, so the
event loop only moves bytes. The batch for a workload is keyed by its
workload key so all its routes reach one partition.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from kafka import KafkaProducer

from pipeline.collect.extract import PodCounters
from pipeline.collect.golden import build_batches
from pipeline.collect.parsing import InlineProcessor, Parsed, PodProcessor, make_processor
from pipeline.collect.scrape import ScrapeResult, make_scrape_client, scrape_each
from pipeline.collect.selfmetrics import CollectorMetrics
from pipeline.collect.source import WindowSource
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
    scrape_seconds: float = 0.0  # from the cycle's start to the last body in
    parse_cpu_seconds: float = 0.0  # CPU spent parsing, in whichever process
    lag: float = 0.0  # how long after window_end the cycle finished (collector clock)
    skipped: str | None = None  # why the window has no batches at all (a gap), if so


@dataclass
class CollectorStats:
    cycles: int = 0
    samples: int = 0
    batches: int = 0
    parse_errors: int = 0
    produce_errors: int = 0
    skipped: int = 0  # windows a source could not build (gaps)
    last: CycleReport | None = None


#: Windows a window source may fall behind the clock before windows are given up.
_MAX_BEHIND = 3


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
        metrics: CollectorMetrics | None = None,
        source: WindowSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.targets = targets
        self.producer = producer
        self.clock = clock
        self.name = name
        self.stats = CollectorStats()
        self.last_cycle_at: float | None = None  # time.monotonic() of the last cycle's end
        self.on_batches: Callable[[list[GoldenBatch]], None] | None = None
        self.metrics = metrics if metrics is not None else CollectorMetrics()
        c = cfg.collector
        self._processor_args = (
            c.exclude_ports,
            c.max_body_bytes,
            max(900.0, 10 * cfg.window.seconds),  # forget pods unseen for this long
        )
        #: Turns bodies into deltas; inline until :meth:`start` brings up worker processes.
        self.processor: PodProcessor = InlineProcessor(*self._processor_args)
        #: Builds whole windows instead of scraping ``targets`` (e.g. from Prometheus).
        self.source = source

    async def start(self) -> None:
        """Start the parser workers ``collector.parse_workers`` asks for (idempotent).

        Workers keep their pods' previous counters, so starting them after
        cycles ran inline begins those pods again from a baseline.
        """
        if self.source is not None:
            return  # a window source parses nothing
        if isinstance(self.processor, InlineProcessor):
            self.processor = make_processor(self.cfg.collector.parse_workers, *self._processor_args)
        await self.processor.start()

    async def close(self) -> None:
        await self.processor.close()
        self.processor = InlineProcessor(*self._processor_args)

    @staticmethod
    def pod_key(target: Target) -> str:
        """Whose counters a body continues: a new pod behind a reused address starts afresh."""
        return f"{target.pod}@{target.url}"

    def build(
        self, results: Sequence[ScrapeResult], window_end: float
    ) -> tuple[CycleReport, list[GoldenBatch]]:
        """Process and fold one cycle's scrapes on this thread, whatever :attr:`processor` is."""
        if not isinstance(self.processor, InlineProcessor):
            raise RuntimeError("build() runs inline; close() the worker processes first")
        inline = self.processor
        return self.fold(
            [
                (
                    r,
                    inline.process_now(self.pod_key(r.target), r.body, r.encoding, window_end)
                    if r.body is not None
                    else None,
                )
                for r in results
            ],
            window_end,
        )

    def fold(
        self, scraped: Sequence[tuple[ScrapeResult, Parsed | None]], window_end: float
    ) -> tuple[CycleReport, list[GoldenBatch]]:
        """Batches from processed scrapes (``None``: no body)."""
        report = CycleReport(window_end=window_end, targets=len(scraped))
        pods: list[tuple[Target, PodCounters | None]] = []
        down: list[Target] = []
        for r, parsed in scraped:
            if r.body is None or parsed is None:
                down.append(r.target)
                report.down.append(f"{r.target.pod}: {r.error}")
                continue
            report.parse_cpu_seconds += parsed.cpu_seconds
            if parsed.errors:
                report.parse_errors += parsed.errors
                log.warning(
                    "%s: %d unparseable line(s) from %s, first at %s",
                    self.name,
                    parsed.errors,
                    r.target.url,
                    parsed.first_error,
                )
            if not parsed.ok:
                down.append(r.target)
                report.down.append(f"{r.target.pod}: {parsed.error}")
                continue
            pods.append((r.target, parsed.deltas))
        report.up = len(pods)
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

    async def _process(
        self, result: ScrapeResult, window_end: float
    ) -> tuple[ScrapeResult, Parsed | None]:
        parsed: Parsed | None = None
        if result.body is not None:
            key = self.pod_key(result.target)
            try:
                parsed = await self.processor.process(key, result.body, result.encoding, window_end)
            except Exception as exc:  # a dead worker process, not the body's fault
                log.error("%s: parsing %s failed: %r", self.name, result.target.url, exc)
                result = ScrapeResult(
                    result.target, None, f"parser failed: {exc!r}", result.seconds, "connect"
                )
        self.metrics.observe_scrape(result, parseable=parsed is None or parsed.ok)
        return result, parsed

    async def cycle(self, client: aiohttp.ClientSession, window_end: float) -> CycleReport:
        started = time.perf_counter()
        targets = list(self.targets())
        scraped = await scrape_each(
            client,
            targets,
            lambda r: self._process(r, window_end),
            timeout=self.cfg.window.scrape_timeout_seconds,
            concurrency=self.cfg.collector.concurrency,
            max_bytes=self.cfg.collector.max_body_bytes,
        )
        scrape_seconds = time.perf_counter() - started
        # Merging (~0.4 ms a proxy) off the loop, which keeps serving.
        report, batches = await asyncio.to_thread(self.fold, scraped, window_end)
        report.scrape_seconds = scrape_seconds
        if self.producer is not None and batches:
            report.produce_errors = await asyncio.to_thread(self._produce, batches)
        if self.on_batches is not None:
            self.on_batches(batches)
        report.seconds = time.perf_counter() - started
        finished_at = self.clock()
        report.lag = finished_at - window_end
        self._account(report)
        self.metrics.observe_cycle(report, finished_at)
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
        self.last_cycle_at = time.monotonic()
        s = self.stats
        s.cycles += 1
        s.samples += report.samples
        s.batches += report.batches
        s.parse_errors += report.parse_errors
        s.produce_errors += report.produce_errors
        s.skipped += report.skipped is not None
        s.last = report
        if report.down:
            log.warning("%s: %d target(s) down: %s", self.name, len(report.down), report.down[:5])

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle on window boundaries until ``stop`` is set.

        A cycle that overruns the next boundary makes the collector skip the
        windows it overran (counted in ``windows_missed_total`` and logged)
        rather than queue cycles behind each other and fall further behind.
        """
        window = self.cfg.window.seconds
        if self.source is not None:
            await self._run_source(stop, self.source)
            return
        await self.start()
        try:
            async with make_scrape_client(
                self.cfg.collector.concurrency, self.cfg.collector.gzip
            ) as client:
                last: float | None = None
                while not stop.is_set():
                    boundary = next_boundary(self.clock(), window)
                    if last is not None:
                        missed = round((boundary - last) / window) - 1
                        if missed > 0:
                            log.warning(
                                "%s: the cycle for %s overran %d window(s)",
                                self.name,
                                last,
                                missed,
                            )
                            self.metrics.missed(missed)
                    delay = boundary - self.clock()
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0))
                        break
                    except TimeoutError:
                        pass
                    await self.cycle(client, boundary)
                    last = boundary
        finally:
            await self.close()

    # -- window sources (Prometheus) ----------------------------------------------------

    async def cycle_source(self, window_end: float) -> CycleReport:
        """One window from :attr:`source`: build, produce, account; a skip produces nothing."""
        assert self.source is not None
        started = time.perf_counter()
        report, batches = await self.source.build_window(window_end)
        if self.producer is not None and batches:
            report.produce_errors = await asyncio.to_thread(self._produce, batches)
        if self.on_batches is not None and batches:
            self.on_batches(batches)
        report.seconds = time.perf_counter() - started
        finished_at = self.clock()
        report.lag = finished_at - window_end
        self._account(report)
        self.metrics.observe_cycle(report, finished_at)
        if report.skipped is not None:
            self.metrics.missed(1)
        return report

    async def _run_source(self, stop: asyncio.Event, source: WindowSource) -> None:
        """Build every window in turn, each ``settle_seconds`` after it ends.

        A source that keeps no state between windows can build a late window
        as well as a fresh one, so a slow window is followed by the ones it
        delayed; only past ``_MAX_BEHIND`` windows of lag are windows given up
        (counted as missed and logged), to catch up with the clock.
        """
        window = self.cfg.window.seconds
        end = next_boundary(self.clock(), window)
        try:
            while not stop.is_set():
                delay = end + source.settle_seconds - self.clock()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                        break
                    except TimeoutError:
                        pass
                behind = math.floor(-delay / window + 1e-9) if delay < 0 else 0
                if behind > _MAX_BEHIND:
                    log.warning(
                        "%s: %d window(s) behind the clock: giving up the %d oldest",
                        self.name,
                        behind,
                        behind,
                    )
                    self.metrics.missed(behind)
                    end += behind * window
                await self.cycle_source(end)
                end += window
        finally:
            await source.aclose()
