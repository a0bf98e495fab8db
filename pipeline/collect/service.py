"""The collector as ``meshwatch collect`` runs it: discovery + cycles + its own /metrics.

    async with CollectorService(cfg, producer) as svc:
        await svc.run(stop)

Entering starts discovery (the first Kubernetes list, the first read of the
file_sd files), the collector's ``/metrics``, ``/healthz`` and ``/readyz`` on
``collector.metrics_address`` (when set) or else the stage-wide
``observe.address`` (which ``--metrics-address`` sets), and the parser worker
processes; leaving stops them in the reverse order.

``/healthz`` fails once no cycle has finished for three windows (at least a
minute): a wedged loop is restarted by the kubelet. ``/readyz`` is true from
the end of start-up until the stop signal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from kafka import KafkaProducer

from pipeline.collect.collector import Collector
from pipeline.collect.discovery import Discovery, make_discovery
from pipeline.collect.selfmetrics import CollectorMetrics
from pipeline.collect.source import WindowSource
from pipeline.config import MeshwatchConfig
from pipeline.observe.endpoint import ObservabilityEndpoint

log = logging.getLogger(__name__)


class MetricsAddressError(Exception):
    """The metrics endpoint cannot listen where it was told to."""


class CollectorService:
    def __init__(
        self,
        cfg: MeshwatchConfig,
        producer: KafkaProducer | None,
        *,
        discovery: Discovery | None = None,
        clock: Callable[[], float] = time.time,
        source: WindowSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.discovery = discovery if discovery is not None else make_discovery(cfg.collector)
        self.metrics = CollectorMetrics()
        if source is None and cfg.collector.source == "prometheus":
            from pipeline.collect.prometheus_source import PrometheusSource

            source = PrometheusSource(cfg)
        self.collector = Collector(
            cfg, self.discovery.targets, producer, clock=clock, metrics=self.metrics, source=source
        )
        self.endpoint: ObservabilityEndpoint | None = None
        self._started = time.monotonic()
        self._state = "starting"

    @property
    def address(self) -> str | None:
        """Where ``/metrics`` is served: the collector's own setting, else the stage-wide one."""
        if self.cfg.collector.metrics_address:
            return self.cfg.collector.metrics_address
        return self.cfg.observe.address if self.cfg.observe.enabled else None

    def live(self) -> tuple[bool, str]:
        last = self.collector.last_cycle_at
        since = time.monotonic() - (last if last is not None else self._started)
        limit = max(60.0, 3 * self.cfg.window.seconds)
        if since > limit:
            what = "no cycle finished" if last is not None else "no first cycle"
            return False, f"{what} for {since:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._state != "running":
            return False, self._state
        return True, f"ready, {len(self.discovery.current)} target(s)"

    async def __aenter__(self) -> Self:
        await self.discovery.start()
        try:
            self.metrics.watch_discovery(self.discovery.counts)
            address = self.address
            if address:
                try:
                    self.endpoint = ObservabilityEndpoint(
                        address, self.metrics.registry, live=self.live, ready=self.ready
                    ).start()
                except OSError as exc:
                    raise MetricsAddressError(
                        f"cannot listen on {address}: {exc.strerror or exc}"
                    ) from exc
                log.info("collector metrics on %s/metrics", self.endpoint.url)
            await self.collector.start()
        except BaseException:
            await self._stop()
            raise
        self._state = "running"
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._state = "stopping"
        await self.collector.close()
        await self.discovery.close()
        if self.endpoint is not None:
            await asyncio.to_thread(self.endpoint.stop)
            self.endpoint = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.collector.run(stop)
