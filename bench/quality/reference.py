"""The two references meshwatch is compared with.

**Static rules** (simulator): what Linkerd users typically write in
Prometheus, applied per route to the same GoldenSamples:

- success rate below 95 % (``successes / requests`` over windows with at
  least one request) for ``N`` consecutive windows;
- p99 above a fixed bound (1,000 ms) for ``N`` consecutive windows;

with ``N`` = 3 (a ``for: 30s`` at 10 s windows). An alert opens when a
condition has held ``N`` windows and closes when it stops holding.

**Rolling z-score** (real series): for each point, the mean and standard
deviation of the previous ``W`` *hours* of points; an alert opens when
``|z|`` reaches the threshold and the previous point was under it (one alert
per excursion). The window is a span of time, not a count of points: the
dataset mixes hourly and one-minute series, and a 48-point window is two
days of an hourly series but 48 minutes of a one-minute one — far too short
to know what normal looks like (it drew over 1,000 false alerts on each
one-minute group and made the reference look weaker than it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from events import Alert


class SampleLike(Protocol):
    """What the static rules read of a GoldenSample."""

    @property
    def route_key(self) -> str: ...
    @property
    def window_end(self) -> float: ...
    @property
    def requests(self) -> int: ...
    @property
    def successes(self) -> int: ...
    @property
    def p99_ms(self) -> float | None: ...


SR_BOUND = 0.95
P99_BOUND_MS = 1000.0
FOR_WINDOWS = 3


def static_rule_alerts(samples: Sequence[SampleLike]) -> list[Alert]:
    """Alerts of the static rule set over time-ordered samples of many routes."""
    streak: dict[tuple[str, str], int] = {}
    open_at: dict[tuple[str, str], float] = {}
    out: list[Alert] = []
    for s in samples:
        key = s.route_key
        conds = {
            "static_success_rate": s.requests > 0 and s.successes / s.requests < SR_BOUND,
            "static_p99": s.p99_ms is not None and s.requests > 0 and s.p99_ms > P99_BOUND_MS,
        }
        for rule, held in conds.items():
            k = (key, rule)
            if held:
                streak[k] = streak.get(k, 0) + 1
                if streak[k] == FOR_WINDOWS and k not in open_at:
                    open_at[k] = s.window_end
            else:
                streak[k] = 0
                if k in open_at:
                    out.append(Alert(key, open_at.pop(k), rule, closed_at=s.window_end))
    out += [Alert(k[0], t, k[1]) for k, t in open_at.items()]
    return out


def rolling_z_alerts(
    times: Sequence[float],
    values: Sequence[float],
    key: str,
    window_hours: float,
    threshold: float,
    step_seconds: float,
) -> list[Alert]:
    """Missing values are skipped: the trailing window is the previous W present points,
    W being ``window_hours`` in points of ``step_seconds`` (at least 2)."""
    v = np.asarray(values, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    ok = np.isfinite(v)
    v, t = v[ok], t[ok]
    n = v.size
    window = max(round(window_hours * 3600.0 / step_seconds), 2)
    if n <= window:
        return []
    c1 = np.concatenate(([0.0], np.cumsum(v)))
    c2 = np.concatenate(([0.0], np.cumsum(v * v)))
    i = np.arange(window, n)
    s1 = c1[i] - c1[i - window]
    s2 = c2[i] - c2[i - window]
    mean = s1 / window
    sd = np.sqrt(np.maximum(s2 / window - mean * mean, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 1e-12 * np.maximum(np.abs(mean), 1.0), (v[i] - mean) / sd, 0.0)
        z = np.where((sd <= 1e-12 * np.maximum(np.abs(mean), 1.0)) & (v[i] != mean), np.inf, z)
    above = np.abs(z) >= threshold
    rising = above & ~np.r_[False, above[:-1]]
    return [Alert(key, float(t[j]), "zscore") for j in i[rising]]
