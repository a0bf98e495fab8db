"""Quantiles from bucket deltas, checked against an independent formulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.histogram import cumulative_to_buckets, quantiles
from pipeline.schema import LINKERD_LATENCY_BOUNDS_MS

BOUNDS = LINKERD_LATENCY_BOUNDS_MS


def reference_quantile(per_bucket: np.ndarray, bounds: tuple[float, ...], q: float) -> float:
    """Inverse of the piecewise-linear CDF through (0,0) and each (bound, cum)."""
    total = per_bucket.sum()
    if total == 0:
        return math.nan
    rank = q * total
    cum = np.concatenate(([0.0], np.cumsum(per_bucket)))
    edges = np.concatenate(([0.0], bounds))
    if rank > cum[-2]:  # in the +Inf bucket
        return float(bounds[-2])
    # first edge where the cumulative count reaches the rank, then interpolate
    j = int(np.searchsorted(cum, rank, side="left"))
    j = max(j, 1)
    lo_c, hi_c = cum[j - 1], cum[j]
    if hi_c == lo_c:
        return float(edges[j])
    return float(edges[j - 1] + (edges[j] - edges[j - 1]) * (rank - lo_c) / (hi_c - lo_c))


def test_matches_reference_on_random_histograms() -> None:
    rng = np.random.default_rng(7)
    counts = rng.poisson(rng.uniform(0, 30, size=(200, len(BOUNDS))))
    counts[rng.random(counts.shape) < 0.5] = 0
    got = quantiles(counts, BOUNDS, [0.5, 0.95, 0.99])
    for i in range(counts.shape[0]):
        for j, q in enumerate([0.5, 0.95, 0.99]):
            want = reference_quantile(counts[i].astype(float), BOUNDS, q)
            if math.isnan(want):
                assert math.isnan(got[i, j])
            else:
                assert got[i, j] == pytest.approx(want, rel=1e-9, abs=1e-9), (i, q)


def test_known_values() -> None:
    per = np.zeros(len(BOUNDS))
    per[5] = 100  # all in (5, 10] ms
    got = quantiles([per], BOUNDS, [0.5, 0.99])[0]
    assert got[0] == pytest.approx(7.5)
    assert got[1] == pytest.approx(9.95)


def test_inf_bucket_returns_largest_finite_bound() -> None:
    per = np.zeros(len(BOUNDS))
    per[-1] = 10
    assert quantiles([per], BOUNDS, [0.5])[0, 0] == 50000.0


def test_empty_histogram_is_nan() -> None:
    assert np.isnan(quantiles([np.zeros(len(BOUNDS))], BOUNDS, [0.5])).all()


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="bucket counts"):
        quantiles([[1, 2]], BOUNDS, [0.5])


def test_cumulative_to_buckets_clips_skew() -> None:
    assert cumulative_to_buckets([1, 3, 2, 5]).tolist() == [1, 2, 0, 3]
