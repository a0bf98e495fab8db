"""Open incidents as a gauge, read from the incident book when /metrics is scraped.

Counting at scrape time (instead of inc/dec on every lifecycle change) keeps
the number right by construction after restores, evictions and rebalances,
which all rewrite the book wholesale. Labels stay bounded: namespace × kind ×
severity, never the route.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.schema import Incident


class OpenIncidentsCollector(Collector):
    def __init__(self, incidents: Callable[[], Iterable[Incident]]) -> None:
        """``incidents`` returns a snapshot of the book (called from the /metrics thread)."""
        self._incidents = incidents

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meshwatch_open_incidents",
            "Firing incidents this alerter replica holds, by namespace, kind and severity.",
            labels=["namespace", "kind", "severity"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = Counter(
            (inc.route_key.split("/", 1)[0], inc.kind, inc.severity)
            for inc in self._incidents()
            if inc.status == "firing"
        )
        family = self._family()
        for (namespace, kind, severity), n in sorted(counts.items()):
            family.add_metric([namespace, kind, severity], n)
        yield family
