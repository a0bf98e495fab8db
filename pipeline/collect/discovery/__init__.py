"""Where the collector's targets come from: one small interface, three sources.

A :class:`Discovery` yields the current list of :class:`Target` s each time
the collector starts a cycle (:meth:`Discovery.targets`), and may keep
itself up to date in the background between cycles (:meth:`Discovery.start`
/ :meth:`Discovery.close`). The sources:

- :class:`~pipeline.collect.discovery.static.StaticTargets`: the fixed
  ``collector.targets`` list;
- :class:`~pipeline.collect.discovery.file_sd.FileSD`: Prometheus ``file_sd``
  JSON/YAML files, re-read when they change;
- :class:`~pipeline.collect.discovery.kubernetes.KubernetesPods`: meshed pods
  listed and then watched through the Kubernetes API.

Every source hands its list through :meth:`Discovery._publish`, which drops
repeated URLs (two entries for one proxy would count its traffic twice) and
wakes anyone waiting in :meth:`Discovery.wait_for`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

from pipeline.collect.targets import Target

if TYPE_CHECKING:
    from pipeline.config import CollectorConfig

log = logging.getLogger(__name__)


class DiscoveryError(Exception):
    """Discovery cannot work as configured (a bad selector, no credentials, ...)."""


class Discovery:
    """The current targets of one source."""

    kind: ClassVar[str] = "base"

    def __init__(self) -> None:
        self._targets: list[Target] = []
        self._updated = asyncio.Event()
        self._duplicates: frozenset[str] = frozenset()
        #: Failures so far (API errors, unreadable files); exported as a metric.
        self.errors = 0

    # -- what the collector calls --------------------------------------------------------

    def targets(self) -> list[Target]:
        """The targets to scrape now (called once per cycle)."""
        return self._targets

    async def start(self) -> None:
        """Begin background work; returns once a first list was attempted."""

    async def close(self) -> None:
        """Stop background work."""

    # -- observing ------------------------------------------------------------------------

    @property
    def current(self) -> list[Target]:
        """The last published list, without refreshing anything."""
        return self._targets

    def counts(self) -> tuple[int, int]:
        """``(targets, errors)`` for the collector's own metrics."""
        return len(self._targets), self.errors

    async def wait_for(self, predicate: Callable[[list[Target]], bool]) -> list[Target]:
        """Wait until the published list satisfies ``predicate`` (callers add a timeout)."""
        while not predicate(self._targets):
            await self._updated.wait()
        return self._targets

    # -- for sources ----------------------------------------------------------------------

    def _publish(self, targets: Iterable[Target]) -> None:
        seen: dict[str, Target] = {}
        duplicates: set[str] = set()
        for t in sorted(targets, key=lambda t: (t.namespace, t.workload, t.pod, t.url)):
            if t.url in seen:
                duplicates.add(t.url)
                continue
            seen[t.url] = t
        if duplicates and duplicates != self._duplicates:
            log.warning(
                "%s discovery: %d URL(s) listed more than once, kept once each: %s",
                self.kind,
                len(duplicates),
                sorted(duplicates)[:5],
            )
        self._duplicates = frozenset(duplicates)
        new = list(seen.values())
        if new == self._targets:
            return
        self._targets = new
        updated, self._updated = self._updated, asyncio.Event()
        updated.set()


def make_discovery(cfg: CollectorConfig) -> Discovery:
    """The discovery ``collector.discovery`` configures."""
    d = cfg.discovery
    if d.kind == "static":
        from pipeline.collect.discovery.static import StaticTargets

        return StaticTargets(cfg.targets)
    if d.kind == "file_sd":
        from pipeline.collect.discovery.file_sd import FileSD

        return FileSD(d.files)
    from pipeline.collect.discovery.kubernetes import KubernetesPods

    return KubernetesPods(d)


__all__ = ["Discovery", "DiscoveryError", "Target", "make_discovery"]
