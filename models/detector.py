"""Per-route detection over a batch of windows, for every kind at once.

Input is columnar (one entry per route-window); every step is a numpy
operation over the whole batch. When one batch holds two windows of the same
route, it is processed in rounds so each route still advances one window at
a time, in order. All per-route state lives in parallel numpy arrays indexed
by a route row (no per-route Python objects), so it can be checkpointed as a
handful of arrays.

Three steps, kept apart so each is configurable on its own:

1. **score** — every kind turns a window into a calibrated score in [0, 1]:
   one minus the probability, under the route's learned normal, of a window
   at least this far from normal (so 0.999 means "1 in 1,000 normal windows
   look like this"). Where both a counting model and the route's own learned
   variability apply, the score is the *smaller* of the two: a window must be
   surprising for the sample size it has *and* beyond how much the metric
   usually wanders (real series are over-dispersed; counts alone would make
   a busy route alert on every wobble). A distance in learned spreads is
   scored under Student's t with ``spread_tail_dof`` degrees of freedom, not
   the normal: real metrics wander with heavy tails, and under a normal a
   score of 0.999 came about once in a hundred normal windows, not once in
   a thousand (on the real labelled series, most false alerts were such
   tail windows). Request rates keep the normal, with their own stricter
   threshold (``traffic_threshold``): their spread is learned around a
   moving daily profile, and under t tails a 65 % drop at the daily peak
   would go unseen.
2. **threshold** — a window is anomalous when its score passes the kind's
   threshold *and* a practical-significance guard (a minimum slow-down ratio,
   error ratio, drop ratio...), so statistically real but harmless shifts on
   busy routes stay quiet.
3. **persistence** — :class:`~models.persistence.Persistence` fires after N
   anomalous windows of the last M and resolves after R normal ones. N is
   meant in time: once N windows would span more than ``persist_seconds``,
   fewer suffice (one window of an hourly series is an hour of evidence,
   not a 10-second hiccup).

Kinds and their tests:

- ``latency`` (log space): with a latency histogram, the number of requests
  slower than the route's usual p95 against a binomial tail (a quantile of
  50 requests jumps a whole bucket when one request is slow; the count of
  slow requests does not). Without a histogram (a plain series), the log
  p95/p99 distance from their robust level in learned spreads. Guard: the
  worst of p95/p99 is at least ``latency_min_ratio`` times its usual value.
- ``error_rate``: binomial tail of the failure count given the usual failure
  ratio, and the ratio's distance from its level in learned spreads. Guard:
  ratio at least ``error_min_ratio`` and ``error_min_factor`` × usual.
- ``tls_failure``: Poisson tail of TLS detection/handshake errors against
  their usual count per window (and learned spread).
- ``mtls_regression``: binomial tail of plaintext requests on a route whose
  traffic was mTLS; guard: plaintext share up by ``mtls_min_increase``.
- ``traffic_drop`` / ``traffic_surge``: Poisson lower/upper tail of the
  request count against the expected count, and the log-rate distance in
  learned spreads (request rates are over-dispersed). The expected count is
  the robust level, plus a per-hour-of-day profile when daily seasonality is
  on (by default one profile for weekdays and one for weekend days). *No
  traffic* (zero requests where at least ``traffic_min_expected`` were
  expected) is its own state: always a drop, never re-baselined.
- ``cert_expiry``: the identity certificate's time to expiry under
  ``min(cert_min_ttl_seconds, cert_min_ttl_fraction × lifetime)``, the
  lifetime being the longest TTL the route has shown (a fresh certificate's
  TTL). A healthy proxy renews at 70 % of the lifetime, so a TTL under a
  quarter of it means renewals have been failing.

Baselines (``models.baseline.RobustBaseline``) warm up for
``warmup_windows`` windows; windows with fewer than ``min_requests`` requests
are not judged and not learned. Learning is outlier-resistant: a window
whose score for its kind is above ``learn_threshold`` (0.99: suspicious,
though not yet anomalous) does not move the baseline, nor does any window
of a firing incident, so neither an incident nor a slow creep is learned as
normal. Request rates are the exception: they learn from every window that
is not anomalous (clipped), so the baseline follows the daily curve.

**Opt-in rules for plain series** (off in the mesh default; the real
cloud-monitoring series of ``bench/quality`` turn them on, one configuration
for all): ``traffic_surge_held_ratio`` lets a smaller surge count once it has
held ``traffic_surge_hold_seconds`` (in time: one hourly window, sixty
minute windows, so a busy service's routine minutes-long bursts stay under
``traffic_surge_ratio``); ``traffic_spike_ratio`` fires on a lone one-window
spike, judged when the next window is back down (persistence would filter
it as a hiccup); ``error_outlier_spread_clip`` lets the windows the error
level leaves out still widen its spread (clipped), so a series whose error
bursts are routine stops alerting on each of them while the level stays
clean; ``error_pair_threshold`` makes the second of two error windows in a
row that score at least that (guards permitting) anomalous: a raised ratio
held for two windows, each just under ``error_threshold``.

**Re-baselining (a deploy that shifts latency and stays).** For latency and
traffic, the detector counts the windows of a run of shifted windows and keeps
the mean, variance and a short moving average of the metric over that run.
For latency a window is shifted when it is anomalous or merely suspicious
(scored above ``learn_threshold``, so not learned either); a run survives up
to ``rebaseline_gap`` calm windows in a row. Without both, a shift near
``latency_min_ratio`` on a route with few requests (anomalous in some windows,
not in others) restarted its run forever: never accepted, alerting again and
again for hours.
After ``rebaseline_windows`` (K) of them, if the new level is *stable* — its
standard deviation over the run at most ``rebaseline_spread_factor`` times
the usual spread, and the recent average within ``rebaseline_drift`` spreads
of the run's mean (no trend) — and, for latency, the shift is at most
``rebaseline_max_ratio``, the level is moved to the run's mean: the change is
accepted as the new normal, the windows turn normal, and the finding resolves
``resolve_after`` windows later. Error ratios, TLS failures, plaintext share,
certificate expiry and *no traffic* are never re-baselined: there is no
"new normal" for failing requests. The consequence, by design: a latency
incident that holds one stable level for K windows (10 minutes at the
default 60 × 10 s) is treated as a new normal too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.baseline import RobustBaseline
from models.persistence import Persistence, popcount
from models.significance import (
    binomial_surprise,
    normal_score,
    poisson_drop_surprise,
    poisson_surprise,
    tail_score,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MODEL_NAME = "robust-baseline"
MODEL_VERSION = "2.0.0"

KINDS: tuple[str, ...] = (
    "latency",
    "error_rate",
    "tls_failure",
    "mtls_regression",
    "traffic_drop",
    "traffic_surge",
    "cert_expiry",
)
UNITS = {
    "latency": "ms",
    "error_rate": "ratio",
    "tls_failure": "failures/window",
    "mtls_regression": "ratio",
    "traffic_drop": "requests/window",
    "traffic_surge": "requests/window",
    "cert_expiry": "seconds",
}
# Baseline columns.
LP50, LP95, LP99, ERR, TLS, PLAIN, LREQ, EXC = range(8)
N_METRICS = 8
MIN_SPREAD = np.array([0.15, 0.15, 0.15, 0.002, 0.5, 0.0, 0.1, 0.0])
#: Re-baselining groups: latency (log quantiles) and traffic (log rate).
G_LATENCY, G_TRAFFIC = 0, 1
#: Latency bucket bounds (ms) the detector reads exceedance counts from.
DEFAULT_BOUNDS_MS = np.array(
    [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
     1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000, np.inf],
    dtype=np.float64,
)  # fmt: skip


_BIG = float(np.finfo(np.float64).max)


def _nan_to_num(x: FloatArray, nan: float = 0.0) -> FloatArray:
    """``np.nan_to_num(x, nan=nan)`` for float64 arrays, without its per-call cost.

    The detector calls it about twenty times per round on arrays of a few
    thousand windows, where numpy's version (a copy and three masked writes
    behind a Python wrapper) costs 2-3 times this; the values are the same:
    NaN -> ``nan``, ±inf -> ± the largest float, everything else as is.
    """
    if x.dtype != np.float64:
        return np.asarray(np.nan_to_num(x, nan=nan))
    return np.where(np.isnan(x), nan, np.minimum(np.maximum(x, -_BIG), _BIG))


def count_above(buckets: FloatArray, threshold: FloatArray, bounds: FloatArray) -> FloatArray:
    """Requests slower than ``threshold`` per row, from per-bucket counts.

    ``bounds`` holds the upper bucket bounds, one layout for every row (1-D)
    or one per row (2-D, padded on the right with +Inf buckets of no
    requests). Inside the bucket holding the threshold, requests are taken
    as spread evenly (the same assumption as ``histogram_quantile``).
    """
    if bounds.ndim == 1 and _sorted_finite_below_last(bounds) and buckets.ndim == 2:
        return _count_above_shared(buckets, threshold, bounds)
    return _count_above_general(buckets, threshold, bounds)


def _sorted_finite_below_last(bounds: FloatArray) -> bool:
    """Bounds the per-row shortcut handles: non-decreasing, non-negative, finite
    except possibly the last (the +Inf bucket)."""
    return bool(
        bounds.size >= 1
        and np.isfinite(bounds[:-1]).all()
        and not np.isnan(bounds[-1])
        and bounds[0] >= 0
        and (np.diff(bounds) >= 0).all()
    )


def _count_above_shared(
    buckets: FloatArray, threshold: FloatArray, bounds: FloatArray
) -> FloatArray:
    """:func:`count_above` for one shared, sorted bucket layout, the same numbers.

    The general form builds the (rows × buckets) share of each bucket above
    the threshold with a dozen full passes. With sorted bounds that share is
    0 for the buckets wholly below a finite threshold, 1 for those wholly
    above and a fraction only in the bucket holding it, so it is built from
    one comparison and one value per row; the products and their row sums
    are those of the general form, element for element. Rows with a
    non-finite threshold take the general form.
    """
    b = buckets.shape[1]
    finite = np.isfinite(threshold)
    t = np.where(finite, threshold, 0.0)
    # the bucket holding t: the first whose upper bound is above it
    k = np.searchsorted(bounds, t, side="right")
    upper_k = bounds[np.minimum(k, b - 1)]
    lower_k = np.where(k > 0, bounds[np.maximum(k - 1, 0)], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = np.where(np.isinf(upper_k), 1.0, (upper_k - t) / (upper_k - lower_k))
    part = np.where(lower_k >= t, 1.0, np.clip(inside, 0.0, 1.0))
    above = np.arange(b)[None, :] > k[:, None]
    prod = buckets * above
    has = k < b
    rows = np.flatnonzero(has)
    prod[rows, k[has]] = buckets[rows, k[has]] * part[has]
    out = np.asarray(prod.sum(axis=1), dtype=np.float64)
    if not finite.all():
        odd = ~finite
        out[odd] = _count_above_general(buckets[odd], threshold[odd], bounds)
    return out


def _count_above_general(
    buckets: FloatArray, threshold: FloatArray, bounds: FloatArray
) -> FloatArray:
    upper = bounds[None, :] if bounds.ndim == 1 else bounds
    zero = np.zeros((upper.shape[0], 1))
    lower = np.concatenate([zero, upper[:, :-1]], axis=1)
    t = threshold[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        width = np.where(np.isinf(upper), np.inf, upper - lower)
        inside = np.where(np.isinf(upper), 1.0, (upper - t) / width)
    frac = np.where(upper <= t, 0.0, np.where(lower >= t, 1.0, np.clip(inside, 0.0, 1.0)))
    return np.asarray((buckets * frac).sum(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class DetectorParams:
    # warm-up and guards
    warmup_windows: int = 30
    min_requests: int = 20
    # score thresholds (a window is anomalous at or above these, guards permitting)
    latency_threshold: float = 0.999
    error_threshold: float = 0.999
    tls_threshold: float = 0.999
    mtls_threshold: float = 0.999
    traffic_threshold: float = 0.9999
    #: windows scoring above this are not learned (suspicious, not yet anomalous)
    learn_threshold: float = 0.99
    # practical significance
    latency_min_ratio: float = 1.5
    error_min_ratio: float = 0.01
    error_min_factor: float = 2.0
    error_floor: float = 0.001
    #: windows left out of the error level (anomalous, incident) still move the error
    #: ratio's spread, their distance clipped at this many spreads (0: they do not)
    error_outlier_spread_clip: float = 0.0
    #: two judged error windows in a row scoring at least this (guards permitting) make
    #: the second anomalous (0 turns it off): a raised ratio held, each window just
    #: under ``error_threshold``
    error_pair_threshold: float = 0.0
    tls_min_failures: int = 3
    mtls_min_increase: float = 0.10
    traffic_min_expected: float = 20.0
    traffic_drop_ratio: float = 0.5
    traffic_surge_ratio: float = 3.0
    #: a lower surge ratio that counts once the surge has held ``traffic_surge_hold_seconds``
    #: (0 turns it off): request rates double for hours in an incident, and for minutes
    #: on busy services where such bursts are normal
    traffic_surge_held_ratio: float = 0.0
    traffic_surge_hold_seconds: float = 3600.0
    #: a lone window at least this multiple of the expected rate, back under it in the
    #: next window, fires a surge there (0 turns it off): a one-window spike, which
    #: persistence would otherwise filter as a hiccup
    traffic_spike_ratio: float = 0.0
    cert_min_ttl_seconds: float = 4 * 3600.0
    cert_min_ttl_fraction: float = 0.25
    # adaptation
    band_z: float = 3.0
    #: Student's t degrees of freedom of distances in learned spreads (0: normal)
    spread_tail_dof: float = 5.0
    half_life_windows: float = 60.0
    traffic_half_life_windows: float = 30.0
    rebaseline_windows: int = 60
    rebaseline_gap: int = 3
    rebaseline_spread_factor: float = 2.0
    rebaseline_drift: float = 1.0
    rebaseline_max_ratio: float = 4.0
    # daily seasonality of the request rate (0 turns it off)
    season_period_seconds: float = 86400.0
    #: profile bins in all; with ``season_weekend`` half for weekdays, half for weekends
    season_bins: int = 48
    season_half_life_periods: float = 3.0
    season_weekend: bool = True
    # persistence
    fire_after: int = 2
    fire_window: int = 3
    #: windows this long or longer fire on fewer than ``fire_after`` of them: anomalous
    #: windows must span this much time (0: count windows only)
    persist_seconds: float = 300.0
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
    buckets: FloatArray | None = None  # (n, b) per-bucket counts
    #: (n, b) upper bounds per row; None means DEFAULT_BOUNDS_MS for every row
    bounds: FloatArray | None = None
    window_seconds: FloatArray | None = None  # default 10 s

    def take(self, idx: IntArray) -> Observations:
        # ``take`` along rows: the same copy as ``a[idx]``, and several times
        # cheaper for the (n, buckets) arrays
        fields: dict[str, Any] = {
            k: (None if getattr(self, k) is None else np.take(getattr(self, k), idx, axis=0))
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
    rebaselined: BoolArray | None = None


@dataclass
class Verdicts:
    index: IntArray  # positions into the original Observations
    kinds: dict[str, KindVerdict] = field(default_factory=dict)


def season_split(p: DetectorParams) -> bool:
    """Whether weekdays and weekend days have profiles of their own (daily period only)."""
    return (
        p.season_weekend
        and p.season_period_seconds == 86400.0
        and p.season_bins >= 2
        and p.season_bins % 2 == 0
    )


def season_bins_per_period(p: DetectorParams) -> int:
    return max(p.season_bins // 2 if season_split(p) else p.season_bins, 1)


#: state arrays newer than the checkpoint format, with the value an older
#: checkpoint implies (its routes then restore warm instead of cold)
_ADDED_LATER: dict[str, int] = {
    "calm": 0,
    "surge_held": 0,
    "spike_prev": False,
    "error_prev": False,
}


class RouteDetector:
    """All per-route state of one detector instance, as parallel arrays."""

    def __init__(self, params: DetectorParams | None = None, capacity: int = 1024) -> None:
        self.params = p = params or DetectorParams()
        half_life = np.full(N_METRICS, p.half_life_windows)
        half_life[LREQ] = p.traffic_half_life_windows
        self.baseline = RobustBaseline(
            N_METRICS, half_life=half_life, min_spread=MIN_SPREAD, capacity=capacity
        )
        self.persistence = {
            k: Persistence(p.fire_after, p.fire_window, p.resolve_after, capacity) for k in KINDS
        }
        # Sized for 100k+ routes per instance (<= 2 KB each, spare rows
        # included): counters are int32, evidence (display only) float32;
        # levels, spreads, run sums and timestamps stay float64.
        self.windows = np.zeros(capacity, dtype=np.int32)
        self.last_window = np.full(capacity, -np.inf)
        #: window end of the first anomalous window of the current streak
        self.started = np.zeros((capacity, len(KINDS)))
        k = p.evidence_points
        self.evidence = np.full((capacity, len(KINDS), k), np.nan, dtype=np.float32)
        self.evidence_t = np.full((capacity, k), np.nan)
        # re-baselining: consecutive anomalous windows per group, and the run's
        # sum, sum of squares and short moving average per metric
        self.streak = np.zeros((capacity, 2), dtype=np.int32)
        # calm windows in a row inside the current run (a run survives a few)
        self.calm = np.zeros((capacity, 2), dtype=np.int16)
        # windows in a row above the held-surge ratio (``traffic_surge_held_ratio``)
        self.surge_held = np.zeros(capacity, dtype=np.int32)
        # whether the route's last window was a spike (``traffic_spike_ratio``)
        self.spike_prev = np.zeros(capacity, dtype=np.bool_)
        # whether the route's last judged error window was suspicious (``error_pair_threshold``)
        self.error_prev = np.zeros(capacity, dtype=np.bool_)
        self.run_sum = np.zeros((capacity, N_METRICS))
        self.run_sq = np.zeros((capacity, N_METRICS))
        self.run_recent = np.zeros((capacity, N_METRICS))
        # longest certificate TTL seen (≈ the certificate lifetime)
        self.cert_max = np.full(capacity, np.nan)
        # daily profile of the log request rate, and when the route was first seen
        self.season = np.zeros((capacity, max(p.season_bins, 1)))
        self.first_seen = np.full(capacity, np.nan)
        self._window_end = np.zeros(0)
        self.keys: list[str] = []
        self.index: dict[str, int] = {}

    # -- route table ------------------------------------------------------

    def rows_for(self, keys: Sequence[str]) -> IntArray:
        """Row of each key, adding rows for new keys (one C-level lookup pass
        when every key is known, as in steady state)."""
        index = self.index
        got: list[int | None] = list(map(index.get, keys))
        if None in got:
            for i, key in enumerate(keys):
                if got[i] is None:
                    row = index.get(key)  # a key new to this call may repeat in it
                    if row is None:
                        row = index[key] = len(self.keys)
                        self.keys.append(key)
                    got[i] = row
        self._grow(len(self.keys))
        return np.array(got, dtype=np.int64).reshape(len(keys))

    def _grow(self, n: int) -> None:
        cap = self.windows.shape[0]
        if n <= cap:
            return
        # 1.25×, not 2×: at most a fifth of the rows are spare (memory per
        # route is a target), for a few more copies while the table grows.
        new = max(n, cap + cap // 4)
        pad = new - cap
        self.baseline.grow(new)
        for pers in self.persistence.values():
            pers.grow(new)

        def padded(a: npt.NDArray[Any], fill: float) -> npt.NDArray[Any]:
            extra = np.full((pad, *a.shape[1:]), fill, dtype=a.dtype)
            return np.concatenate([a, extra])

        self.windows = padded(self.windows, 0)
        self.last_window = padded(self.last_window, -np.inf)
        self.started = padded(self.started, 0.0)
        self.evidence = padded(self.evidence, np.nan)
        self.evidence_t = padded(self.evidence_t, np.nan)
        self.streak = padded(self.streak, 0)
        self.calm = padded(self.calm, 0)
        self.surge_held = padded(self.surge_held, 0)
        self.spike_prev = padded(self.spike_prev, False)
        self.error_prev = padded(self.error_prev, False)
        self.run_sum = padded(self.run_sum, 0.0)
        self.run_sq = padded(self.run_sq, 0.0)
        self.run_recent = padded(self.run_recent, 0.0)
        self.cert_max = padded(self.cert_max, np.nan)
        self.season = padded(self.season, 0.0)
        self.first_seen = padded(self.first_seen, np.nan)

    def firing(self, kind: str, rows: IntArray) -> BoolArray:
        return self.persistence[kind].firing[rows]

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Every per-route array, by name (what a checkpoint must carry)."""
        out: dict[str, npt.NDArray[Any]] = {
            "windows": self.windows,
            "last_window": self.last_window,
            "started": self.started,
            "evidence": self.evidence,
            "evidence_t": self.evidence_t,
            "streak": self.streak,
            "calm": self.calm,
            "surge_held": self.surge_held,
            "spike_prev": self.spike_prev,
            "error_prev": self.error_prev,
            "run_sum": self.run_sum,
            "run_sq": self.run_sq,
            "run_recent": self.run_recent,
            "cert_max": self.cert_max,
            "season": self.season,
            "first_seen": self.first_seen,
            "baseline.level": self.baseline.level,
            "baseline.spread": self.baseline.spread,
            "baseline.count": self.baseline.count,
        }
        for k, pers in self.persistence.items():
            out[f"{k}.history"] = pers.history
            out[f"{k}.firing"] = pers.firing
            out[f"{k}.normal_streak"] = pers.normal_streak
        return out

    def state_bytes_per_route(self) -> float:
        total = sum(a.nbytes for a in self.state_arrays().values())
        return total / self.windows.shape[0]

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
        kinds: dict[str, KindVerdict] = {}
        for k in KINDS:
            cols: dict[str, Any] = {}
            for f in KindVerdict.__dataclass_fields__:
                parts = [getattr(v[k], f) for _, v in results]
                if f == "rebaselined":
                    parts = [
                        np.zeros(i.size, dtype=np.bool_) if a is None else a
                        for a, (i, _) in zip(parts, results, strict=True)
                    ]
                cols[f] = np.concatenate(parts)
            kinds[k] = KindVerdict(**cols)
        return Verdicts(index=index, kinds=kinds)

    def _season_bin(self, o: Observations) -> IntArray:
        """Profile bin of each window: its time of day, and (split) weekday or weekend.

        Request rates of services used by people follow the hour of day, and
        weekends differ from weekdays (a weekend afternoon looks like a
        weekday night); one daily profile would call every Saturday a drop.
        """
        p = self.params
        ws = o.window_seconds if o.window_seconds is not None else np.full(len(o), 10.0)
        mid = o.window_end - _nan_to_num(ws, nan=10.0) / 2
        period = max(p.season_period_seconds, 1.0)
        per = season_bins_per_period(p)
        frac = np.mod(mid, period) / period
        b = np.minimum((frac * per).astype(np.int64), per - 1)
        if season_split(p):
            # 1970-01-01 (day 0) was a Thursday: (day + 3) mod 7 counts from Monday
            weekend = np.mod(np.floor(mid / 86400.0) + 3, 7) >= 5
            b = b + per * weekend.astype(np.int64)
        return np.asarray(b, dtype=np.int64)

    def _round(self, o: Observations) -> dict[str, KindVerdict]:
        p = self.params
        rows = o.rows
        b = self.baseline
        n_rows = len(rows)
        at = np.arange(n_rows)
        self._window_end = o.window_end
        # Persistence is meant in time: ``fire_after`` windows of 10 s filter a
        # 10-second hiccup, but one window of an hourly series is an hour of
        # evidence. A window fires once its anomalous windows span
        # ``persist_seconds`` (never needing more than ``fire_after`` of them).
        ws_all = _nan_to_num(
            o.window_seconds if o.window_seconds is not None else np.full(n_rows, 10.0), nan=10.0
        )
        need = np.ceil(p.persist_seconds / np.maximum(ws_all, 1e-9))
        need = np.where(p.persist_seconds > 0, need, p.fire_after)
        self._fire_need = np.clip(need, 1, p.fire_after).astype(np.int64)
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
                    np.full(n_rows, np.nan),  # EXC, filled below
                ]
            )
        x = np.where(np.isfinite(x), x, np.nan)
        # row gathers of 2-D state with ``take``: 3-4x cheaper than fancy indexing
        count = b.count.take(rows, axis=0)
        warm = count >= p.warmup_windows
        level = b.level.take(rows, axis=0)
        spread = b.effective_spread(rows)
        out: dict[str, KindVerdict] = {}
        enough = o.requests >= p.min_requests
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (x - level) / spread

        # -- daily seasonality of the request rate: offset of this hour of day
        seasonal = p.season_period_seconds > 0 and p.season_bins > 1
        self.first_seen[rows] = np.where(
            np.isnan(self.first_seen[rows]), o.window_end, self.first_seen[rows]
        )
        if seasonal:
            sbin = self._season_bin(o)
            age = o.window_end - self.first_seen[rows]
            ready = age >= p.season_period_seconds
            # until a route has seen a whole week, weekend days use the weekday profile
            per = season_bins_per_period(p)
            use = np.where(age >= 7 * 86400.0, sbin, np.mod(sbin, per)) if season_split(p) else sbin
            offset = np.where(ready, self.season[rows, use], 0.0)
        else:
            sbin = np.zeros(n_rows, dtype=np.int64)
            offset = np.zeros(n_rows)
        expected_log = level[:, LREQ] + offset
        z[:, LREQ] = (x[:, LREQ] - expected_log) / spread[:, LREQ]

        # How many requests the learned rates rest on: an exponentially weighted
        # mean remembers about 2/alpha windows (all of them during warm-up).
        # A usual rate learned from few requests is uncertain; the tests use
        # its upper bound (rate + 1.5 standard errors), so a low-traffic route
        # does not alert because its baseline happened to come out low.
        memory = np.minimum(count, (2.0 / b.alpha)[None, :])
        n_learned = np.maximum(memory * np.expm1(np.maximum(level[:, [LREQ]], 0.0)), 1.0)

        def tail(zs: FloatArray, where: BoolArray) -> FloatArray:
            # only where the score is used (the t CDF is the costly part)
            return tail_score(zs, p.spread_tail_dof, where)

        def upper(rate: FloatArray, col: int) -> FloatArray:
            return np.asarray(rate + 1.5 * np.sqrt(rate / n_learned[:, col]), dtype=np.float64)

        # -- latency ------------------------------------------------------------
        exceed_p0 = np.clip(upper(_nan_to_num(level[:, EXC], nan=0.05), EXC), 0.01, 0.5)
        if o.buckets is not None:
            threshold = np.exp(level[:, LP95])
            n_lat = o.buckets.sum(axis=1)
            bounds = DEFAULT_BOUNDS_MS if o.bounds is None else o.bounds
            k_above = count_above(o.buckets, threshold, bounds)
            with np.errstate(invalid="ignore", divide="ignore"):
                x[:, EXC] = np.where(n_lat > 0, k_above / n_lat, np.nan)
        else:
            n_lat = np.zeros(n_rows)
            k_above = np.zeros(n_rows)
        zq = np.where(np.isfinite(z[:, [LP95, LP99]]), z[:, [LP95, LP99]], -np.inf)
        worst = np.where(zq[:, 1] >= zq[:, 0], LP99, LP95)
        ratio = np.exp(x[at, worst] - level[at, worst])
        counted = n_lat >= p.min_requests
        judged_lat = warm[:, LP95] & enough & (counted & warm[:, EXC] | ~counted)
        judged_lat &= counted | np.isfinite(x[:, LP95]) | np.isfinite(x[:, LP99])
        # each test only where its score is used (k = 0 scores 0 without work)
        count_score = binomial_surprise(
            np.where(judged_lat & counted, np.rint(k_above), 0.0), n_lat, exceed_p0
        )
        spread_score = tail(np.max(zq, axis=1), judged_lat & ~counted)
        score = np.where(judged_lat, np.where(counted, count_score, spread_score), 0.0)
        practical = _nan_to_num(ratio) >= p.latency_min_ratio
        practical &= ~counted | (k_above >= 2 * exceed_p0 * n_lat)
        anomalous = judged_lat & (score >= p.latency_threshold) & practical
        lat_score = score
        lo = np.exp(level[:, LP99] - p.band_z * spread[:, LP99])
        hi = np.exp(level[:, LP99] + p.band_z * spread[:, LP99])
        out["latency"] = self._verdict(
            "latency", rows, score, judged_lat, anomalous, o.p99_ms, lo, hi
        )

        # -- error rate ---------------------------------------------------------
        p0 = upper(np.maximum(_nan_to_num(level[:, ERR]), p.error_floor), ERR)
        err = x[:, ERR]
        judged = warm[:, ERR] & (o.requests > 0) & enough
        count_score = binomial_surprise(np.where(judged, o.failures, 0.0), o.requests, p0)
        # min(0, spread score) is 0: no spread score where the count test says 0
        spread_score = tail((err - p0) / spread[:, ERR], judged & (count_score != 0))
        score = np.where(judged, np.minimum(count_score, spread_score), 0.0)
        guard = _nan_to_num(err) >= np.maximum(p.error_min_ratio, p.error_min_factor * p0)
        anomalous = judged & (score >= p.error_threshold) & guard
        if p.error_pair_threshold > 0:
            # Two suspicious windows in a row are as telling as one anomalous one:
            # a raised error ratio held for two hours, each just under the threshold.
            pair = judged & (score >= p.error_pair_threshold) & guard
            prev = self.error_prev[rows]
            anomalous |= pair & prev
            self.error_prev[rows] = np.where(judged, pair, prev)
        sd = np.sqrt(p0 * (1 - p0) / np.maximum(o.requests, 1))
        hi = np.minimum(p0 + p.band_z * np.maximum(sd, spread[:, ERR]), 1.0)
        out["error_rate"] = self._verdict(
            "error_rate", rows, score, judged, anomalous, err, np.zeros_like(p0), hi
        )

        # -- TLS failures -------------------------------------------------------
        lam = np.maximum(_nan_to_num(level[:, TLS]), 0.5)
        judged = warm[:, TLS] & np.isfinite(o.tls_failures)
        count_score = poisson_surprise(np.where(judged, o.tls_failures, 0.0), lam)
        spread_score = tail((o.tls_failures - lam) / spread[:, TLS], judged & (count_score != 0))
        score = np.where(judged, np.minimum(count_score, spread_score), 0.0)
        anomalous = judged & (score >= p.tls_threshold) & (o.tls_failures >= p.tls_min_failures)
        hi = lam + p.band_z * np.maximum(np.sqrt(lam), spread[:, TLS])
        out["tls_failure"] = self._verdict(
            "tls_failure", rows, score, judged, anomalous, o.tls_failures, np.zeros_like(lam), hi
        )

        # -- mTLS regression ----------------------------------------------------
        total = o.mtls + o.plaintext
        b0 = np.maximum(_nan_to_num(level[:, PLAIN]), 0.005)
        judged = warm[:, PLAIN] & (total >= p.min_requests) & (level[:, PLAIN] < 0.5)
        score = np.where(judged, binomial_surprise(o.plaintext, total, b0), 0.0)
        share = x[:, PLAIN]
        anomalous = (
            judged & (score >= p.mtls_threshold) & (_nan_to_num(share) >= b0 + p.mtls_min_increase)
        )
        out["mtls_regression"] = self._verdict(
            "mtls_regression", rows, score, judged, anomalous, share, np.zeros_like(b0), b0 + 0.05
        )

        # -- traffic: drop (incl. no traffic) and surge -------------------------
        expected = np.expm1(expected_log)
        judged = warm[:, LREQ] & (expected >= p.traffic_min_expected) & np.isfinite(o.requests)
        zr = _nan_to_num(z[:, LREQ])
        drop_score = np.where(
            judged,
            np.minimum(poisson_drop_surprise(o.requests, expected, judged), normal_score(-zr)),
            0.0,
        )
        drop = judged & (drop_score >= p.traffic_threshold)
        drop &= o.requests <= p.traffic_drop_ratio * expected
        judged_up = warm[:, LREQ] & np.isfinite(o.requests) & (o.requests >= p.min_requests)
        surge_score = np.where(
            judged_up,
            np.minimum(
                # only judged windows' tails (k = 0 scores 0 without work)
                poisson_surprise(np.where(judged_up, o.requests, 0.0), np.maximum(expected, 0.5)),
                normal_score(zr),
            ),
            0.0,
        )
        surge = judged_up & (surge_score >= p.traffic_threshold)
        big_enough = o.requests >= p.traffic_min_expected
        # the opt-in rules below (off in the mesh default) start from here
        surge_base = (
            surge & big_enough if p.traffic_surge_held_ratio or p.traffic_spike_ratio else surge
        )
        surge &= (o.requests >= p.traffic_surge_ratio * np.maximum(expected, 1.0)) & big_enough
        if p.traffic_surge_held_ratio > 0:
            # A smaller surge counts once it has held long enough (in time, so an
            # hourly window is an hour of it and a minute's burst is not).
            above = surge_base & (
                o.requests >= p.traffic_surge_held_ratio * np.maximum(expected, 1.0)
            )
            held = np.where(above, self.surge_held[rows] + 1, 0)
            self.surge_held[rows] = np.minimum(held, 1 << 30)
            surge |= above & (held * ws_all >= p.traffic_surge_hold_seconds)
        lone = None
        if p.traffic_spike_ratio > 0:
            # A lone spike: judged once the next window is back under the ratio
            # (one window late), so a burst that goes on is left to the rules above.
            spike = surge_base & (o.requests >= p.traffic_spike_ratio * np.maximum(expected, 1.0))
            lone = self.spike_prev[rows] & judged_up & ~spike
            if lone.any() and p.evidence_points >= 2:
                # and a spike in the series itself: up from the window before it
                # and down again after it, each by the ratio (a baseline that lags
                # a busy service's minute-to-minute swings is not enough)
                ring = self.evidence[rows, KINDS.index("traffic_surge")]
                peak, before = ring[:, -1], ring[:, -2]
                lone &= (peak >= p.traffic_spike_ratio * before) & (
                    o.requests * p.traffic_spike_ratio <= peak
                )
            self.spike_prev[rows] = spike
            surge |= lone
        lo = np.expm1(np.maximum(expected_log - p.band_z * spread[:, LREQ], 0.0))
        lo = np.minimum(lo, expected * p.traffic_drop_ratio)
        hi = np.expm1(expected_log + p.band_z * spread[:, LREQ])
        hi = np.maximum(hi, expected * p.traffic_surge_ratio)
        out["traffic_drop"] = self._verdict(
            "traffic_drop", rows, drop_score, judged, drop, o.requests, lo, hi
        )
        need = self._fire_need
        if lone is not None and lone.any():
            self._fire_need = np.where(lone, 1, need)  # the spike is over: one window fires
        out["traffic_surge"] = self._verdict(
            "traffic_surge", rows, surge_score, judged_up, surge, o.requests, lo, hi
        )
        self._fire_need = need

        # -- certificate expiry -------------------------------------------------
        ttl = o.cert_ttl
        has_ttl = np.isfinite(ttl)
        cmax = np.fmax(self.cert_max[rows], np.where(has_ttl, ttl, np.nan))
        self.cert_max[rows] = cmax
        floor = np.minimum(p.cert_min_ttl_seconds, p.cert_min_ttl_fraction * cmax)
        floor = np.where(np.isfinite(floor), floor, p.cert_min_ttl_seconds)
        score = np.where(
            has_ttl, np.clip(1.0 - _nan_to_num(ttl) / (2 * np.maximum(floor, 1.0)), 0.0, 1.0), 0
        )
        anomalous = has_ttl & (_nan_to_num(ttl, nan=np.inf) < floor)
        out["cert_expiry"] = self._verdict(
            "cert_expiry", rows, score, has_ttl, anomalous, ttl, floor, np.full_like(ttl, np.inf)
        )

        # -- re-baselining after a lasting, stable shift (latency, traffic) ----
        # A shift near ``latency_min_ratio`` is anomalous in some windows and
        # only suspicious (not learned, not anomalous) in others: the run goes
        # on through those, or it would restart forever and the shift would
        # alert again and again, never accepted and never learned.
        lat_anom = out["latency"].anomalous | (judged_lat & (lat_score >= p.learn_threshold))
        traffic_anom = (out["traffic_drop"].anomalous | out["traffic_surge"].anomalous) & (
            o.requests > 0
        )
        x_season = x.copy()
        x_season[:, LREQ] = x[:, LREQ] - offset
        rebased_lat = self._track_run(
            rows, G_LATENCY, [LP50, LP95, LP99], lat_anom, judged_lat, x_season, spread, LP95
        )
        rebased_lat &= np.exp(self._run_mean(rows, LP95) - level[:, LP95]) <= (
            p.rebaseline_max_ratio
        )
        rebased_tr = self._track_run(
            rows, G_TRAFFIC, [LREQ], traffic_anom, judged | judged_up, x_season, spread, LREQ
        )
        for col in (LP50, LP95, LP99):
            b.reset(rows, col, self._run_mean(rows, col), rebased_lat)
        b.reset(rows, LREQ, self._run_mean(rows, LREQ), rebased_tr)
        for mask, group in ((rebased_lat, G_LATENCY), (rebased_tr, G_TRAFFIC)):
            self.streak[rows[mask], group] = 0
            self.calm[rows[mask], group] = 0
        out["latency"].rebaselined = rebased_lat
        out["traffic_drop"].rebaselined = rebased_tr & out["traffic_drop"].anomalous
        out["traffic_surge"].rebaselined = rebased_tr & out["traffic_surge"].anomalous

        # -- learning: only windows that look normal for the kinds they feed ----
        learn = np.ones_like(x, dtype=np.bool_)
        calm = p.learn_threshold
        bad_latency = out["latency"].anomalous | self.firing("latency", rows) | (lat_score >= calm)
        bad_latency &= ~rebased_lat
        for col in (LP50, LP95, LP99, EXC):
            learn[:, col] &= ~bad_latency & enough
        # counts of rare events are skewed: leaving out their suspicious windows
        # would bias the usual rate low, so only anomalous ones are left out
        learn[:, ERR] &= ~(out["error_rate"].anomalous | self.firing("error_rate", rows)) & enough
        learn[:, TLS] &= ~(out["tls_failure"].anomalous | self.firing("tls_failure", rows))
        learn[:, PLAIN] &= ~(
            out["mtls_regression"].anomalous | self.firing("mtls_regression", rows)
        ) & (total > 0)
        bad_traffic = (
            out["traffic_drop"].anomalous
            | out["traffic_surge"].anomalous
            | self.firing("traffic_drop", rows)
            | self.firing("traffic_surge", rows)
        ) & ~rebased_tr
        learn[:, LREQ] &= ~bad_traffic
        spread_only = None
        if p.error_outlier_spread_clip > 0:
            # The level leaves out anomalous windows and incidents; with this on,
            # the spread still learns how far the ratio strays in them (clipped),
            # so a series whose bursts are routine stops alerting on each one.
            spread_only = np.zeros_like(learn)
            spread_only[:, ERR] = enough & np.isfinite(x[:, ERR])
        b.update(rows, x_season, learn, spread_only, p.error_outlier_spread_clip)
        if seasonal:
            self._learn_season(rows, sbin, x[:, LREQ] - b.level[rows, LREQ], learn[:, LREQ], o)

        # Evidence ring: newest value at the end (gathered once with ``take``,
        # cheaper than fancy indexing here, shifted into a fresh array rather
        # than onto itself, which costs numpy a temporary copy; written back once).
        gathered = self.evidence.take(rows, axis=0)
        evidence = np.empty_like(gathered)
        evidence[:, :, :-1] = gathered[:, :, 1:]
        evidence[:, :, -1] = np.stack([out[k].observed for k in KINDS], axis=1)
        self.evidence[rows] = evidence
        gathered_t = self.evidence_t.take(rows, axis=0)
        evidence_t = np.empty_like(gathered_t)
        evidence_t[:, :-1] = gathered_t[:, 1:]
        evidence_t[:, -1] = o.window_end
        self.evidence_t[rows] = evidence_t
        self.windows[rows] += 1
        self.last_window[rows] = o.window_end
        return out

    # -- re-baselining --------------------------------------------------------

    def _run_mean(self, rows: IntArray, col: int) -> FloatArray:
        group = G_TRAFFIC if col == LREQ else G_LATENCY
        n = np.maximum(self.streak[rows, group], 1)
        return np.asarray(self.run_sum[rows, col] / n, dtype=np.float64)

    def _track_run(
        self,
        rows: IntArray,
        group: int,
        cols: list[int],
        anomalous: BoolArray,
        judged: BoolArray,
        x: FloatArray,
        spread: FloatArray,
        key_col: int,
    ) -> BoolArray:
        """Advance the anomalous-run statistics; True where a re-baseline is due."""
        p = self.params
        n_prev = self.streak[rows, group]
        calm_now = judged & ~anomalous
        shifted = anomalous & np.isfinite(x[:, key_col])
        # a run survives up to ``rebaseline_gap`` calm windows in a row (a
        # noisy shifted level dips under the threshold now and then); they
        # count in its level, so its mean is not biased towards the tail
        gap = np.where(shifted, 0, self.calm[rows, group] + calm_now)
        bridged = calm_now & (n_prev > 0) & (gap <= p.rebaseline_gap) & np.isfinite(x[:, key_col])
        extend = shifted | bridged
        normal = calm_now & ~bridged
        n = np.where(extend, n_prev + 1, np.where(normal, 0, n_prev))
        self.streak[rows, group] = n
        self.calm[rows, group] = np.where(normal, 0, gap).astype(np.int16)
        # Runs end where the window is normal; only the (few) rows whose run
        # goes on or starts change their sums; the rest keep theirs.
        done = rows[normal]
        for c in cols:
            self.run_sum[done, c] = 0.0
            self.run_sq[done, c] = 0.0
        if not extend.any():  # no run goes on (the usual round): nothing is due
            return np.zeros(rows.size, dtype=np.bool_)
        beta = min(1.0, 4.0 / max(p.rebaseline_windows, 1))
        at = np.flatnonzero(extend)
        going = rows[at]
        restart = n_prev[at] == 0
        for c in cols:
            xc = _nan_to_num(x[at, c])
            s = np.where(restart, 0.0, self.run_sum[going, c])
            q = np.where(restart, 0.0, self.run_sq[going, c])
            r = np.where(restart, xc, self.run_recent[going, c])
            self.run_sum[going, c] = s + xc
            self.run_sq[going, c] = q + xc * xc
            self.run_recent[going, c] = r + beta * (xc - r)
        due = n >= p.rebaseline_windows
        if not due.any():
            return due
        k = np.maximum(n, 1)
        mean = self.run_sum[rows, key_col] / k
        var = np.maximum(self.run_sq[rows, key_col] / k - mean * mean, 0.0)
        sd = spread[:, key_col]
        stable = np.sqrt(var) <= p.rebaseline_spread_factor * sd
        stable &= np.abs(self.run_recent[rows, key_col] - mean) <= p.rebaseline_drift * sd
        return np.asarray(due & stable & shifted, dtype=np.bool_)

    # -- seasonality ----------------------------------------------------------

    def _learn_season(
        self,
        rows: IntArray,
        sbin: IntArray,
        resid: FloatArray,
        learn: BoolArray,
        o: Observations,
    ) -> None:
        """Move this hour's offset towards the residual, slowly (half-life in days)."""
        p = self.params
        ws = o.window_seconds if o.window_seconds is not None else np.full(len(o), 10.0)
        per = season_bins_per_period(p)
        per_bin = np.maximum(p.season_period_seconds / per / _nan_to_num(ws, nan=10.0), 1)
        beta = 1.0 - 0.5 ** (1.0 / (p.season_half_life_periods * per_bin))
        ok = learn & np.isfinite(resid)
        if season_split(p):
            # In a route's first week its weekend days are judged against the
            # weekday profile and look like drops, which are never learned. So
            # for two weeks (two weekends) the weekend profile learns from every
            # window, half-way over each visit of a bin: its warm-up.
            young = (o.window_end - self.first_seen[rows]) < 14 * 86400.0
            young &= (sbin >= per) & np.isfinite(resid)
            ok |= young
            beta = np.where(young, np.maximum(beta, 1.0 - 0.5 ** (1.0 / per_bin)), beta)
        # the rows' profiles gathered once and written back once (rows are
        # unique within a round)
        season = self.season.take(rows, axis=0)
        at = np.arange(rows.size)
        cur = season[at, sbin]
        step = np.clip(_nan_to_num(resid) - cur, -1.0, 1.0)
        season[at, sbin] = np.where(ok, cur + beta * step, cur)
        # keep the profile centred so the level carries the mean (over a week:
        # five weekdays and two weekend days; weekends may sit below weekdays)
        if season_split(p):
            # np.add.reduce(...) / count is what ``mean`` computes, minus its wrapper
            week = (
                np.add.reduce(season[:, :per], axis=1) / per * 5
                + np.add.reduce(season[:, per:], axis=1) / (season.shape[1] - per) * 2
            )
            season -= (week / 7.0)[:, None]
        else:
            season -= season.mean(axis=1, keepdims=True)
        self.season[rows] = season

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
        # anomalous windows are few: only their rows' streak starts are read and set
        at = np.flatnonzero(anomalous)
        if at.size:
            r = rows[at]
            fresh_streak = (pers.history[r] == 0) & ~pers.firing[r]
            self.started[r[fresh_streak], ki] = self._window_end[at[fresh_streak]]
        fired, resolved = pers.step(rows, anomalous, judged)
        quick = judged & anomalous & (self._fire_need < pers.fire_after)
        if quick.any():
            quick &= ~pers.firing[rows]
        if quick.any():
            quick[quick] = popcount(pers.history[rows[quick]]) >= self._fire_need[quick]
            r = rows[quick]
            pers.firing[r] = True
            pers.normal_streak[r] = 0
            fired = fired | quick
        return KindVerdict(
            # NaN scores 0; ±inf clip to 1 and 0 (as nan_to_num's ±max would)
            score=np.clip(np.where(np.isnan(score), 0.0, score), 0.0, 1.0),
            judged=judged,
            anomalous=anomalous,
            fired=fired,
            resolved=resolved,
            observed=np.asarray(observed, dtype=np.float64),
            expected_low=np.asarray(lo, dtype=np.float64),
            expected_high=np.asarray(hi, dtype=np.float64),
        )

    # -- checkpoint rows (scale-out state) -------------------------------------

    def export_state(self, rows: IntArray) -> dict[str, npt.NDArray[Any]]:
        """Copies of every state array at ``rows``: one partition's share of a checkpoint.

        Rows, not the whole table: an instance holds the routes of several
        partitions and each partition is checkpointed and handed over alone.
        """
        idx = np.asarray(rows, dtype=np.int64)
        return {name: a[idx] for name, a in self.state_arrays().items()}

    def load_state(self, keys: Sequence[str], arrays: dict[str, npt.NDArray[Any]]) -> IntArray:
        """Take over routes exported by :meth:`export_state` (of any instance).

        Checks every array before touching anything, so a checkpoint written
        with other settings (another ``evidence_points`` or ``season_bins``, a
        state layout of another version) raises ``ValueError`` and leaves this
        detector as it was; the caller then starts those routes cold.
        """
        n = len(keys)
        current = self.state_arrays()
        arrays = dict(arrays)
        for name in _ADDED_LATER.keys() - arrays.keys():  # a checkpoint of an older version
            arrays[name] = np.full((n, *current[name].shape[1:]), _ADDED_LATER[name])
        missing = sorted(set(current) - set(arrays))
        if missing:
            raise ValueError(f"checkpoint lacks state arrays {missing}")
        for name, a in current.items():
            got = arrays[name]
            if got.shape != (n, *a.shape[1:]):
                raise ValueError(
                    f"state array {name!r} has shape {got.shape}, expected {(n, *a.shape[1:])}"
                )
            if not np.can_cast(got.dtype, a.dtype, casting="same_kind"):
                raise ValueError(f"state array {name!r} has dtype {got.dtype}, expected {a.dtype}")
        rows = self.rows_for(keys)
        for name, a in self.state_arrays().items():  # again: rows_for may have grown them
            a[rows] = arrays[name]
        return rows


__all__ = [
    "DEFAULT_BOUNDS_MS",
    "KINDS",
    "MODEL_NAME",
    "MODEL_VERSION",
    "UNITS",
    "DetectorParams",
    "KindVerdict",
    "Observations",
    "RouteDetector",
    "Verdicts",
    "count_above",
]
