"""Count-based tail probabilities for sparse events, vectorised.

Error and TLS-failure counts on a route are small integers; a z-score of
their ratio is meaningless at 3 failures out of 40 requests. The binomial
and Poisson upper tails answer the right question ("how surprising are at
least k events if the usual rate still held?") at any traffic level.
"""

from __future__ import annotations

from collections.abc import Callable
from types import EllipsisType

import numpy as np
import numpy.typing as npt
from scipy import special, stats

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# The detector calls these a dozen times per round of a poll batch, on arrays
# of a few hundred to a few thousand windows; ``scipy.stats``' generic
# wrappers (argument parsing, support and validity masks, ``argsreduce``,
# ``place``) cost more than the special functions themselves there. The
# helpers below apply the same masks as those wrappers for the arguments
# used here and call the distributions' own element functions
# (``special.pdtrc``/``pdtr``/``stdtr``, public, which is what scipy's
# distributions call): the values are those of ``stats.poisson.sf`` and
# friends, element for element (``tests/test_significance_exact.py`` checks
# them against scipy on edge cases). The binomial's element function has no
# public twin that agrees to the last bit (scipy moved it to Boost), so the
# distribution's own ``_sf`` is used where it exists and the public, slower
# ``stats.binom.sf`` where a future scipy drops it.
_BINOM_SF: Callable[[FloatArray, FloatArray, FloatArray], FloatArray] = getattr(
    stats.binom, "_sf", stats.binom.sf
)


def _poisson_sf(k: FloatArray, mu: FloatArray) -> FloatArray:
    """``stats.poisson.sf(k, mu)`` for float arrays of one shape."""
    out = np.zeros(k.shape)
    ok = mu >= 0
    out[~ok | np.isnan(k)] = np.nan
    out[(k < 0) & ok] = 1.0  # below the support (-inf included)
    cond = ok & (k >= 0) & np.isfinite(k)
    if cond.any():
        out[cond] = np.clip(special.pdtrc(np.floor(k[cond]), mu[cond]), 0, 1)
    return out


def _poisson_cdf(k: FloatArray, mu: FloatArray) -> FloatArray:
    """``stats.poisson.cdf(k, mu)`` for float arrays of one shape."""
    out = np.zeros(k.shape)
    ok = mu >= 0
    out[k == np.inf] = 1.0
    out[~ok | np.isnan(k)] = np.nan
    cond = ok & (k >= 0) & np.isfinite(k)
    if cond.any():
        out[cond] = np.clip(special.pdtr(np.floor(k[cond]), mu[cond]), 0, 1)
    return out


def _binom_sf(k: FloatArray, n: FloatArray, p: FloatArray) -> FloatArray:
    """``stats.binom.sf(k, n, p)`` for float arrays of one shape."""
    out = np.zeros(k.shape)
    with np.errstate(invalid="ignore"):
        ok = (n >= 0) & (n == np.round(n)) & (p >= 0) & (p <= 1)
    out[~ok | np.isnan(k)] = np.nan
    out[(k < 0) & ok] = 1.0
    cond = ok & (k >= 0) & (k < n) & np.isfinite(k)
    if cond.any():
        out[cond] = np.clip(_BINOM_SF(k[cond], n[cond], p[cond]), 0, 1)
    return out


def _cdf_on_reals(cdf: Callable[[FloatArray], FloatArray], x: FloatArray) -> FloatArray:
    """``dist.cdf(x)`` of a continuous distribution on the whole real line, valid
    parameters, no loc/scale: NaN stays NaN, ±inf are 1 and 0."""
    out = np.zeros(x.shape)
    out[np.isnan(x)] = np.nan
    out[x == np.inf] = 1.0
    cond = np.isfinite(x)
    if cond.any():
        out[cond] = cdf(x[cond])
    return out


def binomial_surprise(k: npt.ArrayLike, n: npt.ArrayLike, p: npt.ArrayLike) -> FloatArray:
    """1 − P(X ≥ k) for X ~ Binomial(n, p): near 1 when k is far above n·p."""
    k_a = np.asarray(k, dtype=np.float64)
    n_a = np.asarray(n, dtype=np.float64)
    p_a = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    k_a, n_a, p_a = np.broadcast_arrays(k_a, n_a, p_a)
    return _where_events(k_a, lambda hit: 1.0 - _binom_sf(k_a[hit] - 1, n_a[hit], p_a[hit]))


