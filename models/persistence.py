"""Fire after N of the last M windows; resolve after R normal windows in a row.

Thresholding says whether one window looks wrong; persistence decides
whether that is worth waking someone. Kept apart so both are configurable
and testable on their own. Windows that cannot be judged (too little
traffic) neither count as anomalous nor as normal: they leave the history
and the streak as they were.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


#: set bits of every byte value (for numpy < 2.0, which has no ``bitwise_count``)
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def popcount(x: IntArray) -> IntArray:
    """Set bits of each element's 64-bit pattern, as int64.

    One C pass (``np.bitwise_count``, numpy >= 2.0) instead of a numpy pass
    per bit: the detector asks this for every kind of every round.
    """
    bits = np.ascontiguousarray(x, dtype=np.int64).view(np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(bits).astype(np.int64)
    table = _BYTE_BITS[bits.view(np.uint8).reshape(*bits.shape, 8)]  # pragma: no cover
    return np.asarray(table.sum(axis=-1), dtype=np.int64)  # pragma: no cover


class Persistence:
    def __init__(
        self, fire_after: int, fire_window: int, resolve_after: int, capacity: int = 1024
    ) -> None:
        if not 1 <= fire_after <= fire_window <= 62:
            raise ValueError("need 1 <= fire_after <= fire_window <= 62")
        self.fire_after = fire_after
        self.mask = np.int64((1 << fire_window) - 1)
        self.resolve_after = resolve_after
        self.history = np.zeros(capacity, dtype=np.int64)
        self.firing = np.zeros(capacity, dtype=np.bool_)
        self.normal_streak = np.zeros(capacity, dtype=np.int32)

    def grow(self, rows: int) -> None:
        if rows <= self.history.shape[0]:
            return
        new = max(rows, self.history.shape[0] + self.history.shape[0] // 4)
        pad = new - self.history.shape[0]
        self.history = np.concatenate([self.history, np.zeros(pad, dtype=np.int64)])
        self.firing = np.concatenate([self.firing, np.zeros(pad, dtype=np.bool_)])
        self.normal_streak = np.concatenate([self.normal_streak, np.zeros(pad, dtype=np.int32)])

    def step(
        self, rows: IntArray, anomalous: BoolArray, judged: BoolArray
    ) -> tuple[BoolArray, BoolArray]:
        """Advance unique ``rows`` by one window; returns (fired, resolved) masks."""
        hist = self.history[rows]
        hist = np.where(judged, ((hist << 1) | anomalous.astype(np.int64)) & self.mask, hist)
        firing = self.firing[rows]
        prev_streak = self.normal_streak[rows]
        streak = np.where(judged, np.where(anomalous, 0, prev_streak + 1), prev_streak)
        # the window count only where it decides (anomalous windows are few)
        fired = ~firing & judged & anomalous
        if fired.any():
            fired[fired] = popcount(hist[fired]) >= self.fire_after
        resolved = firing & judged & (streak >= self.resolve_after)
        # A fresh incident starts its resolve count at zero; a resolved one
        # starts over with a clean history so it needs N of M again. (Both
        # are rare: the usual round writes the stepped arrays back as they are.)
        any_resolved = bool(resolved.any())
        if any_resolved:
            hist = np.where(resolved, 0, hist)
        self.history[rows] = hist
        if any_resolved or fired.any():
            self.firing[rows] = (firing | fired) & ~resolved
            streak = np.where(fired | resolved, 0, streak)
        self.normal_streak[rows] = streak
        return fired, resolved
