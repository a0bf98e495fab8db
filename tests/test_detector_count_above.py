"""count_above's shortcut for one shared bucket layout gives the general form's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from models.detector import DEFAULT_BOUNDS_MS, _count_above_general, count_above

LAYOUTS = [
    DEFAULT_BOUNDS_MS,
    np.array([0.0, 1.0, 1.0, 2.0, 5.0, np.inf]),  # an empty-width bucket
    np.array([1.0, 2.0, 3.0]),  # no +Inf bucket
    np.array([np.inf]),
    np.array([0.5, 0.5, 0.5, 4.0]),
]


@pytest.mark.parametrize("bounds", LAYOUTS)
def test_shared_layout_equals_general_form(bounds: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    n = 3000
    buckets = rng.poisson(3, size=(n, bounds.size)).astype(np.float64)
    buckets[rng.random(buckets.shape) < 0.3] = 0.0
    t = np.exp(rng.normal(3, 3, n))
    finite_bounds = bounds[np.isfinite(bounds)]
    if finite_bounds.size:
        t[::7] = rng.choice(finite_bounds, size=t[::7].size)  # exactly on a bound
    t[::11] = np.nan
    t[::13] = np.inf
    t[::17] = 0.0
    t[::19] = -3.0
    t[::23] = -np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        want = _count_above_general(buckets, t, bounds)
    got = count_above(buckets, t, bounds)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_count_above_spreads_the_threshold_bucket() -> None:
    buckets = np.array([[0.0, 10.0, 0.0]])
    got = count_above(buckets, np.array([1.5]), np.array([1.0, 2.0, np.inf]))
    np.testing.assert_array_equal(got, [5.0])  # half of the (1, 2] bucket lies above 1.5


def test_nan_to_num_equals_numpy() -> None:
    from models.detector import _nan_to_num

    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e308, -1e308, 3.5, -2.0])
    for nan in (0.0, 0.05, 10.0, np.inf):
        got, want = _nan_to_num(x, nan=nan), np.nan_to_num(x, nan=nan)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    ints = np.array([1, 2, 3])
    np.testing.assert_array_equal(_nan_to_num(ints), ints)
