"""Per-route detection over a batch of windows, for every kind at once.

Input is columnar (one entry per route-window); every step is a numpy
operation over the whole batch. When one batch holds two windows of the same
route, it is processed in rounds so each route still advances one window at
a time, in order.

Kinds and their tests:

- ``latency``: log p95/p99 against a robust baseline in log space (a ratio
  is what people feel: 40 → 80 ms matters as much as 400 → 800 ms).
- ``error_rate``: binomial upper tail of the failure count given the usual
  failure ratio — meaningful at 3 failures in 40 requests, unlike a z-score
  of ratios.
- ``tls_failure``: Poisson upper tail of TLS detection/handshake errors
  against their own usual rate.
- ``mtls_regression``: binomial tail of plaintext requests on a route whose
  traffic was mTLS.
- ``traffic_drop``: Poisson lower tail of the request count (zero traffic
  included) against the usual rate.
- ``cert_expiry``: the identity certificate's time to expiry below a floor.

A window is *judged* only with enough traffic and a warm baseline; windows
that are anomalous are not learned, so an incident does not become normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.baseline import RobustBaseline
from models.persistence import Persistence
from models.significance import (
    binomial_surprise,
    poisson_drop_surprise,
    poisson_surprise,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MODEL_NAME = "robust-baseline"
MODEL_VERSION = "1.0.0"

KINDS: tuple[str, ...] = (
    "latency",
    "error_rate",
    "tls_failure",
    "mtls_regression",
    "traffic_drop",
    "cert_expiry",
)
UNITS = {
    "latency": "ms",
    "error_rate": "ratio",
    "tls_failure": "failures/window",
    "mtls_regression": "ratio",
    "traffic_drop": "requests/window",
    "cert_expiry": "seconds",
}
# Baseline columns.
LP50, LP95, LP99, ERR, TLS, PLAIN, LREQ, EXC = range(8)
N_METRICS = 8
MIN_SPREAD = np.array([0.15, 0.15, 0.15, 0.0, 0.0, 0.0, 0.1, 0.0])
#: Latency bucket bounds (ms) the detector reads exceedance counts from.
DEFAULT_BOUNDS_MS = np.array(
    [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
     1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000, np.inf],
    dtype=np.float64,
)  # fmt: skip


def count_above(buckets: FloatArray, threshold: FloatArray, bounds: FloatArray) -> FloatArray:
    """Requests slower than ``threshold`` per row, from per-bucket counts.

    Inside the bucket holding the threshold, requests are taken as spread
    evenly (the same assumption as ``histogram_quantile``).
    """
    upper = bounds[None, :]
    lower = np.concatenate(([0.0], bounds[:-1]))[None, :]
    t = threshold[:, None]
    width = np.where(np.isinf(upper), np.inf, upper - lower)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = np.where(np.isinf(upper), 1.0, (upper - t) / width)
    frac = np.where(upper <= t, 0.0, np.where(lower >= t, 1.0, np.clip(inside, 0.0, 1.0)))
    return np.asarray((buckets * frac).sum(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class DetectorParams:
    warmup_windows: int = 30
    min_requests: int = 20
    latency_threshold: float = 0.999
    error_threshold: float = 0.999
    tls_threshold: float = 0.999
    mtls_threshold: float = 0.999
    traffic_threshold: float = 0.9999
    latency_min_ratio: float = 1.5
    error_min_ratio: float = 0.02
    error_floor: float = 0.001
    tls_min_failures: int = 3
    mtls_min_increase: float = 0.10
    traffic_min_expected: float = 20.0
    traffic_max_ratio: float = 0.5
    cert_min_ttl_seconds: float = 4 * 3600.0
    band_z: float = 3.0
    half_life_windows: float = 60.0
    fire_after: int = 2
    fire_window: int = 3
    resolve_after: int = 3
    evidence_points: int = 12


@dataclass
class Observations:
    """One entry per route-window; NaN marks a missing value."""

    rows: IntArray
    window_end: FloatArray
    requests: FloatArray
    failures: FloatArray
    p50_ms: FloatArray
    p95_ms: FloatArray
    p99_ms: FloatArray
    tls_failures: FloatArray
    plaintext: FloatArray
    mtls: FloatArray
    cert_ttl: FloatArray
    buckets: FloatArray | None = None  # (n, len(DEFAULT_BOUNDS_MS)) per-bucket counts

    def take(self, idx: IntArray) -> Observations:
        fields: dict[str, Any] = {
            k: (None if getattr(self, k) is None else getattr(self, k)[idx])
            for k in self.__dataclass_fields__
        }
        return Observations(**fields)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


@dataclass
class KindVerdict:
    """Per-entry results for one kind (same order as the Observations)."""

    score: FloatArray
    judged: BoolArray
    anomalous: BoolArray
    fired: BoolArray
    resolved: BoolArray
    observed: FloatArray
    expected_low: FloatArray
    expected_high: FloatArray


@dataclass
class Verdicts:
    index: IntArray  # positions into the original Observations
    kinds: dict[str, KindVerdict] = field(default_factory=dict)


class RouteDetector:
    """All per-route state of one detector instance, as parallel arrays."""

    def __init__(self, params: DetectorParams | None = None, capacity: int = 1024) -> None:
        self.params = p = params or DetectorParams()
        self.baseline = RobustBaseline(
            N_METRICS, half_life=p.half_life_windows, min_spread=MIN_SPREAD, capacity=capacity
        )
        self.persistence = {
            k: Persistence(p.fire_after, p.fire_window, p.resolve_after, capacity) for k in KINDS
        }
        self.windows = np.zeros(capacity, dtype=np.int64)
        self.last_window = np.full(capacity, -np.inf)
        #: window end of the first anomalous window of the current streak
        self.started = np.zeros((capacity, len(KINDS)))
        k = p.evidence_points
        self.evidence = np.full((capacity, len(KINDS), k), np.nan)
        self.evidence_t = np.full((capacity, k), np.nan)
        self._window_end = np.zeros(0)
        self.keys: list[str] = []
        self.index: dict[str, int] = {}

    # -- route table ------------------------------------------------------

    def rows_for(self, keys: Sequence[str]) -> IntArray:
        index = self.index
        out = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row = index.get(key)
            if row is None:
                row = index[key] = len(self.keys)
                self.keys.append(key)
            out[i] = row
        self._grow(len(self.keys))
        return out

    def _grow(self, n: int) -> None:
        cap = self.windows.shape[0]
        if n <= cap:
            return
        new = max(n, 2 * cap)
        pad = new - cap
        self.baseline.grow(new)
        for pers in self.persistence.values():
            pers.grow(new)
        self.windows = np.concatenate([self.windows, np.zeros(pad, dtype=np.int64)])
        self.last_window = np.concatenate([self.last_window, np.full(pad, -np.inf)])
        self.started = np.vstack([self.started, np.zeros((pad, len(KINDS)))])
        k = self.evidence.shape[2]
        self.evidence = np.concatenate([self.evidence, np.full((pad, len(KINDS), k), np.nan)])
        self.evidence_t = np.vstack([self.evidence_t, np.full((pad, k), np.nan)])

    def firing(self, kind: str, rows: IntArray) -> BoolArray:
        return self.persistence[kind].firing[rows]

    def state_bytes_per_route(self) -> float:
        """Bytes of state per route seen, counting the spare rows of growth."""
        arrays = [self.windows, self.last_window, self.started, self.evidence, self.evidence_t]
        total = self.baseline.state_bytes() + sum(a.nbytes for a in arrays)
        for pers in self.persistence.values():
            total += pers.history.nbytes + pers.firing.nbytes + pers.normal_streak.nbytes
        return total / max(len(self.keys), 1)

    # -- processing -------------------------------------------------------

    def process(self, obs: Observations) -> Verdicts:
        """Judge and learn a batch; stale or duplicate windows are dropped."""
        order = np.lexsort((obs.window_end, obs.rows))
        rows_sorted = obs.rows[order]
        # round number = position among entries of the same row
        starts = np.r_[0, np.flatnonzero(np.diff(rows_sorted)) + 1]
        run_id = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, rows_sorted.size]))
        rank = np.arange(rows_sorted.size) - starts[run_id]
        results: list[tuple[IntArray, dict[str, KindVerdict]]] = []
        for r in range(int(rank.max()) + 1 if rank.size else 0):
            idx = order[rank == r]
            fresh = obs.window_end[idx] > self.last_window[obs.rows[idx]]
            idx = idx[fresh]
            if idx.size:
                results.append((idx, self._round(obs.take(idx))))
        if not results:
            return Verdicts(index=np.zeros(0, dtype=np.int64))
        index = np.concatenate([i for i, _ in results])
        kinds = {
            k: KindVerdict(
                **{
                    f: np.concatenate([getattr(v[k], f) for _, v in results])
                    for f in KindVerdict.__dataclass_fields__
                }
            )
            for k in KINDS
        }
        return Verdicts(index=index, kinds=kinds)

    def _round(self, o: Observations) -> dict[str, KindVerdict]:
        p = self.params
        rows = o.rows
        b = self.baseline
        self._window_end = o.window_end
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.column_stack(
                [
                    np.log(o.p50_ms),
                    np.log(o.p95_ms),
                    np.log(o.p99_ms),
                    np.where(o.requests > 0, o.failures / o.requests, np.nan),
                    o.tls_failures,
                    np.where(
                        o.mtls + o.plaintext > 0, o.plaintext / (o.mtls + o.plaintext), np.nan
                    ),
                    np.log1p(o.requests),
                    np.full(len(rows), np.nan),  # EXC, filled below
                ]
            )
        x = np.where(np.isfinite(x), x, np.nan)
        warm = b.count[rows] >= p.warmup_windows
        level = b.level[rows]
        spread = b.effective_spread(rows)
        out: dict[str, KindVerdict] = {}
        enough = o.requests >= p.min_requests

        # latency: how many requests were slower than the usual p95? A
        # count-based test: a single slow request among 50 moves p99 across a
        # whole bucket, but it does not make "slower than usual p95" rare.
        exceed_p0 = np.clip(np.nan_to_num(level[:, EXC], nan=0.05), 0.01, 0.5)
        if o.buckets is not None:
            threshold = np.exp(level[:, LP95])
            n_lat = o.buckets.sum(axis=1)
            k_above = count_above(o.buckets, threshold, DEFAULT_BOUNDS_MS)
            with np.errstate(invalid="ignore", divide="ignore"):
                x[:, EXC] = np.where(n_lat > 0, k_above / n_lat, np.nan)
        else:
            n_lat = np.zeros(len(rows))
            k_above = np.zeros(len(rows))
        z = (x[:, [LP95, LP99]] - level[:, [LP95, LP99]]) / spread[:, [LP95, LP99]]
        z = np.where(np.isfinite(z), z, -np.inf)
        worst = np.where(z[:, 1] >= z[:, 0], LP99, LP95)
        at = np.arange(len(rows))
        # practical significance on the quantile that looks worst
        ratio = np.exp(x[at, worst] - level[at, worst])
        judged = warm[:, LP95] & warm[:, EXC] & enough & (n_lat >= p.min_requests)
        score = np.where(judged, binomial_surprise(np.rint(k_above), n_lat, exceed_p0), 0.0)
        anomalous = (
            judged
            & (score >= p.latency_threshold)
            & (ratio >= p.latency_min_ratio)
            & (k_above >= 2 * exceed_p0 * n_lat)
        )
        lo = np.exp(level[:, LP99] - p.band_z * spread[:, LP99])
        hi = np.exp(level[:, LP99] + p.band_z * spread[:, LP99])
        out["latency"] = self._verdict("latency", rows, score, judged, anomalous, o.p99_ms, lo, hi)

        # error rate: binomial tail against the usual failure ratio
        p0 = np.maximum(np.nan_to_num(level[:, ERR]), p.error_floor)
        judged = warm[:, ERR] & (o.requests > 0) & enough
        score = np.where(judged, binomial_surprise(o.failures, o.requests, p0), 0.0)
        err = x[:, ERR]
        anomalous = (
            judged
            & (score >= p.error_threshold)
            & (np.nan_to_num(err) >= np.maximum(p.error_min_ratio, 2 * p0))
        )
        hi = np.minimum(p0 + p.band_z * np.sqrt(p0 * (1 - p0) / np.maximum(o.requests, 1)), 1.0)
        out["error_rate"] = self._verdict(
            "error_rate", rows, score, judged, anomalous, err, np.zeros_like(p0), hi
        )

        # TLS failures: Poisson tail against their own usual rate
        lam = np.maximum(np.nan_to_num(level[:, TLS]), 0.5)
        judged = warm[:, TLS] & np.isfinite(o.tls_failures)
        score = np.where(judged, poisson_surprise(o.tls_failures, lam), 0.0)
        anomalous = judged & (score >= p.tls_threshold) & (o.tls_failures >= p.tls_min_failures)
        hi = lam + p.band_z * np.sqrt(lam)
        out["tls_failure"] = self._verdict(
            "tls_failure", rows, score, judged, anomalous, o.tls_failures, np.zeros_like(lam), hi
        )

        # mTLS regression: plaintext share rising on a route that was meshed
        total = o.mtls + o.plaintext
        b0 = np.maximum(np.nan_to_num(level[:, PLAIN]), 0.005)
        judged = warm[:, PLAIN] & (total >= p.min_requests) & (level[:, PLAIN] < 0.5)
        score = np.where(judged, binomial_surprise(o.plaintext, total, b0), 0.0)
        share = x[:, PLAIN]
        anomalous = (
            judged
            & (score >= p.mtls_threshold)
            & (np.nan_to_num(share) >= b0 + p.mtls_min_increase)
        )
        out["mtls_regression"] = self._verdict(
            "mtls_regression", rows, score, judged, anomalous, share, np.zeros_like(b0), b0 + 0.05
        )

        # traffic drop: Poisson lower tail of the request count
        expected = np.expm1(level[:, LREQ])
        judged = warm[:, LREQ] & (expected >= p.traffic_min_expected)
        score = np.where(judged, poisson_drop_surprise(o.requests, expected), 0.0)
        anomalous = (
            judged & (score >= p.traffic_threshold) & (o.requests <= p.traffic_max_ratio * expected)
        )
        lo = np.expm1(np.maximum(level[:, LREQ] - p.band_z * spread[:, LREQ], 0.0))
        hi = np.expm1(level[:, LREQ] + p.band_z * spread[:, LREQ])
        out["traffic_drop"] = self._verdict(
            "traffic_drop", rows, score, judged, anomalous, o.requests, lo, hi
        )

        # certificate expiry: a floor, no baseline needed
        ttl = o.cert_ttl
        judged = np.isfinite(ttl)
        floor = p.cert_min_ttl_seconds
        score = np.where(judged, np.clip(1.0 - np.nan_to_num(ttl) / (2 * floor), 0.0, 1.0), 0.0)
        anomalous = judged & (np.nan_to_num(ttl, nan=np.inf) < floor)
        out["cert_expiry"] = self._verdict(
            "cert_expiry",
            rows,
            score,
            judged,
            anomalous,
            ttl,
            np.full_like(ttl, floor),
            np.full_like(ttl, np.inf),
        )

        # Learn only from windows that looked normal for the kinds they feed.
        learn = np.ones_like(x, dtype=np.bool_)
        bad_latency = out["latency"].anomalous | self.firing("latency", rows)
        learn[:, LP50] &= ~bad_latency & enough
        learn[:, LP95] &= ~bad_latency & enough
        learn[:, LP99] &= ~bad_latency & enough
        learn[:, EXC] &= ~bad_latency & enough
        learn[:, ERR] &= ~(out["error_rate"].anomalous | self.firing("error_rate", rows)) & enough
        learn[:, TLS] &= ~(out["tls_failure"].anomalous | self.firing("tls_failure", rows))
        learn[:, PLAIN] &= ~(
            out["mtls_regression"].anomalous | self.firing("mtls_regression", rows)
        ) & (total > 0)
        learn[:, LREQ] &= ~(out["traffic_drop"].anomalous | self.firing("traffic_drop", rows))
        b.update(rows, x, learn)

        # Evidence ring: newest value at the end.
        self.evidence[rows] = np.roll(self.evidence[rows], -1, axis=2)
        self.evidence_t[rows] = np.roll(self.evidence_t[rows], -1, axis=1)
        self.evidence_t[rows, -1] = o.window_end
        for ki, k in enumerate(KINDS):
            self.evidence[rows, ki, -1] = out[k].observed
        self.windows[rows] += 1
        self.last_window[rows] = o.window_end
        return out

    def _verdict(
        self,
        kind: str,
        rows: IntArray,
        score: FloatArray,
        judged: BoolArray,
        anomalous: BoolArray,
        observed: FloatArray,
        lo: FloatArray,
        hi: FloatArray,
    ) -> KindVerdict:
        pers = self.persistence[kind]
        ki = KINDS.index(kind)
        fresh_streak = anomalous & (pers.history[rows] == 0) & ~pers.firing[rows]
        self.started[rows, ki] = np.where(fresh_streak, self._window_end, self.started[rows, ki])
        fired, resolved = pers.step(rows, anomalous, judged)
        return KindVerdict(
            score=np.clip(np.nan_to_num(score), 0.0, 1.0),
            judged=judged,
            anomalous=anomalous,
            fired=fired,
            resolved=resolved,
            observed=np.asarray(observed, dtype=np.float64),
            expected_low=np.asarray(lo, dtype=np.float64),
            expected_high=np.asarray(hi, dtype=np.float64),
        )
