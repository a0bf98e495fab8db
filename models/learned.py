"""Trained models: one scikit-learn estimator per kind, scores calibrated in [0, 1].

Why a second layer on top of the online baselines: a baseline judges one
metric against its own history; a model trained on many routes' histories
sees *combinations* (a moderately surprising latency together with a rising
recent run and falling traffic) that no single per-metric test ranks high.

Estimator per kind, chosen by the data there is:

- with labelled anomalous windows (simulated faults) — a
  ``HistGradientBoostingClassifier`` (probability of "anomalous");
- otherwise — an ``IsolationForest`` on the kind's features over history
  (unusualness among everything the routes have done); real history rarely
  carries labels.

**Calibration.** Raw outputs of either estimator mean little on their own.
Each kind keeps a sorted sample of the raw scores of held-back *normal*
windows; the calibrated score of a window is the share of those that score
below it. So, exactly like the baselines' scores, 0.999 means "1 in 1,000
normal windows scores this high", and the kind's threshold is
``1 - false_alert_budget`` (the budget is a share of judged normal windows).

Scoring is one ``predict`` per kind over the whole batch. Nothing here reads
files: :mod:`models.registry` saves and loads these with skops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from models.detector import KINDS
from models.features import FEATURE_NAMES, kind_columns

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Kinds the trained layer scores (certificate expiry is a plain floor on a TTL).
LEARNED_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "cert_expiry")
MIN_POSITIVES = 20
MIN_WINDOWS = 50
REFERENCE_SIZE = 20_000


class ModelError(ValueError):
    """A model that cannot score these features (wrong shape, names or kinds)."""


@dataclass
class LearnedModel:
    """Estimators, their calibration references and what they expect as input."""

    feature_names: tuple[str, ...]
    estimators: dict[str, Any] = field(default_factory=dict)
    #: sorted raw scores of held-back normal windows, per kind
    reference: dict[str, FloatArray] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in LEARNED_KINDS if k in self.estimators)

    def check(self) -> None:
        """Refuse a model built for other features: scoring it would be nonsense."""
        if tuple(self.feature_names) != FEATURE_NAMES:
            raise ModelError(
                f"model expects {len(self.feature_names)} features "
                f"({', '.join(self.feature_names[:3])}, ...), this meshwatch builds "
                f"{len(FEATURE_NAMES)}: retrain with this version"
            )
        unknown = set(self.estimators) - set(LEARNED_KINDS)
        if unknown:
            raise ModelError(f"model has estimators for unknown kinds {sorted(unknown)}")
        for k in self.estimators:
            ref = self.reference.get(k)
            if ref is None or ref.ndim != 1 or ref.size == 0:
                raise ModelError(f"model has no calibration reference for {k}")

    def raw(self, kind: str, features: FloatArray) -> FloatArray:
        est = self.estimators[kind]
        x = features[:, kind_columns(kind)]
        if isinstance(est, IsolationForest):
            return np.asarray(-est.score_samples(x), dtype=np.float64)
        return np.asarray(est.predict_proba(x)[:, 1], dtype=np.float64)

    def score(self, features: FloatArray, judged: dict[str, BoolArray]) -> dict[str, FloatArray]:
        """Calibrated scores per kind for a batch; 0 where a kind was not judged.

        Only the kinds named in ``judged`` are scored."""
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise ModelError(f"expected (n, {len(FEATURE_NAMES)}) features, got {features.shape}")
        out: dict[str, FloatArray] = {}
        for k in self.kinds:
            if k not in judged:
                continue
            mask = judged[k]
            s = np.zeros(features.shape[0])
            if mask.any():
                s[mask] = calibrate(self.reference[k], self.raw(k, features[mask]))
            out[k] = s
        return out


def calibrate(reference: FloatArray, raw: FloatArray) -> FloatArray:
    """Share of normal windows expected to score below each raw score.

    Inside the reference, the empirical share. In its top 1 % (at least 10
    points) the tail is modelled as exponential over the threshold ``u``
    where that tail starts (peaks over threshold): ``P(X > x) = (m / n) *
    exp(-(x - u) / beta)``, ``beta`` the mean excess of the top ``m``. So a
    window far beyond anything seen in the reference scores close to 1
    rather than at ``n / (n + 1)`` — a 1e-4 budget stays reachable with a
    reference of a few thousand windows.
    """
    n = reference.size
    below = np.searchsorted(reference, raw, side="left") / (n + 1.0)
    m = max(10, n // 100)
    if n <= m:
        return np.asarray(below, dtype=np.float64)
    u = float(reference[n - m - 1])
    beta = max(float(np.mean(reference[n - m :] - u)), 1e-12)
    with np.errstate(over="ignore"):
        tail = 1.0 - (m / (n + 1.0)) * np.exp(-(np.maximum(raw, u) - u) / beta)
    return np.asarray(np.where(raw > u, tail, below), dtype=np.float64)


def fit(
    features: FloatArray,
    judged: dict[str, BoolArray],
    labels: dict[str, BoolArray] | None = None,
    *,
    holdout: BoolArray | None = None,
    false_alert_budget: float = 1e-4,
    seed: int = 0,
    n_estimators: int = 40,
) -> LearnedModel:
    """Train one estimator per kind and calibrate it on held-back normal windows.

    ``holdout`` marks the rows kept out of fitting and used for calibration
    (default: every fifth row). ``labels[kind]`` marks known anomalous
    windows; they are never part of the calibration reference.
    """
    n = features.shape[0]
    if holdout is None:
        holdout = (np.arange(n) % 5) == 4
    model = LearnedModel(feature_names=FEATURE_NAMES)
    rng = np.random.default_rng(seed)
    for k in LEARNED_KINDS:
        mask = judged[k]
        pos = labels[k] if labels is not None and k in labels else np.zeros(n, dtype=np.bool_)
        train = mask & ~holdout
        calib = mask & holdout & ~pos
        if train.sum() < MIN_WINDOWS or calib.sum() < MIN_WINDOWS:
            continue
        x = features[:, kind_columns(k)]
        est: Any
        if int((pos & train).sum()) >= MIN_POSITIVES:
            est = HistGradientBoostingClassifier(
                max_iter=100, learning_rate=0.1, max_leaf_nodes=15, random_state=seed
            )
            est.fit(x[train], pos[train].astype(np.int64))
        else:
            normal = train & ~pos
            est = IsolationForest(
                n_estimators=n_estimators,
                max_samples=min(256, int(normal.sum())),
                random_state=seed,
            )
            est.fit(x[normal])
        model.estimators[k] = est
        idx = np.flatnonzero(calib)
        if idx.size > REFERENCE_SIZE:
            idx = np.sort(rng.choice(idx, REFERENCE_SIZE, replace=False))
        model.reference[k] = np.sort(model.raw(k, features[idx]))
        model.thresholds[k] = 1.0 - false_alert_budget
    return model


__all__ = [
    "LEARNED_KINDS",
    "LearnedModel",
    "ModelError",
    "calibrate",
    "fit",
]
