"""Findings as metrics: each route's latest score and expected band, at scrape time.

Teams graph "normal" next to the real series and write their own rules on
top of ``meshwatch_route_score`` and the band gauges. Per-sample metric
updates would cost a label lookup per route-window; instead the latest
verdict per route and kind is kept in arrays (one vectorised write per
batch) and a custom collector reads them when Prometheus scrapes.

Cardinality is bounded: per kind, the routes with an open finding (at most
``max_open_routes``) plus the ``top_routes`` highest scores, among the
routes of the partitions this replica owns (so two replicas never export
the same route).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.detector import KINDS, RouteDetector, Verdicts
from pipeline.config import DetectorMetricsConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: columns of LastVerdicts.values
SCORE, OBSERVED, LOW, HIGH = range(4)


class LastVerdicts:
    """The latest judged verdict per route row and kind (NaN: never judged)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.values = np.full((capacity, len(KINDS), 4), np.nan)

    def _grow(self, n: int) -> None:
        cap = self.values.shape[0]
        if n > cap:
            extra = np.full((max(n, 2 * cap) - cap, len(KINDS), 4), np.nan)
            self.values = np.concatenate([self.values, extra])

    def record(self, rows: IntArray, verdicts: Verdicts) -> None:
        """One batch: rows are the Observations' rows the verdicts index into."""
        if verdicts.index.size == 0:
            return
        at = rows[verdicts.index]
        self._grow(int(at.max()) + 1)
        for ki, kind in enumerate(KINDS):
            v = verdicts.kinds.get(kind)
            if v is None:
                continue
            m = v.judged
            # one scatter of (score, observed, low, high) rows, not four strided ones
            block = np.stack([v.score, v.observed, v.expected_low, v.expected_high], axis=1)
            self.values[at[m], ki] = block[m]


def select_rows(
    score: FloatArray,
    firing: npt.NDArray[np.bool_],
    owned: npt.NDArray[np.bool_],
    top: int,
    cap: int,
) -> IntArray:
    """Rows to export for one kind: open findings (capped), then the top scores."""
    candidates = owned & np.isfinite(score)
    open_rows = np.flatnonzero(candidates & firing)
    if open_rows.size > cap:
        keep = np.argpartition(-score[open_rows], cap - 1)[:cap] if cap else open_rows[:0]
        open_rows = open_rows[keep]
    rest = np.flatnonzero(candidates & ~firing)
    if top and rest.size:
        k = min(top, rest.size)
        rest = rest[np.argpartition(-score[rest], k - 1)[:k]]
    else:
        rest = rest[:0]
    return np.asarray(np.sort(np.concatenate([open_rows, rest])), dtype=np.int64)


class RouteMetricsCollector(Collector):
    """``meshwatch_route_*`` gauges and ``meshwatch_findings_total``, read at scrape time."""

    def __init__(
        self,
        cfg: DetectorMetricsConfig,
        detector: Callable[[], RouteDetector],
        last: LastVerdicts,
        owned_rows: Callable[[int], npt.NDArray[np.bool_]],
        findings: Callable[[], dict[tuple[str, str], int]],
    ) -> None:
        self.cfg = cfg
        self.detector = detector
        self.last = last
        self.owned_rows = owned_rows
        self.findings = findings

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        labels = ["kind", "route_key"]
        return (
            GaugeMetricFamily(
                "meshwatch_route_score", "Latest score in [0, 1] per route and kind.", labels=labels
            ),
            GaugeMetricFamily(
                "meshwatch_route_observed",
                "The value that score judged (the kind's unit).",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshwatch_route_expected_low", "Low end of the expected band.", labels=labels
            ),
            GaugeMetricFamily(
                "meshwatch_route_expected_high", "High end of the expected band.", labels=labels
            ),
        )

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "meshwatch_findings",
            "Findings produced, by kind and status.",
            labels=["kind", "status"],
        )
        for (kind, status), n in sorted(self.findings().items()):
            counter.add_metric([kind, status], n)
        yield counter
        families = self._families()
        if self.cfg.enabled:
            det = self.detector()
            n = len(det.keys)
            values = self.last.values[:n]
            if values.shape[0] < n:  # routes seen but never judged yet
                values = np.concatenate(
                    [values, np.full((n - values.shape[0], len(KINDS), 4), np.nan)]
                )
            owned = self.owned_rows(n)
            keys = det.keys
            for ki, kind in enumerate(KINDS):
                firing = det.persistence[kind].firing[:n]
                rows = select_rows(
                    values[:, ki, SCORE],
                    firing,
                    owned,
                    self.cfg.top_routes,
                    self.cfg.max_open_routes,
                )
                block = values[rows, ki]
                for r, vals in zip(rows.tolist(), block.tolist(), strict=True):
                    labels = [kind, keys[r]]
                    for fam, x in zip(families, vals, strict=True):
                        if x == x:  # not NaN: a band end may be missing
                            fam.add_metric(labels, x)
        yield from families
