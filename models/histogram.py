"""Quantiles from histogram bucket counts, for many histograms at once.

Same estimate as Prometheus' ``histogram_quantile``: find the bucket holding
the rank and interpolate linearly inside it, the first bucket starting at 0.
A rank that falls in the +Inf bucket returns the largest finite bound, since
nothing better is known. Rows with no observations give NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def quantiles(counts: npt.ArrayLike, bounds: Sequence[float], qs: Sequence[float]) -> FloatArray:
    """Quantiles of per-bucket (non-cumulative) counts.

    ``counts`` has shape (n, b) with b == len(bounds); ``bounds`` are upper
    bucket bounds in increasing order, the last usually +Inf. Returns shape
    (n, len(qs)).
    """
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    ub = np.asarray(bounds, dtype=np.float64)
    if c.shape[1] != ub.shape[0]:
        raise ValueError(f"{c.shape[1]} bucket counts for {ub.shape[0]} bounds")
    cum = np.cumsum(c, axis=1)
    total = cum[:, -1]
    finite = ub[np.isfinite(ub)]
    top = finite[-1] if finite.size else np.nan
    lower = np.concatenate(([0.0], ub[:-1]))
    out = np.full((c.shape[0], len(qs)), np.nan)
    has = total > 0
    if not has.any():
        return out
    cum_h, tot_h, c_h = cum[has], total[has], c[has]
    rows = np.arange(cum_h.shape[0])
    for j, q in enumerate(qs):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside [0, 1]")
        rank = q * tot_h
        # first bucket whose cumulative count reaches the rank
        idx = (cum_h < rank[:, None]).sum(axis=1)
        idx = np.minimum(idx, c.shape[1] - 1)
        lo, hi = lower[idx], ub[idx]
        below = np.where(idx > 0, cum_h[rows, np.maximum(idx - 1, 0)], 0.0)
        inside = c_h[rows, idx]
        frac = np.divide(rank - below, inside, out=np.zeros_like(rank), where=inside > 0)
        est = lo + (hi - lo) * np.clip(frac, 0.0, 1.0)
        est = np.where(np.isinf(hi), top, est)
        out[has, j] = est
    return out


def cumulative_to_buckets(cumulative: npt.ArrayLike) -> FloatArray:
    """Cumulative ``le`` counts → per-bucket counts (negatives from skew clipped)."""
    cum = np.asarray(cumulative, dtype=np.float64)
    per = np.diff(cum, axis=-1, prepend=0.0)
    return np.clip(per, 0.0, None)
