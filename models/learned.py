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

**Per-route parameters.** One estimator per kind serves every route (the
features are relative to each route's own normal), but routes differ in how
unusual their *normal* looks to it: a route with a jumpy latency scores
higher on calm days than a steady one. So each kind has a raw-score offset
per *route class* (the route's direction; the inbound all-routes aggregate
is a class of its own), and a route with at least ``route_min_windows``
normal training windows of a kind gets its own: its raw scores are shifted
by the distance from the pooled ``route_quantile`` (0.9) of normal training
scores to its own, shrunk towards its class's by ``n / (n + route_min_windows)``
(a short history moves it half-way). The calibration reference is built from
the shifted scores, so the tail shape stays pooled (a 1e-4 quantile cannot be
learned from one route's few hundred windows) while its location is the
route's. In raw-score terms a route's threshold is the pooled one plus its
offset: a noisier route gets a higher threshold, a steadier one a lower
one. Offsets are fitted on training rows only; the held-back rows judge them.
Routes unknown to the model (new since training) use their class's offset.

Scoring is one ``predict`` per kind over the whole batch, and the offsets
one array lookup per batch (:meth:`LearnedModel.param_index` maps a route
key to its row of ``offsets`` once, the detector caches it per route). Nothing
here reads files: :mod:`models.registry` saves and loads these with skops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from models.detector import KINDS
from models.features import FEATURE_NAMES, kind_columns

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: Kinds the trained layer scores (certificate expiry is a plain floor on a TTL).
LEARNED_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "cert_expiry")
MIN_POSITIVES = 20
MIN_WINDOWS = 50
REFERENCE_SIZE = 20_000
#: Route classes: what a route without enough history of its own shares parameters with.
ROUTE_CLASSES: tuple[str, ...] = ("inbound", "inbound-all", "outbound", "other")
_CLASS_INDEX = {c: i for i, c in enumerate(ROUTE_CLASSES)}
ROUTE_MIN_WINDOWS = 200
ROUTE_QUANTILE = 0.9


def route_class(key: str) -> int:
    """Index in :data:`ROUTE_CLASSES` of a route key ``ns/kind/workload/direction/route``."""
    parts = key.split("/", 4)
    if len(parts) < 5:
        return _CLASS_INDEX["other"]
    if parts[3] == "inbound":
        return _CLASS_INDEX["inbound-all" if parts[4] == "*" else "inbound"]
    return _CLASS_INDEX["outbound" if parts[3] == "outbound" else "other"]


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
    #: routes with parameters of their own (row i of ``offsets``)
    route_keys: tuple[str, ...] = ()
    #: raw-score offsets, (routes + classes, LEARNED_KINDS): the routes' rows, then
    #: one per :data:`ROUTE_CLASSES`; None: a model without (all offsets zero)
    offsets: FloatArray | None = None
    #: what fitting the offsets found (for the manifest; not needed to score)
    route_stats: dict[str, Any] = field(default_factory=dict)
    _route_rows: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    #: per kind, its isolation forest's trees stacked for one vectorised walk
    _forests: dict[str, FlatForest] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in LEARNED_KINDS if k in self.estimators)

    def param_index(self, keys: Sequence[str], *, own: bool = True) -> IntArray:
        """Row of ``offsets`` for each route key: its own, else its class's.

        Python per key: call once per route, not per window (the detector
        caches the result per route row). ``own=False`` gives every route its
        class's row (what the model would do without per-route parameters).
        """
        n = len(self.route_keys)
        rows = self._route_rows
        if rows is None:
            rows = self._route_rows = {k: i for i, k in enumerate(self.route_keys)}
        if not own:
            rows = {}
        out = [rows.get(k, -1) for k in keys]
        return np.array(
            [r if r >= 0 else n + route_class(k) for r, k in zip(out, keys, strict=True)],
            dtype=np.int64,
        ).reshape(len(keys))

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
        if self.offsets is not None:
            shape = (len(self.route_keys) + len(ROUTE_CLASSES), len(LEARNED_KINDS))
            if self.offsets.shape != shape or not np.isfinite(self.offsets).all():
                raise ModelError(
                    f"per-route offsets have shape {self.offsets.shape}, expected {shape} "
                    "and finite values"
                )

    def raw(self, kind: str, features: FloatArray) -> FloatArray:
        est = self.estimators[kind]
        x = features[:, kind_columns(kind)]
        if isinstance(est, IsolationForest):
            flat = self._forests.get(kind)
            if flat is None or flat.estimator is not est:
                try:
                    flat = self._forests[kind] = FlatForest(est)
                except AttributeError:  # a forest of another scikit-learn layout
                    return np.asarray(-est.score_samples(x), dtype=np.float64)
            return flat.raw(x)
        return np.asarray(est.predict_proba(x)[:, 1], dtype=np.float64)

    def score(
        self,
        features: FloatArray,
        judged: dict[str, BoolArray],
        params: IntArray | None = None,
    ) -> dict[str, FloatArray]:
        """Calibrated scores per kind for a batch; 0 where a kind was not judged.

        Only the kinds named in ``judged`` are scored. ``params`` is each row's
        :meth:`param_index` (None: the class "other" for every row, i.e. no
        per-route parameters; a model without offsets ignores it)."""
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise ModelError(f"expected (n, {len(FEATURE_NAMES)}) features, got {features.shape}")
        offsets = self.offsets
        if offsets is not None and params is None:
            params = np.full(features.shape[0], len(self.route_keys) + _CLASS_INDEX["other"])
        out: dict[str, FloatArray] = {}
        for k in self.kinds:
            if k not in judged:
                continue
            mask = judged[k]
            s = np.zeros(features.shape[0])
            if mask.any():
                raw = self.raw(k, features[mask])
                if offsets is not None and params is not None:
                    raw = raw - offsets[params[mask], _KIND_INDEX[k]]
                s[mask] = calibrate(self.reference[k], raw)
            out[k] = s
        return out


