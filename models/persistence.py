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


def popcount(x: IntArray) -> IntArray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.int64)
    while np.any(x):
        count += (x & np.uint64(1)).astype(np.int64)
        x = x >> np.uint64(1)
    return count


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
        fired = ~firing & judged & anomalous & (popcount(hist) >= self.fire_after)
        resolved = firing & judged & (streak >= self.resolve_after)
        new_firing = (firing | fired) & ~resolved
        # A fresh incident starts its resolve count at zero; a resolved one
        # starts over with a clean history so it needs N of M again.
        hist = np.where(resolved, 0, hist)
        self.history[rows] = hist
        self.firing[rows] = new_firing
        self.normal_streak[rows] = np.where(fired | resolved, 0, streak)
        return fired, resolved
