"""Per-route, per-window features for the trained models: one implementation.

The running detector and ``meshwatch train`` both call :func:`window_features`
right after :meth:`models.detector.RouteDetector.process`, with the same
observations and verdicts, so a model is trained on exactly the numbers it
will later score (no second feature pipeline to drift apart).

Everything is relative to the route's own learned normal, so one model can
serve routes of very different size and speed:

- per kind: the baseline's *surprise* (``-log10(1 - score)``, how many
  "nines" of unusualness), whether the window was judged, and where the
  observed value sits against the expected band (log ratio to its upper and
  lower edge);
- traffic level (``log1p`` of the request count) and route age;
- recent-run statistics from the detector's evidence ring: the mean and the
  maximum of the last points relative to the band's upper edge, the length
  of the current anomalous run of latency and traffic, and how many of the
  last persistence windows were anomalous.

One matrix per batch (rows in the order of ``verdicts.index``), built with
numpy column operations; nothing is done per route in Python.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from models.detector import KINDS, Observations, RouteDetector, Verdicts
from models.persistence import popcount

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class _Take(NamedTuple):
    score: FloatArray
    judged: BoolArray
    observed: FloatArray
    expected_low: FloatArray
    expected_high: FloatArray


#: Kinds whose observed value is compared with the band on a log scale.
_EPS = {
    "latency": 1.0,  # ms
    "error_rate": 0.001,
    "tls_failure": 1.0,
    "mtls_regression": 0.01,
    "traffic_drop": 1.0,
    "traffic_surge": 1.0,
    "cert_expiry": 60.0,  # s
}
_MAX_SURPRISE = 12.0
FEATURES_VERSION = 1


def feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for k in KINDS:
        names += [f"{k}.surprise", f"{k}.judged", f"{k}.log_hi", f"{k}.log_lo"]
        names += [f"{k}.recent_mean_hi", f"{k}.recent_max_hi", f"{k}.recent_anomalous"]
    names += ["traffic.log_requests", "route.log_windows", "run.latency", "run.traffic"]
    return tuple(names)


FEATURE_NAMES = feature_names()
#: Which columns each kind's model looks at: its own block plus the shared ones.
SHARED = ("traffic.log_requests", "route.log_windows", "run.latency", "run.traffic")


def kind_columns(kind: str) -> list[int]:
    own = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith(f"{kind}.")]
    return own + [FEATURE_NAMES.index(n) for n in SHARED]


def surprise(score: FloatArray) -> FloatArray:
    """``-log10(1 - score)``: 3 means "1 in 1,000 normal windows look like this"."""
    with np.errstate(divide="ignore"):
        s = -np.log10(np.clip(1.0 - score, 0.0, 1.0))
    return np.asarray(np.clip(np.nan_to_num(s, posinf=_MAX_SURPRISE), 0.0, _MAX_SURPRISE))


def _log_ratio(a: FloatArray, b: FloatArray, eps: float) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log((np.abs(a) + eps) / (np.abs(b) + eps))
    return np.asarray(np.clip(np.nan_to_num(r, nan=0.0, posinf=10.0, neginf=-10.0), -10, 10))


def window_features(
    det: RouteDetector,
    obs: Observations,
    verdicts: Verdicts,
    positions: IntArray | None = None,
) -> FloatArray:
    """The feature matrix of a processed batch: one row per ``verdicts.index`` entry
    (or per entry of ``positions``, a subset of those).

    Call right after ``det.process(obs)`` returned ``verdicts`` (the recent-run
    statistics read the state that window left behind).
    """
    pos = np.arange(verdicts.index.shape[0]) if positions is None else positions
    n = int(pos.shape[0])
    out = np.zeros((n, len(FEATURE_NAMES)))
    if n == 0:
        return out
    index = verdicts.index[pos]
    rows = obs.rows[index]
    requests = obs.requests[index]
    col = 0
    for ki, k in enumerate(KINDS):
        kv = verdicts.kinds[k]
        v = _Take(kv.score[pos], kv.judged[pos], kv.observed[pos], kv.expected_low[pos],
                  kv.expected_high[pos])  # fmt: skip
        eps = _EPS[k]
        hi = np.where(np.isfinite(v.expected_high), v.expected_high, np.nan)
        recent = det.evidence[rows, ki, :]
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(recent)
            cnt = finite.sum(axis=1)
            mean = np.where(
                cnt > 0, np.where(finite, recent, 0.0).sum(axis=1) / np.maximum(cnt, 1), np.nan
            )
            peak = np.where(cnt > 0, np.where(finite, recent, -np.inf).max(axis=1), np.nan)
        judged = v.judged.astype(np.float64)
        out[:, col] = surprise(v.score) * judged
        out[:, col + 1] = judged
        out[:, col + 2] = _log_ratio(v.observed, hi, eps) * judged
        out[:, col + 3] = _log_ratio(v.observed, v.expected_low, eps) * judged
        out[:, col + 4] = _log_ratio(mean, hi, eps) * judged
        out[:, col + 5] = _log_ratio(peak, hi, eps) * judged
        out[:, col + 6] = popcount(det.persistence[k].history[rows]).astype(np.float64)
        col += 7
    out[:, col] = np.log1p(np.nan_to_num(np.maximum(requests, 0.0)))
    out[:, col + 1] = np.log1p(det.windows[rows].astype(np.float64))
    out[:, col + 2] = np.log1p(det.streak[rows, 0].astype(np.float64))
    out[:, col + 3] = np.log1p(det.streak[rows, 1].astype(np.float64))
    return out


__all__ = [
    "FEATURES_VERSION",
    "FEATURE_NAMES",
    "kind_columns",
    "surprise",
    "window_features",
]
