"""The tails of ``models.significance`` equal scipy.stats' public functions
element for element, edge cases included (they skip scipy's generic wrappers)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from models import significance as sig

_EDGE = np.array(
    [-np.inf, -3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 5.0, 7.5, 40.0, 1e6, np.inf, np.nan]
)


def _grid(*values: np.ndarray) -> list[np.ndarray]:
    return [a.ravel() for a in np.meshgrid(*values, indexing="ij")]


def test_poisson_tails_equal_scipy() -> None:
    mu = np.array([-1.0, 0.0, 1e-9, 0.5, 3.0, 40.0, 1e5, np.inf, np.nan])
    k, m = _grid(_EDGE, mu)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(sig._poisson_sf(k, m), stats.poisson.sf(k, m))
        np.testing.assert_array_equal(sig._poisson_cdf(k, m), stats.poisson.cdf(k, m))


def test_binomial_tail_equals_scipy() -> None:
    n = np.array([-1.0, 0.0, 1.0, 2.5, 20.0, 1000.0, np.inf, np.nan])
    p = np.array([-0.1, 0.0, 1e-9, 0.01, 0.5, 1.0, 1.5, np.nan])
    k, nn, pp = _grid(_EDGE, n, p)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(sig._binom_sf(k, nn, pp), stats.binom.sf(k, nn, pp))


def test_surprises_equal_scipy_formulas() -> None:
    rng = np.random.default_rng(3)
    k = rng.poisson(5.0, 2000).astype(np.float64)
    k[::97] = np.nan
    n = k + rng.integers(0, 50, k.size)
    p = rng.uniform(0, 0.5, k.size)
    lam = rng.uniform(-1, 20, k.size)
    hit = k > 0
    want = np.zeros(k.size)
    want[hit] = 1.0 - stats.binom.sf(k[hit] - 1, n[hit], np.clip(p[hit], 1e-9, 1 - 1e-9))
    np.testing.assert_array_equal(sig.binomial_surprise(k, n, p), want)
    want = np.zeros(k.size)
    lam9 = np.maximum(lam, 1e-9)
    want[hit] = 1.0 - stats.poisson.sf(k[hit] - 1, lam9[hit])
    np.testing.assert_array_equal(sig.poisson_surprise(k, lam), want)
    np.testing.assert_array_equal(
        sig.poisson_drop_surprise(k, lam), 1.0 - stats.poisson.cdf(k, lam9)
    )


def test_scores_equal_scipy() -> None:
    rng = np.random.default_rng(5)
    z = np.concatenate([rng.normal(0, 4, 3000), _EDGE, [-40.0, 40.0, 1e300, -1e300]])
    np.testing.assert_array_equal(sig.normal_score(z), np.nan_to_num(stats.norm.cdf(z), nan=0.0))
    for dof in (1.0, 5.0, 30.0):
        np.testing.assert_array_equal(
            sig.tail_score(z, dof), np.nan_to_num(stats.t.cdf(z, dof), nan=0.0)
        )
    where = rng.random(z.size) < 0.3
    want = np.where(where, np.nan_to_num(stats.t.cdf(z, 5.0), nan=0.0), 0.0)
    np.testing.assert_array_equal(sig.tail_score(z, 5.0, where), want)
