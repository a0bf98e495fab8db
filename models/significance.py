"""Count-based tail probabilities for sparse events, vectorised.

Error and TLS-failure counts on a route are small integers; a z-score of
their ratio is meaningless at 3 failures out of 40 requests. The binomial
and Poisson upper tails answer the right question ("how surprising are at
least k events if the usual rate still held?") at any traffic level.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]


def binomial_surprise(k: npt.ArrayLike, n: npt.ArrayLike, p: npt.ArrayLike) -> FloatArray:
    """1 − P(X ≥ k) for X ~ Binomial(n, p): near 1 when k is far above n·p."""
    k_a = np.asarray(k, dtype=np.float64)
    n_a = np.asarray(n, dtype=np.float64)
    p_a = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    tail = stats.binom.sf(k_a - 1, n_a, p_a)
    return np.where(k_a > 0, 1.0 - tail, 0.0)


def poisson_surprise(k: npt.ArrayLike, lam: npt.ArrayLike) -> FloatArray:
    """1 − P(X ≥ k) for X ~ Poisson(lam)."""
    k_a = np.asarray(k, dtype=np.float64)
    lam_a = np.maximum(np.asarray(lam, dtype=np.float64), 1e-9)
    return np.where(k_a > 0, 1.0 - stats.poisson.sf(k_a - 1, lam_a), 0.0)


def poisson_drop_surprise(k: npt.ArrayLike, lam: npt.ArrayLike) -> FloatArray:
    """1 − P(X ≤ k) for X ~ Poisson(lam): near 1 when k is far below lam."""
    k_a = np.asarray(k, dtype=np.float64)
    lam_a = np.maximum(np.asarray(lam, dtype=np.float64), 1e-9)
    return np.asarray(1.0 - stats.poisson.cdf(k_a, lam_a), dtype=np.float64)


def tail_score(z: npt.ArrayLike, dof: float) -> FloatArray:
    """A z-score in learned spreads as a score in [0, 1], with heavy tails.

    Real series wander with heavier tails than a normal: a spread learned
    from typical windows puts one window in a hundred, not one in a
    thousand, past 3 spreads. Student's t with ``dof`` degrees of freedom
    (its scale being the learned spread) keeps the score a calibrated "one
    in N normal windows" on such series; ``dof`` <= 0 means the normal.
    """
    if dof <= 0:
        return normal_score(z)
    out = stats.t.cdf(np.asarray(z, dtype=np.float64), dof)
    return np.asarray(np.nan_to_num(out, nan=0.0), dtype=np.float64)


def normal_score(z: npt.ArrayLike) -> FloatArray:
    """Φ(z): a z-score as a probability-like score in [0, 1] (NaN → 0)."""
    out = stats.norm.cdf(np.asarray(z, dtype=np.float64))
    return np.asarray(np.nan_to_num(out, nan=0.0), dtype=np.float64)
