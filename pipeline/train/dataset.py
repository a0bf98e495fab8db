"""History → a bounded training set of window features.

History is streamed through the production detector (the same
:class:`~models.detector.RouteDetector`, configured as the running one) one
window at a time, and :func:`models.features.window_features` turns every
judged route-window into the features the running detector will later
compute. Seven days of thousands of routes is tens of millions of windows,
so only a uniform random sample of at most ``max_rows`` is kept (a
reservoir: every row gets a random key and the smallest keys survive),
which bounds memory whatever the history's length.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.detector import Observations, RouteDetector
from models.features import FEATURE_NAMES, window_features
from models.learned import LEARNED_KINDS
from pipeline.config import DetectorConfig
from pipeline.detect import columnar
from pipeline.detect.columnar import GoldenColumns
from pipeline.detect.engine import observations_of, params_from_config
from pipeline.keys import route_key as make_route_key
from pipeline.keys import workload_key as make_workload_key
from pipeline.schema import GoldenSample

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
#: labels(kind, route keys, window ends) -> True where a window is known anomalous
Labeller = Callable[[str, list[str], FloatArray], BoolArray]


@dataclass
class Dataset:
    """Sampled training rows; per-kind columns are aligned with ``features``."""

    features: FloatArray
    judged: dict[str, BoolArray]
    baseline_score: dict[str, FloatArray]
    baseline_anomalous: dict[str, BoolArray]
    window_end: FloatArray
    route: list[str]
    labels: dict[str, BoolArray] | None = None
    #: totals over all of the history, not only the sample
    samples_seen: int = 0
    routes_seen: int = 0
    windows_seen: int = 0
    t_min: float = float("nan")
    t_max: float = float("nan")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def holdout(self, fraction: float) -> BoolArray:
        """The latest ``fraction`` of the sampled rows by time (held back for evaluation)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.bool_)
        cut = float(np.quantile(self.window_end, 1.0 - fraction))
        return np.asarray(self.window_end >= cut, dtype=np.bool_)


@dataclass
class _Chunk:
    key: FloatArray
    features: FloatArray
    judged: BoolArray
    score: FloatArray
    anomalous: BoolArray
    labels: BoolArray | None
    window_end: FloatArray
    route: npt.NDArray[np.int64]  # detector rows (no Python objects to keep alive)