def poisson_surprise(k: npt.ArrayLike, lam: npt.ArrayLike) -> FloatArray:
    """1 − P(X ≥ k) for X ~ Poisson(lam)."""
    k_a = np.asarray(k, dtype=np.float64)
    lam_a = np.maximum(np.asarray(lam, dtype=np.float64), 1e-9)
    k_a, lam_a = np.broadcast_arrays(k_a, lam_a)
    return _where_events(k_a, lambda hit: 1.0 - _poisson_sf(k_a[hit] - 1, lam_a[hit]))


def _where_events(
    k: FloatArray, surprise: Callable[[BoolArray | EllipsisType], FloatArray]
) -> FloatArray:
    """``surprise`` (of the elements at an index) where at least one event
    happened (``k > 0``), else 0.

    Most windows see no TLS failure or plaintext request at all; the tails
    are the costly part, so they are computed only where they can matter
    (element by element: the values are those of the full computation).
    """
    hit = k > 0
    out = np.zeros(k.shape)
    if hit.all():
        out[...] = surprise(...)
    elif hit.any():
        out[hit] = surprise(hit)
    return out


def poisson_drop_surprise(
    k: npt.ArrayLike, lam: npt.ArrayLike, where: BoolArray | None = None
) -> FloatArray:
    """1 − P(X ≤ k) for X ~ Poisson(lam): near 1 when k is far below lam.

    ``where``: only those elements are computed, the others are 0.
    """
    k_a = np.asarray(k, dtype=np.float64)
    lam_a = np.maximum(np.asarray(lam, dtype=np.float64), 1e-9)
    if where is not None:
        k_a, lam_a = np.broadcast_arrays(k_a, lam_a)
        out = np.zeros(k_a.shape)
        if where.all():
            out[...] = poisson_drop_surprise(k_a, lam_a)
        elif where.any():
            out[where] = poisson_drop_surprise(k_a[where], lam_a[where])
        return out
    k_a, lam_a = np.broadcast_arrays(k_a, lam_a)
    return np.asarray(1.0 - _poisson_cdf(k_a, lam_a), dtype=np.float64)


def tail_score(z: npt.ArrayLike, dof: float, where: BoolArray | None = None) -> FloatArray:
    """A z-score in learned spreads as a score in [0, 1], with heavy tails.

    Real series wander with heavier tails than a normal: a spread learned
    from typical windows puts one window in a hundred, not one in a
    thousand, past 3 spreads. Student's t with ``dof`` degrees of freedom
    (its scale being the learned spread) keeps the score a calibrated "one
    in N normal windows" on such series; ``dof`` <= 0 means the normal.

    ``where``: only those elements are scored, the others are 0 (the t CDF
    costs ~0.2 µs per element; callers pass the windows whose score is used).
    """
    if where is not None:
        z_a = np.asarray(z, dtype=np.float64)
        out = np.zeros(z_a.shape)
        if where.all():
            out[...] = tail_score(z_a, dof)
        elif where.any():
            out[where] = tail_score(z_a[where], dof)
        return out
    if dof <= 0:
        return normal_score(z)
    z_a = np.asarray(z, dtype=np.float64)
    if not np.isfinite(dof):  # scipy's t is the normal there
        out = stats.t.cdf(z_a, dof)
    else:
        out = _cdf_on_reals(lambda x: special.stdtr(dof, x), z_a)
    return _nan_to_zero(out)


def normal_score(z: npt.ArrayLike) -> FloatArray:
    """Φ(z): a z-score as a probability-like score in [0, 1] (NaN → 0)."""
    return _nan_to_zero(_cdf_on_reals(special.ndtr, np.asarray(z, dtype=np.float64)))


def _nan_to_zero(x: FloatArray) -> FloatArray:
    """NaN as 0 (a CDF has no infinities, so this is ``nan_to_num(x, nan=0)``)."""
    out = np.array(x, dtype=np.float64)
    out[np.isnan(out)] = 0.0
    return out
