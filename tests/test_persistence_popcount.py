"""popcount counts the set bits of each 64-bit pattern, as the per-bit loop did."""

from __future__ import annotations

import numpy as np

from models.persistence import _BYTE_BITS, popcount


def test_popcount_matches_python_bit_counts() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64)
    x[:6] = [0, 1, -1, 7, 2**62, -(2**63)]
    want = np.array([bin(int(v) & (2**64 - 1)).count("1") for v in x], dtype=np.int64)
    got = popcount(x)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(popcount(x.reshape(40, 50)), want.reshape(40, 50))
    # the byte-table path used on numpy < 2.0
    table = _BYTE_BITS[x.view(np.uint64).view(np.uint8).reshape(-1, 8)].sum(axis=-1)
    np.testing.assert_array_equal(table, want)
