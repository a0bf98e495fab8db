"""History → a bounded training set of window features.

History is streamed through the production detector (the same
:class:`~models.detector.RouteDetector`, configured as the running one) one
window at a time, and :func:`models.features.window_features` turns every
judged route-window into the features the running detector will later
compute. Seven days of thousands of routes is tens of millions of windows,
so only a uniform random sample of at most ``max_rows`` is kept (a
reservoir: every row gets a random key and the smallest keys survive),
which bounds memory whatever the history's length.

The key is a hash of (seed, route, window end), not a draw from a stream of
random numbers: the same row gets the same key whichever process judged it
and in whatever order, so history split over worker processes (each with
its own reservoir, see :mod:`pipeline.train.parallel`) merges into exactly
the sample one process would have kept.

History may be read in time segments (:mod:`pipeline.train.history`): each
segment starts a fresh detector, whose windows up to ``keep_after`` only
warm its baselines (judged, never sampled, no features computed).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
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
IntArray = npt.NDArray[np.int64]
UIntArray = npt.NDArray[np.uint64]
#: labels(kind, route keys, window ends) -> True where a window is known anomalous
Labeller = Callable[[str, list[str], FloatArray], BoolArray]
#: the reservoir is trimmed back to ``max_rows`` when it grows past this multiple
TRIM_FACTOR = 1.25


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
    #: totals over all of the history read, not only the sample
    samples_seen: int = 0
    routes_seen: int = 0
    windows_seen: int = 0
    t_min: float = float("nan")
    t_max: float = float("nan")
    #: samples judged only to warm up a segment's baselines (part of samples_seen)
    warmup_samples: int = 0

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
    route: IntArray  # ids into the builder's route list (no Python objects to keep alive)

    def take(self, idx: IntArray) -> _Chunk:
        return _Chunk(
            key=self.key[idx],
            features=self.features[idx],
            judged=self.judged[idx],
            score=self.score[idx],
            anomalous=self.anomalous[idx],
            labels=None if self.labels is None else self.labels[idx],
            window_end=self.window_end[idx],
            route=self.route[idx],
        )


def _concat(chunks: Sequence[_Chunk]) -> _Chunk:
    labels = None
    if chunks and all(x.labels is not None for x in chunks):
        labels = np.concatenate([x.labels for x in chunks if x.labels is not None])
    return _Chunk(
        key=np.concatenate([x.key for x in chunks]),
        features=np.concatenate([x.features for x in chunks]),
        judged=np.concatenate([x.judged for x in chunks]),
        score=np.concatenate([x.score for x in chunks]),
        anomalous=np.concatenate([x.anomalous for x in chunks]),
        labels=labels,
        window_end=np.concatenate([x.window_end for x in chunks]),
        route=np.concatenate([x.route for x in chunks]),
    )


def _smallest(chunk: _Chunk, n: int) -> _Chunk:
    """The ``n`` rows with the smallest keys (all of them if there are fewer)."""
    if chunk.key.size <= n:
        return chunk
    return chunk.take(np.sort(np.argpartition(chunk.key, n)[:n]))


@dataclass
class Part:
    """What one reader (a process or a segment of one) kept: its reservoir, its
    routes and its totals. Picklable, so a worker process can send it back."""

    rows: _Chunk | None
    routes: list[str]
    samples_seen: int
    warmup_samples: int
    windows: FloatArray  # distinct window ends judged
    t_min: float
    t_max: float
    stats: dict[str, int] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    cpu_seconds: float = 0.0


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _unit(z: UIntArray) -> FloatArray:
    """splitmix64's finaliser, as a uniform float in [0, 1) (vectorised)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return np.asarray((z >> np.uint64(11)).astype(np.float64) * 2.0**-53, dtype=np.float64)


def row_keys(route_hash: UIntArray, window_end: FloatArray) -> FloatArray:
    """Reservoir keys of route-windows: a function of the route's hash and the window end."""
    ms = np.rint(window_end * 1000.0).astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _unit(route_hash ^ (ms * _GOLDEN))


def route_hash(key: str, seed: int) -> int:
    digest = hashlib.blake2b(
        key.encode(), digest_size=8, salt=seed.to_bytes(8, "little", signed=True)
    )
    return int.from_bytes(digest.digest(), "little")