class FlatForest:
    """An isolation forest's trees stacked into flat node arrays, walked for all
    trees and rows at once: ``-IsolationForest.score_samples`` (the raw score),
    bit for bit.

    scikit-learn scores a forest one tree at a time through joblib; in the
    detector a call scores a few dozen windows, so its fixed cost per tree
    (input checks, a joblib task, ``tree.apply``) was nearly all of the
    trained layer's time, once per kind and round. Here a call is one walk of
    ``max depth`` steps over (trees × rows) numpy arrays. The arithmetic is
    the forest's own: the rows are cast to float32 as its input checks do,
    compared with the float64 thresholds (missing values follow each node's
    ``missing_go_to_left``), and each tree's leaf value ``path length +
    average path length − 1`` is added in tree order before ``2 ** (−depth /
    (trees × c(max_samples)))``.
    """

    def __init__(self, est: IsolationForest) -> None:
        self.estimator = est
        trees = [t.tree_ for t in est.estimators_]
        sizes = np.array([t.node_count for t in trees], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        left, right, feature, threshold, missing_left, value = [], [], [], [], [], []
        for i, (t, start) in enumerate(zip(trees, base.tolist(), strict=True)):
            own = np.arange(t.node_count, dtype=np.int64) + start
            leaf = t.children_left == -1  # sklearn's TREE_LEAF
            # leaves point at themselves, so walking past one stays there
            left.append(np.where(leaf, own, t.children_left + start))
            right.append(np.where(leaf, own, t.children_right + start))
            cols = np.asarray(est.estimators_features_[i], dtype=np.int64)
            feature.append(np.where(leaf, 0, cols[np.maximum(t.feature, 0)]))
            threshold.append(np.asarray(t.threshold, dtype=np.float64))
            missing_left.append(np.asarray(t.missing_go_to_left, dtype=np.bool_))
            # per node, the same sum scikit-learn forms per sample
            value.append(
                np.asarray(est._decision_path_lengths[i], dtype=np.float64)
                + np.asarray(est._average_path_length_per_tree[i], dtype=np.float64)
                - 1.0
            )
        # Nodes are addressed by twice their index, so the next node is one
        # lookup: at 2i + 1 the left child (the comparison came out true), at
        # 2i the right one; each node's fields are stored at both addresses.
        self.child = 2 * np.stack([np.concatenate(right), np.concatenate(left)], axis=1).ravel()
        self.feature = np.repeat(np.concatenate(feature), 2)
        self.threshold = np.repeat(np.concatenate(threshold), 2)
        self.missing_left = np.repeat(np.concatenate(missing_left), 2)
        self.value = np.repeat(np.concatenate(value), 2)
        self.roots = 2 * base
        self.depth = max((int(t.max_depth) for t in trees), default=0)
        self.n_features = int(est.n_features_in_)
        n = float(est._max_samples)
        if n <= 1:
            c = 0.0
        elif n == 2:
            c = 1.0
        else:
            c = float(2.0 * (np.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n)
        self.denominator = len(trees) * c

    def raw(self, x: FloatArray) -> FloatArray:
        """``-est.score_samples(x)`` for a 2-D float array of the forest's features."""
        n = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(f"expected (n, {self.n_features}) features, got {x.shape}")
        # float32 as the forest's input checks make it, compared in float64
        with np.errstate(over="ignore"):  # beyond float32: ±inf, as in the forest
            xs = np.asarray(x, dtype=np.float32).astype(np.float64).ravel()
        trees = self.roots.size
        node = np.repeat(self.roots, n)  # doubled node indices, tree after tree
        start = np.tile(np.arange(n, dtype=np.int64) * self.n_features, trees)
        nan = bool(np.isnan(xs).any())
        for _ in range(self.depth):
            v = xs.take(start + self.feature.take(node))
            left = v <= self.threshold.take(node)
            if nan:  # missing values go where the node sends them
                left = np.where(np.isnan(v), self.missing_left.take(node), left)
            node = self.child.take(node + left)
        leaf_values = self.value.take(node).reshape(trees, n)
        depths = np.zeros(n)
        for t in range(trees):  # tree order, as scikit-learn sums them
            depths += leaf_values[t]
        # a forest of one-sample trees has depth 0 over 0: taken as 1 (as scikit-learn does)
        ratio = depths / self.denominator if self.denominator != 0 else np.ones(n)
        return np.asarray(2 ** (-ratio), dtype=np.float64)


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


def _group_quantiles(groups: IntArray, values: FloatArray, q: float) -> tuple[IntArray, FloatArray]:
    """Row count and ``q`` quantile (lower) of ``values`` per group id (vectorised)."""
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order]
    counts = np.bincount(g).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    quant = np.full(counts.size, np.nan)
    has = counts > 0
    quant[has] = v[starts[has] + np.floor(q * (counts[has] - 1)).astype(np.int64)]
    return counts, quant


def _fit_offsets(
    raw: FloatArray, routes: IntArray, classes: IntArray, n_routes: int, min_windows: int, q: float
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Offsets of one kind from normal training rows: per route (where it has
    ``min_windows`` rows), per class, both shrunk towards the level above them."""
    pooled = float(np.quantile(raw, q, method="lower"))
    c_n, c_q = _group_quantiles(classes, raw, q)
    c_off = np.zeros(len(ROUTE_CLASSES))
    c_n = np.pad(c_n, (0, len(ROUTE_CLASSES) - c_n.size))
    c_q = np.pad(c_q, (0, len(ROUTE_CLASSES) - c_q.size), constant_values=np.nan)
    has = c_n > 0
    c_off[has] = c_n[has] / (c_n[has] + min_windows) * (c_q[has] - pooled)
    r_n, r_q = _group_quantiles(routes, raw, q)
    r_n = np.pad(r_n, (0, n_routes - r_n.size))
    r_q = np.pad(r_q, (0, n_routes - r_q.size), constant_values=np.nan)
    own = r_n >= min_windows
    r_class = np.zeros(n_routes, dtype=np.int64)
    r_class[routes] = classes  # every row of a route has the route's class
    r_off = c_off[r_class].copy()
    w = r_n[own] / (r_n[own] + min_windows)
    r_off[own] += w * ((r_q[own] - pooled) - c_off[r_class[own]])
    return r_off, c_off, own


def fit(
    features: FloatArray,
    judged: dict[str, BoolArray],
    labels: dict[str, BoolArray] | None = None,
    *,
    holdout: BoolArray | None = None,
    false_alert_budget: float = 1e-4,
    seed: int = 0,
    n_estimators: int = 40,
    routes: Sequence[str] | None = None,
    route_min_windows: int = ROUTE_MIN_WINDOWS,
    route_quantile: float = ROUTE_QUANTILE,
) -> LearnedModel:
    """Train one estimator per kind and calibrate it on held-back normal windows.

    ``holdout`` marks the rows kept out of fitting and used for calibration
    (default: every fifth row). ``labels[kind]`` marks known anomalous
    windows; they are never part of the calibration reference. ``routes``
    (each row's route key) enables the per-route and per-class offsets (see
    the module docstring); without it the model has none.
    """
    n = features.shape[0]
    if holdout is None:
        holdout = (np.arange(n) % 5) == 4
    model = LearnedModel(feature_names=FEATURE_NAMES)
    rng = np.random.default_rng(seed)
    route_ids: IntArray | None = None
    classes: IntArray | None = None
    names: list[str] = []
    all_offsets = np.zeros((len(ROUTE_CLASSES), len(LEARNED_KINDS)))
    has_own = np.zeros(0, dtype=np.bool_)
    own_by_kind: dict[str, int] = {}
    if routes is not None:
        if len(routes) != n:
            raise ModelError(f"{len(routes)} route keys for {n} rows")
        uniq, inverse = np.unique(np.asarray(routes, dtype=object), return_inverse=True)
        names = [str(u) for u in uniq]
        route_ids = inverse.astype(np.int64).reshape(n)
        classes = np.array([route_class(k) for k in names], dtype=np.int64)[route_ids]
        all_offsets = np.zeros((len(names) + len(ROUTE_CLASSES), len(LEARNED_KINDS)))
        has_own = np.zeros(len(names), dtype=np.bool_)
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
        ref = model.raw(k, features[idx])
        if route_ids is not None and classes is not None:
            ki = _KIND_INDEX[k]
            normal_train = np.flatnonzero(train & ~pos)
            r_off, c_off, own = _fit_offsets(
                model.raw(k, features[normal_train]),
                route_ids[normal_train],
                classes[normal_train],
                len(names),
                route_min_windows,
                route_quantile,
            )
            all_offsets[: len(names), ki] = r_off
            all_offsets[len(names) :, ki] = c_off
            has_own |= own
            own_by_kind[k] = int(own.sum())
            ref = ref - all_offsets[route_ids[idx], ki]
        model.reference[k] = np.sort(ref)
        model.thresholds[k] = 1.0 - false_alert_budget
    if route_ids is not None:
        # keep only routes with parameters of their own; the rest use their class's row
        # (a key with a newline cannot be stored: see models.registry.dump_model)
        has_own &= np.array(["\n" not in k for k in names], dtype=np.bool_)
        keep = np.flatnonzero(has_own)
        model.route_keys = tuple(names[i] for i in keep)
        model.offsets = np.vstack([all_offsets[keep], all_offsets[len(names) :]])
        model.route_stats = {
            "routes_with_own_parameters": len(model.route_keys),
            "routes_seen": len(names),
            "by_kind": own_by_kind,
            "min_windows": route_min_windows,
            "quantile": route_quantile,
            "classes": list(ROUTE_CLASSES),
        }
    return model


_KIND_INDEX = {k: i for i, k in enumerate(LEARNED_KINDS)}

__all__ = [
    "LEARNED_KINDS",
    "ROUTE_CLASSES",
    "FlatForest",
    "LearnedModel",
    "ModelError",
    "calibrate",
    "fit",
    "route_class",
]
