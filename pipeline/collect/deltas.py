"""Cumulative proxy counters → per-window deltas, per pod.

Counters only go up, except when they don't: a proxy restart zeroes them,
an idle series expires and later comes back from zero, a pod is replaced.
The rules here make every delta non-negative and never count an event
twice:

- a value below the previous one is a reset: the delta is the new value;
- a series absent last time started from zero since: the delta is its value;
- a process start time that moved forward means the whole pod restarted;
- a pod seen for the first time counts in full only if it started after the
  tracker's first cycle — otherwise we cannot tell how much of its history
  falls in this window, and its first scrape is a baseline only.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.collect.extract import PodCounters, RouteCounters


def _delta(cur: float, prev: float | None) -> float:
    if prev is None or cur < prev:
        return cur
    return cur - prev


def route_delta(cur: RouteCounters, prev: RouteCounters | None, reset: bool) -> RouteCounters:
    if prev is None or reset:
        buckets = list(cur.buckets) if cur.buckets else None
        return RouteCounters(cur.peer, dict(cur.values), buckets, bounds=cur.bounds)
    if (cur.series or cur.series_buckets) and (prev.series or prev.series_buckets):
        return _series_delta(cur, prev)
    # Counters without their series split (built by hand): the route as one series.
    values = {k: _delta(v, prev.values.get(k)) for k, v in cur.values.items()}
    buckets = None
    if cur.buckets is not None:
        pb = prev.buckets if prev.bounds == cur.bounds else None  # other bounds: a new histogram
        if pb is None or any(c < p for c, p in zip(cur.buckets, pb, strict=True)):
            buckets = list(cur.buckets)  # the histogram was reset as a whole
        else:
            buckets = [c - p for c, p in zip(cur.buckets, pb, strict=True)]
    return RouteCounters(cur.peer, values, buckets, bounds=cur.bounds)


def _series_delta(cur: RouteCounters, prev: RouteCounters) -> RouteCounters:
    """Each series' delta on its own, then summed: a vanished series yields nothing."""
    values: dict[str, float] = {}
    for key, v in cur.series.items():
        values[key[0]] = values.get(key[0], 0.0) + _delta(v, prev.series.get(key))
    buckets = None
    same_bounds = prev.bounds == cur.bounds
    for sid, cb in cur.series_buckets.items():
        pb = prev.series_buckets.get(sid) if same_bounds else None
        if pb is not None and any(c < p for c, p in zip(cb, pb, strict=True)):
            pb = None  # that histogram was reset as a whole
        if buckets is None:
            buckets = [0.0] * len(cb)
        for i, c in enumerate(cb):
            buckets[i] += c if pb is None else c - pb[i]
    return RouteCounters(cur.peer, values, buckets, bounds=cur.bounds)


@dataclass(slots=True)
class _Seen:
    counters: PodCounters
    at: float


class DeltaTracker:
    """Remembers each pod's last cumulative counters and yields deltas."""

    def __init__(self, forget_after_seconds: float = 900.0) -> None:
        self._prev: dict[str, _Seen] = {}
        self._first_cycle_at: float | None = None
        self.forget_after = forget_after_seconds

    def update(self, pod_id: str, cur: PodCounters, now: float) -> PodCounters | None:
        """Deltas since the pod's previous scrape, or None for a baseline-only scrape."""
        if self._first_cycle_at is None:
            self._first_cycle_at = now
        seen = self._prev.get(pod_id)
        self._prev[pod_id] = _Seen(cur, now)
        if seen is None:
            fresh = (
                now > self._first_cycle_at
                and cur.start_time is not None
                and cur.start_time >= self._first_cycle_at
            )
            return self._full(cur) if fresh else None
        prev = seen.counters
        restarted = (
            cur.start_time is not None
            and prev.start_time is not None
            and cur.start_time > prev.start_time + 0.5
        )
        out = PodCounters(cert_expiry=cur.cert_expiry, start_time=cur.start_time)
        for rid, rc in cur.routes.items():
            out.routes[rid] = route_delta(rc, prev.routes.get(rid), restarted)
        return out

    def _full(self, cur: PodCounters) -> PodCounters:
        out = PodCounters(cert_expiry=cur.cert_expiry, start_time=cur.start_time)
        for rid, rc in cur.routes.items():
            out.routes[rid] = route_delta(rc, None, True)
        return out

    def forget_stale(self, now: float) -> list[str]:
        """Drop pods not scraped for a while (gone, or replaced under a new name)."""
        stale = [p for p, s in self._prev.items() if now - s.at > self.forget_after]
        for p in stale:
            del self._prev[p]
        return stale

    def __len__(self) -> int:
        return len(self._prev)