@dataclass
class DatasetBuilder:
    detector: DetectorConfig
    max_rows: int = 300_000
    seed: int = 0
    labeller: Labeller | None = None
    #: windows ending at or before this only warm the baselines (see :meth:`start_segment`)
    keep_after: float = float("-inf")
    _det: RouteDetector = field(init=False)
    _det_route: list[int] = field(init=False)  # detector row -> route id
    _keys: dict[tuple[str, str, str, str, str], str] = field(init=False)
    _route_id: dict[str, int] = field(init=False)
    _routes: list[str] = field(init=False)
    _hashes: list[int] = field(init=False)
    _hash_array: UIntArray = field(init=False)
    _windows: set[float] = field(init=False)
    _chunks: list[_Chunk] = field(default_factory=list, init=False)
    _rows: int = field(default=0, init=False)
    _cutoff: float = field(default=1.0, init=False)
    samples_seen: int = field(default=0, init=False)
    warmup_samples: int = field(default=0, init=False)
    t_min: float = field(default=float("inf"), init=False)
    t_max: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self._keys = {}
        self._route_id = {}
        self._routes = []
        self._hashes = []
        self._hash_array = np.zeros(0, dtype=np.uint64)
        self._windows = set()
        self.start_segment(self.keep_after)

    @property
    def windows_seen(self) -> int:
        return len(self._windows)

    def start_segment(self, keep_after: float) -> None:
        """A fresh detector (no state, as a new replica starts) for history that
        begins after a gap; its windows up to ``keep_after`` are warm-up only."""
        self._det = RouteDetector(params_from_config(self.detector))
        self._det_route = []
        self.keep_after = keep_after

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
        det = self._det
        rows = det.rows_for([keys[p] for p in cols.keys])
        if len(det.keys) > len(self._det_route):
            self._det_route.extend(self._route(k) for k in det.keys[len(self._det_route) :])
        return observations_of(cols, rows)

    def _route(self, key: str) -> int:
        rid = self._route_id.get(key)
        if rid is None:
            rid = self._route_id[key] = len(self._routes)
            self._routes.append(key)
            self._hashes.append(route_hash(key, self.seed))
        return rid

    def _add_window(self, obs: Observations) -> None:
        det = self._det
        verdicts = det.process(obs)
        n = len(obs)
        self.samples_seen += n
        end = float(obs.window_end[0])
        self._windows.add(end)
        if end <= self.keep_after:
            self.warmup_samples += n
            return  # warm-up: the state moved on, nothing is sampled
        if verdicts.index.size == 0:
            return
        t = obs.window_end[verdicts.index]
        self.t_min = min(self.t_min, float(t.min()))
        self.t_max = max(self.t_max, float(t.max()))
        judged = np.column_stack([verdicts.kinds[k].judged for k in LEARNED_KINDS])
        routes = np.asarray(self._det_route, dtype=np.int64)[obs.rows[verdicts.index]]
        if self._hash_array.size < len(self._hashes):
            self._hash_array = np.array(self._hashes, dtype=np.uint64)
        # the reservoir key comes first: once the reservoir is full, a row whose
        # key is above the current cut-off can never be kept, so its features
        # are not computed (most rows of a long history)
        key = row_keys(self._hash_array[routes], t)
        keep = judged.any(axis=1) & (key < self._cutoff)
        if not keep.any():
            return
        pos = np.flatnonzero(keep)
        feats = window_features(det, obs, verdicts, pos)
        labels = None
        if self.labeller is not None:
            names = [self._routes[r] for r in routes[pos].tolist()]
            labels = np.column_stack([self.labeller(k, names, t[pos]) for k in LEARNED_KINDS])
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
                route=routes[pos],
            )
        )
        self._rows += pos.size
        if self._rows > TRIM_FACTOR * self.max_rows:
            self._trim()

    def _trim(self) -> None:
        merged = _concat(self._chunks)
        self._chunks = []  # the pieces go before the kept rows are copied out
        total = merged.key.size
        kept = _smallest(merged, self.max_rows)
        del merged
        self._chunks = [kept]
        self._rows = kept.key.size
        if total > self.max_rows:
            self._cutoff = float(kept.key.max())

    def part(self) -> Part:
        """This builder's reservoir and totals, to be merged with others'."""
        if self._chunks:
            self._trim()
        return Part(
            rows=self._chunks[0] if self._chunks else None,
            routes=list(self._routes),
            samples_seen=self.samples_seen,
            warmup_samples=self.warmup_samples,
            windows=np.fromiter(self._windows, dtype=np.float64, count=len(self._windows)),
            t_min=self.t_min,
            t_max=self.t_max,
        )

    def finish(self) -> Dataset:
        return merge([self.part()], self.max_rows)


def merge(parts: Sequence[Part], max_rows: int) -> Dataset:
    """One dataset from the parts of several readers: the ``max_rows`` rows with the
    smallest keys over all of them (what one reader of everything keeps), in time
    order (ties by key, so the order does not depend on how history was split)."""
    index: dict[str, int] = {}
    chunks: list[_Chunk] = []
    for p in parts:
        ids = np.array([index.setdefault(r, len(index)) for r in p.routes], dtype=np.int64)
        if p.rows is not None and p.rows.key.size:
            chunks.append(dataclasses.replace(p.rows, route=ids[p.rows.route]))
    names = list(index)  # insertion order: names[i] has id i
    windows = np.unique(np.concatenate([p.windows for p in parts])) if parts else np.zeros(0)
    totals = {
        "samples_seen": sum(p.samples_seen for p in parts),
        "warmup_samples": sum(p.warmup_samples for p in parts),
        "routes_seen": len(names),
        "windows_seen": int(windows.size),
    }
    t_min = min((p.t_min for p in parts), default=float("inf"))
    t_max = max((p.t_max for p in parts), default=float("-inf"))
    if not chunks:
        empty = np.zeros((0, len(FEATURE_NAMES)))
        none = {k: np.zeros(0, dtype=np.bool_) for k in LEARNED_KINDS}
        return Dataset(
            empty, none, {k: np.zeros(0) for k in LEARNED_KINDS}, none, np.zeros(0), [], None,
            **totals,
        )  # fmt: skip
    m = _smallest(_concat(chunks), max_rows)
    order = np.lexsort((m.key, m.window_end))
    cols = {k: i for i, k in enumerate(LEARNED_KINDS)}
    return Dataset(
        features=m.features[order],
        judged={k: m.judged[order, i] for k, i in cols.items()},
        baseline_score={k: m.score[order, i] for k, i in cols.items()},
        baseline_anomalous={k: m.anomalous[order, i] for k, i in cols.items()},
        window_end=m.window_end[order],
        route=[names[r] for r in m.route[order].tolist()],
        labels=None if m.labels is None else {k: m.labels[order, i] for k, i in cols.items()},
        t_min=t_min,
        t_max=t_max,
        **totals,
    )


__all__ = ["Dataset", "DatasetBuilder", "Labeller", "Part", "merge", "row_keys"]
