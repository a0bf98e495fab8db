"""What the collector needs from a source that builds whole windows by itself.

The direct scrape is the collector's own loop (scrape, parse, deltas). A
*window source* instead hands over finished windows: the Prometheus source
(:mod:`pipeline.collect.prometheus_source`) asks a Prometheus that already
scrapes the proxies. The collector still cuts windows on the clock, produces
the batches and keeps the statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pipeline.collect.collector import CycleReport
    from pipeline.schema import GoldenBatch


class WindowSource(Protocol):
    @property
    def settle_seconds(self) -> float:
        """How long after a window's end to wait before building it."""
        ...

    async def build_window(self, window_end: float) -> tuple[CycleReport, list[GoldenBatch]]:
        """The window's batches, or none and a report whose ``skipped`` says why."""
        ...

    async def aclose(self) -> None: ...