@dataclass
class DatasetBuilder:
    detector: DetectorConfig
    max_rows: int = 300_000
    seed: int = 0
    labeller: Labeller | None = None
    _det: RouteDetector = field(init=False)
    _keys: dict[tuple[str, str, str, str, str], str] = field(init=False)
    _rng: np.random.Generator = field(init=False)
    _chunks: list[_Chunk] = field(default_factory=list, init=False)
    _rows: int = field(default=0, init=False)
    _cutoff: float = field(default=1.0, init=False)
    samples_seen: int = field(default=0, init=False)
    windows_seen: int = field(default=0, init=False)
    t_min: float = field(default=float("inf"), init=False)
    t_max: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self._det = RouteDetector(params_from_config(self.detector))
        self._keys = {}
        self._rng = np.random.default_rng(self.seed)

    def add(self, samples: Sequence[GoldenSample]) -> None:
        """Judge a chunk of history (any order across routes; each route in time order)."""
        if samples:
            self.add_columns(columnar.from_samples(list(samples)))

    def add_decoded(self, decoded: Sequence[columnar.Decoded]) -> int:
        """A chunk of fast-decoded golden messages; returns how many were refused."""
        if not decoded:
            return 0
        cols, rejected = columnar.columns(decoded)
        if len(cols):
            self.add_columns(cols)
        return len(rejected)

    def add_all(self, chunks: Iterable[Sequence[GoldenSample]]) -> None:
        for chunk in chunks:
            self.add(chunk)

    def add_columns(self, cols: GoldenColumns) -> None:
        """Columns of a chunk, judged one window at a time (in time order), so each
        window's features see exactly the state the running detector would have."""
        obs = self._observations(cols)
        order = np.argsort(obs.window_end, kind="stable")
        ends = obs.window_end[order]
        cuts = np.flatnonzero(np.diff(ends)) + 1
        # like the stage loop: no cyclic GC while a chunk's objects are alive
        # (reference counting frees them; walking them is pure overhead)
        enabled = gc.isenabled()
        gc.disable()
        try:
            for idx in np.split(order, cuts):
                self._add_window(obs.take(idx))
        finally:
            if enabled:
                gc.enable()

    def _observations(self, cols: GoldenColumns) -> Observations:
        """The detector's observation columns of a chunk (route rows from key parts)."""
        keys = self._keys
        missing = [p for p in set(cols.keys) if p not in keys]
        for ns, kind, workload, direction, route in missing:
            keys[(ns, kind, workload, direction, route)] = make_route_key(
                make_workload_key(ns, kind, workload), direction, route
            )
        rows = self._det.rows_for([keys[p] for p in cols.keys])
        return observations_of(cols, rows)

    def _add_window(self, obs: Observations) -> None:
        det = self._det
        verdicts = det.process(obs)
        self.samples_seen += len(obs)
        self.windows_seen += 1
        if verdicts.index.size == 0:
            return
        t = obs.window_end[verdicts.index]
        self.t_min = min(self.t_min, float(t.min()))
        self.t_max = max(self.t_max, float(t.max()))
        judged = np.column_stack([verdicts.kinds[k].judged for k in LEARNED_KINDS])
        # the reservoir's random key is drawn first: once the reservoir is full,
        # a row whose key is above the current cut-off can never be kept, so
        # its features are not computed (most rows of a long history)
        key = np.asarray(self._rng.random(judged.shape[0]), dtype=np.float64)
        keep = judged.any(axis=1) & (key < self._cutoff)
        if not keep.any():
            return
        pos = np.flatnonzero(keep)
        feats = window_features(det, obs, verdicts, pos)
        rows = obs.rows[verdicts.index[pos]]
        labels = None
        if self.labeller is not None:
            keys = [det.keys[r] for r in rows.tolist()]
            labels = np.column_stack([self.labeller(k, keys, t[pos]) for k in LEARNED_KINDS])
        self._chunks.append(
            _Chunk(
                key=key[pos],
                features=feats,
                judged=judged[pos],
                score=np.column_stack([verdicts.kinds[k].score[pos] for k in LEARNED_KINDS]),
                anomalous=np.column_stack(
                    [verdicts.kinds[k].anomalous[pos] for k in LEARNED_KINDS]
                ),
                labels=labels,
                window_end=t[pos],
                route=rows,
            )
        )
        self._rows += pos.size
        if self._rows > 2 * self.max_rows:
            self._trim()

    def _merged(self) -> _Chunk:
        c = self._chunks
        labels = None
        if c and all(x.labels is not None for x in c):
            labels = np.concatenate([x.labels for x in c if x.labels is not None])
        return _Chunk(
            key=np.concatenate([x.key for x in c]),
            features=np.concatenate([x.features for x in c]),
            judged=np.concatenate([x.judged for x in c]),
            score=np.concatenate([x.score for x in c]),
            anomalous=np.concatenate([x.anomalous for x in c]),
            labels=labels,
            window_end=np.concatenate([x.window_end for x in c]),
            route=np.concatenate([x.route for x in c]),
        )

    def _trim(self) -> None:
        m = self._merged()
        if m.key.size > self.max_rows:
            idx = np.sort(np.argpartition(m.key, self.max_rows)[: self.max_rows])
        else:
            idx = np.arange(m.key.size)
        self._chunks = [
            _Chunk(
                key=m.key[idx],
                features=m.features[idx],
                judged=m.judged[idx],
                score=m.score[idx],
                anomalous=m.anomalous[idx],
                labels=None if m.labels is None else m.labels[idx],
                window_end=m.window_end[idx],
                route=m.route[idx],
            )
        ]
        self._rows = idx.size
        if m.key.size > self.max_rows:
            self._cutoff = float(m.key[idx].max())

    def finish(self) -> Dataset:
        if not self._chunks:
            empty = np.zeros((0, len(FEATURE_NAMES)))
            none = {k: np.zeros(0, dtype=np.bool_) for k in LEARNED_KINDS}
            return Dataset(empty, none, {k: np.zeros(0) for k in LEARNED_KINDS}, none,
                           np.zeros(0), [], samples_seen=self.samples_seen,
                           windows_seen=self.windows_seen)  # fmt: skip
        self._trim()
        m = self._chunks[0]
        order = np.argsort(m.window_end, kind="stable")
        cols = {k: i for i, k in enumerate(LEARNED_KINDS)}
        return Dataset(
            features=m.features[order],
            judged={k: m.judged[order, i] for k, i in cols.items()},
            baseline_score={k: m.score[order, i] for k, i in cols.items()},
            baseline_anomalous={k: m.anomalous[order, i] for k, i in cols.items()},
            window_end=m.window_end[order],
            route=[self._det.keys[r] for r in m.route[order].tolist()],
            labels=None if m.labels is None else {k: m.labels[order, i] for k, i in cols.items()},
            samples_seen=self.samples_seen,
            routes_seen=len(self._det.keys),
            windows_seen=self.windows_seen,
            t_min=self.t_min,
            t_max=self.t_max,
        )


__all__ = ["Dataset", "DatasetBuilder", "Labeller"]
