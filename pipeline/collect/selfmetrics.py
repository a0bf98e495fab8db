"""The collector's own health, on a Prometheus ``/metrics`` endpoint.

Everything lives in a registry of its own (never prometheus_client's global
one), so two collectors in one process (tests, the demo) do not collide and
nothing else in the process leaks into the page. The page is served by
:class:`pipeline.observe.endpoint.ObservabilityEndpoint` (with ``/healthz``
and ``/readyz``) on a thread of its own, not by the event loop: it answers
even while a cycle keeps the loop busy, which is when it is most wanted.

Metrics (all prefixed ``meshwatch_collector_``):

- ``targets{state="up"|"down"}``: the last cycle's scrape outcome;
- ``discovered_targets`` and ``discovery_errors_total``: what discovery yields;
- ``scrape_duration_seconds`` (histogram) and ``scrapes_total{result}``:
  ``ok``, ``timeout`` (including scrapes still waiting for a slot at the
  deadline), ``http`` (not 200), ``too_large``, ``connect`` (refused, reset,
  or the parser worker died), ``unparseable`` (a body with nothing usable in
  it: no parseable line, broken gzip, too large once inflated);
- ``samples_total`` / ``batches_total``: GoldenSamples and GoldenBatches made;
- ``parse_errors_total``: exposition lines that could not be parsed;
- ``parse_cpu_seconds_total``: CPU spent parsing, in whichever process;
- ``produce_errors_total``: batches Kafka did not acknowledge;
- ``cycle_duration_seconds`` (histogram), ``window_lag_seconds`` (how long
  after its window's end the last cycle finished), ``windows_missed_total``
  (windows skipped because a cycle overran the next boundary), ``cycles_total``
  and ``last_cycle_timestamp_seconds``;
- the ``process_*`` metrics of the collector process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pipeline.collect.scrape import ScrapeResult

if TYPE_CHECKING:
    from pipeline.collect.collector import CycleReport

PREFIX = "meshwatch_collector_"
SCRAPE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)


class _DiscoveryCollector:
    """Reads discovery's counters at scrape time (no copies to keep in step)."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        targets, errors = self._read()
        g = GaugeMetricFamily(
            PREFIX + "discovered_targets", "Targets the discovery currently yields."
        )
        g.add_metric([], targets)
        yield g
        c = CounterMetricFamily(
            PREFIX + "discovery_errors", "Discovery failures (API errors, broken files)."
        )
        c.add_metric([], errors)
        yield c

    def describe(self) -> Iterator[Any]:
        return self.collect()


class CollectorMetrics:
    """The collector's metrics in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.targets = Gauge(
            PREFIX + "targets",
            "Targets in the last cycle, by scrape outcome.",
            ["state"],
            registry=r,
        )
        self.scrape_duration = Histogram(
            PREFIX + "scrape_duration_seconds",
            "Time to fetch one proxy's /metrics (failures included).",
            buckets=SCRAPE_BUCKETS,
            registry=r,
        )
        self.scrapes = Counter(PREFIX + "scrapes", "Scrapes by result.", ["result"], registry=r)
        self.samples = Counter(PREFIX + "samples", "GoldenSamples produced.", registry=r)
        self.batches = Counter(PREFIX + "batches", "GoldenBatches produced.", registry=r)
        self.parse_errors = Counter(
            PREFIX + "parse_errors", "Exposition lines that could not be parsed.", registry=r
        )
        self.parse_cpu = Counter(
            PREFIX + "parse_cpu_seconds", "CPU time spent parsing bodies.", registry=r
        )
        self.produce_errors = Counter(
            PREFIX + "produce_errors", "GoldenBatches Kafka did not acknowledge.", registry=r
        )
        self.cycles = Counter(PREFIX + "cycles", "Completed cycles.", registry=r)
        self.cycle_duration = Histogram(
            PREFIX + "cycle_duration_seconds",
            "One cycle: discovery, scrapes, parsing, deltas, producing.",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.window_lag = Gauge(
            PREFIX + "window_lag_seconds",
            "How long after its window's end the last cycle finished.",
            registry=r,
        )
        self.windows_missed = Counter(
            PREFIX + "windows_missed", "Windows skipped because a cycle overran.", registry=r
        )
        self.last_cycle = Gauge(
            PREFIX + "last_cycle_timestamp_seconds",
            "Unix time the last cycle finished.",
            registry=r,
        )
        for state in ("up", "down"):
            self.targets.labels(state)
        for result in ("ok", "timeout", "http", "too_large", "connect", "unparseable"):
            self.scrapes.labels(result)
        ProcessCollector(registry=r)
        self._discovery: _DiscoveryCollector | None = None

    def observe_scrape(self, result: ScrapeResult, *, parseable: bool = True) -> None:
        """One scrape; a body with no parseable sample counts as ``unparseable``."""
        self.scrape_duration.observe(result.seconds)
        outcome: str
        if not result.ok:
            outcome = result.failure or "connect"
        else:
            outcome = "ok" if parseable else "unparseable"
        self.scrapes.labels(outcome).inc()

    def observe_cycle(self, report: CycleReport, finished_at: float) -> None:
        self.targets.labels("up").set(report.up)
        self.targets.labels("down").set(len(report.down))
        self.samples.inc(report.samples)
        self.batches.inc(report.batches)
        self.parse_errors.inc(report.parse_errors)
        self.parse_cpu.inc(report.parse_cpu_seconds)
        self.produce_errors.inc(report.produce_errors)
        self.cycles.inc()
        self.cycle_duration.observe(report.seconds)
        self.window_lag.set(report.lag)
        self.last_cycle.set(finished_at)

    def missed(self, windows: int) -> None:
        self.windows_missed.inc(windows)

    def watch_discovery(self, read: Callable[[], tuple[int, int]]) -> None:
        """Expose ``(targets, errors)`` as read from discovery at each scrape of the page."""
        if self._discovery is not None:
            self.registry.unregister(self._discovery)
        self._discovery = _DiscoveryCollector(read)
        self.registry.register(self._discovery)
